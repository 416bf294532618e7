"""The reference prediction service: it answers through every swap, answers keep-alive requests
as fast as fresh connections, and serves the deployed model while Redis announces none."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import redis as redis_lib

from tests.integration.conftest import version_id
from tests.support.onnx_fixtures import FEATURES, make_data, to_onnx, to_onnx_with_alarm
from tests.support.processes import free_port, spawn_logged, stop_group, wait_for
from tests.support.registry_fixtures import finished_run, migrated_engine, record_model, register
from training_tasks.protocol import hotswap
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache import read_replicas
from workers.prediction_service import MAX_BODY_BYTES, PredictionService

pytestmark = pytest.mark.integration
ROW = [0.5] * len(FEATURES)
BODY = json.dumps({"rows": [ROW]})
# Some of these rows score between 0.3 and 0.5: a model deciding at 0.3 raises an alarm there.
DECISION_ROWS = np.nan_to_num(make_data(20, seed=7)[0]).tolist()
ANSWER_FIELDS = {"organizationId", "version", "probabilities", "alarms", "threshold"}
TRAINCTL = [sys.executable, "-m", "training_tasks.cli"]
READY_TIMEOUT_S = 60.0
SWAP_TIMEOUT_S = 10.0


def call(
    port: int, method: str, path: str, body: Any = None, *, timeout_s: float = 5
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError:  # not listening yet, or gone
        return 0, {}


@pytest.fixture
def service(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> Iterator[PredictionService]:
    deploy(org, 1)
    with PredictionService(redis_url, base, [org], port=0) as running:
        yield running


def test_predict_answers_with_probabilities_and_the_version(service, org) -> None:
    status, doc = call(service.port, "POST", f"/predict/{org}", {"rows": [ROW, ROW]})
    assert status == 200
    assert doc["version"] == version_id(1) and len(doc["probabilities"]) == 2
    assert all(0.0 <= p <= 1.0 for p in doc["probabilities"])
    assert doc["threshold"] == 0.5 and doc["alarms"] == [p >= 0.5 for p in doc["probabilities"]]
    status, health = call(service.port, "GET", "/health")
    assert status == 200 and health["versions"] == {org: version_id(1)}


def test_predict_answers_with_the_served_models_alarms_and_threshold_across_hot_swaps(
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
    booster: lgb.Booster,
) -> None:
    decided = to_onnx_with_alarm(booster, threshold=0.3, org_id=org, version=version_id(1))
    deploy(org, 1, data=decided.SerializeToString())
    with PredictionService(redis_url, base, [org], port=0) as service:
        status, new = call(service.port, "POST", f"/predict/{org}", {"rows": DECISION_ROWS})
        assert status == 200 and set(new) == ANSWER_FIELDS and new["version"] == version_id(1)
        assert new["threshold"] == 0.3
        assert new["alarms"] == [p >= 0.3 for p in new["probabilities"]]
        assert any(0.3 <= p < 0.5 for p in new["probabilities"])  # alarms the 0.5 rule misses
        _wait_served(service, org, deploy(org, 2).version)  # an old-style model: no decision
        status, old = call(service.port, "POST", f"/predict/{org}", {"rows": DECISION_ROWS})
        assert status == 200 and set(old) == ANSWER_FIELDS and old["version"] == version_id(2)
        assert old["threshold"] == 0.5
        assert old["alarms"] == [p >= 0.5 for p in old["probabilities"]]
        assert old["probabilities"] == new["probabilities"]  # the same trees, another decision
        decided = to_onnx_with_alarm(booster, threshold=0.4, org_id=org, version=version_id(3))
        _wait_served(service, org, deploy(org, 3, data=decided.SerializeToString()).version)
        status, back = call(service.port, "POST", f"/predict/{org}", {"rows": DECISION_ROWS})
        assert (status, back["threshold"]) == (200, 0.4)
        assert back["alarms"] == [p >= 0.4 for p in back["probabilities"]]


@pytest.mark.parametrize(
    ("body", "word"),
    [({"rowz": []}, "rows"), ({"rows": [[1.0]]}, "temperature"), ({"rows": ["x"]}, "rows")],
)
def test_a_bad_request_gets_400_saying_what_is_expected(service, org, body, word) -> None:
    status, doc = call(service.port, "POST", f"/predict/{org}", body)
    assert status == 400 and word in doc["error"]


def test_an_organization_this_service_does_not_hold_gets_503(service) -> None:
    status, doc = call(service.port, "POST", "/predict/someone-else", {"rows": [ROW]})
    assert status == 503 and "someone-else" in doc["error"]


def test_deploys_and_rollbacks_under_load_fail_no_request(service, org, deploy) -> None:
    stop, replies, errors = threading.Event(), [], []

    def load() -> None:
        while not stop.is_set():
            status, doc = call(service.port, "POST", f"/predict/{org}", {"rows": [ROW]})
            (replies if status == 200 else errors).append((status, doc))

    clients = [threading.Thread(target=load) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        for n in range(2, 22):  # ten deploys, ten "rollbacks" (an older version, newer sequence)
            deployment = deploy(org, n)
            _wait_served(service, org, deployment.version)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)
    assert errors == []
    assert len(replies) > 20
    served = {doc["version"] for _, doc in replies}
    assert served <= {version_id(n) for n in range(1, 22)}


def _wait_served(service: PredictionService, org: str, version: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if service.cache.version(org) == version:
            return
        time.sleep(0.005)
    raise AssertionError(f"{version} not served within 5 s")


def test_a_refused_request_leaves_the_keep_alive_connection_usable(service, org) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    try:
        answers = [
            _post(conn, f"/predict/{org}", BODY)[0],
            _post(conn, f"/predict/{org}", "{not json")[0],
            _post(conn, "/nowhere", BODY)[0],  # its body is read, not taken for the next request
            _post(conn, f"/predict/{org}", BODY)[0],
        ]
        local_ports = {conn.sock.getsockname()[1]} if conn.sock else set()
        # A body too large is not read: the reply closes the connection instead.
        conn.putrequest("POST", f"/predict/{org}")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.endheaders()
        too_large = conn.getresponse()
        too_large.read()
    finally:
        conn.close()
    assert answers == [200, 400, 404, 200]
    assert len(local_ports) == 1
    assert (too_large.status, too_large.getheader("Connection")) == (413, "close")


def test_a_client_that_expects_100_continue_gets_it_before_sending_the_body(service, org) -> None:
    body = BODY.encode()
    head = (
        f"POST /predict/{org} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=2) as sock:
        sock.sendall(head.encode())
        interim = sock.recv(4096)  # times out (2 s) if the 100 stays in the server's buffer
        sock.sendall(body)
        final = sock.makefile("rb").readline()
    assert interim.startswith(b"HTTP/1.1 100")
    assert final.startswith(b"HTTP/1.1 200")


def test_closing_the_service_ends_its_idle_keep_alive_connections(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> None:
    deploy(org, 1)
    service = PredictionService(redis_url, base, [org], port=0).start()
    try:
        conn = socket.create_connection(("127.0.0.1", service.port), timeout=5)
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        conn.sendall(request)
        reply = conn.makefile("rb")
        assert reply.readline().startswith(b"HTTP/1.1 200")
    finally:
        service.close()
    with conn, reply:
        rest = reply.read()  # up to EOF: the server closed the kept connection (5 s timeout)
    assert b'"status": "ok"' in rest


# -- `trainctl serve` as a process -------------------------------------------------------------


@pytest.fixture
def serve_env(tmp_path: Path, redis_url: str, base: Path) -> dict[str, str]:
    """The environment of a `trainctl serve` on this test's Redis, SQLite database and ML folder."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
        "ML_BASE_PATH": str(base),
    }


