"""A real `celery beat` process on a clock the test controls, started and stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import redis as redis_lib

from beat_schedules.leader import LOCK_KEY
from tests.support.processes import spawn_logged, stop_group, wait_for
from training_tasks.fields import iso
from training_tasks.protocol.beat_status import read_status

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TICK_WAIT_S = 30.0


class FileClock:
    """The time every beat of a test sees; moved only by the test."""

    def __init__(self, path: Path, start: datetime) -> None:
        self.path = path
        self.set(start)

    def set(self, now: datetime) -> None:
        self.now = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"now": now.isoformat()}))
        os.replace(tmp, self.path)  # a beat never reads half a file

    def advance(self, delta: timedelta) -> datetime:
        self.set(self.now + delta)
        return self.now


@dataclass
class Beat:
    """A running beat: its process, log and identity as it appears in the lock."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, the lock is left to expire."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def beat_process(
    env: Mapping[str, str],
    log_dir: Path,
    clock: FileClock,
    *,
    max_interval_s: float = 0.1,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Beat]:
    """Start beat against `clock` and stop it (and anything it started) when the block ends."""
    log_path = log_dir / f"beat-{uuid.uuid4().hex[:8]}.log"
    argv = [
        sys.executable,
        "-m",
        "tests.support.beat_clock",
        str(clock.path),
        "-A",
        "training_tasks",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(log_dir / "celerybeat-schedule"),
    ]
    environ = {
        **env,
        "BEAT_MAX_INTERVAL_S": str(max_interval_s),
        **(extra_env or {}),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    proc = spawn_logged(argv, environ, log_path, cwd=PROJECT_ROOT)
    beat = Beat(proc, log_path)
    try:
        yield beat
    finally:
        stop_group(proc)


def lock_holder(redis: redis_lib.Redis) -> str | None:
    value = redis.get(LOCK_KEY)
    return value.decode() if value else None


def wait_for_tick(redis: redis_lib.Redis, at: datetime, beats: list[Beat]) -> None:
    """Wait until the dispatching beat has finished a pass at clock time `at` or later."""

    def ticked() -> bool:
        for beat in beats:
            if beat.proc.poll() is not None and beat.proc.returncode not in (-9, None):
                raise AssertionError(f"beat exited ({beat.proc.returncode}):\n{beat.log_text()}")
        status = read_status(redis)
        return status is not None and status["tickAt"] >= iso(at)

    try:
        wait_for(ticked, TICK_WAIT_S, f"a beat tick at {iso(at)}", interval_s=0.05)
    except AssertionError:
        logs = "\n---\n".join(b.log_text()[-3000:] for b in beats)
        raise AssertionError(
            f"no beat ticked at {iso(at)} within {TICK_WAIT_S} s:\n{logs}"
        ) from None


def step_through(
    clock: FileClock,
    redis: redis_lib.Redis,
    beats: list[Beat],
    until: datetime,
    step: timedelta,
) -> None:
    """Move the clock to `until` in steps, letting a beat finish a pass at each."""
    while clock.now < until:
        now = clock.advance(min(step, until - clock.now))
        wait_for_tick(redis, now, beats)
