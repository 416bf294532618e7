"""Starting a training run: check the request, create the run row, hand the chain to Celery."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from training_tasks.config import training as training_config
from training_tasks.config.org import OrgConfig
from training_tasks.config.window import LatestData
from training_tasks.errors import ConfigError, SourceUnavailableError, TransientError
from training_tasks.fields import check_nesting, kind, shown
from training_tasks.pipeline.disk import check_run_fits
from training_tasks.protocol.ids import check_org_id, new_run_id, new_version_id, org_queue
from training_tasks.registry import orgs, runs
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)

SCHEMA_CHECK_TIMEOUT_S = 5.0
TRIGGER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,31}$")
# enqueue(run_id, org_id, auto_deploy) sends the chain and returns the first task's id.
Enqueue = Callable[[str, str, bool], str]


def submit_training(
    rt: Runtime,
    request: Mapping[str, Any] | None,
    *,
    org_id: str | None = None,
    trigger: str,
    actor: str,
    enqueue: Enqueue,
) -> dict[str, Any]:
    """Validate a training request, record a queued run and enqueue its chain.

    Returns `{runId, version, queue}`. A refused request (bad config, unknown organization,
    a run already active) raises before anything is written.
    """
    if request is not None:
        check_wire_request(request)
    org_id = _org_of(request, org_id)
    if not isinstance(trigger, str) or not TRIGGER_PATTERN.fullmatch(trigger):
        raise ConfigError(
            "trigger",
            f"{shown(trigger)} is not a trigger name: 1 to 32 letters, digits, '.', ':', '_' or '-'",
        )
    org = orgs.get_org(rt.engine, org_id)
    now = rt.now()
    config = org.training_config(request, now, latest_data=latest_data_reader(org))
    _check_source(org, config)
    if rt.settings.ml_base_path.exists():  # the model store is here: check it has room now
        check_run_fits(rt, config)
    now = rt.now()  # queued from here on: the checks above are the request's own time
    run_id, version = new_run_id(), new_version_id(now)
    runs.create_run(
        rt.engine,
        run_id=run_id,
        org_id=org_id,
        version=version,
        config=config.to_wire(),
        trigger=trigger,
        auto_deploy=org.auto_deploy,
        actor=actor,
        now=now,
    )
    send_run(rt, run_id, org_id, org.auto_deploy, enqueue=enqueue, actor=actor)
    log.info("queued run %s of %s as version %s (%s)", run_id, org_id, version, trigger)
    return {"runId": run_id, "version": version, "queue": org_queue(org_id)}


def check_wire_request(request: object) -> Mapping[str, Any]:
    """The request if it is a JSON object nested no deeper than any config field needs.

    Checked before anything measures, copies or shows the request: each of those recurses
    through it, so a list nested 100,000 deep would end in a RecursionError, not a refusal.
    """
    if not isinstance(request, Mapping):
        raise ConfigError(
            "config",
            f"must be a JSON object with the camelCase training config (organizationId, "
            f"dataRange, hyperparameters, ...), got {kind(request)}",
        )
    check_nesting(request, "")
    return request


def send_run(
    rt: Runtime, run_id: str, org_id: str, auto_deploy: bool, *, enqueue: Enqueue, actor: str
) -> str:
    """Hand a queued run to the broker; if the broker refuses, fail the run and raise."""
    try:
        task_id = enqueue(run_id, org_id, auto_deploy)
    except Exception as exc:
        broker = "BROKER_URL" if rt.settings.broker_url != rt.settings.redis_url else "REDIS_URL"
        runs.finish_failed(
            rt.engine,
            run_id,
            status="failed",
            stage=None,
            actor=actor,
            now=rt.now(),
            trace=None,
            error=f"could not send the run to the broker ({exc}); check {broker} and try again",
        )
        raise TransientError(
            f"organization {org_id}: the broker did not take run {run_id} ({exc}); "
            f"check that the broker answers at {broker} and submit again"
        ) from exc
    runs.set_task_id(rt.engine, run_id, task_id)
    return task_id


def latest_data_reader(org: OrgConfig) -> LatestData:
    """What a window with `windowEnd: "latestData"` ends at: the newest row of the org's table.

    Read when the run is submitted (one MIN/MAX query), so the run records the range it trains.
    """

    def read() -> datetime | None:
        try:
            url = org.resolve_scada_url()
        except ConfigError as exc:
            raise ConfigError(
                exc.field,
                f'{exc.problem}; windowEnd "latestData" reads the newest row of the SCADA table '
                "when a run is submitted, so the URL is needed where runs are submitted "
                "(trainctl, the Python API, beat) as well as on the workers",
            ) from None
        from training_tasks.stages.extract.bounds import latest_timestamp  # SQLAlchemy, ADBC

        return latest_timestamp(
            url, org.schema_config, org.organization_id, connect_timeout_s=SCHEMA_CHECK_TIMEOUT_S
        )

    return read


def _check_source(org: OrgConfig, config: training_config.TrainingConfig) -> None:
    """Refuse a range too short for its purge gap, and names missing from the SCADA table now,
    before a run exists, when we can look."""
    # ADBC and pyarrow, about 1 s: imported only where a run is submitted.
    from training_tasks.stages.extract.source import plan_source
    from training_tasks.stages.extract.split import plan_split
    from training_tasks.stages.extract.window_query import plan_window_source

    plan_split(config, org.schema_config)
    try:
        url = org.resolve_scada_url()
    except ConfigError:
        log.info(
            "SCADA URL of %s is not set here; the worker checks the schema", org.organization_id
        )
        return
    plan = plan_source if config.windows is None else plan_window_source
    try:
        plan(url, org.schema_config, config, connect_timeout_s=SCHEMA_CHECK_TIMEOUT_S)
    except SourceUnavailableError as exc:
        log.warning(
            "could not check the SCADA schema of %s now (%s); extract will",
            org.organization_id,
            exc,
        )


def _org_of(request: Mapping[str, Any] | None, org_id: str | None) -> str:
    from_request = None if request is None else request.get("organizationId")
    if org_id is None and from_request is None:
        raise ConfigError("organizationId", "is required")
    if org_id is not None and from_request is not None and from_request != org_id:
        raise ConfigError(
            "organizationId",
            f"{shown(from_request)} does not match the organization {shown(org_id)}",
        )
    return check_org_id(org_id if org_id is not None else from_request)
