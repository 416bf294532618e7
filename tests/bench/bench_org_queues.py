"""One worker following every organization's queue, at 10 to 10,000 organizations, per broker.

For each size: the time from submit to the start of extraction (p50, p99), the CPU an idle
worker and the broker use, the time for a new organization's first run to start, and how long
the worker took to follow every queue. The baseline is the same figures at 10 organizations,
measured in the same run: the goal is a dispatch latency within 2x of it at 10,000 and an idle
worker under 5% of a core.

`python -m tests.bench bench_org_queues` runs Redis (a private redis-server) and RabbitMQ (a
private node with 65,536 open files, never the machine's broker); BENCH_BROKERS=redis runs one.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from tests.bench.common import host_info

RABBIT_OPEN_FILES = 65536
HANDLES_PER_QUEUE = 3.2  # measured on RabbitMQ 3.10 (file_handle_cache: total_used)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-15T00:00:00Z"}
IDLE_S = 20.0


def run(quick: bool = False) -> dict[str, Any]:
    """Measure each broker at each size; ratios against 10 organizations of the same broker."""
    sizes = (10, 1000) if quick else (10, 100, 1000, 5000, 10000)
    samples = 8 if quick else 20
    brokers = [b for b in os.environ.get("BENCH_BROKERS", "redis,rabbitmq").split(",") if b]
    result: dict[str, Any] = {"host": host_info(), "sizes": list(sizes), "samples": samples}
    for broker in brokers:
        fits = [
            n
            for n in sizes
            if broker != "rabbitmq" or n * HANDLES_PER_QUEUE < _open_files_allowed()
        ]
        if len(fits) < len(sizes):
            result[f"{broker}_not_measured"] = (
                f"{[n for n in sizes if n not in fits]} organizations: a quorum queue holds about "
                f"{HANDLES_PER_QUEUE} file handles and this machine lets a node open "
                f"{_open_files_allowed()} files (raise the hard limit, as root, to measure)"
            )
        rows = [_measure(broker, n, samples) for n in fits]
        base = rows[0]
        for row in rows:
            row["dispatch_p50_vs_10_orgs"] = round(
                row["dispatch_ms"]["p50"] / base["dispatch_ms"]["p50"], 2
            )
        result[broker] = rows
    result["goal"] = (
        "at 10,000 organizations: dispatch p50 within 2x of 10 organizations, idle worker < 5% of a core"
    )
    return result


def _measure(broker: str, n: int, samples: int) -> dict[str, Any]:
    from tests.support.processes import celery_worker, service_env

    print(f"   {broker}: {n} organizations", flush=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        _broker(broker, Path(tmp)) as (broker_url, redis_url, broker_proc),
    ):
        base = Path(tmp)
        env = service_env(
            redis_url=redis_url,
            database_url=f"sqlite:///{base / 'svc.db'}",
            ml_base_path=base / "ml",
            extra={"BROKER_URL": broker_url, "ORG_QUEUE_POLL_S": "2"},
        )
        svc = _service(env)
        orgs = _register(svc, base, n)
        started = time.monotonic()
        with celery_worker(env, base, concurrency=1) as worker:
            _wait_following(worker, n, timeout_s=900)
            follow_s = time.monotonic() - started
            idle = _idle_cpu(worker.proc.pid, broker_proc)
            _dispatch_ms(svc, orgs[-1])  # warm-up: the pool child's first run imports and connects
            latencies = [_dispatch_ms(svc, orgs[(i * 7919) % n]) for i in range(samples)]
            new_org = f"new-{uuid.uuid4().hex[:6]}"
            _register_one(svc, base, new_org)
            new_org_ms = _dispatch_ms(svc, new_org)
        svc.close()
    latencies.sort()
    return {
        "organizations": n,
        "dispatch_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        },
        "idle_worker_cpu_pct": idle["worker"],
        "idle_broker_cpu_pct": idle["broker"],
        "new_org_first_run_ms": round(new_org_ms, 1),
        "worker_follows_every_queue_after_s": round(follow_s, 1),
    }


@contextlib.contextmanager
def _broker(kind: str, tmp: Path) -> Iterator[tuple[str, str, psutil.Process]]:
    """(broker URL, Redis URL, broker process) of a private Redis, and a throwaway vhost."""
    redis_proc, redis_url = _private_redis(tmp)
    try:
        if kind == "redis":
            yield redis_url, redis_url, psutil.Process(redis_proc.pid)
            return
        with _private_rabbit(tmp) as (url, proc):
            yield url, redis_url, proc
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


def _private_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.support.processes import free_port, wait_for

    port = free_port()
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not on PATH; install Redis to run this benchmark")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 10, "the benchmark's redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _open_files_allowed() -> int:
    """RABBIT_OPEN_FILES, or this process's hard limit where it may not raise it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (RABBIT_OPEN_FILES, RABBIT_OPEN_FILES))
    except (ValueError, OSError):
        return int(hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, RABBIT_OPEN_FILES))
    return RABBIT_OPEN_FILES


