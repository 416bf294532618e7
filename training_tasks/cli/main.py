"""`trainctl`: register organizations, train, watch progress, inspect, deploy, roll back, clean up."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from training_tasks.cli.common import _echo_json, _service, read_json_object, run_cli
from training_tasks.cli.database import db
from training_tasks.cli.metrics import metrics_command
from training_tasks.cli.report import report_command
from training_tasks.cli.schedule import schedule, schedules_command
from training_tasks.cli.secrets import secrets as secrets_group
from training_tasks.cli.ui import ui_command

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log what the service does (debug level).")
def cli(verbose: bool) -> None:
    """Train, validate and deploy predictive-maintenance models per organization.

    Settings come from the environment: DATABASE_URL (SQLAlchemy URL; default SQLite under
    ML_BASE_PATH), REDIS_URL (broker and hot-swap channel; default redis://127.0.0.1:6379/0),
    BROKER_URL (the broker instead, amqp:// for RabbitMQ; Redis keeps results and hot-swap),
    ML_BASE_PATH (models and artifacts; default ./ml), PYTHON_ENV (interpreter of training
    scripts), NODE_ENV=development (debug logging).
    """
    import os

    debug = verbose or os.environ.get("NODE_ENV") == "development"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.group()
def org() -> None:
    """Register and inspect organizations."""


@org.command("create")
@click.argument("org_id")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="JSON file with mlModelConfig, trainingSchedule, scadaDbConfig, schemaConfig.",
)
def org_create(org_id: str, config_path: Path) -> None:
    """Register ORG_ID; running workers start serving its queue within seconds."""
    doc = read_json_object(config_path, "an organization config")
    _service().register_organization(org_id, doc, actor="cli")
    click.echo(f"registered organization {org_id} (queue org.{org_id})")


@org.command("update")
@click.argument("org_id")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="JSON file with the complete new organization config.",
)
def org_update(org_id: str, config_path: Path) -> None:
    """Replace the config of ORG_ID."""
    doc = read_json_object(config_path, "an organization config")
    _service().update_organization(org_id, doc, actor="cli")
    click.echo(f"updated organization {org_id}")


@org.command("show")
@click.argument("org_id")
def org_show(org_id: str) -> None:
    """Print the config of ORG_ID as JSON (the SCADA secret is masked)."""
    _echo_json(_service().get_organization(org_id))


@org.command("list")
def org_list() -> None:
    """List registered organizations."""
    for org_id in _service().list_organizations():
        click.echo(org_id)


@cli.command()
@click.argument("org_id")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="JSON training config (camelCase); missing fields come from the org's mlModelConfig.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Show live progress; exit non-zero if the run fails or is rejected.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With --wait: give up after this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(
    org_id: str, config_path: Path | None, wait: bool, timeout_s: float | None, as_json: bool
) -> None:
    """Start training ORG_ID now."""
    from training_tasks.cli.views import follow_runs, print_result  # rich, the service: 0.5 s

    request = read_json_object(config_path, "a training config") if config_path else None
    svc = _service()
    handle = svc.train_model(org_id, request, wait=False, trigger="cli", actor="cli")
    if not wait:
        queued = {"runId": handle.run_id, "version": handle.version, "queue": handle.queue}
        _echo_json(queued) if as_json else click.echo(
            f"queued run {handle.run_id} of {org_id}: version {handle.version} on {handle.queue}\n"
            f"follow it with: trainctl status {org_id}"
        )
        return
    [result] = follow_runs([handle], timeout_s=timeout_s)
    _echo_json(result) if as_json else print_result(result)
    sys.exit(0 if result["success"] else 1)


@cli.command()
@click.argument("org_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(org_id: str, as_json: bool) -> None:
    """Show the deployed version and the latest run of ORG_ID."""
    from training_tasks.cli.views import print_status  # rich, the service: 0.5 s

    doc = _service().get_training_status(org_id)
    _echo_json(doc) if as_json else print_status(doc)


@cli.command()
@click.argument("org_id")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the worker to stop the run (0: do not wait).",
)
def cancel(org_id: str, wait_s: float) -> None:
    """Cancel the queued or running training of ORG_ID.

    A queued run is cancelled at once. A running one is stopped by its worker within about a
    second (the training process group is killed); the request is stored, so it also holds if
    that worker restarts. Nothing is deployed, and other organizations' runs are not touched.
    """
    doc = _service().cancel_training(org_id, actor="trainctl", wait_s=wait_s)
    if doc["status"] == "cancelled":
        click.echo(f"cancelled run {doc['runId']} of {org_id} (version {doc['version']})")
        return
    click.echo(
        f"asked the worker to stop run {doc['runId']} of {org_id}; it is still {doc['status']}. "
        f"Follow it with `trainctl status {org_id}`"
    )
    sys.exit(1)


@cli.command()
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--org",
    "org_ids",
    multiple=True,
    help="Organization to serve (repeatable; default: all registered).",
)
@click.option("--replica-id", default=None, help="Name this replica reports in `trainctl status`.")
@click.option(
    "--fallback",
    type=click.Choice(["database", "disk", "none"]),
    default="database",
    show_default=True,
    help="What to serve while Redis holds no announcement of an organization: the database's "
    "deployed version (the models/<org>/current link if the database fails), that link, or none.",
)
def serve(
    port: int, host: str, org_ids: tuple[str, ...], replica_id: str | None, fallback: str
) -> None:
    """Run the reference prediction service: POST /predict/<org> (rows; for a window model
    {"windows": [...]} or {"assets": {asset: window}}), GET /models/<org> (what to send),
    GET /health, GET /metrics.

    It loads each organization's deployed model, follows deployments and rollbacks through
    Redis and swaps models without failing a request. While Redis holds no announcement of an
    organization (restarted empty, flushed), it serves what --fallback finds. Stop it with Ctrl-C.
    """
    # onnxruntime (about 0.9 s): only for this command.
    from workers.deployment_fallback import open_fallback
    from workers.prediction_service import serve as run_service

    svc = _service()
    chosen = list(org_ids) or svc.list_organizations()
    if not chosen:
        raise click.UsageError(
            "no organization is registered; register one with `trainctl org create`"
        )
    settings = svc.rt.settings
    svc.close()
    with open_fallback(
        fallback, settings.database_url, settings.ml_base_path, settings.model_store_url
    ) as lookup:
        run_service(
            settings.redis_url,
            settings.ml_base_path,
            chosen,
            host=host,
            port=port,
            replica_id=replica_id,
            fallback=lookup,
            model_store_url=settings.model_store_url,
        )


@cli.command()
@click.argument("org_id")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many runs to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(org_id: str, limit: int, as_json: bool) -> None:
    """Show the training log of ORG_ID: start, end, status, stage, metrics, error."""
    from training_tasks.cli.views import print_history  # rich, the service: 0.5 s

    runs = _service().get_training_history(org_id, limit)
    _echo_json(runs) if as_json else print_history(org_id, runs)


@cli.command()
@click.argument("org_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def versions(org_id: str, as_json: bool) -> None:
    """List model versions of ORG_ID with their validation result and which one is deployed."""
    from training_tasks.cli.views import print_versions  # rich, the service: 0.5 s

    rows = _service().list_versions(org_id)
    _echo_json(rows) if as_json else print_versions(org_id, rows)


@cli.command()
@click.argument("org_id")
@click.argument("version")
@click.option(
    "--model-path",
    type=click.Path(path_type=Path),
    default=None,
    help="Deploy only if this is the version's own model file (or its deployed copy).",
)
def deploy(org_id: str, version: str, model_path: Path | None) -> None:
    """Deploy VERSION (validated) of ORG_ID now and notify prediction services.

    The version already deployed is left as it is (no new sequence, audit entry or message);
    only what a crash may have left behind for it is repaired, as `trainctl reconcile` would.
    """
    result = _service().deploy_model(org_id, version, model_path, actor="cli")
    if not result["changed"]:  # the deploy and rollback refusal say it alike (stages/deploy.py)
        repaired = f"; repaired: {', '.join(result['repaired'])}" if result["repaired"] else ""
        click.echo(
            f"version {version} is already the deployed version of organization {org_id} "
            f"(sequence {result['sequence']}); nothing changed{repaired}"
        )
        return
    click.echo(
        f"deployed {org_id} {version} (sequence {result['sequence']}) at {result['modelPath']}"
    )


@cli.command()
@click.argument("org_id")
@click.argument("version", required=False)
def rollback(org_id: str, version: str | None) -> None:
    """Deploy an earlier VERSION of ORG_ID again (default: the previous one).

    The rollback is a deployment like any other (deployed copy checked, one transaction, pointer,
    Redis key) announced as `rolled_back`. A rejected version, a version removed by `trainctl gc`
    or the one already deployed is refused and nothing changes.
    """
    result = _service().rollback_model(org_id, version, actor="cli")
    click.echo(
        f"rolled back {org_id} to {result['version']} (sequence {result['sequence']}) "
        f"at {result['modelPath']}"
    )


@cli.command()
@click.argument("org_id")
@click.argument("model_path", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def validate(org_id: str, model_path: Path, as_json: bool) -> None:
    """Check the ONNX model at PATH of ORG_ID with the service's own validation.

    PATH must be inside the organization's folders under ML_BASE_PATH. The model is scored on the
    holdout of the organization's latest run that still has its extracted data; nothing is
    recorded. With MODEL_STORE_URL a version's model and holdout missing here are fetched from the
    store first. Exits 1 when the model is rejected.
    """
    from training_tasks.cli.views import print_validation  # rich, the service: 0.5 s

    report = _service().validate_model(org_id, model_path)
    _echo_json(report) if as_json else print_validation(report)
    sys.exit(0 if report["passed"] else 1)


@cli.command()
@click.argument("org_id", required=False)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the newest versions to keep besides the deployed and the previous one.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gc(org_id: str | None, keep: int, dry_run: bool, as_json: bool) -> None:
    """Remove old model versions of ORG_ID (default: every organization).

    Kept: the deployed version, the previous one, the newest --keep versions and the versions of
    queued or running runs. For the rest the model file, the deployed copy and the artifacts
    folder are deleted, and the version is marked `removed` in the database and audited.
    """
    from training_tasks.cli.views import print_removals  # rich, the service: 0.5 s

    removed = _service().collect_garbage(org_id, keep=keep, dry_run=dry_run, actor="cli")
    _echo_json(removed) if as_json else print_removals(removed, dry_run=dry_run)


@cli.command()
@click.argument("org_id")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many events to show.",
)
def audit(org_id: str, limit: int) -> None:
    """Show the audit trail of ORG_ID as JSON lines, newest first."""
    for event in _service().get_audit_trail(org_id, limit):
        click.echo(json.dumps(event, sort_keys=True, default=str))


@cli.command()
def reconcile() -> None:
    """Repair `current` pointers and Redis keys of every organization from the database."""
    fixes = _service().reconcile()
    click.echo("\n".join(fixes) if fixes else "everything already matches the database")


@cli.command()
@click.option("--keep-running", is_flag=True, help="Leave the worker running until Ctrl-C.")
@click.option("--assets", default=24, show_default=True, help="Assets per demo organization.")
@click.option("--days", default=120, show_default=True, help="Days of sensor history per asset.")
@click.option(
    "--scada-url",
    metavar="URL",
    help="PostgreSQL database for the demo SCADA tables (created if missing), instead of "
    "SQLite files under ML_BASE_PATH/demo.",
)
@click.option(
    "--load-only",
    is_flag=True,
    help="Load the demo data and register the organizations, then stop (no worker, no training).",
)
def demo(
    keep_running: bool, assets: int, days: int, scada_url: str | None, load_only: bool
) -> None:
    """Run the whole job on the embedded default (what `make run` does).

    Starts an embedded Redis (unless REDIS_URL is set), uses SQLite under ML_BASE_PATH (unless
    DATABASE_URL is set), generates demo SCADA data for four organizations, starts a worker,
    trains them at once with progress, prints what was deployed and stops what it started.
    """
    from training_tasks.cli.demo import run_demo  # the service, the demo data, pandas

    sys.exit(
        run_demo(
            keep_running=keep_running,
            assets=assets,
            days=days,
            scada_url=scada_url,
            load_only=load_only,
        )
    )


cli.add_command(db)
cli.add_command(schedule)
cli.add_command(schedules_command)
cli.add_command(metrics_command)
cli.add_command(report_command)
cli.add_command(secrets_group)
cli.add_command(ui_command)


def main() -> None:
    """Entry point of the `trainctl` console script."""
    sys.exit(run_cli(cli))


if __name__ == "__main__":
    main()