@contextlib.contextmanager
def trainctl_serve(env: dict[str, str], org: str, *options: str) -> Iterator[int]:
    """Run `trainctl serve` for `org` until the block ends; yields its port once /health answers."""
    port = free_port()
    log_path = Path(env["ML_BASE_PATH"]).parent / f"serve-{port}.log"
    argv = [*TRAINCTL, "serve", "--port", str(port), "--org", org, *options]
    proc = spawn_logged(argv, env, log_path)

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        wait_for(
            lambda: proc.poll() is not None or call(port, "GET", "/health", timeout_s=1)[0] == 200,
            READY_TIMEOUT_S,
            f"trainctl serve on port {port}",
        )
        assert proc.poll() is None, f"trainctl serve exited {proc.returncode}:\n{log_tail()}"
        yield port
    finally:
        stop_group(proc)
    assert proc.returncode == 0, f"trainctl serve did not stop cleanly:\n{log_tail()}"


def test_trainctl_serve_answers_and_status_shows_its_confirmation(
    serve_env: dict[str, str], org: str, deploy: Callable[..., Deployment]
) -> None:
    engine = migrated_engine(serve_env["DATABASE_URL"])
    register(engine, org)
    engine.dispose()
    deployed = deploy(org, 1)
    with trainctl_serve(serve_env, org, "--replica-id", "replica-a") as port:
        status, doc = call(port, "POST", f"/predict/{org}", {"rows": [ROW]})
        assert (status, doc["version"]) == (200, deployed.version)
        assert (doc["threshold"], doc["alarms"]) == (0.5, [doc["probabilities"][0] >= 0.5])
        shown = subprocess.run(
            [*TRAINCTL, "status", org], env=serve_env, capture_output=True, text=True, timeout=60
        )
        assert "replica-a" in shown.stdout and deployed.version in shown.stdout, (
            shown.stdout + shown.stderr
        )


