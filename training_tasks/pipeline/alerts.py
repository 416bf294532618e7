"""Failure alerts for administrators: a log line, a message on `ml:alerts` and webhook POSTs.

A run that fails for good, a version that validation rejects and a failed deploy each send one
alert (`alert_run_end` decides which). Sending is best effort and never raises: the caller is already handling a failure, and an
alert must not turn it into another one or hold a worker for long.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from training_tasks.fields import iso
from training_tasks.redaction import display_url, mask_url
from training_tasks.registry import orgs, runs

if TYPE_CHECKING:
    from training_tasks.runtime import Runtime

ALERT_CHANNEL = "ml:alerts"
WEBHOOK_ATTEMPTS = 3
# Sleeps before the second and the third attempt.
WEBHOOK_BACKOFF_S = (0.5, 1.0)
USER_AGENT = "training-service-alerts"
EVENTS = ("run.failed", "run.rejected", "deploy.failed")

log = logging.getLogger("training_tasks.alerts")  # operators route alerts by this name
T = TypeVar("T")
_sleep = time.sleep


@dataclass(frozen=True)
class Alert:
    """What went wrong, for whom and where; `at` is an aware UTC time."""

    event: str
    organization_id: str
    run_id: str | None
    version: str | None
    stage: str | None
    reason: str
    at: datetime
    attempt: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The camelCase JSON sent to subscribers and webhooks, with passwords in URLs masked."""
        return {
            "event": self.event,
            "organizationId": self.organization_id,
            "runId": self.run_id,
            "version": self.version,
            "stage": self.stage,
            "reason": mask_url(self.reason),
            "attempt": self.attempt,
            "at": iso(self.at),
            "details": _clean(self.details),
        }


def send_alert(rt: Runtime, alert: Alert, *, org_webhook_url: str | None = None) -> dict[str, Any]:
    """Log, publish on `ml:alerts` and POST to the webhooks; never raises.

    Returns `{"published": subscribers (None on a Redis error), "webhooks": {url: "delivered" |
    "failed: <why>"}}`, each URL shown as `display_url` shows it. The publish and every webhook
    attempt are cut off after `alert_webhook_timeout_s` (T) of wall-clock time whatever the other
    side does; the global URL and the organization's are each tried up to WEBHOOK_ATTEMPTS times
    with 0.5 s and 1 s of backoff. So one webhook takes at most 3 T + 1.5 s, and the whole call at
    most T + 2 * (3 T + 1.5 s): 21.5 s with the default 5 s and one URL, 38 s with two.
    """
    result: dict[str, Any] = {"published": None, "webhooks": {}}
    try:
        payload = alert.to_dict()
        body = json.dumps(payload)
        log.error("%s", _log_line(payload))
        timeout_s = rt.settings.alert_webhook_timeout_s
        result["published"] = _publish(rt.redis, body, timeout_s)
        urls = dict.fromkeys(u for u in (rt.settings.alert_webhook_url, org_webhook_url) if u)
        for url in urls:
            result["webhooks"][display_url(url)] = _deliver(url, body.encode(), timeout_s, payload)
    except Exception:
        log.exception("alert %s for %s could not be sent", alert.event, alert.organization_id)
    return result


def _log_line(payload: Mapping[str, Any]) -> str:
    words = ["ALERT", payload["event"], payload["organizationId"]]
    for label, key in (("run", "runId"), ("version", "version"), ("at", "stage")):
        if payload[key]:
            words += [label, str(payload[key])]
    if payload["attempt"] is not None:
        words += ["attempt", str(payload["attempt"])]
    # One line however many lines the reason has, so nobody can forge log lines through it.
    return f"{' '.join(words)}: {' '.join(str(payload['reason']).split())}"


