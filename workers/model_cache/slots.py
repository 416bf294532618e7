"""What each organization serves, and the background loads that replace it.

One lock guards all the state; it is held only to read or assign references and counters,
never while a model loads or predicts. Serving a model is one reference assignment under that
lock, so a call that already took the old model finishes on it and no call sees a half-built one.

Per organization at most one load runs at a time. A newer deployment offered meanwhile waits in a
single slot (a still newer one replaces it), so a burst of deploys costs at most two loads.
A deployment whose sequence is not newer than the one served, loading or waiting is ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from training_tasks.protocol.hotswap import Deployment
from workers.model_cache.errors import ModelRejected, ModelUnavailable

log = logging.getLogger("workers.model_cache")


class Served(Protocol):
    """What the slots need to know of a loaded model."""

    @property
    def version(self) -> str: ...
    @property
    def sequence(self) -> int: ...


ModelT = TypeVar("ModelT", bound=Served)


@dataclass(frozen=True)
class OrgStats:
    """Counters of one organization since the cache started.

    `loads` counts models that passed every check; `swaps` the times a served model was
    replaced by a newer one (the first model served is a load, not a swap); `ignored_stale`
    the announcements whose sequence was not newer than what the cache held or was loading;
    `load_failures` the models refused (missing, bad sha256, corrupt, outside the org folder);
    `bad_messages` announcements that were not a valid deployment of this organization.
    """

    loads: int = 0
    swaps: int = 0
    ignored_stale: int = 0
    load_failures: int = 0
    bad_messages: int = 0


@dataclass
class _Slot(Generic[ModelT]):
    served: ModelT | None = None
    loading: int | None = None  # sequence of the load in progress
    waiting: Deployment | None = None
    last_error: str | None = None
    stats: OrgStats = OrgStats()


@dataclass(frozen=True)
class SlotView:
    """A consistent snapshot of one organization's slot (for confirmations and health)."""

    version: str | None
    sequence: int | None
    loaded_at: str | None
    last_error: str | None