def test_keep_alive_requests_are_answered_as_fast_as_fresh_connections(
    serve_env: dict[str, str], org: str, deploy: Callable[..., Deployment]
) -> None:
    engine = migrated_engine(serve_env["DATABASE_URL"])
    register(engine, org)
    engine.dispose()
    deploy(org, 1)
    with trainctl_serve(serve_env, org) as port:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        kept_ms, fresh_ms, local_ports = [], [], set()
        try:
            _post(kept, f"/predict/{org}", BODY)  # the first request pays for the connect
            for _ in range(40):  # interleaved, so both see the same load on the machine
                kept_ms.append(_timed_post(kept, org))
                local_ports.add(kept.sock.getsockname()[1] if kept.sock else None)
                fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    fresh_ms.append(_timed_post(fresh, org))
                finally:
                    fresh.close()
        finally:
            kept.close()
    kept_p50, fresh_p50 = statistics.median(kept_ms), statistics.median(fresh_ms)
    print(f"p50 keep-alive {kept_p50:.2f} ms, fresh connection {fresh_p50:.2f} ms")
    assert len(local_ports) == 1, f"the connection was not kept: local ports {local_ports}"
    assert kept_p50 < 10.0
    assert kept_p50 <= 3 * fresh_p50


@pytest.mark.parametrize(
    ("fallback", "status", "sequence"),
    [("database", 200, 1), ("disk", 200, 0), ("none", 503, None)],
)
def test_trainctl_serve_started_while_redis_announces_nothing_serves_the_deployed_version(
    serve_env: dict[str, str],
    redis: redis_lib.Redis,
    org: str,
    booster: lgb.Booster,
    fallback: str,
    status: int,
    sequence: int | None,
) -> None:
    svc, (first, second) = _registry_with_versions(serve_env, org, booster)
    try:
        recorded = svc.rt.store.deployed_dir(org, first)
        svc.deploy_model(org, first, actor="test")
        redis.delete(hotswap.current_key(org))  # as after a restart of a Redis without persistence
        replica = f"replica-{fallback}"
        with trainctl_serve(
            serve_env, org, "--fallback", fallback, "--replica-id", replica
        ) as port:
            answer, doc = call(port, "POST", f"/predict/{org}", {"rows": [ROW]})
            assert answer == status, doc
            if status == 200:
                assert doc["version"] == first
            else:
                assert org in doc["error"] and "no deployment" in doc["error"]
            if fallback == "disk" and (recorded / hotswap.DEPLOYMENT_FILE).exists():
                sequence = 1  # deploy's record beside the model gives the link its sequence
            assert read_replicas(redis, org)[replica]["sequence"] == sequence
            svc.deploy_model(org, second, actor="test")  # announced: it replaces the fallback
            wait_for(
                lambda: (
                    call(port, "POST", f"/predict/{org}", {"rows": [ROW]})[1].get("version")
                    == second
                ),
                SWAP_TIMEOUT_S,
                f"{org} served by {second}",
                interval_s=0.05,
            )
            wait_for(
                lambda: read_replicas(redis, org)[replica]["sequence"] == 2,
                SWAP_TIMEOUT_S,
                "the confirmation of sequence 2",
                interval_s=0.05,
            )
    finally:
        svc.close()


def _registry_with_versions(
    env: dict[str, str], org: str, booster: lgb.Booster
) -> tuple[Any, tuple[str, str]]:
    """A service on the test's database with `org` registered and two validated versions."""
    from training_tasks.config.settings import Settings
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService

    svc = TrainingService(build_runtime(Settings.from_env(env)))
    register(svc.rt.engine, org)
    made = []
    for n in range(2):
        now = datetime(2026, 6, 1, 12, 0, n, tzinfo=UTC)
        run_id, version = finished_run(svc.rt.engine, org, now)
        data = to_onnx(booster, org_id=org, version=version).SerializeToString()
        report = {"passed": True}
        record_model(
            svc.rt.engine, svc.rt.store, org, version, run_id, now=now, data=data, report=report
        )
        made.append(version)
    return svc, (made[0], made[1])


def _post(conn: http.client.HTTPConnection, path: str, body: str) -> tuple[int, bytes]:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    reply = conn.getresponse()
    return reply.status, reply.read()


def _timed_post(conn: http.client.HTTPConnection, org: str) -> float:
    started = time.perf_counter()
    status, _ = _post(conn, f"/predict/{org}", BODY)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert status == 200
    return elapsed_ms