@contextlib.contextmanager
def _private_rabbit(tmp: Path) -> Iterator[tuple[str, psutil.Process]]:
    """A RabbitMQ node of the benchmark's own, never the machine's: each quorum queue holds
    about three file handles, so 10,000 queues need more open files than a node started with
    the common limit of 1,024 has (it would stop answering every client)."""
    from tests.support.rabbitmq_node import RabbitNode, server_program

    program = server_program()
    if program is None:
        raise RuntimeError("rabbitmq-server is not installed; install RabbitMQ to run this bench")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_open_files_allowed(), hard))  # the node inherits
    node = RabbitNode(tmp / "rabbitmq", program, {})
    try:
        node.start()
        node.wait_answering()
        assert node.proc is not None
        beam = [
            p
            for p in psutil.Process(node.proc.pid).children(recursive=True)
            if p.name() == "beam.smp"
        ]
        yield node.url, beam[0]
    finally:
        node.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _service(env: dict[str, str]) -> Any:
    from training_tasks.config.settings import Settings
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService

    return TrainingService(build_runtime(Settings.from_env(env)))


def _scada(base: Path) -> str:
    from training_tasks.demo import scada

    path = base / "scada.db"
    if not path.exists():
        frame = scada.generate_sensor_frame(
            assets=4, days=14, interval_min=60, seed=5, start=datetime(2026, 1, 1, tzinfo=UTC)
        )
        scada.write_scada_sqlite(path, frame, scada.ACME_LAYOUT)
    return f"sqlite:///{path}"


def _register_one(svc: Any, base: Path, org_id: str) -> None:
    from training_tasks.demo import scada

    doc = scada.demo_org_config(org_id, _scada(base), scada.ACME_LAYOUT)
    doc["mlModelConfig"]["hyperparameters"]["numIterations"] = 3
    doc["mlModelConfig"]["thresholds"] = {
        "accuracy": 0,
        "precision": 0,
        "recall": 0,
        "notWorseThanDeployed": False,
    }
    svc.register_organization(org_id, doc)


def _register(svc: Any, base: Path, n: int) -> list[str]:
    orgs = [f"org-{i:05d}" for i in range(n)]
    for org_id in orgs:
        _register_one(svc, base, org_id)
    return orgs


def _wait_following(worker: Any, n: int, timeout_s: float) -> None:
    """Until the worker's log says it consumes from every organization's queue (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = worker.log_path.read_text(errors="replace")
        if text.count("Started consuming from org.") >= n:
            return
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
        time.sleep(0.5)
    raise TimeoutError(f"the worker did not follow {n} queues in {timeout_s} s")


def _cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def _idle_cpu(worker_pid: int, broker: psutil.Process) -> dict[str, float]:
    """Percent of one core the worker (with its pool) and the broker use over IDLE_S, idle."""
    worker = psutil.Process(worker_pid)
    time.sleep(3)  # the last registry sync and start-up work settle
    w0, b0, t0 = _cpu_s(worker), _cpu_s(broker), time.monotonic()
    time.sleep(IDLE_S)
    w1, b1, t1 = _cpu_s(worker), _cpu_s(broker), time.monotonic()
    return {
        "worker": round(100 * (w1 - w0) / (t1 - t0), 2),
        "broker": round(100 * (b1 - b0) / (t1 - t0), 2),
    }


def _dispatch_ms(svc: Any, org_id: str) -> float:
    """Submit a run; the time from the submit to its extract stage starting; wait for its end."""
    submitted = datetime.now(UTC)
    handle = svc.train_model(org_id, {"dataRange": RANGE}, wait=False)
    result = handle.wait(timeout_s=120, poll_interval_s=0.05)
    started = result["stageTimings"]["extract"]["startedAt"]
    extract_at = datetime.fromisoformat(started.replace("Z", "+00:00"))
    return (extract_at - submitted).total_seconds() * 1000


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
