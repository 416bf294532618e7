"""Which organization queues hold messages: a round-robin ready list, so a worker need not poll
ten thousand queue keys to find the one with work.

kombu's Redis transport waits for a message with one BRPOP naming every queue a worker follows and
sends it again after every message and every idle second. With a queue per organization that
command grows with the fleet: at 10,000 organizations a worker spends ~45 ms encoding each BRPOP
and an idle worker and Redis each burn ~4% of a core (docs/decisions.md has the figures).

Here a message for an `org.*` queue is still pushed onto that queue, and in the same Lua script
the queue's name joins the ready list (once: a set tracks membership) and a token is pushed on
the doorbell. A worker that follows every organization waits on the doorbell and its few other
queues only, and on each wake-up (and each idle second) takes one message with `PICK`: the queue
at the head of the ready list gives its oldest message and, if it still holds more, goes to the
back of the list. So organizations are served round-robin, one message each in turn, as kombu's
rotating BRPOP served them, however many messages one of them queued. The Lua scripts keep the
list, the set and the queues consistent; a message is never only in the ready list.

Messages pushed by another writer (a plain kombu producer) are found by `SWEEP`, which a worker
runs now and then over the queues it follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from training_tasks.protocol.ids import ORG_QUEUE_PREFIX

READY_KEY = "_org_queues.ready"  # queue names, each at most once, served from the right
MEMBERS_KEY = "_org_queues.members"  # the set of names in READY_KEY
DOORBELL_KEY = "_org_queues.doorbell"  # one token per message sent, for BRPOP to wake on
DOORBELL_MAX = 10_000  # tokens kept while no worker listens; a worker also polls every second

# KEYS: queue, ready, members, doorbell. ARGV: message, doorbell max index.
PUSH = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if redis.call('SADD', KEYS[3], KEYS[1]) == 1 then
  redis.call('LPUSH', KEYS[2], KEYS[1])
end
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[2]))
return 1
"""

# A message put back at the consuming end (its queue is not followed here yet), with no token:
# the worker that put it back must not wake itself. KEYS: queue, ready, members. ARGV: message.
PUSH_BACK = """
redis.call('RPUSH', KEYS[1], ARGV[1])
if redis.call('SADD', KEYS[3], KEYS[1]) == 1 then
  redis.call('LPUSH', KEYS[2], KEYS[1])
end
return 1
"""

# Mark queues that hold messages ready (after a restore, or found by SWEEP). KEYS: ready,
# members, doorbell, then the queues. ARGV: doorbell max index.
MARK = """
local marked = 0
for i = 4, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 and redis.call('SADD', KEYS[2], KEYS[i]) == 1 then
    redis.call('LPUSH', KEYS[1], KEYS[i])
    redis.call('LPUSH', KEYS[3], '1')
    marked = marked + 1
  end
end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]))
return marked
"""

# Take the oldest message of the first ready queue that has one. KEYS: ready, members.
# ARGV: how many empty queues to skip at most. Returns {queue, message} or nil.
PICK = """
for _ = 1, tonumber(ARGV[1]) do
  local queue = redis.call('RPOP', KEYS[1])
  if not queue then return nil end
  local message = redis.call('RPOP', queue)
  if message and redis.call('LLEN', queue) > 0 then
    redis.call('LPUSH', KEYS[1], queue)
  else
    redis.call('SREM', KEYS[2], queue)
  end
  if message then return {queue, message} end
end
return nil
"""
PICK_SKIP_MAX = 100  # queues emptied by another consumer, dropped from the list in one call


class RedisClient(Protocol):
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any: ...


def is_org_queue(queue: str) -> bool:
    """Whether `queue` is an organization's queue, whose messages go through the ready list."""
    return queue.startswith(ORG_QUEUE_PREFIX)


def push_args(queue: str, message: str | bytes) -> tuple[Any, ...]:
    """`EVAL PUSH` arguments sending `message` to `queue` (also for a pipeline or a batch)."""
    return (PUSH, 4, queue, READY_KEY, MEMBERS_KEY, DOORBELL_KEY, message, DOORBELL_MAX - 1)


def push_back_args(queue: str, message: str) -> tuple[Any, ...]:
    """`EVAL PUSH_BACK` arguments returning `message` to the consuming end of `queue`."""
    return (PUSH_BACK, 3, queue, READY_KEY, MEMBERS_KEY, message)


def mark_args(queues: Sequence[str]) -> tuple[Any, ...]:
    """`EVAL MARK` arguments making those of `queues` that hold messages ready."""
    return (MARK, 3 + len(queues), READY_KEY, MEMBERS_KEY, DOORBELL_KEY, *queues, DOORBELL_MAX - 1)


def pick(client: RedisClient) -> tuple[str, bytes] | None:
    """The next organization's queue in turn and its oldest message, or None if none is ready."""
    found = client.eval(PICK, 2, READY_KEY, MEMBERS_KEY, PICK_SKIP_MAX)
    if not found:
        return None
    queue, message = found
    return (queue.decode() if isinstance(queue, bytes) else str(queue)), message


def sweep(client: RedisClient, queues: Iterable[str], batch: int = 1000) -> int:
    """Make every queue of `queues` that holds messages ready; returns how many were not."""
    names = [queue for queue in queues if is_org_queue(queue)]
    marked = 0
    for start in range(0, len(names), batch):
        marked += int(client.eval(*mark_args(names[start : start + batch])))
    return marked
