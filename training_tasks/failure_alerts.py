"""Telling administrators that a run ended badly: which alert a finished run deserves."""

from __future__ import annotations

import logging

from training_tasks.registry import orgs, runs
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)


def alert_run_end(rt: Runtime, run_id: str) -> None:
    """Send the alert for a run that failed for good, was rejected, or failed to deploy.

    Cancelled and successful runs send none. Never raises: an alert must not fail the task.
    """
    try:
        from training_tasks.alerts import Alert, send_alert

        run = runs.get_run(rt.engine, run_id)
        status, stage = run["status"], (run["progress"] or {}).get("stage")
        if status not in ("failed", "rejected"):
            return
        event = "run.rejected" if status == "rejected" else "run.failed"
        if status == "failed" and stage == "deploy":
            event = "deploy.failed"
        org = orgs.get_org(rt.engine, run["organization_id"])
        alert = Alert(
            event=event,
            organization_id=run["organization_id"],
            run_id=run_id,
            version=run["version"],
            stage=stage if stage != "queued" else None,
            reason=run["error"] or status,
            at=rt.now(),
            attempt=run["attempt"],
            details={"trigger": run["trigger"], "attempts": run["attempts"] or []},
        )
        send_alert(rt, alert, org_webhook_url=getattr(org, "alert_webhook_url", None))
    except Exception:
        log.exception("could not send the alert for run %s", run_id)
