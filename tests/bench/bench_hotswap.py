"""Hot-swap latency: from the publish to the moment every cache serves the new version.

Measured with 1 and with 50 cache processes. Baselines in the same run: loading the model
(session + one inference) in-process; a pub/sub message reaching 50 subscriber threads; and 50
bare processes that, on the message, read and load the model with no checks (the floor the
caches are held to: within 1.5x).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as redis_lib

ORG = "bench-hotswap"
SWAPS = 20
READY_TIMEOUT_S = 180.0
SWAP_TIMEOUT_S = 10.0

# The process reports the moment its cache swaps, from the cache's own change hook (the one
# that writes the replica confirmation), so nothing polls.
CACHE_PROC = """
import sys, threading, time
from workers.model_cache import ModelCache

def say(line):  # one write per line: the hook's thread and the main thread both report
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

class Reporting(ModelCache):
    def _confirm_one(self, org_id):
        say(f"served {self.version(org_id)} {time.time()}")
        super()._confirm_one(org_id)

cache = Reporting(sys.argv[1], sys.argv[2], [sys.argv[3]], resync_interval_s=3600)
cache.start()
say("ready")
threading.Event().wait()
"""

BARE_PROC = """
import json, sys, time
import numpy as np, onnxruntime as ort, redis
r = redis.Redis.from_url(sys.argv[1])
p = r.pubsub(ignore_subscribe_messages=True)
p.subscribe(sys.argv[3])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
print("ready", flush=True)
for message in p.listen():
    doc = json.loads(message["data"])
    data = open(doc["modelPath"], "rb").read()
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    session.run(None, {"input": np.zeros((1, width), np.float32)})
    print("served", doc["version"], time.time(), flush=True)
"""


def run(quick: bool = False) -> dict[str, Any]:
    """Run every measurement; returns the figures and the ratios to the floor."""
    from training_tasks.demo.embedded_redis import EmbeddedRedis

    many = 10 if quick else 50
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        base = Path(tmp) / "ml"
        models = _models(base, SWAPS + 1)
        result: dict[str, Any] = {"model_load_ms": _load_floor_ms(models[0][1])}
        result["pubsub_threads_ms"] = _pubsub_threads(server.url, many)
        for count in (1, many):
            bare = _swaps(server.url, base, models, count, BARE_PROC)
            cache = _swaps(server.url, base, models, count, CACHE_PROC)
            result[f"{count}_processes"] = {
                "bare_floor_ms": bare,
                "model_cache_ms": cache,
                "ratio_p50": round(cache["p50"] / bare["p50"], 2),
                "ratio_p99": round(cache["p99"] / bare["p99"], 2),
            }
    result["goal"] = "model cache within 1.5x of the bare floor"
    return result


def _models(base: Path, count: int) -> list[tuple[str, Path]]:
    from tests.support.onnx_fixtures import make_data, to_onnx, train_booster

    booster = train_booster(*make_data(2000), rounds=50)
    out = []
    for n in range(count):
        version = f"v2026-06-01T12-00-{n % 60:02d}-{n // 60:03d}Z_{n:08x}"
        path = base / "models" / ORG / f"deployed_{version}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_onnx(booster, org_id=ORG, version=version).SerializeToString())
        out.append((version, path))
    return out


def _load_floor_ms(path: Path) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort

    times = []
    for _ in range(30):
        started = time.perf_counter()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(path.read_bytes(), opts, providers=["CPUExecutionProvider"])
        width = session.get_inputs()[0].shape[1]
        session.run(None, {"input": np.zeros((1, width), np.float32)})
        times.append((time.perf_counter() - started) * 1000)
    return _percentiles(times)


def _pubsub_threads(url: str, count: int) -> dict[str, float]:
    client = redis_lib.Redis.from_url(url)
    arrivals: list[list[float]] = [[] for _ in range(count)]
    ready = threading.Barrier(count + 1)

    def listen(slot: int) -> None:
        sub = redis_lib.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        sub.subscribe("bench:threads")
        ready.wait()
        for _ in range(SWAPS):
            message = sub.get_message(timeout=SWAP_TIMEOUT_S)
            while message is None:
                message = sub.get_message(timeout=SWAP_TIMEOUT_S)
            arrivals[slot].append(time.time() - float(message["data"]))
        sub.close()

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    for _ in range(SWAPS):
        client.publish("bench:threads", repr(time.time()))
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=30)
    worst = [max(a[i] for a in arrivals) * 1000 for i in range(SWAPS)]
    return _percentiles(worst)


def _swaps(
    url: str, base: Path, models: list[tuple[str, Path]], count: int, code: str
) -> dict[str, float]:
    from training_tasks.protocol import hotswap

    client = redis_lib.Redis.from_url(url)
    client.delete(hotswap.current_key(ORG))
    _announce(client, models[0], 1, publish=False)
    with _processes(url, base, count, code) as procs:
        latencies = []
        for n in range(1, len(models)):
            started = time.time()
            _announce(client, models[n], n + 1, publish=True)
            finished = max(_served_at(proc, models[n][0]) for proc in procs)
            latencies.append((finished - started) * 1000)
            time.sleep(0.05)
    return _percentiles(latencies)


def _announce(client: Any, model: tuple[str, Path], sequence: int, *, publish: bool) -> None:
    from training_tasks.protocol import hotswap

    version, path = model
    deployment = hotswap.Deployment(
        organizationId=ORG,
        version=version,
        modelPath=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        deployedAt="2026-06-01T12:00:00Z",
        sequence=sequence,
    )
    if publish:
        hotswap.publish(client, deployment, "deployed")
    else:
        client.set(hotswap.current_key(ORG), deployment.to_json())


@contextmanager
def _processes(
    url: str, base: Path, count: int, code: str
) -> Iterator[list[subprocess.Popen[str]]]:
    from training_tasks.demo.child_process import die_with_parent
    from training_tasks.protocol.hotswap import channel

    argv = [sys.executable, "-c", code, url, str(base), ORG if code is CACHE_PROC else channel(ORG)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=die_with_parent
        )
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for proc in procs:
            line = "served"
            while line.startswith("served"):  # the first load at start is reported too
                line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "ready" or time.monotonic() > deadline:
                raise RuntimeError(f"a measured process did not start: {line!r}")
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _served_at(proc: subprocess.Popen[str], version: str) -> float:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("a measured process exited")
        parts = line.split()
        if parts[:2] == ["served", version]:
            return float(parts[2])


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2), "n": len(ordered)}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
