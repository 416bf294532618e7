"""Confirmations: which version each running cache serves, in `ml:model:<org>:replicas`.

One hash per organization; the field is the replica id and the value is JSON
`{version, sequence, loadedAt, host, pid, lastError, expiresAt}` (version and sequence are null
while the replica has no valid model of the organization; lastError is the reason the newest
deployment it saw was refused, null once a model passed). A Redis hash field has no TTL
of its own before Redis 7.4, so liveness is kept in the value: `expiresAt` is the Redis server's
clock (epoch milliseconds, from `TIME`, so the clocks of the hosts do not matter) plus the
cache's `confirm_ttl_s`. Every cache refreshes its entries a few times per TTL; each refresh
also deletes fields that have expired (caches that died without closing) and extends the whole
hash's PEXPIRE to at least one TTL, so the hash itself disappears when no cache is left.
`read_replicas` returns only entries whose `expiresAt` is still ahead of the server's clock, so a
dead cache drops out within one TTL even before anyone prunes it. A cache that closes deletes its
own fields at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

# Add the expiry from the server clock, write the field, prune expired fields, keep the hash
# alive for at least one TTL (never shorten a longer TTL another cache set).
_CONFIRM = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = tonumber(ARGV[3])
local doc = cjson.decode(ARGV[2])
doc['expiresAt'] = now_ms + ttl_ms
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if not ok or type(entry) ~= 'table' or (tonumber(entry['expiresAt']) or 0) <= now_ms then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if redis.call('PTTL', KEYS[1]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return 1
"""


def replicas_key(org_id: str) -> str:
    """The hash of an organization's replica confirmations."""
    return f"ml:model:{org_id}:replicas"


def confirm(
    client: redis.Redis, replica_id: str, entries: Mapping[str, Mapping[str, Any]], ttl_s: float
) -> None:
    """Write this replica's entry for each organization in `entries` (one round trip)."""
    script = client.register_script(_CONFIRM)
    ttl_ms = max(1, int(ttl_s * 1000))
    pipe = client.pipeline(transaction=False)
    for org_id, entry in entries.items():
        script(
            keys=[replicas_key(org_id)],
            args=[replica_id, json.dumps(dict(entry)), ttl_ms],
            client=pipe,
        )
    pipe.execute()


def withdraw(client: redis.Redis, replica_id: str, organizations: list[str]) -> None:
    """Delete this replica's entries, as a cache does when it closes."""
    pipe = client.pipeline(transaction=False)
    for org_id in organizations:
        pipe.hdel(replicas_key(org_id), replica_id)
    pipe.execute()


def read_replicas(client: Any, org_id: str) -> dict[str, dict[str, Any]]:
    """The live confirmations of `org_id`: replica id -> {version, sequence, loadedAt, ...}."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(replicas_key(org_id))
    (seconds, micros), raw = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    live: dict[str, dict[str, Any]] = {}
    for field, value in raw.items():
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if isinstance(entry, dict) and _expires_at(entry) > now_ms:
            name = field.decode() if isinstance(field, bytes) else str(field)
            live[name] = entry
    return live


def _expires_at(entry: dict[str, Any]) -> float:
    try:
        return float(entry.get("expiresAt") or 0)
    except (TypeError, ValueError):
        return 0.0
