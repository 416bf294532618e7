"""The Python API of the training service: register, train, inspect, deploy, roll back, clean up."""

from __future__ import annotations

import functools
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from training_tasks.config import org as org_config
from training_tasks.config.training import from_wire
from training_tasks.errors import NotFoundError, TrainingServiceError
from training_tasks.pipeline import version_objects
from training_tasks.pipeline.submit import submit_training
from training_tasks.protocol.ids import VERSION_PATTERN, check_org_id, check_version_id
from training_tasks.protocol.keyring import Keyring
from training_tasks.protocol.replicas import read_replicas
from training_tasks.registry import audit, deployments, orgs, retention, run_control, runs, versions
from training_tasks.registry.rows import ACTIVE_STATUSES, RunRow
from training_tasks.registry.rows import FINISHED_STATUSES as FINISHED
from training_tasks.runtime import Runtime, build_runtime
from training_tasks.service.schedules import ScheduleApi
from training_tasks.service.summaries import (
    audit_event,
    camel_keys,
    run_summary,
    version_summary,
)
from training_tasks.stages.deploy import DeployOutcome, deploy_version, reconcile, rollback

if TYPE_CHECKING:
    from training_tasks.db.engine import Engine
    from training_tasks.protocol.paths import ModelStore
    from training_tasks.stages.extract.result import ExtractResult

ProgressCallback = Callable[[dict[str, Any]], None]
VERSION_IN_PATH = re.compile(VERSION_PATTERN.pattern.strip("^$"))
HOLDOUT_SEARCH_RUNS = 200


