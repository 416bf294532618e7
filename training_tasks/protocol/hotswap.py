"""The hot-swap protocol: the Redis key and channel of each organization's deployed model.

`ml:model:<org>:current` holds the deployment as JSON; the same JSON plus an `event` field
(`deployed` or `rolled_back`) is published on `ml:models:<org>`. `sequence` grows by one on every
deploy or rollback, so a reader ignores stale or repeated messages. A reader that finds no key
falls back on the `models/<org>/current` link, and on `deployed_<version>/deployment.json` (the
key's JSON, `DEPLOYMENT_FILE`) where deploy wrote one.

With an object store (MODEL_STORE_URL=s3://...) the deployment also names `modelKey`, the
deployed model's key relative to the store's root (`models/<org>/deployed_<version>/model.onnx`),
so a prediction service on another host fetches it by key; `modelPath` stays, the deploying
host's path. Without a store the field is left out, and readers accept messages either way. This module imports neither Celery nor
SQLAlchemy: prediction services embed it through the model cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

EVENTS = ("deployed", "rolled_back")
# Beside a deployed model: the deployment as the current key holds it, for readers without Redis.
DEPLOYMENT_FILE = "deployment.json"

# Set the key and publish only if the sequence is newer than the one stored: a late or repeated
# publish can never move a reader backwards.
_PUBLISH_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and doc['sequence'] and tonumber(doc['sequence']) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
"""


class RedisLike(Protocol):
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any: ...
    def get(self, name: str) -> Any: ...


def current_key(org_id: str) -> str:
    """The key holding an organization's current deployment."""
    return f"ml:model:{org_id}:current"


def channel(org_id: str) -> str:
    """The pub/sub channel announcing an organization's deployments and rollbacks."""
    return f"ml:models:{org_id}"


@dataclass(frozen=True)
class Deployment:
    """What a prediction service needs to load a deployed model and check it."""

    organizationId: str
    version: str
    modelPath: str
    sha256: str
    deployedAt: str
    sequence: int
    modelKey: str | None = None  # the object key of the deployed model; None: no object store

    def to_json(self, event: str | None = None) -> str:
        doc: dict[str, Any] = asdict(self)
        if doc["modelKey"] is None:
            del doc["modelKey"]  # byte for byte what a deployment without a store always said
        if event is not None:
            if event not in EVENTS:
                raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
            doc["event"] = event
        return json.dumps(doc, sort_keys=True)


def parse(data: str | bytes) -> tuple[str | None, Deployment]:
    """Parse a key value or a channel message into (event or None, Deployment)."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("hot-swap message is not a JSON object")
    event = doc.pop("event", None)
    if event is not None and event not in EVENTS:
        raise ValueError(f"unknown hot-swap event {event!r}")
    fields = ("organizationId", "version", "modelPath", "sha256", "deployedAt", "sequence")
    missing = [name for name in fields if name not in doc]
    if missing:
        raise ValueError(f"hot-swap message lacks {', '.join(missing)}")
    if not isinstance(doc["sequence"], int) or isinstance(doc["sequence"], bool):
        raise ValueError("hot-swap sequence must be an integer")
    key = doc.get("modelKey")
    if key is not None and not isinstance(key, str):
        raise ValueError("hot-swap modelKey must be a string")
    return event, Deployment(**{name: doc[name] for name in fields}, modelKey=key)


def publish(redis: RedisLike, deployment: Deployment, event: str) -> bool:
    """Set the current key and publish the event; False if a newer deployment is already there."""
    org = deployment.organizationId
    result = redis.eval(
        _PUBLISH_IF_NEWER,
        2,
        current_key(org),
        channel(org),
        deployment.to_json(),
        deployment.sequence,
        deployment.to_json(event),
    )
    return bool(result)


def read_current(redis: RedisLike, org_id: str) -> Deployment | None:
    """The deployment stored under the org's current key, or None."""
    raw = redis.get(current_key(org_id))
    return None if raw is None else parse(raw)[1]
