"""The dispatching beat's heartbeat in `ml:beat:status`: what it did last and when.

The leading beat writes it every tick with a time to live; `trainctl schedules` and the Compose
health check read it, so a beat that stopped dispatching shows within one TTL.
"""

from __future__ import annotations

import json
import time
from typing import Any

STATUS_KEY = "ml:beat:status"


def publish_status(client: Any, status: dict[str, Any], ttl_s: float) -> None:
    """The leader's heartbeat: what it did last and when (read by `trainctl schedules`)."""
    doc = dict(status, reportedAt=time.time())
    client.set(STATUS_KEY, json.dumps(doc), px=max(1, int(ttl_s * 1000)))


def read_status(client: Any) -> dict[str, Any] | None:
    """The last heartbeat of the dispatching beat, or None if no beat reported within its TTL."""
    raw = client.get(STATUS_KEY)
    return None if raw is None else json.loads(raw)
