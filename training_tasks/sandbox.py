"""Run an untrusted program in its own session with an allow-listed environment and rlimits.

Limits are applied by a tiny launcher (`python -I -S -c ...`) that calls setrlimit and then execs
the program, so no Python code runs between fork and exec in this process: that keeps
`run_sandboxed` safe to call from several threads at once, and it installs no signal handlers.

Memory (RLIMIT_AS) bounds *virtual* memory, which glibc, OpenMP and Arrow reserve well beyond what
they touch: glibc gives each thread a malloc arena of 64 MB address space (up to 8 per core) and
Arrow's default mimalloc reserves large arenas too, so without care the need grows with the core
count and failures come at random points. The sandbox therefore sets MALLOC_ARENA_MAX=2 and
ARROW_DEFAULT_MEMORY_POOL=system (a caller's own values win). Measured on 2 cores, the bundled
script training 1M rows x 10 features x 100 iterations then peaks at about 330 MB resident and
510 MB of address space and runs reliably from 640 MB (without the two settings it reserves 930 MB
to 1.9 GB and failed at random even at 1.5 GB). The default of 8192 MB leaves room for roughly 10x those rows; raise it
for bigger data. A process at the limit usually raises MemoryError, but native code may crash
(SIGSEGV/SIGABRT) instead.

Each limit bounds one process (RLIMIT_NPROC counts every process and thread of the user and does
not apply to root). A grandchild that starts its own session escapes the group kill but keeps
the limits, including the CPU-time backstop.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from training_tasks.sandbox_io import BoundedLog, Streams

DEFAULT_MEMORY_MB = 8192
KILL_GRACE_S = 1.0
DRAIN_S = 0.5
MB = 1024 * 1024

ENV_ALLOWED = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME"}
    | {"VIRTUAL_ENV", "LD_LIBRARY_PATH", "PYTHONIOENCODING", "PYTHONHASHSEED"}
    | {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_DYNAMIC"}
    | {"MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"}
    | {"VECLIB_MAXIMUM_THREADS", "ARROW_NUM_THREADS", "ARROW_DEFAULT_MEMORY_POOL"}
    | {"MALLOC_ARENA_MAX"}
)
ENV_DEFAULTS = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    # Keep reserved address space close to real use so RLIMIT_AS behaves (see above).
    "MALLOC_ARENA_MAX": "2",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}
ENV_DENIED = re.compile(
    r"(^DATABASE_URL$|^REDIS_URL$|_KEY$|^KEY$|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|SCADA|_DSN$)",
    re.IGNORECASE,
)
MEMORY_SIGNS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory")

# Runs in the child: tie its life to the worker's, apply the limits (never above the inherited
# hard limit), then exec.
_LAUNCHER = """\
import ctypes, os, resource, sys
# PR_SET_PDEATHSIG: die with the worker process that started us, even if it is SIGKILLed.
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)
except (OSError, AttributeError):
    pass
for item in filter(None, sys.argv[1].split(",")):
    name, soft, hard = item.split(":")
    which = getattr(resource, "RLIMIT_" + name)
    ceiling = resource.getrlimit(which)[1]
    soft, hard = int(soft), int(hard)
    if ceiling != resource.RLIM_INFINITY:
        hard = min(hard, ceiling)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write("sandbox: cannot run %r: %s\\n" % (sys.argv[2], exc))
    sys.exit(127)