def _publish(redis: Any, body: str, timeout_s: float) -> int | None:
    def publish() -> int | str:
        try:
            return int(redis.publish(ALERT_CHANNEL, body))
        except Exception as exc:
            return mask_url(str(exc)) or type(exc).__name__

    # redis-py retries a refused connection for seconds and a silent host for longer still.
    done = _within(timeout_s, publish)
    outcome = done[0] if done else f"no answer within {timeout_s:g} s"
    if isinstance(outcome, int):
        return outcome
    log.warning("alert not published on %s: %s", ALERT_CHANNEL, outcome)
    return None


def _deliver(url: str, body: bytes, timeout_s: float, payload: Mapping[str, Any]) -> str:
    shown = display_url(url)
    outcome = _post(url, body, timeout_s)
    what = f"alert {payload['event']} for {payload['organizationId']}"
    if outcome == "delivered":
        log.info("%s delivered to webhook %s", what, shown)
    else:
        log.warning("%s not delivered to webhook %s: %s", what, shown, outcome)
    return outcome


def _post(url: str, body: bytes, timeout_s: float) -> str:
    """POST with retries on connection errors, timeouts and 5xx; a 4xx or 3xx is final."""
    try:
        request = _request(url, body)
    except ValueError:
        # urllib's message quotes the whole URL, tokens and all.
        return "failed: not a usable URL"
    opener = urllib.request.build_opener(_NoRedirect)
    why: str | None = None
    for attempt in range(WEBHOOK_ATTEMPTS):
        if attempt:
            _sleep(WEBHOOK_BACKOFF_S[min(attempt, len(WEBHOOK_BACKOFF_S)) - 1])
        # urllib's timeout covers each socket call, not DNS, several addresses or a trickling
        # server, so the attempt also gets a wall-clock limit.
        done = _within(timeout_s, lambda: _attempt(opener, request, timeout_s))
        why, retry = done[0] if done else (f"no answer within {timeout_s:g} s", True)
        if why is None:
            return "delivered"
        if not retry:
            return f"failed: {why}"
    return f"failed: {why} after {WEBHOOK_ATTEMPTS} attempts"


def _request(url: str, body: bytes) -> urllib.request.Request:
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if "@" in parts.netloc:
        # urllib does not send credentials written into a URL; Basic auth is what they mean.
        userinfo, _, host = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        url = urlunsplit(parts._replace(netloc=host))
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def _within(limit_s: float, work: Callable[[], T]) -> list[T]:
    """`[work()]`, or `[]` if it has not returned after `limit_s`; `work` must not raise.

    A late `work` runs on in its daemon thread and ends by its own socket timeouts.
    """
    done: list[T] = []
    worker = threading.Thread(target=lambda: done.append(work()), name="alert", daemon=True)
    worker.start()
    worker.join(limit_s)
    return done


def _attempt(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout_s: float
) -> tuple[str | None, bool]:
    """One POST: (None, _) when delivered, else (why, whether another attempt may help)."""
    try:
        with opener.open(request, timeout=timeout_s):
            return None, False
    except urllib.error.HTTPError as exc:
        exc.close()
        moved = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        return f"HTTP {exc.code}{moved}", exc.code >= 500
    except TimeoutError:
        return f"no answer within {timeout_s:g} s", True
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return f"no answer within {timeout_s:g} s", True
        return f"cannot connect ({mask_url(str(exc.reason))})", True
    except (ValueError, http.client.InvalidURL) as exc:
        return f"not a usable URL ({type(exc).__name__})", False
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__} ({mask_url(str(exc))})", True
    except Exception as exc:
        return f"unexpected {type(exc).__name__}", False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a bodiless GET, or send it elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _clean(value: Any) -> Any:
    """A JSON-safe copy of `details`: strings masked, odd values as masked text."""
    if isinstance(value, str):
        return mask_url(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {mask_url(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return mask_url(str(value))


def alert_run_end(rt: Runtime, run_id: str) -> None:
    """Send the alert for a run that failed for good, was rejected, or failed to deploy.

    Cancelled and successful runs send none. Never raises: an alert must not fail the task.
    """
    try:
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
