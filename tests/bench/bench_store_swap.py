"""Hot-swap through the object store against today's shared folder, measured in the same run.

One model-cache process per mode. Shared folder: the cache reads `modelPath` in the folder the
deployer wrote (today's swap, the baseline). Object store: the cache runs on a folder of its own
("another host") with MODEL_STORE_URL pointing at a moto S3 server, and fetches `modelKey` into
that folder, verifies it and loads it. Latency runs from the hot-swap publish to the new version
serving. The upload the deployer does before it publishes is measured apart (`upload_ms`).
Two sizes: the small model of bench_hotswap and one of about 5 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as redis_lib

from tests.bench.bench_hotswap import CACHE_PROC, READY_TIMEOUT_S, _percentiles, _served_at

ORG = "bench-store-swap"
SWAPS = 50
BIG_MODEL_ROUNDS = 4500  # about 5 MB of ONNX


def run(quick: bool = False) -> dict[str, Any]:
    """Both modes for both model sizes; the ratio is store over shared folder."""
    from tests.support.s3_server import running_s3_server
    from training_tasks.demo.embedded_redis import EmbeddedRedis

    swaps = 10 if quick else SWAPS
    result: dict[str, Any] = {"swaps": swaps}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis() as server,
        running_s3_server(Path(tmp)) as s3,
    ):
        for label, rounds in (("small", 50), ("5mb", BIG_MODEL_ROUNDS)):
            deployer = Path(tmp) / label / "deployer"
            models = _models(deployer, swaps + 1, rounds)
            bucket = s3.new_bucket()
            store_env = s3.store_env(bucket)
            upload = _upload(store_env, deployer, models)
            shared = _swaps(server.url, deployer, models, {}, keyed=False)
            cache_base = Path(tmp) / label / "cache-host"
            remote = _swaps(server.url, cache_base, models, store_env, keyed=True)
            result[label] = {
                "model_bytes": models[0][1].stat().st_size,
                "shared_folder_ms": shared,
                "object_store_ms": remote,
                "upload_ms": upload,
                "ratio_p50": round(remote["p50"] / shared["p50"], 2),
                "ratio_p99": round(remote["p99"] / shared["p99"], 2),
            }
    result["baseline"] = "the same cache reading the deployer's shared folder (today's swap)"
    return result


def _models(base: Path, count: int, rounds: int) -> list[tuple[str, Path]]:
    """`count` deployed copies of one booster, each with its own version in its metadata."""
    from tests.support.onnx_fixtures import make_data, to_onnx, train_booster

    booster = train_booster(*make_data(20000 if rounds > 100 else 2000), rounds=rounds)
    proto = to_onnx(booster, org_id=ORG, version=_version(0))
    out = []
    for n in range(count):
        version = _version(n)
        for prop in proto.metadata_props:
            if prop.key == "version":
                prop.value = version
        path = base / "models" / ORG / f"deployed_{version}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(proto.SerializeToString())
        out.append((version, path))
    return out


def _version(n: int) -> str:
    return f"v2026-06-01T12-00-{n % 60:02d}-{n // 60:03d}Z_{n:08x}"


def _upload(store_env: dict[str, str], base: Path, models: list[tuple[str, Path]]) -> Any:
    """Put every model in the store as deploy does (write-once); the time per model."""
    from training_tasks.protocol.object_store import ObjectStore

    times = []
    with _environment(store_env):
        objects = ObjectStore.from_url(store_env["MODEL_STORE_URL"])
        for _version_id, path in models:
            started = time.perf_counter()
            objects.put_file(ORG, _key(base, path), path)
            times.append((time.perf_counter() - started) * 1000)
    return _percentiles(times)


def _swaps(
    url: str, base: Path, models: list[tuple[str, Path]], env: dict[str, str], *, keyed: bool
) -> dict[str, float]:
    from training_tasks.protocol import hotswap

    client = redis_lib.Redis.from_url(url)
    client.delete(hotswap.current_key(ORG))
    client.set(hotswap.current_key(ORG), _deployment(models[0], 1, keyed).to_json())
    with _cache_process(url, base, env) as proc:
        latencies = []
        for n in range(1, len(models)):
            started = time.time()
            hotswap.publish(client, _deployment(models[n], n + 1, keyed), "deployed")
            latencies.append((_served_at(proc, models[n][0]) - started) * 1000)
            time.sleep(0.05)
    client.close()
    return _percentiles(latencies)


def _deployment(model: tuple[str, Path], sequence: int, keyed: bool) -> Any:
    import hashlib

    from training_tasks.protocol import hotswap

    version, path = model
    return hotswap.Deployment(
        organizationId=ORG,
        version=version,
        modelPath=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        deployedAt="2026-06-01T12:00:00Z",
        sequence=sequence,
        modelKey=_key(path.parents[3], path) if keyed else None,
    )


def _key(base: Path, path: Path) -> str:
    return path.relative_to(base).as_posix()


@contextmanager
def _cache_process(url: str, base: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    from training_tasks.demo.child_process import die_with_parent

    base.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    full_env.setdefault("MODEL_STORE_URL", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", CACHE_PROC, url, str(base), ORG],
        stdout=subprocess.PIPE,
        text=True,
        env=full_env,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = "served"
        while line.startswith("served"):  # the first load at start is reported too
            line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready" or time.monotonic() > deadline:
            raise RuntimeError(f"the cache process did not start: {line!r}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
