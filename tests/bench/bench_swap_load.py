"""Predictions during swaps: steady load on `trainctl serve` while versions are deployed and
rolled back 20 times. Counts failed and wrong-version replies (goal: zero) and compares latency
percentiles of requests that overlap a swap with those that do not, measured in the same run.

Prediction clients keep their connection open, so the load has one client on a keep-alive
connection and one that opens a connection per request, reported apart. Before the swaps, the
same run times requests on one keep-alive connection against fresh connections, interleaved, and
reports the ratio of their medians (goal: keep-alive within 3x of fresh and under 10 ms; a
response sent in two pieces without TCP_NODELAY costs about 40 ms per keep-alive request).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ORG = "bench-swap"
SWAPS = 20
SWAP_WINDOW_S = 0.2  # a request that starts this soon after a swap began counts as "during"
ROW = [0.5, 0.5, 0.5, 0.5]
BODY = json.dumps({"rows": [ROW]}).encode()
CONNECTION_SAMPLES = 300
REQUEST_TIMEOUT_S = 5.0
Reply = tuple[float, float, int, str | None, str]  # started, latency s, status, version, kind


def run(quick: bool = False) -> dict[str, Any]:
    """Deploy and roll back under load; returns failures, wrong versions and latencies."""
    from training_tasks.demo.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        svc, env, versions = _setup(Path(tmp), server.url)
        proc, port = _start_serve(env)
        try:
            connections = _connection_latency(port, 60 if quick else CONNECTION_SAMPLES)
            replies, swaps = _load_while_swapping(svc, port, versions, 5 if quick else SWAPS)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            svc.close()
    return {**_summary(replies, swaps), "connection_latency_ms": connections}


def _setup(base: Path, redis_url: str) -> tuple[Any, dict[str, str], list[str]]:
    from tests.support.onnx_fixtures import make_data, to_onnx, train_booster
    from tests.support.registry_fixtures import ORG_DOC, finished_run, record_model
    from training_tasks.config.settings import Settings
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService

    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{base / 'svc.db'}",
        "ML_BASE_PATH": str(base / "ml"),
    }
    svc = TrainingService(build_runtime(Settings.from_env(env)))
    svc.register_organization(ORG, ORG_DOC)
    booster = train_booster(*make_data(2000), rounds=50)
    made = []
    for n in range(2):
        now = datetime(2026, 6, 1, 12, 0, n, tzinfo=UTC)
        run_id, version = finished_run(svc.rt.engine, ORG, now)
        onnx_bytes = to_onnx(booster, org_id=ORG, version=version).SerializeToString()
        record_model(
            svc.rt.engine,
            svc.rt.store,
            ORG,
            version,
            run_id,
            now=now,
            data=onnx_bytes,
            report={"passed": True},
        )
        made.append(version)
    svc.deploy_model(ORG, made[0], actor="bench")
    return svc, env, made


def _start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    from training_tasks.demo.child_process import die_with_parent

    argv = [sys.executable, "-m", "training_tasks.cli", "serve", "--port", "0", "--org", ORG]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"trainctl serve did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


class _Client:
    """POSTs one prediction at a time, on one kept connection or on a new one per request."""

    def __init__(self, port: int, *, keep_alive: bool) -> None:
        self.port = port
        self.kind = "keepalive" if keep_alive else "fresh"
        self.keep_alive = keep_alive
        self._conn: http.client.HTTPConnection | None = None
        self.local_ports: set[int] = set()  # one per connection used: 1 when kept alive

    def post(self) -> tuple[int, str | None]:
        """Status and served version of one prediction (status 0: the connection failed)."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S
            )
        try:
            self._conn.request(
                "POST", f"/predict/{ORG}", BODY, {"Content-Type": "application/json"}
            )
            reply = self._conn.getresponse()
            doc = json.loads(reply.read())
            status, version = reply.status, doc.get("version")
            if self._conn.sock is not None:
                self.local_ports.add(self._conn.sock.getsockname()[1])
        except (OSError, http.client.HTTPException, ValueError):
            status, version = 0, None
            self.close()
        if not self.keep_alive:
            self.close()
        return status, version

    def close(self) -> None:
        """Drop the connection; the next request opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _connection_latency(port: int, samples: int) -> dict[str, Any]:
    """Request latency on one keep-alive connection and on fresh ones, interleaved."""
    kept, fresh = _Client(port, keep_alive=True), _Client(port, keep_alive=False)
    kept.post()  # the kept connection's connect is not part of its requests
    timings: dict[str, list[float]] = {"keepalive": [], "fresh": []}
    try:
        for _ in range(samples):
            for client in (kept, fresh):
                started = time.perf_counter()
                status, _ = client.post()
                if status == 200:
                    timings[client.kind].append((time.perf_counter() - started) * 1000)
    finally:
        kept.close()
    keep_p50, fresh_p50 = _median(timings["keepalive"]), _median(timings["fresh"])
    return {
        "keepalive": _pcts(timings["keepalive"]),
        "fresh": _pcts(timings["fresh"]),
        "p50_ratio_keepalive_to_fresh": round(keep_p50 / fresh_p50, 2) if fresh_p50 else None,
        "keepalive_connections_used": len(kept.local_ports),
        "goal": "keep-alive p50 within 3x of fresh and under 10 ms",
    }


def _load_while_swapping(
    svc: Any, port: int, versions: list[str], swaps_n: int
) -> tuple[list[Reply], list[tuple[float, str]]]:
    replies: list[Reply] = []
    stop = threading.Event()

    def load(client: _Client) -> None:
        try:
            while not stop.is_set():
                started = time.time()
                status, version = client.post()
                replies.append((started, time.time() - started, status, version, client.kind))
        finally:
            client.close()

    clients = [_Client(port, keep_alive=True), _Client(port, keep_alive=False)]
    threads = [threading.Thread(target=load, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    swaps: list[tuple[float, str]] = []
    try:
        time.sleep(0.5)
        for n in range(swaps_n):
            began = time.time()
            if n % 2 == 0:
                svc.deploy_model(ORG, versions[1], actor="bench")
                swaps.append((began, versions[1]))
            else:
                svc.rollback_model(ORG, actor="bench")
                swaps.append((began, versions[0]))
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    return replies, swaps


def _summary(replies: list[Reply], swaps: list[tuple[float, str]]) -> dict[str, Any]:
    failed = sum(1 for reply in replies if reply[2] != 200)
    during: dict[str, list[float]] = {"keepalive": [], "fresh": []}
    between: dict[str, list[float]] = {"keepalive": [], "fresh": []}
    wrong = 0
    for started, latency_s, status, version, kind in replies:
        if status != 200:
            continue
        last = [s for s in swaps if s[0] <= started]
        if last and started - last[-1][0] < SWAP_WINDOW_S:
            during[kind].append(latency_s * 1000)
        else:
            between[kind].append(latency_s * 1000)
            # Long after a swap, every reply must come from the version it deployed.
            if last and version != last[-1][1]:
                wrong += 1
    return {
        "requests": len(replies),
        "swaps": len(swaps),
        "failed": failed,
        "wrong_version": wrong,
        "latency_ms_during_swaps": {kind: _pcts(ms) for kind, ms in during.items()},
        "latency_ms_between_swaps": {kind: _pcts(ms) for kind, ms in between.items()},
        "goal": "zero failed and zero wrong-version replies",
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(pick(0.99), 2),
        "max": round(ordered[-1], 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
