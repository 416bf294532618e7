"""The model cache prediction services embed: hot-swapped ONNX models of several organizations.

Threads: the caller's threads predict; one listener thread reads the hot-swap channels, re-reads
the current keys and refreshes the confirmations; a small pool (`load_threads`) loads models, so a
slow load of one organization never delays the messages of another. Swapping is one reference
assignment under a lock (see `slots`).

Pub/sub is at-most-once, so the current keys are re-read (1) whenever a subscription is
confirmed, which happens at start and after every reconnection, whether redis-py reconnected on
its own or the listener built a new subscription after an error, (2) every `resync_interval_s`
anyway. A connection that stays open but answers nothing is found by a ping on the subscription:
no pong within `_PONG_TIMEOUT_S` and the listener reconnects.

An organization whose key is missing (Redis restarted empty, flushed, or new) is offered what the
`fallback` finds, by default the `models/<org>/current` link (see `fallback`), checked like any
announced model; the sequence rules decide as for announcements, so a published deployment with
a newer sequence replaces it as soon as it is heard or re-read.

With an object store (`model_store_url`, default MODEL_STORE_URL) a deployment's `modelKey` is
fetched into `ml_base_path`, the cache's own folder, and verified before it loads (see `remote`);
after each swap the downloaded models other than the served and the previous one are deleted.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from training_tasks.protocol import hotswap, replicas
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache.errors import ModelCacheError, ModelRejected
from workers.model_cache.fallback import Fallback, LinkFallback
from workers.model_cache.model import LoadedModel, check_org_id, load_model
from workers.model_cache.remote import (
    FROM_ENV,
    FromEnvironment,
    Pruner,
    in_use,
    localize,
    store_for,
)
from workers.model_cache.slots import OrgStats, ServingSlots, SlotView

log = logging.getLogger("workers.model_cache")

_POLL_S = 0.2  # longest the listener blocks, so close() returns quickly
_PING_INTERVAL_S = 5.0
_PONG_TIMEOUT_S = 15.0
_RECONNECT_MAX_S = 5.0
_START_LOAD_TIMEOUT_S = 120.0
_SOCKET_TIMEOUT_S = 10.0
_PING_TOKEN = "model-cache"


@dataclass(frozen=True)
class Prediction:
    """Failure probabilities and alarms for the rows (or windows) of one call, and the model
    that made them.

    `alarms` (bool, one per row or window) is the model's own decision at its `threshold`; a model exported
    without one decides at probability >= 0.5.
    """

    organization_id: str
    version: str
    sequence: int
    probabilities: np.ndarray
    alarms: np.ndarray
    threshold: float


class ModelCache:
    """Serves each organization's current model and hot-swaps it on every deployment."""

    def __init__(
        self,
        redis_url: str,
        ml_base_path: str | Path,
        organizations: Sequence[str],
        *,
        replica_id: str | None = None,
        resync_interval_s: float = 30.0,
        confirm_ttl_s: float = 30.0,
        intra_op_num_threads: int = 1,
        load_threads: int = 2,
        fallback: Fallback | None = None,
        model_store_url: str | FromEnvironment | None = FROM_ENV,
    ) -> None:
        """`fallback` finds a deployment while Redis announces none (default: the `current` link;
        `no_fallback` serves announcements only). `model_store_url` (default: MODEL_STORE_URL)
        names the object store deployed models are fetched from by key into `ml_base_path`."""
        orgs = list(dict.fromkeys(check_org_id(org) for org in organizations))
        if not orgs:
            raise ValueError("organizations is empty; give the organizations this cache serves")
        if resync_interval_s <= 0 or confirm_ttl_s <= 0:
            raise ValueError("resync_interval_s and confirm_ttl_s must be positive seconds")
        self._redis_where = _without_password(redis_url)
        self.ml_base_path = Path(ml_base_path).expanduser().resolve()
        self._objects = store_for(model_store_url, self.ml_base_path)
        self.organizations = orgs
        self.host = socket.gethostname()
        self.replica_id = replica_id or f"{self.host}:{os.getpid()}:{secrets.token_hex(3)}"
        self.resync_interval_s = resync_interval_s
        self.confirm_ttl_s = confirm_ttl_s
        self.intra_op_num_threads = intra_op_num_threads
        self._fallback = fallback if fallback is not None else LinkFallback(self.ml_base_path)
        self._slots: ServingSlots[LoadedModel] = ServingSlots(
            orgs, self._load, on_change=self._after_load, load_threads=load_threads
        )
        self._pruner = None if self._objects is None else Pruner(self.ml_base_path, orgs)
        self._redis, self._sub_redis = _clients(redis_url, self.replica_id)
        self._confirm_lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._closed = False
        self._subscriptions = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> ModelCache:
        """Load every organization's current model, then listen for deployments in the background."""
        if self._closed:
            raise ModelCacheError("this model cache is closed; create a new ModelCache")
        if self._listener is not None:
            return self
        try:
            self._resync()
        except redis.RedisError as exc:
            self.close()
            raise ModelCacheError(
                f"cannot read the current models from Redis at {self._redis_where} ({exc}); "
                "check REDIS_URL and that Redis is running"
            ) from exc
        if not self._slots.wait_idle(_START_LOAD_TIMEOUT_S):
            log.warning(
                "models still loading after %s s; serving them when ready", _START_LOAD_TIMEOUT_S
            )
        self._confirm_all()
        self._listener = threading.Thread(
            target=self._listen, name=f"model-cache-{self.replica_id}", daemon=True
        )
        self._listener.start()
        return self

    def close(self) -> None:
        """Stop listening, withdraw this replica's confirmations and release the connections."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5.0)
        self._slots.close()
        try:
            with self._confirm_lock:
                replicas.withdraw(self._redis, self.replica_id, self.organizations)
        except redis.RedisError as exc:
            log.warning("could not withdraw replica %s: %s (it expires)", self.replica_id, exc)
        self._redis.close()
        self._sub_redis.close()

    def __enter__(self) -> ModelCache:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- serving ----------------------------------------------------------------------------

    def predict(self, org_id: str, rows: Any) -> Prediction:
        """Failure probabilities and alarms of 2-D `rows` (in the model's feature_columns order),
        or, when the organization serves a window model, of its windows [n, length, columns]
        (see `window_spec`); ValueError saying what to send for anything else."""
        model = self._slots.current(org_id)  # one reference read: the call keeps this model
        probabilities, alarms = model.decide(rows)
        return Prediction(
            org_id, model.version, model.sequence, probabilities, alarms, model.threshold
        )

    def feature_columns(self, org_id: str) -> list[str]:
        """The feature columns, in order, of the model `org_id` serves now."""
        return list(self._slots.current(org_id).feature_columns)

    def window_spec(self, org_id: str) -> dict[str, Any] | None:
        """What one window of the model `org_id` serves now holds (`interval`,
        `intervalSeconds`, `length`, `columns`, `stats`), or None for a model on single rows."""
        window = self._slots.current(org_id).window
        return None if window is None else window.to_wire()

    def model_info(self, org_id: str) -> dict[str, Any]:
        """What the model `org_id` serves now takes and decides at, as camelCase JSON:
        `organizationId`, `version`, `threshold`, `featureColumns` and `window` (see
        `window_spec`)."""
        model = self._slots.current(org_id)  # one read: the fields belong to one model
        return {
            "organizationId": org_id,
            "version": model.version,
            "threshold": model.threshold,
            "featureColumns": list(model.feature_columns),
            "window": None if model.window is None else model.window.to_wire(),
        }

    def version(self, org_id: str) -> str | None:
        """The version `org_id` serves now, or None if it has no valid model."""
        return self._slots.versions().get(org_id)

    def versions(self) -> dict[str, str | None]:
        """The version every organization serves now (None where there is none)."""
        return self._slots.versions()

    def served(self) -> dict[str, SlotView]:
        """What every organization serves now: version, sequence, load time and last error."""
        return {org: self._slots.view(org) for org in self.organizations}

    def stats(self) -> dict[str, OrgStats]:
        """Loads, swaps, ignored stale announcements and load failures per organization."""
        return self._slots.stats()

    @property
    def subscriptions(self) -> int:
        """How many times the listener has subscribed and re-read the keys (1 + the reconnections)."""
        return self._subscriptions

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no model is loading; False if one still is after `timeout_s`."""
        return self._slots.wait_idle(timeout_s)

    # -- loading and confirmations -----------------------------------------------------------

    def _load(self, deployment: Deployment) -> LoadedModel:
        if self._objects is None:
            return self._load_local(deployment)
        # Held while fetching and reading, so no cache on this folder prunes the file meanwhile.
        with in_use(self.ml_base_path, deployment.organizationId):
            return self._load_local(localize(self._objects, self.ml_base_path, deployment))

    def _load_local(self, deployment: Deployment) -> LoadedModel:
        return load_model(
            self.ml_base_path,
            deployment.organizationId,
            deployment,
            intra_op_threads=self.intra_op_num_threads,
        )

    def _after_load(self, org_id: str) -> None:
        """Confirm what the organization serves; after a swap, prune its downloaded models."""
        self._confirm_one(org_id)
        if self._pruner is not None:  # without a store the folder is the training service's
            self._pruner.served(org_id, self._slots.view(org_id).version)

    def _offer(self, org_id: str, raw: bytes | str | None, *, announced: bool) -> None:
        if raw is None:
            return
        try:
            _event, deployment = hotswap.parse(raw)
            if deployment.organizationId != org_id:
                raise ValueError(f"it names organization {deployment.organizationId}")
        except (ValueError, TypeError) as exc:
            self._slots.count_bad_message(org_id)
            log.error("ignored a hot-swap message for %s that is not valid: %s", org_id, exc)
            return
        self._slots.offer(deployment, announced=announced)

    def _resync(self) -> None:
        """Read every organization's current key and load what is newer than what it serves."""
        keys = [hotswap.current_key(org) for org in self.organizations]
        for org, raw in zip(self.organizations, self._redis.mget(keys), strict=True):
            if raw is None:
                self._fall_back(org)
            else:
                self._offer(org, raw, announced=False)

    def _fall_back(self, org_id: str) -> None:
        """Offer what the fallback finds for an organization whose key is missing."""
        try:
            deployment = self._fallback(org_id)
            if deployment is not None and deployment.organizationId != org_id:
                raise ModelRejected(
                    f"the fallback found a deployment of {deployment.organizationId}; it must "
                    f"give one of {org_id}"
                )
        except ModelRejected as exc:
            self._slots.note_refusal(org_id, f"no announcement in Redis, and {exc}")
            log.error(
                "no announcement of %s in Redis, and nothing to fall back on: %s", org_id, exc
            )
            return
        except Exception as exc:  # the fallback's own storage failing must not stop the listener
            log.warning("no announcement of %s in Redis, and the fallback failed: %s", org_id, exc)
            return
        if deployment is None:
            return
        if self._slots.offer(deployment, announced=False) is not None:
            log.warning(
                "no announcement of %s in Redis (%s is missing): loading version %s (sequence %d) "
                "from %s until one is published; `trainctl reconcile` sets the key",
                org_id,
                hotswap.current_key(org_id),
                deployment.version,
                deployment.sequence,
                deployment.modelPath,
            )

    def _entry(self, org_id: str) -> dict[str, Any]:
        view = self._slots.view(org_id)
        return {
            "version": view.version,
            "sequence": view.sequence,
            "loadedAt": view.loaded_at,
            "host": self.host,
            "pid": os.getpid(),
            "lastError": view.last_error,
        }

    def _confirm_one(self, org_id: str) -> None:
        self._confirm([org_id])

    def _confirm_all(self) -> None:
        self._confirm(self.organizations)

    def _confirm(self, orgs: Sequence[str]) -> None:
        try:
            # Snapshot and write under one lock, so an older snapshot never lands after a newer
            # one, and nothing lands after close() withdrew the entries.
            with self._confirm_lock:
                if self._stop.is_set():
                    return
                entries = {org: self._entry(org) for org in orgs}
                replicas.confirm(self._redis, self.replica_id, entries, self.confirm_ttl_s)
        except redis.RedisError as exc:
            log.warning("could not confirm the served models of %s: %s", self.replica_id, exc)

    # -- the listener thread -------------------------------------------------------------------

    def _listen(self) -> None:
        """Subscribe and pump messages until closed; reconnect with a bounded backoff."""
        backoff_s = 0.1
        while not self._stop.is_set():
            pubsub = self._sub_redis.pubsub()
            subscribed_before = self._subscriptions
            try:
                pubsub.subscribe(*(hotswap.channel(org) for org in self.organizations))
                self._pump(pubsub)
                return
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "lost the hot-swap subscription at %s (%s); reconnecting in %.1f s",
                    self._redis_where,
                    exc,
                    backoff_s,
                )
            except Exception:
                log.exception("hot-swap listener failed; reconnecting in %.1f s", backoff_s)
            finally:
                _close_quietly(pubsub)
            if self._subscriptions > subscribed_before:  # it worked for a while: start over
                backoff_s = 0.1
            self._stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, _RECONNECT_MAX_S)

    def _pump(self, pubsub: Any) -> None:
        now = time.monotonic()
        next_resync = now + self.resync_interval_s
        next_confirm = now + self.confirm_ttl_s / 3
        next_ping, last_pong = now + _PING_INTERVAL_S, now
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=_POLL_S)
            if message is not None:
                if message["type"] == "pong":
                    last_pong = time.monotonic()
                else:
                    self._handle(message)
            now = time.monotonic()
            if now >= next_ping:
                if now - last_pong > _PONG_TIMEOUT_S:
                    raise redis.ConnectionError(f"no pong for {now - last_pong:.0f} s")
                pubsub.ping(_PING_TOKEN)
                next_ping = now + _PING_INTERVAL_S
            if now >= next_resync:
                self._resync_quietly()
                next_resync = now + self.resync_interval_s
            if now >= next_confirm:
                self._confirm_all()
                next_confirm = now + self.confirm_ttl_s / 3

    def _handle(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        org_id = channel.removeprefix("ml:models:")
        if org_id not in self.organizations:
            return
        if message["type"] == "subscribe":
            # One SUBSCRIBE confirms the channels in order: after the last one no message can be
            # missed any more, so read what may have been published while away.
            if org_id == self.organizations[-1]:
                log.info("subscribed to the channels of %d organizations", len(self.organizations))
                self._resync_quietly()
                self._subscriptions += 1  # counted once that re-read is done
        elif message["type"] == "message":
            self._offer(org_id, message["data"], announced=True)

    def _resync_quietly(self) -> None:
        try:
            self._resync()
        except redis.RedisError as exc:
            log.warning("could not re-read the current models: %s", exc)


def _without_password(url: str) -> str:
    """The URL with any password masked, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _clients(redis_url: str, replica_id: str) -> tuple[redis.Redis, redis.Redis]:
    """A client for commands and one for the subscription, named after the replica."""
    # The name lets an operator find every cache in CLIENT LIST.
    name = "model-cache:" + re.sub(r"[^\w.:-]", "_", replica_id)
    common: dict[str, Any] = dict(
        client_name=name, socket_connect_timeout=_SOCKET_TIMEOUT_S, socket_keepalive=True
    )
    commands = redis.Redis.from_url(redis_url, socket_timeout=_SOCKET_TIMEOUT_S, **common)
    # No retries inside redis-py for the subscription: the listener reconnects itself, with its
    # own backoff, and re-reads the keys then.
    subscription = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0), **common)
    return commands, subscription


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception as exc:  # the connection is usually broken already
        log.debug("closing the subscription: %s", exc)