@dataclass
class TrainingHandle:
    """A submitted run: poll its status or wait for its result."""

    service: TrainingService
    run_id: str
    version: str
    queue: str

    def status(self) -> dict[str, Any]:
        """The run as it stands now (status, stage, progress, metrics, error)."""
        return run_summary(runs.get_run(self.service.rt.engine, self.run_id), self.service.rt)

    def wait(
        self,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll_interval_s: float = 0.25,
    ) -> dict[str, Any]:
        """Block until the run finishes (or `timeout_s` passes) and return its result."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            summary = self.status()
            if on_progress is not None:
                on_progress(summary)
            if summary["status"] in FINISHED:
                return summary
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {self.run_id} is still {summary['status']} after {timeout_s} s; "
                    f"follow it with `trainctl status {summary['organizationId']}`"
                )
            time.sleep(poll_interval_s)


class TrainingService(ScheduleApi):
    """Everything `trainctl` does, as Python calls. Handles come from the environment by default."""

    def __init__(self, runtime: Runtime | None = None) -> None:
        self.rt = runtime or build_runtime()

    def close(self) -> None:
        self.rt.close()

    def register_organization(
        self, org_id: str, config: Mapping[str, Any], *, actor: str = "api"
    ) -> dict[str, Any]:
        """Register an organization; its queue is served by running workers within seconds."""
        org = org_config.parse_org_config(config, check_org_id(org_id))
        orgs.create_org(self.rt.engine, org, actor=actor, now=self.rt.now())
        return org.public_dict()

    def update_organization(
        self, org_id: str, config: Mapping[str, Any], *, actor: str = "api"
    ) -> dict[str, Any]:
        """Replace an organization's config."""
        org = org_config.parse_org_config(config, check_org_id(org_id))
        orgs.update_org(self.rt.engine, org, actor=actor, now=self.rt.now())
        return org.public_dict()

    def get_organization(self, org_id: str) -> dict[str, Any]:
        """The organization's config (SCADA secret masked) and deployment state."""
        org = orgs.get_org(self.rt.engine, org_id)
        row = orgs.get_org_row(self.rt.engine, org_id)
        return {
            **org.public_dict(),
            "deployedVersion": row["current_version"],
            "previousVersion": row["previous_version"],
            "deploySequence": row["deploy_sequence"],
        }

    def list_organizations(self) -> list[str]:
        return orgs.list_org_ids(self.rt.engine)

    def train_model(
        self,
        org_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        trigger: str = "api",
        actor: str = "api",
        poll_interval_s: float = 0.25,
    ) -> dict[str, Any] | TrainingHandle:
        """Start training; with `wait` return the result, else a handle that can wait for it."""
        from training_tasks.messaging.tasks import enqueue_chain  # Celery: only to send a run

        enqueue = functools.partial(enqueue_chain, broker_url=self.rt.settings.broker_url)
        queued = submit_training(
            self.rt, config, org_id=org_id, trigger=trigger, actor=actor, enqueue=enqueue
        )
        handle = TrainingHandle(self, queued["runId"], queued["version"], queued["queue"])
        return handle.wait(timeout_s, on_progress, poll_interval_s) if wait else handle

    def cancel_training(
        self, org_id: str, *, actor: str = "api", wait_s: float = 0.0
    ) -> dict[str, Any]:
        """Cancel the organization's queued or running run; returns `{runId, version, status}`.

        A queued run is cancelled at once; a running one is stopped by its worker within about a
        second. With `wait_s`, wait that long for the run to end (`status` is then `cancelled`,
        or whatever the run ended as if it finished first).
        """
        orgs.get_org_row(self.rt.engine, check_org_id(org_id))
        doc = run_control.request_cancel(self.rt.engine, org_id, actor=actor, now=self.rt.now())
        deadline = time.monotonic() + wait_s
        while doc["status"] == "cancelling" and time.monotonic() < deadline:
            time.sleep(0.2)
            status = runs.get_run(self.rt.engine, doc["runId"])["status"]
            doc["status"] = "cancelling" if status in ACTIVE_STATUSES else status
        return doc

    def get_training_status(self, org_id: str) -> dict[str, Any]:
        """The deployed version, which prediction replicas confirm it, and the latest run."""
        row = orgs.get_org_row(self.rt.engine, org_id)
        latest = runs.list_runs(self.rt.engine, org_id, limit=1)
        return {
            "organizationId": org_id,
            "deployedVersion": row["current_version"],
            "previousVersion": row["previous_version"],
            "deploySequence": row["deploy_sequence"],
            "replicas": self._replicas(org_id),
            "latestRun": run_summary(latest[0], self.rt) if latest else None,
        }

    def _replicas(self, org_id: str) -> dict[str, Any] | None:
        """Live model-cache confirmations, or None when Redis does not answer."""
        try:
            return read_replicas(self.rt.redis, org_id)
        except redis.RedisError:
            return None

    def get_training_history(self, org_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The training log of an organization, newest first."""
        orgs.get_org_row(self.rt.engine, org_id)
        return [run_summary(run, self.rt) for run in runs.list_runs(self.rt.engine, org_id, limit)]

    def list_versions(self, org_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The organization's model versions with their validation verdicts, newest first."""
        row = orgs.get_org_row(self.rt.engine, org_id)
        return [
            version_summary(v, row["current_version"])
            for v in versions.list_versions(self.rt.engine, org_id, limit)
        ]

    def deploy_model(
        self,
        org_id: str,
        version: str,
        model_path: str | Path | None = None,
        *,
        actor: str = "api",
    ) -> dict[str, Any]:
        """Deploy a validated version now; a given `model_path` must be that version's own file.

        The version already deployed is left as it is: the result says `"changed": false`, with
        no event, and lists what was `repaired` (a deployed copy, link or Redis key a crash lost).
        """
        check_org_id(org_id)
        check_version_id(version)
        outcome = deploy_version(
            self.rt.engine,
            self.rt.redis,
            self.rt.store,
            org_id,
            version,
            now=self.rt.now(),
            actor=actor,
            model_path=None if model_path is None else Path(model_path),
        )
        return deployment_summary(outcome, "deployed")

    def rollback_model(
        self, org_id: str, version: str | None = None, *, actor: str = "api"
    ) -> dict[str, Any]:
        """Deploy an earlier version again (default: the previous one) and announce the rollback."""
        check_org_id(org_id)
        if version is not None:
            check_version_id(version)
        deployment = rollback(
            self.rt.engine,
            self.rt.redis,
            self.rt.store,
            org_id,
            version,
            now=self.rt.now(),
            actor=actor,
        )
        return deployment_summary(DeployOutcome(deployment, changed=True), "rolled_back")

    def validate_model(self, org_id: str, model_path: str | Path) -> dict[str, Any]:
        """Judge an ONNX file of the organization with the service's checks on its latest holdout.

        Nothing is recorded: the report is returned (camelCase, with `passed` and `failures`).
        With an object store, a version's model file, native model and holdout missing here are
        fetched into this host's folder first (verified against what the run recorded).
        """
        # onnxruntime, LightGBM and scikit-learn (about 2 s): only for a validation.
        from training_tasks.stages.validate.inputs import run_inputs
        from training_tasks.stages.validate.stage import validate

        org = orgs.get_org(self.rt.engine, check_org_id(org_id))
        path = self.rt.store.check_inside_org(org_id, Path(model_path))
        keyring = Keyring.parse(self.rt.settings.master_keys)
        version_objects.fetch_for_validation(self.rt.engine, self.rt.store, org_id, path, keyring)
        if not path.is_file():
            raise NotFoundError(
                f"model file {model_path} of organization {org_id} does not exist; give the path "
                f"of an ONNX file under {self.rt.store.org_models(org_id)}"
            )
        run, holdout = latest_holdout(self.rt.engine, org_id, self.rt.store)
        config = from_wire(run["config"])
        version, native = self._model_identity(org_id, path)
        derived, thresholds = self._recorded(org_id, version)
        report = validate(
            org_id=org_id,
            version=version,
            model_path=path,
            holdout_path=holdout,
            # Old runs did not record it; theirs is read unverified.
            holdout_sha256=(run["data_stats"] or {}).get("holdout_sha256"),
            feature_columns=config.feature_columns,
            target_column=config.target_column,
            thresholds=org.thresholds,
            native_model_path=native,
            deployed_model_path=version_objects.fetch_deployed(
                self.rt.engine, self.rt.store, org_id
            )
            or deployments.deployed_model_file(self.rt.engine, self.rt.store, org_id),
            derived_features=derived,
            recorded_thresholds=thresholds,
            **run_inputs(config, _extracted(run, holdout)),
        )
        return {
            **camel_keys(report.as_dict()),
            "modelPath": str(path),
            "holdoutPath": str(holdout),
            "holdoutRunId": run["id"],
            "holdoutVersion": run["version"],
        }

    def collect_garbage(
        self,
        org_id: str | None = None,
        keep: int = retention.DEFAULT_KEEP,
        dry_run: bool = False,
        *,
        actor: str = "api",
    ) -> list[dict[str, Any]]:
        """Delete the files of versions the retention rule does not keep (every org by default).

        Kept: the deployed and previous version, the newest `keep`, and those of active runs.
        """
        retention.check_keep(keep)
        org_ids = [check_org_id(org_id)] if org_id is not None else self.list_organizations()
        removed: list[dict[str, Any]] = []
        for org in org_ids:
            done = retention.collect(
                self.rt.engine,
                self.rt.store,
                org,
                keep=keep,
                now=self.rt.now(),
                actor=actor,
                dry_run=dry_run,
            )
            removed += [removal.as_dict() for removal in done]
        return removed

    def _model_identity(self, org_id: str, path: Path) -> tuple[str, Path | None]:
        """The version a model file is, and the native LightGBM model to check parity with."""
        match = VERSION_IN_PATH.search(f"{path.parent.name}/{path.name}")
        if match is None:
            return _metadata_version(path) or "(not recorded)", None
        version, store = match.group(0), self.rt.store
        own = (
            store.version_model(org_id, version),
            store.deployed_model(org_id, version),
            store.artifacts(org_id, version) / "model.onnx",
        )
        native = store.artifacts(org_id, version) / "model.txt"
        if path in {candidate.resolve() for candidate in own} and native.is_file():
            return version, native
        return version, None

    def _recorded(
        self, org_id: str, version: str
    ) -> tuple[list[dict[str, Any]] | None, dict[str, object] | None]:
        """What the run of a known version recorded (derived features, decision threshold);
        None for a file of no version of this organization: its own metadata is taken."""
        from training_tasks.stages.validate.recorded import recorded_by_run

        try:
            record = versions.get_version(self.rt.engine, version)
            run = runs.get_run(self.rt.engine, record["run_id"])
        except NotFoundError:
            return None, None
        if record["organization_id"] != org_id:
            return None, None
        return recorded_by_run(from_wire(run["config"]), record["metrics"])

    def reconcile(self) -> list[str]:
        """Repair every org's `current` pointer and Redis key from the database."""
        return reconcile(self.rt.engine, self.rt.redis, self.rt.store)

    def get_audit_trail(self, org_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The organization's audit events, newest first."""
        orgs.get_org_row(self.rt.engine, check_org_id(org_id))
        return [audit_event(event) for event in audit.list_events(self.rt.engine, org_id, limit)]


def deployment_summary(outcome: DeployOutcome, event: str) -> dict[str, Any]:
    """A deployment or rollback as the API returns it; `event` None when nothing changed."""
    deployment = outcome.deployment
    return {
        "organizationId": deployment.organizationId,
        "version": deployment.version,
        "modelPath": deployment.modelPath,
        "sha256": deployment.sha256,
        "sequence": deployment.sequence,
        "event": event if outcome.changed else None,
        "changed": outcome.changed,
        "repaired": list(outcome.repaired),
    }


def latest_holdout(
    engine: Engine, org_id: str, store: ModelStore | None = None
) -> tuple[RunRow, Path]:
    """The organization's newest run whose extracted holdout is still on disk (or, with an
    object store, in the store: fetched into this host's folder), and that holdout."""
    for run in runs.list_runs(engine, org_id, limit=HOLDOUT_SEARCH_RUNS):
        fetched = None if store is None else version_objects.fetch_holdout(engine, store, run)
        if fetched is not None:
            return run, fetched
        holdout = (run["data_stats"] or {}).get("holdout_path")
        # A regular file itself, not a link: validation refuses anything else.
        if holdout and stat.S_ISREG(_lstat_mode(Path(holdout))):
            return run, Path(holdout)
    raise NotFoundError(
        f"organization {org_id} has no holdout to validate against: none of its runs has "
        "extracted data left on disk (a run's extract stage writes it; `trainctl gc` deletes it "
        f"with the version). Run `trainctl train {org_id} --wait`, then validate again"
    )


def _extracted(run: RunRow, holdout: Path) -> ExtractResult | None:
    """What the run's extract stage recorded, or None for a record without all of it; its
    events file is the one beside the holdout used (fetched there with an object store)."""
    from training_tasks.stages.extract.result import ExtractResult  # pyarrow: only here

    try:
        data = ExtractResult.from_dict(run["data_stats"] or {})
    except (KeyError, TypeError, ValueError):
        return None
    events = data.events_path
    if events is None or holdout.parent == data.holdout_path.parent:
        return data
    return replace(data, events_path=holdout.parent / events.name)


def _lstat_mode(path: Path) -> int:
    """The mode of `path` itself (0 when it does not exist)."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _metadata_version(path: Path) -> str | None:
    """The `version` a model records in its ONNX metadata, if it can be read."""
    import onnx  # about 0.3 s: only when a model file's version must be read

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises protobuf's own error types; the load check will report it
        return None
    return next((prop.value for prop in model.metadata_props if prop.key == "version"), None)


__all__ = ["FINISHED", "TrainingHandle", "TrainingService", "TrainingServiceError"]
