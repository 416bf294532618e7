"""Worker start-up hooks: per-process handles, schema check, reconcile, organization queues."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

log = logging.getLogger(__name__)


def install(app: Celery) -> None:
    """Attach the hooks and the organization-queue bootstep to `app`."""
    from workers.org_queues import OrgQueueFollower
    from workers.reaper import RunReaper

    app.steps["consumer"].add(OrgQueueFollower)
    app.steps["consumer"].add(RunReaper)
    worker_init.connect(_check_settings_and_schema, weak=False)
    worker_process_init.connect(_fresh_handles_in_child, weak=False)
    worker_ready.connect(_reconcile_on_start, weak=False)


def _check_settings_and_schema(**_: Any) -> None:
    """Fail fast with the variable's name on a bad setting; bring the schema up to date."""
    from training_tasks.errors import SettingsError
    from training_tasks.runtime import get_runtime

    try:
        rt = get_runtime()
    except SettingsError as exc:
        log.critical("cannot start: environment variable %s", exc)
        raise SystemExit(2) from None
    if rt.settings.debug:
        # NODE_ENV=development: the service's own debug lines, whatever --loglevel says.
        for name in ("training_tasks", "workers"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    log.info(
        "training worker: models under %s, database %s",
        rt.settings.ml_base_path,
        rt.engine.url.render_as_string(hide_password=True),
    )


def _fresh_handles_in_child(**_: Any) -> None:
    from training_tasks.runtime import reset_runtime

    reset_runtime()


def _reconcile_on_start(**_: Any) -> None:
    """Repair deployment pointers and Redis keys left behind by a crash, from the database."""
    from training_tasks.runtime import get_runtime
    from training_tasks.stages.deploy import reconcile

    rt = get_runtime()
    try:
        for fix in reconcile(rt.engine, rt.redis, rt.store):
            log.warning("reconcile: %s", fix)
    except Exception:
        log.exception("reconcile at start-up failed; run `trainctl reconcile` by hand")