class ServingSlots(Generic[ModelT]):
    """The served model of each organization, replaced by loads on a small thread pool."""

    def __init__(
        self,
        organizations: Iterable[str],
        load: Callable[[Deployment], ModelT],
        *,
        on_change: Callable[[str], None] | None = None,
        load_threads: int = 2,
    ) -> None:
        self._slots: dict[str, _Slot[ModelT]] = {org: _Slot() for org in organizations}
        self._load = load
        self._on_change = on_change
        self._lock = threading.Lock()
        self._closed = False
        self._idle = threading.Condition(self._lock)
        self._pool = ThreadPoolExecutor(max_workers=load_threads, thread_name_prefix="model-load")

    @property
    def organizations(self) -> list[str]:
        """The organizations these slots serve."""
        return list(self._slots)

    def offer(self, deployment: Deployment, *, announced: bool) -> Future[None] | None:
        """Start loading `deployment` if it is newer than what the org has; None if not now.

        `announced` marks a pub/sub message: only those count as ignored when stale, because the
        periodic re-read of the current key finds the served deployment again by design.
        """
        org = deployment.organizationId
        with self._lock:
            slot = self._slots[org]
            newest = max(
                slot.served.sequence if slot.served is not None else -1,
                slot.loading if slot.loading is not None else -1,
                slot.waiting.sequence if slot.waiting is not None else -1,
            )
            if self._closed:
                return None
            if deployment.sequence <= newest:
                if announced:
                    slot.stats = replace(slot.stats, ignored_stale=slot.stats.ignored_stale + 1)
                    log.info(
                        "ignored announcement of %s version %s: sequence %d is not newer than %d",
                        org,
                        deployment.version,
                        deployment.sequence,
                        newest,
                    )
                return None
            if slot.loading is not None:
                slot.waiting = deployment
                return None
            slot.loading = deployment.sequence
            try:
                return self._pool.submit(self._run_loads, deployment)
            except RuntimeError:  # closed: the pool takes no more work
                slot.loading = None
                return None

    def note_refusal(self, org_id: str, reason: str) -> None:
        """Record why `org_id` has no model when it serves none (a model served stays served)."""
        with self._lock:
            slot = self._slots[org_id]
            if slot.served is None:
                slot.last_error = reason

    def count_bad_message(self, org_id: str) -> None:
        """Count an announcement that was not a valid deployment of `org_id`."""
        with self._lock:
            slot = self._slots[org_id]
            slot.stats = replace(slot.stats, bad_messages=slot.stats.bad_messages + 1)

    def current(self, org_id: str) -> ModelT:
        """The model `org_id` serves now; raise ModelUnavailable saying why there is none."""
        with self._lock:
            slot = self._slots.get(org_id)
            served = slot.served if slot is not None else None
            if served is not None:
                return served
            reason = self._unavailable_reason(org_id, slot)
        raise ModelUnavailable(org_id, reason)

    def _unavailable_reason(self, org_id: str, slot: _Slot[ModelT] | None) -> str:
        if slot is None:
            return (
                f"this cache serves only {', '.join(sorted(self._slots))}; add {org_id} to "
                "its organizations"
            )
        if slot.last_error is not None:
            return f"{slot.last_error}; the next deployment (or the periodic re-read) retries"
        if slot.loading is not None:
            return "its model is still loading; retry in a moment"
        return (
            "no deployment has been announced for it yet and none was found to fall back on; "
            f"deploy a version (trainctl deploy {org_id} <version>)"
        )

    def view(self, org_id: str) -> SlotView:
        """A snapshot of what `org_id` serves and its last load error."""
        with self._lock:
            slot = self._slots[org_id]
            served = slot.served
            return SlotView(
                version=served.version if served is not None else None,
                sequence=served.sequence if served is not None else None,
                loaded_at=getattr(served, "loaded_at", None),
                last_error=slot.last_error,
            )

    def versions(self) -> dict[str, str | None]:
        """The version each organization serves (None where it has no model)."""
        with self._lock:
            return {
                org: (s.served.version if s.served is not None else None)
                for org, s in self._slots.items()
            }

    def stats(self) -> dict[str, OrgStats]:
        """The counters of every organization."""
        with self._lock:
            return {org: slot.stats for org, slot in self._slots.items()}

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no load runs or waits; False if some still do after `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(self._all_idle, timeout=timeout_s)

    def close(self) -> None:
        """Stop taking loads; a load in progress finishes in its own thread."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _all_idle(self) -> bool:
        return all(s.loading is None and s.waiting is None for s in self._slots.values())

    def _run_loads(self, deployment: Deployment) -> None:
        """Load `deployment`, then whatever newer one arrived meanwhile, until none waits."""
        next_up: Deployment | None = deployment
        while next_up is not None:
            model, error = self._try_load(next_up)
            next_up = self._finish(next_up, model, error)
            if self._on_change is not None:
                try:
                    self._on_change(deployment.organizationId)
                except Exception:
                    log.exception("reporting the model of %s failed", deployment.organizationId)

    def _try_load(self, deployment: Deployment) -> tuple[ModelT | None, str | None]:
        try:
            return self._load(deployment), None
        except ModelRejected as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("unexpected error loading %s", deployment.modelPath)
            reason = f"unexpected {type(exc).__name__}: {exc}"
        log.error(
            "not serving %s version %s (sequence %d): %s",
            deployment.organizationId,
            deployment.version,
            deployment.sequence,
            reason,
        )
        return None, f"version {deployment.version} (sequence {deployment.sequence}): {reason}"

    def _finish(
        self, deployment: Deployment, model: ModelT | None, error: str | None
    ) -> Deployment | None:
        """Record a load's outcome, serve it if still newest; return the deployment waiting."""
        with self._lock:
            slot = self._slots[deployment.organizationId]
            previous = slot.served
            swapped = model is not None and (previous is None or model.sequence > previous.sequence)
            if model is None:
                slot.stats = replace(slot.stats, load_failures=slot.stats.load_failures + 1)
                slot.last_error = error
            else:
                slot.stats = replace(
                    slot.stats,
                    loads=slot.stats.loads + 1,
                    swaps=slot.stats.swaps + (swapped and previous is not None),
                )
            if swapped:
                slot.served = model  # the swap: one reference assignment
                slot.last_error = None
            next_up, slot.waiting = (None if self._closed else slot.waiting), None
            slot.loading = next_up.sequence if next_up is not None else None
            self._idle.notify_all()
        if swapped and model is not None:
            log.info(
                "serving %s version %s (sequence %d)%s",
                deployment.organizationId,
                model.version,
                model.sequence,
                f", replacing {previous.version}" if previous is not None else "",
            )
        return next_up