"""


@dataclass(frozen=True)
class ResourceLimits:
    """Per-process limits for the child; None leaves a limit as inherited.

    `cpu_s=None` means wall timeout x CPU count: a backstop for anything that escapes the kill.
    """

    memory_mb: int | None = DEFAULT_MEMORY_MB
    cpu_s: int | None = None
    file_size_mb: int | None = 1024
    processes: int | None = 2048
    open_files: int | None = 1024

    def launcher_arg(self, timeout_s: float) -> str:
        """The limits as `NAME:soft:hard,...` for the launcher."""
        cpu_s = self.cpu_s or math.ceil(timeout_s * (os.cpu_count() or 1)) + 60
        # SIGXCPU at the soft limit lets the program say why; SIGKILL follows at the hard one.
        items = [("CPU", cpu_s, cpu_s + 5)]
        for name, value in (
            ("AS", self.memory_mb and self.memory_mb * MB),
            ("FSIZE", self.file_size_mb and self.file_size_mb * MB),
            ("NPROC", self.processes),
            ("NOFILE", self.open_files),
        ):
            if value is not None:
                items.append((name, value, value))
        return ",".join(f"{n}:{soft}:{hard}" for n, soft, hard in items)


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended and what it cost."""

    pid: int
    returncode: int
    signal: int | None
    timed_out: bool
    cancelled: bool
    elapsed_s: float
    cpu_s: float
    peak_rss_mb: float
    stderr_tail: tuple[str, ...]
    timeout_s: float
    limits: ResourceLimits

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 on its own."""
        return self.returncode == 0 and not (self.timed_out or self.cancelled)

    def reason(self) -> str:
        """A sentence saying how the run ended, for error messages and logs."""
        if self.cancelled:
            return f"cancelled after {self.elapsed_s:.1f} s"
        if self.timed_out:
            return f"killed after {self.timeout_s:g} s timeout"
        if self.signal is not None:
            return self._signal_reason(self.signal)
        if self.returncode == 0:
            return f"finished in {self.elapsed_s:.1f} s"
        line = self.last_error_line() or "no error output"
        tail = "\n".join(self.stderr_tail)
        if any(sign in tail for sign in MEMORY_SIGNS):
            limit = self.limits.memory_mb
            what = f"hit the memory limit of {limit} MB" if limit else "ran out of memory"
            return f"{what} — exited with code {self.returncode}: {line}"
        if "File too large" in tail:
            return (
                f"wrote a file past the file size limit of {self.limits.file_size_mb} MB — "
                f"exited with code {self.returncode}: {line}"
            )
        return f"exited with code {self.returncode}: {line}"

    def last_error_line(self) -> str:
        """The last non-blank line the program wrote on stderr."""
        return next((line.strip() for line in reversed(self.stderr_tail) if line.strip()), "")

    def _signal_reason(self, number: int) -> str:
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        if number == signal.SIGKILL:
            return f"killed by SIGKILL — most likely {self._memory_cause()}"
        if number == signal.SIGXCPU:
            return f"stopped by SIGXCPU: it used up its CPU time limit ({self.elapsed_s:.0f} s in)"
        if number == signal.SIGXFSZ:
            return f"stopped by SIGXFSZ: a file outgrew the limit of {self.limits.file_size_mb} MB"
        if number in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
            return f"crashed with {name}; {self._memory_cause()} can cause this"
        return f"killed by {name}"

    def _memory_cause(self) -> str:
        limit = self.limits.memory_mb
        return f"the memory limit of {limit} MB" if limit else "the machine's out-of-memory killer"


def allowed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment cut down to an allow-list (locale, paths, thread counts)."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWED or k.startswith("LC_")}
    env = {k: v for k, v in env.items() if not ENV_DENIED.search(k)}
    for name, value in ENV_DEFAULTS.items():
        env.setdefault(name, value)
    env.setdefault("PATH", os.defpath)
    for name, value in (extra or {}).items():
        if ENV_DENIED.search(name):
            raise ValueError(
                f"refusing to pass {name} to a sandboxed program: it looks like a secret or a "
                "connection URL; hand the program a file or a value it needs instead"
            )
        env[name] = value
    return env


def run_sandboxed(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    limits: ResourceLimits,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    cancel: threading.Event | None = None,
    poll_interval_s: float = 0.2,
    max_log_mb: float = 20.0,
) -> SandboxResult:
    """Run argv in a new session with exactly `env` and `limits`; never outlives `timeout_s`."""
    if timeout_s <= 0 or not argv:
        raise ValueError("run_sandboxed needs a program to run and a timeout_s above 0")
    started = time.monotonic()
    log = BoundedLog(log_path, int(max_log_mb * MB)) if log_path else None
    try:
        proc = _spawn(argv, cwd, env, limits.launcher_arg(timeout_s))
    except OSError as exc:
        if log:
            log.close(f"[sandbox] could not start {argv[0]}: {exc}")
        raise
    assert proc.stdout is not None and proc.stderr is not None
    streams = Streams(proc.stdout, proc.stderr, on_line, log)
    watcher = _ExitWatcher(proc.pid)
    streams.wake_on(watcher.fd)
    outcome = "error"
    try:
        outcome = _watch(watcher, streams, started + timeout_s, cancel, poll_interval_s)
    finally:
        result = _finish(proc, watcher, streams, outcome, started, timeout_s, limits)
    return result


def _finish(
    proc: subprocess.Popen[bytes],
    watcher: _ExitWatcher,
    streams: Streams,
    outcome: str,
    started: float,
    timeout_s: float,
    limits: ResourceLimits,
) -> SandboxResult:
    """Kill what is left, reap the child, drain the pipes and describe the run."""
    status, rusage = _stop(proc, watcher, graceful=outcome in ("timed_out", "cancelled"))
    if outcome == "error":  # on_line itself failed: do not call it again while cleaning up
        streams.on_line = None
    streams.drain(time.monotonic() + DRAIN_S)
    returncode, killed_by = _exit_status(status)
    result = SandboxResult(
        pid=proc.pid,
        returncode=returncode,
        signal=killed_by,
        timed_out=outcome == "timed_out",
        cancelled=outcome == "cancelled",
        elapsed_s=time.monotonic() - started,
        cpu_s=(rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
        peak_rss_mb=rusage.ru_maxrss / 1024 if rusage else 0.0,  # Linux reports KiB
        stderr_tail=tuple(streams.stderr_tail),
        timeout_s=timeout_s,
        limits=limits,
    )
    streams.close(
        f"[sandbox] {result.reason()}; cpu {result.cpu_s:.1f} s, "
        f"peak RSS {result.peak_rss_mb:.0f} MB"
    )
    return result


def _spawn(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], limits_arg: str
) -> subprocess.Popen[bytes]:
    """Start the launcher, which applies the limits and execs argv, in a new session."""
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, limits_arg]
    return subprocess.Popen(
        [*launcher, *argv],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _watch(
    watcher: _ExitWatcher,
    streams: Streams,
    deadline: float,
    cancel: threading.Event | None,
    poll_interval_s: float,
) -> str:
    """Pump output until the child exits, the deadline passes or `cancel` is set."""
    while True:
        if watcher.exited():
            return "exited"
        if cancel is not None and cancel.is_set():
            return "cancelled"
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return "timed_out"
        streams.pump(min(poll_interval_s, remaining_s))


def _stop(
    proc: subprocess.Popen[bytes], watcher: _ExitWatcher, *, graceful: bool
) -> tuple[int, resource.struct_rusage | None]:
    """Kill the whole process group (politely first if asked), then reap the child."""
    if graceful:
        _killpg(proc.pid, signal.SIGTERM)
        grace_end = time.monotonic() + KILL_GRACE_S
        while not watcher.exited() and time.monotonic() < grace_end:
            watcher.wait(min(0.05, grace_end - time.monotonic()))
    # The unreaped child still holds the group id, so this cannot hit a recycled group.
    _killpg(proc.pid, signal.SIGKILL)
    watcher.close()
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # something else in this process reaped it
        proc.returncode = -1
        return -1, None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, rusage


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_status(status: int) -> tuple[int, int | None]:
    """(returncode as subprocess reports it, the signal that killed the child or None)."""
    if status < 0:
        return -1, None
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return os.waitstatus_to_exitcode(status), killed_by


class _ExitWatcher:
    """Tells whether the child has exited without reaping it (a pidfd where Linux offers one)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self.fd = os.pidfd_open(pid)
            except OSError:
                self.fd = None

    def exited(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def wait(self, timeout_s: float) -> None:
        """Sleep until the child exits or `timeout_s` passes."""
        if self.fd is None:
            time.sleep(max(timeout_s, 0.0))
        else:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poller.poll(max(timeout_s, 0.0) * 1000)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
