"""Predictions during swaps: steady load on `trainctl serve` while versions are deployed and
rolled back 20 times. Counts failed and wrong-version replies (goal: zero) and compares latency
percentiles of requests that overlap a swap with those that do not, measured in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ORG = "bench-swap"
SWAPS = 20
SWAP_WINDOW_S = 0.2  # a request that starts this soon after a swap began counts as "during"
ROW = [0.5, 0.5, 0.5, 0.5]


def run(quick: bool = False) -> dict[str, Any]:
    """Deploy and roll back under load; returns failures, wrong versions and latencies."""
    from training_tasks.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        svc, env, versions = _setup(Path(tmp), server.url)
        proc, port = _start_serve(env)
        try:
            replies, swaps = _load_while_swapping(svc, port, versions, 5 if quick else SWAPS)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            svc.close()
    return _summary(replies, swaps)


def _setup(base: Path, redis_url: str) -> tuple[Any, dict[str, str], list[str]]:
    from tests.registry_fixtures import ORG_DOC, finished_run, record_model
    from tests.unit.onnx_fixtures import make_data, to_onnx, train_booster
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService
    from training_tasks.settings import Settings

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
    from training_tasks.child_process import die_with_parent

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


def _load_while_swapping(
    svc: Any, port: int, versions: list[str], swaps_n: int
) -> tuple[list[tuple[float, float, int, str | None]], list[tuple[float, str]]]:
    replies: list[tuple[float, float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        body = json.dumps({"rows": [ROW]}).encode()
        while not stop.is_set():
            started = time.time()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/predict/{ORG}",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    status, version = response.status, json.loads(response.read())["version"]
            except urllib.error.HTTPError as err:
                status, version = err.code, None
            except OSError:
                status, version = 0, None
            replies.append((started, time.time() - started, status, version))

    threads = [threading.Thread(target=client) for _ in range(2)]
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


def _summary(
    replies: list[tuple[float, float, int, str | None]], swaps: list[tuple[float, str]]
) -> dict[str, Any]:
    failed = sum(1 for _, _, status, _ in replies if status != 200)
    during, between, wrong = [], [], 0
    for started, latency_s, status, version in replies:
        if status != 200:
            continue
        last = [s for s in swaps if s[0] <= started]
        if last and started - last[-1][0] < SWAP_WINDOW_S:
            during.append(latency_s * 1000)
        else:
            between.append(latency_s * 1000)
            # Long after a swap, every reply must come from the version it deployed.
            if last and version != last[-1][1]:
                wrong += 1
    return {
        "requests": len(replies),
        "swaps": len(swaps),
        "failed": failed,
        "wrong_version": wrong,
        "latency_ms_during_swaps": _pcts(during),
        "latency_ms_between_swaps": _pcts(between),
        "goal": "zero failed and zero wrong-version replies",
    }


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
