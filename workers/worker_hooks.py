"""Worker start-up hooks: per-process handles, schema check, reconcile, organization queues,
and a pool child's patience with the broker when it hands a finished stage to the next one."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from training_tasks.errors import SettingsError
from training_tasks.messaging.app import app as training_app
from training_tasks.runtime import get_runtime, reset_runtime
from training_tasks.stages.deploy import reconcile
from workers.org_queues import OrgQueueFollower
from workers.reaper import RunReaper

log = logging.getLogger(__name__)

# How long a pool child tries to hand a finished stage over to the next one when Redis is away:
# about five minutes (60 tries, the wait between them growing by 1 s to at most 5 s). Celery
# sends the next step of a chain from the child that ran the step, after the stage has been
# recorded; with Celery's short default (about a second, celeryconfig.task_publish_retry_policy)
# a Redis restart at that moment would fail a run whose stages all succeeded. Callers outside the
# worker (trainctl, the Python API, beat, the reaper in the worker's main process) keep the short
# default: they learn at once that the broker is away instead of blocking.
STAGE_HANDOVER_RETRY_POLICY = {
    "max_retries": 60,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 5,
}


def install(app: Celery) -> None:
    """Attach the hooks, the organization-queue bootstep and the reaper to `app`."""
    app.steps["consumer"].add(OrgQueueFollower)
    app.steps["consumer"].add(RunReaper)
    worker_init.connect(_check_settings_and_schema, weak=False)
    worker_process_init.connect(_fresh_handles_in_child, weak=False)
    worker_process_init.connect(functools.partial(_patient_stage_handover, app), weak=False)
    worker_ready.connect(_reconcile_on_start, weak=False)


def _check_settings_and_schema(**_: Any) -> None:
    """Fail fast with the variable's name on a bad setting; bring the schema up to date."""
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
    reset_runtime()


def _patient_stage_handover(app: Celery, **_: Any) -> None:
    """In a pool child, wait out a broker restart before giving up on sending the next stage."""
    app.conf.task_publish_retry_policy = dict(STAGE_HANDOVER_RETRY_POLICY)
    # The message sender keeps the policy it was built with, and one built in the main process
    # before this child was forked would keep the short one: build it again on first use.
    del app.amqp.send_task_message


def _reconcile_on_start(**_: Any) -> None:
    """Repair deployment pointers and Redis keys left behind by a crash, from the database."""
    rt = get_runtime()
    try:
        for fix in reconcile(rt.engine, rt.redis, rt.store):
            log.warning("reconcile: %s", fix)
    except Exception:
        log.exception("reconcile at start-up failed; run `trainctl reconcile` by hand")


# A worker imports this module as it starts (the app's `include`); that attaches the hooks.
install(training_app)
