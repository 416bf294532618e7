"""Real processes for integration tests: a Celery worker started, awaited and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from training_tasks.demo.child_process import die_with_parent

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# A test about the broker runs on both: `broker` (tests/conftest.py) is then its Redis, or a
# RabbitMQ virtual host of its own; every other test's broker is its Redis.
on_both_brokers = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)


@dataclass
class Worker:
    """A running worker: its node name, process and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def service_env(
    *,
    redis_url: str,
    database_url: str,
    ml_base_path: Path,
    broker_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a service process pointed at this test's Redis, database and files.

    `broker_url` other than `redis_url` (a RabbitMQ virtual host) becomes BROKER_URL.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BROKER_URL")
    }
    if broker_url and broker_url != redis_url:
        env["BROKER_URL"] = broker_url
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        ML_BASE_PATH=str(ml_base_path),
        ORG_QUEUE_POLL_S="0.5",
        RUN_LEASE_TTL_S="30",
    )
    env.update(extra or {})
    return env


@contextlib.contextmanager
def celery_worker(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    queues: str | None = None,
    concurrency: int = 2,
    as_deployed: bool = False,
) -> Iterator[Worker]:
    """Start `celery -A training_tasks worker` and wait until it answers a ping (bounded).

    Tests leave out mingle and gossip to start faster; `as_deployed` keeps them, as `make worker`
    and compose run it (more broker connections and channels to lose and get back).
    """
    worker = start_worker(
        env, log_dir, queues=queues, concurrency=concurrency, as_deployed=as_deployed
    )
    try:
        wait_ready(worker, broker_url_of(env))
        yield worker
    finally:
        stop_group(worker.proc)


def start_worker(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    queues: str | None = None,
    concurrency: int = 2,
    as_deployed: bool = False,
) -> Worker:
    """Start a worker without waiting for it (its broker may not answer yet); stop it after."""
    name = f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    log_path = log_dir / f"worker-{name.split('@')[0]}.log"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "training_tasks",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--hostname",
        name,
    ]
    if not as_deployed:
        argv += ["--without-mingle", "--without-gossip"]
    if queues:
        argv += ["--queues", queues]
    return Worker(name, spawn_logged(argv, env, log_path), log_path)


def broker_url_of(env: Mapping[str, str]) -> str:
    """The broker a service with environment `env` uses: BROKER_URL, else REDIS_URL."""
    return env.get("BROKER_URL") or env["REDIS_URL"]


def wait_ready(worker: Worker, broker_url: str) -> None:
    """Wait until `worker` answers a ping through `broker_url`; fail with its log (bounded)."""
    import redis
    from celery import Celery
    from kombu.exceptions import OperationalError

    probe = Celery(broker=broker_url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{worker.log_tail()}")
            try:
                if probe.control.ping(destination=[worker.name], timeout=0.5):
                    return
            except (ConnectionError, OSError, redis.RedisError, OperationalError):
                # A connection kept from before a Redis restart fails once; ask again.
                time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {READY_TIMEOUT_S} s:\n{worker.log_tail()}")
    finally:
        probe.close()


def worker_pid(worker: Worker, broker_url: str, timeout_s: float = 30.0) -> int:
    """The PID the worker's main process reports through the broker (`inspect stats`), bounded."""
    import redis
    from celery import Celery

    probe = Celery(broker=broker_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                stats = probe.control.inspect(destination=[worker.name], timeout=1.0).stats()
            except (ConnectionError, OSError, redis.RedisError):
                stats = None  # a connection from before a Redis restart; ask again
            if stats and worker.name in stats:
                return int(stats[worker.name]["pid"])
            time.sleep(0.2)
        raise RuntimeError(f"worker gave no stats in {timeout_s} s:\n{worker.log_tail()}")
    finally:
        probe.close()


def sender(env: Mapping[str, str]) -> Any:
    """A bare Celery app that sends to the service's broker as any client would; close it after.

    Its queues are declared as the service declares them (quorum: RabbitMQ refuses a queue
    declared with other arguments), and results are read from REDIS_URL.
    """
    from celery import Celery

    app = Celery(broker=broker_url_of(env), backend=env["REDIS_URL"])
    app.conf.task_create_missing_queue_type = "quorum"
    return app


def messages_waiting(env: Mapping[str, str], queue: str) -> int:
    """How many messages wait in `queue` of the service's broker (none taken by a worker yet)."""
    url = broker_url_of(env)
    if not url.startswith(("amqp://", "amqps://")):
        import redis

        with redis.Redis.from_url(url) as client:
            return int(client.llen(queue))
    from kombu import Connection

    with Connection(url) as connection:
        declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        return int(declared.message_count)


def queued_tasks(env: Mapping[str, str], queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, arguments) of each message waiting in `queue`, left where it is."""
    import base64
    import json

    url = broker_url_of(env)
    if not url.startswith(("amqp://", "amqps://")):
        import redis

        with redis.Redis.from_url(url) as client:  # the oldest message is at the list's end
            raw = [json.loads(m) for m in reversed(client.lrange(queue, 0, -1))]
        return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in raw]
    from kombu import Connection

    found = []
    with Connection(url) as connection:
        channel = connection.channel()  # closed unacknowledged: the messages go back
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            found.append((message.headers["task"], json.loads(message.body)[0]))
        channel.close()
    return found


def spawn_logged(
    argv: list[str], env: Mapping[str, str], log_path: Path, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a service process in its own session, output to `log_path`; it dies with us."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started in its own session, and its children: TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class Flower:
    """A running Flower: its base URL, process and log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def flower_process(
    env: Mapping[str, str], log_dir: Path, *, unauthenticated_api: bool = True
) -> Iterator[Flower]:
    """Start `celery -A training_tasks flower` on a free loopback port; wait for /healthcheck.

    With `unauthenticated_api` (the default, as the port is loopback only) its HTTP API answers
    without credentials (FLOWER_UNAUTHENTICATED_API=true); Flower refuses it otherwise.
    """
    port = free_port()
    log_path = log_dir / f"flower-{port}.log"
    flower_env = dict(env)
    if unauthenticated_api:
        flower_env["FLOWER_UNAUTHENTICATED_API"] = "true"
    argv = [sys.executable, "-m", "celery", "-A", "training_tasks", "flower"]
    argv += ["--address=127.0.0.1", f"--port={port}"]
    proc = spawn_logged(argv, flower_env, log_path, cwd=log_dir)
    flower = Flower(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        _wait_flower_ready(flower)
        yield flower
    finally:
        stop_group(proc)


def _wait_flower_ready(flower: Flower) -> None:
    import urllib.request

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if flower.proc.poll() is not None:
            raise RuntimeError(f"flower exited early:\n{flower.log_tail()}")
        try:
            with urllib.request.urlopen(f"{flower.url}/healthcheck", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"flower not ready in {READY_TIMEOUT_S} s:\n{flower.log_tail()}")


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
