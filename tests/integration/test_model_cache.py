"""The model cache on a real Redis: it loads, hot-swaps, refuses bad models, catches up, confirms."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import redis as redis_lib

from tests.integration.conftest import version_id
from tests.support.onnx_fixtures import FEATURES, make_data, to_onnx_with_alarm
from training_tasks.protocol import hotswap
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache import ModelCache, ModelCacheError, ModelUnavailable, read_replicas

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SWAP_TIMEOUT_S = 5.0
ROWS = np.zeros((3, len(FEATURES)), dtype=np.float32)
# Some of these rows score between 0.3 and 0.5: a model deciding at 0.3 raises an alarm there.
DECISION_ROWS = np.nan_to_num(make_data(20, seed=7)[0])


@contextlib.contextmanager
def running(redis_url: str, base: Path, orgs: list[str], **options: Any) -> Iterator[ModelCache]:
    cache = ModelCache(redis_url, base, orgs, **options)
    try:
        yield cache.start()
    finally:
        cache.close()


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = SWAP_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_start_serves_the_current_version_and_names_orgs_without_one(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    deploy(org, 1)
    other = f"{org}-b"
    with running(redis_url, base, [org, other]) as cache:
        assert cache.versions() == {org: version_id(1), other: None}
        prediction = cache.predict(org, ROWS.tolist())
        assert prediction.version == version_id(1)
        assert prediction.probabilities.shape == (3,)
        with pytest.raises(ModelUnavailable, match=f"{other}.*no deployment"):
            cache.predict(other, ROWS)
        assert cache.stats()[org].loads == 1
        assert read_replicas(redis, other)[cache.replica_id]["version"] is None


def test_start_without_redis_fails_saying_what_to_check_and_hides_the_password(
    base: Path,
) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = ModelCache(f"redis://:s3cret@127.0.0.1:{port}/0", base, ["acme"])
    with pytest.raises(ModelCacheError, match="check REDIS_URL") as failure:
        cache.start()
    assert "s3cret" not in str(failure.value)
    with pytest.raises(ModelCacheError, match="closed"):
        cache.start()


def test_a_new_deployment_is_served_within_seconds_and_no_prediction_fails_meanwhile(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> None:
    deploy(org, 1)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    with running(redis_url, base, [org]) as cache:

        def predict_forever() -> None:
            while not stop.is_set():
                try:
                    seen.append(cache.predict(org, ROWS).version)
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=predict_forever) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: seen, "the first predictions")
            started = time.monotonic()
            deploy(org, 2)
            wait_until(lambda: cache.version(org) == version_id(2), "the swap to version 2")
            elapsed_s = time.monotonic() - started
            wait_until(lambda: seen[-1] == version_id(2), "predictions by version 2")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
        print(f"publish to served: {elapsed_s * 1000:.1f} ms")
        assert errors == []
        assert set(seen) == {version_id(1), version_id(2)}
        assert cache.stats()[org].swaps == 1


def test_a_stale_or_repeated_announcement_is_ignored_and_counted(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    first = deploy(org, 1, publish=False)
    with running(redis_url, base, [org]) as cache:
        # Subscribed first: else the key re-read after subscribing could find version 2 too and
        # its message would count as one more repeat.
        wait_until(lambda: cache.subscriptions == 1, "the subscription")
        second = deploy(org, 2)
        wait_until(lambda: cache.version(org) == version_id(2), "version 2")
        # Sent straight to the channel: the protocol's publish refuses anything not newer.
        redis.publish(hotswap.channel(org), first.to_json("rolled_back"))
        redis.publish(hotswap.channel(org), second.to_json("deployed"))
        wait_until(lambda: cache.stats()[org].ignored_stale == 2, "two ignored announcements")
        assert cache.version(org) == version_id(2)
        assert cache.stats()[org].loads == 2


def test_predictions_carry_the_served_models_alarms_and_threshold_through_hot_swaps(
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
    booster: lgb.Booster,
) -> None:
    deploy(org, 1)  # a model exported before decisions: one output, no threshold
    with running(redis_url, base, [org]) as cache:
        old = cache.predict(org, DECISION_ROWS)
        assert old.threshold == 0.5
        assert old.alarms.tolist() == (old.probabilities >= 0.5).tolist()
        decided = to_onnx_with_alarm(booster, threshold=0.3, org_id=org, version=version_id(2))
        deploy(org, 2, data=decided.SerializeToString())
        wait_until(lambda: cache.version(org) == version_id(2), "the swap to version 2")
        new = cache.predict(org, DECISION_ROWS)
        assert new.threshold == 0.3
        assert new.alarms.tolist() == (new.probabilities >= np.float32(0.3)).tolist()
        assert np.array_equal(new.probabilities, old.probabilities)  # the same trees
        assert (new.alarms & ~old.alarms).any()  # the rows between 0.3 and 0.5 now alarm
        deploy(org, 3)  # and back to an old-style model: the 0.5 rule again
        wait_until(lambda: cache.version(org) == version_id(3), "the swap to version 3")
        again = cache.predict(org, DECISION_ROWS)
        assert (again.threshold, again.alarms.tolist()) == (0.5, old.alarms.tolist())


def test_a_model_with_a_bad_decision_threshold_is_not_served_and_the_refusal_is_reported(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
    booster: lgb.Booster,
) -> None:
    deploy(org, 1)
    with running(redis_url, base, [org]) as cache:
        bad = to_onnx_with_alarm(
            booster, threshold_metadata="1.5", org_id=org, version=version_id(2)
        )
        deploy(org, 2, data=bad.SerializeToString())
        wait_until(lambda: cache.stats()[org].load_failures == 1, "the refused load")
        assert cache.predict(org, ROWS).version == version_id(1)

        def refused_entry() -> dict[str, Any] | None:
            entry = read_replicas(redis, org).get(cache.replica_id)
            return entry if entry and entry["lastError"] else None

        entry = wait_until(refused_entry, "the refusal in the replica's entry")
        assert entry["version"] == version_id(1)
        assert "decision_threshold 1.5" in entry["lastError"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [({"sha256": "0" * 64}, "sha256"), ({"data": b"not an onnx model"}, "is not an ONNX model")],
)
def test_a_model_that_fails_verification_is_not_served_and_the_old_one_stays(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
    damage: dict[str, Any],
    reason: str,
) -> None:
    deploy(org, 1)
    with running(redis_url, base, [org]) as cache:
        deploy(org, 2, **damage)
        wait_until(lambda: cache.stats()[org].load_failures == 1, "the refused load")
        assert cache.predict(org, ROWS).version == version_id(1)

        def refused_entry() -> dict[str, Any] | None:
            entry = read_replicas(redis, org).get(cache.replica_id)
            return entry if entry and entry["lastError"] else None

        entry = wait_until(refused_entry, "the refusal in the replica's entry")
        assert entry["version"] == version_id(1)
        assert reason in entry["lastError"]


def test_a_path_into_another_organizations_folder_is_refused(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> None:
    deploy(org, 1)
    foreign = base / "models" / "globex" / "deployed_x" / "model.onnx"
    with running(redis_url, base, [org]) as cache:
        deploy(org, 2, path=foreign)
        wait_until(lambda: cache.stats()[org].load_failures == 1, "the refused load")
        assert cache.version(org) == version_id(1)


def _point_current(base: Path, org: str, version: str) -> None:
    """Move `models/<org>/current` as deploy does, after the database commit."""
    from training_tasks.files import replace_symlink

    replace_symlink(base / "models" / org / "current", f"deployed_{version}")


def test_a_cache_started_while_redis_announces_nothing_serves_the_linked_version_until_a_deploy(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    deploy(org, 1)
    _point_current(base, org, version_id(1))
    redis.delete(hotswap.current_key(org))  # Redis restarted without persistence
    with running(redis_url, base, [org], resync_interval_s=0.3) as cache:
        assert cache.predict(org, ROWS).version == version_id(1)
        assert read_replicas(redis, org)[cache.replica_id]["sequence"] == 0
        time.sleep(1.0)  # a few re-reads while the key is still missing: nothing is reloaded
        assert cache.stats()[org].loads == 1
        deploy(org, 2)
        wait_until(lambda: cache.version(org) == version_id(2), "the announced version 2")
        _point_current(base, org, version_id(2))
        redis.flushdb()  # the key goes away again: the served model stays
        time.sleep(1.0)
        assert cache.predict(org, ROWS).version == version_id(2)
        assert cache.stats()[org].loads == 2


def test_with_deploys_record_a_stale_key_that_reappears_is_ignored(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    old = deploy(org, 3, publish=False)
    newest = deploy(org, 5, publish=False)
    (Path(newest.modelPath).parent / hotswap.DEPLOYMENT_FILE).write_text(newest.to_json())
    _point_current(base, org, newest.version)
    redis.delete(hotswap.current_key(org))
    with running(redis_url, base, [org], resync_interval_s=0.3) as cache:
        assert cache.predict(org, ROWS).version == version_id(5)
        assert read_replicas(redis, org)[cache.replica_id]["sequence"] == 5
        redis.set(hotswap.current_key(org), old.to_json())  # an old snapshot comes back
        time.sleep(1.0)
        assert cache.version(org) == version_id(5)
        deploy(org, 6)
        wait_until(lambda: cache.version(org) == version_id(6), "the announced version 6")
        assert cache.stats()[org].loads == 2


def test_a_linked_model_that_fails_its_checks_is_not_served_and_the_503_says_why(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    first = deploy(org, 1)
    renamed = base / "models" / org / f"deployed_{version_id(2)}" / "model.onnx"
    renamed.parent.mkdir(parents=True)
    renamed.write_bytes(Path(first.modelPath).read_bytes())  # version 1's file as version 2
    _point_current(base, org, version_id(2))
    redis.delete(hotswap.current_key(org))
    with running(redis_url, base, [org]) as cache:
        with pytest.raises(ModelUnavailable, match=f"metadata version='{version_id(1)}'"):
            cache.predict(org, ROWS)
        # Each re-read of the missing key tries the link again (the subscription's first one too).
        assert cache.stats()[org].load_failures >= 1
        assert cache.version(org) is None


def _kill_subscriber(redis: redis_lib.Redis, cache: ModelCache) -> None:
    name = f"model-cache:{cache.replica_id}"
    ids = [c["id"] for c in redis.client_list(_type="pubsub") if c.get("name") == name]
    assert len(ids) == 1, f"expected one subscriber named {name}, found {ids}"
    redis.client_kill_filter(_id=ids[0])


def test_after_the_subscription_is_killed_the_cache_catches_up_from_the_key(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    deploy(org, 1)
    with running(redis_url, base, [org], resync_interval_s=600.0, replica_id=org) as cache:
        wait_until(lambda: cache.subscriptions == 1, "the first subscription")
        deploy(org, 2, publish=False)  # announced while the subscriber is away
        _kill_subscriber(redis, cache)
        wait_until(lambda: cache.version(org) == version_id(2), "the catch-up to version 2")
        assert cache.subscriptions >= 2
        deploy(org, 3)  # and the new subscription hears the next one
        wait_until(lambda: cache.version(org) == version_id(3), "version 3")


def test_the_periodic_reread_catches_a_lost_announcement(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> None:
    deploy(org, 1)
    with running(redis_url, base, [org], resync_interval_s=0.5) as cache:
        deploy(org, 2, publish=False)
        wait_until(lambda: cache.version(org) == version_id(2), "the re-read of the key")
        assert cache.stats()[org].ignored_stale == 0


def test_the_replicas_hash_shows_the_served_version_until_the_cache_closes(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    deploy(org, 1)
    with running(redis_url, base, [org], confirm_ttl_s=2.0) as cache:
        entry = read_replicas(redis, org)[cache.replica_id]
        assert (entry["version"], entry["sequence"]) == (version_id(1), 1)
        deploy(org, 2)
        wait_until(
            lambda: read_replicas(redis, org)[cache.replica_id]["version"] == version_id(2),
            "the confirmation of version 2",
        )
        time.sleep(2.5)  # past one TTL: the periodic refresh keeps the entry alive
        assert cache.replica_id in read_replicas(redis, org)
    assert read_replicas(redis, org) == {}


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from workers.model_cache import ModelCache
    url, base, org, width = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rows = np.zeros((1, width), dtype=np.float32)
    with ModelCache(url, base, [org], replica_id="child", confirm_ttl_s=1.5) as cache:
        print("ready", flush=True)
        last, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline:
            version = cache.predict(org, rows).version
            if version != last:
                print(version, flush=True)
                last = version
            time.sleep(0.01)
    """
)


def test_a_cache_in_another_process_swaps_and_its_entry_expires_when_it_dies(
    redis: redis_lib.Redis,
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
) -> None:
    deploy(org, 1)
    argv = [sys.executable, "-c", CHILD, redis_url, str(base), org, str(len(FEATURES))]
    child = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert child.stdout is not None
    stdout = child.stdout
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.strip() for line in stdout))
    reader.start()
    try:
        wait_until(lambda: "child" in read_replicas(redis, org), "the child's entry", 30.0)
        # Its entry is written before its first prediction: wait for that one, or a loaded
        # machine lets version 2 arrive first.
        wait_until(lambda: version_id(1) in lines, "the child's predictions by version 1")
        deploy(org, 2)
        wait_until(
            lambda: read_replicas(redis, org)["child"]["version"] == version_id(2),
            "the child's confirmation of version 2",
        )
        wait_until(lambda: version_id(2) in lines, "the child's predictions by version 2")
        child.kill()  # no close(): the entry must expire on its own
        child.wait(timeout=10)
        wait_until(lambda: "child" not in read_replicas(redis, org), "the entry to expire", 4.0)
        assert lines == ["ready", version_id(1), version_id(2)]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        reader.join(timeout=10)
