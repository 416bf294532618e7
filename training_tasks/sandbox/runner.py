"""Run an untrusted program with rlimits, an allow-listed environment and what isolation Linux allows.

The child is a launcher (`python -I -S -c ...`, see `launcher`) that sets the limits,
isolates, runs the program and exits as it did, so no Python code runs between fork and exec in
this process: `run_sandboxed` is safe to call from several threads and installs no handlers.
The limits and the description of how a run ended live in `result`.

Isolation. Where the kernel lets this process (as root, or through an unprivileged user
namespace) the program runs as pid 2 of a new PID namespace with the launcher's tiny init as
pid 1, in its own mount and network namespaces: no network (not even loopback), a /proc that
shows only its own processes (so not the worker's environment with database and SCADA URLs),
no capabilities even as root (so it cannot raise its rlimits or leave its namespaces), and a
seccomp filter that refuses `socket()`, which also shuts Unix sockets such as PostgreSQL's.

Fork server. With `fork_server`, a `<python> <script.py> [ARG...]` run is forked from a fork
server instead (one per interpreter and environment, started on first use; see `forkserver` and
`zygote`) that imported the bundled training script's libraries once: about 1 s less per run.
Its child takes the same launcher path (limits, namespaces, init, capabilities, no_new_privs,
SCHED_IDLE, seccomp) and only at the last step runs the script in-process instead of exec. Such
a child is not this process's: it is watched through a pidfd the fork server hands over, killed
as any other run, and reaped by the fork server when asked, which sends its status and usage.

Files (see `mounts`). The program can write only into its working folder and into a
private /tmp, /var/tmp and /dev/shm: one fresh tmpfs of at most `tmp_size_mb`, which no other
run and not the host ever see, and which TMPDIR (if set) names. Everything else is read-only,
wherever the service is installed: its code, its virtualenv, `ML_BASE_PATH` with every
organization's models, data and scripts, and whatever the host keeps in /tmp and /var/tmp (the
top entries of those show, read-only, at their usual paths, so a checkout, a venv or data files
under /tmp stay readable). It can still *read* whatever its user can read.

Where namespaces are not allowed (Docker's default seccomp profile refuses them) the seccomp
filter alone keeps the network shut, and the sandbox logs once at WARNING what scripts can
reach instead: /proc, every file its user may write, and the host's /tmp shared with every
other process (so, where the checkout, the venv or `ML_BASE_PATH` lie under /tmp, those too).

Processes. RLIMIT_NPROC counts every process and thread of the user and does not apply to
root, so the process limit is enforced twice: inside the PID namespace by its own pid_max
(`processes` + 300, Linux 6.14 and later; a fork then fails with EAGAIN), and everywhere by this
process, which counts the program's processes every `poll_interval_s` and stops the run past
`processes`. Stopping kills every descendant of the launcher, scanning /proc until none is
left. With a PID namespace killing its init makes the kernel kill everything in it at once,
with no race against fork, and a process that calls setsid cannot leave it; without one the
launcher is a child subreaper, so orphans that started their own session still come under it.
When the program ends on its own, whatever it left running is killed the same way, so a
grandchild holding stdout open cannot keep a run waiting.

Memory (RLIMIT_AS) bounds *virtual* memory, which glibc, OpenMP and Arrow reserve well beyond what
they touch: glibc gives each thread a malloc arena of 64 MB address space (up to 8 per core) and
Arrow's default mimalloc reserves large arenas too, so without care the need grows with the core
count and failures come at random points. The sandbox therefore sets MALLOC_ARENA_MAX=2 and
ARROW_DEFAULT_MEMORY_POOL=system (a caller's own values win). Measured on 2 cores, the bundled
script training 1M rows x 10 features x 100 iterations then peaks at about 330 MB resident and
510 MB of address space and runs reliably from 640 MB (without the two settings it reserves 930 MB
to 1.9 GB and failed at random even at 1.5 GB). The default of 8192 MB leaves room for roughly
10x those rows; raise it for bigger data. A process at the limit usually raises MemoryError, but
native code may crash (SIGSEGV/SIGABRT) instead. Each rlimit bounds one process. The private
/tmp is memory too (tmpfs), on top of `memory_mb`; it defaults to the file size limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from training_tasks.sandbox import forkserver
from training_tasks.sandbox import launcher as sandbox_launcher
from training_tasks.sandbox.children import Child
from training_tasks.sandbox.forkserver import Usage
from training_tasks.sandbox.output import BoundedLog, Streams
from training_tasks.sandbox.processes import kill_processes_below, processes_below
from training_tasks.sandbox.result import MB, ResourceLimits, SandboxResult

__all__ = ["KILL_GRACE_S", "ResourceLimits", "SandboxResult", "allowed_env", "run_sandboxed"]

log = logging.getLogger(__name__)

KILL_GRACE_S = 1.0
DRAIN_S = 0.5

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
    r"(^DATABASE_URL$|^REDIS_URL$|^BROKER_URL$|^MODEL_STORE_URL$|^AWS_|_KEYS?$|^KEYS?$|SECRET"
    r"|PASSWORD|PASSWD|TOKEN|CREDENTIAL|SCADA|_DSN$)",
    re.IGNORECASE,
)
# Isolation a host may not allow, and what a training script can do without it.
ISOLATION_GAPS = {
    "network": "training scripts can reach the network (and local Unix sockets)",
    "proc": "training scripts can read /proc of this user's other processes, such as the "
    "worker's environment with its database and SCADA URLs",
    "readonly": "training scripts can write every file this user can, not only their own folder",
    "tmp": "training scripts share the host's /tmp, /var/tmp and /dev/shm with every process: they "
    "can read and replace other runs' temporary files, and anything of the service that lies "
    "under /tmp (its code, its virtualenv, ML_BASE_PATH)",
}
# When the files are read-only but the kernel refused the private tmpfs.
NO_PRIVATE_TMP = (
    "training scripts get no private /tmp: the host's /tmp, /var/tmp and /dev/shm are read-only "
    "to them, so tempfile fails (the kernel refused a tmpfs mount in the sandbox)"
)
PACKAGE_ROOT = Path(sandbox_launcher.__file__).resolve().parents[2]  # holds training_tasks/
_warned: set[str] = set()


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
    fork_server: bool = False,
) -> SandboxResult:
    """Run argv sandboxed with exactly `env` and `limits`; never outlives `timeout_s`.

    With `fork_server`, a `<python> <script.py> [ARG...]` argv is forked from a fork server that
    imported the bundled training script's libraries (see `zygote`), after the same launcher
    steps; where none can take it the launcher is exec'd as without.
    """
    if timeout_s <= 0 or not argv:
        raise ValueError("run_sandboxed needs a program to run and a timeout_s above 0")
    # Started before the clock: a new fork server's imports are not the run's time.
    server = forkserver.server_for(argv, env, limits) if fork_server else None
    started = time.monotonic()
    log = BoundedLog(log_path, int(max_log_mb * MB)) if log_path else None
    report_r, report_w = os.pipe()
    try:
        child = _spawn(argv, cwd, env, limits, timeout_s, report_w, server)
    except OSError as exc:
        os.close(report_r)
        if log:
            log.close(f"[sandbox] could not start {argv[0]}: {exc}")
        raise
    finally:
        os.close(report_w)
    streams = Streams(child.stdout, child.stderr, on_line, log)
    streams.wake_on(child.fd)
    outcome = "error"
    try:
        outcome = _watch(child, streams, started + timeout_s, cancel, poll_interval_s, limits)
    finally:
        try:
            result = _finish(child, streams, outcome, started, timeout_s, limits, report_r)
        finally:
            os.close(report_r)
    return result


def _finish(
    child: Child,
    streams: Streams,
    outcome: str,
    started: float,
    timeout_s: float,
    limits: ResourceLimits,
    report_fd: int,
) -> SandboxResult:
    """Kill what is left, reap the child, drain the pipes and describe the run."""
    status, usage = _stop(child, graceful=outcome in ("timed_out", "cancelled"))
    if outcome == "error":  # on_line itself failed: do not call it again while cleaning up
        streams.on_line = None
    streams.drain(time.monotonic() + DRAIN_S)
    returncode, killed_by = _exit_status(status)
    lost = child.forked and status == -1
    if lost:  # its launcher died with the fork server, of SIGKILL (the parent-death signal)
        log.warning("training sandbox: the fork server died during a run, which was killed")
        returncode, killed_by = -signal.SIGKILL, signal.SIGKILL
    isolation = sandbox_launcher.read_report(report_fd)
    if isolation is not None:
        _warn_about_gaps(isolation, limits)
    result = SandboxResult(
        pid=child.pid,
        returncode=returncode,
        signal=None if outcome == "too_many_processes" else killed_by,
        timed_out=outcome == "timed_out",
        cancelled=outcome == "cancelled",
        elapsed_s=time.monotonic() - started,
        cpu_s=usage.cpu_s if usage else 0.0,
        peak_rss_mb=usage.max_rss_kb / 1024 if usage else 0.0,  # Linux reports KiB
        stderr_tail=tuple(streams.stderr_tail),
        timeout_s=timeout_s,
        limits=limits,
        process_limit_hit=outcome == "too_many_processes",
        isolation=isolation or frozenset(),
        forked=child.forked,
        fork_server_lost=lost,
    )
    streams.close(
        f"[sandbox] {result.reason()}; cpu {result.cpu_s:.1f} s, "
        f"peak RSS {result.peak_rss_mb:.0f} MB{' (fork server)' if child.forked else ''}"
    )
    return result


def _warn_about_gaps(isolation: frozenset[str], limits: ResourceLimits) -> None:
    """Log once per process each way this host lets training scripts out of the sandbox."""
    missing = {"proc", "readonly", "tmp"} - isolation
    if not limits.network and not {"net", "seccomp"} & isolation:
        missing.add("network")
    for gap in sorted(missing - _warned):
        _warned.add(gap)
        in_effect = " ".join(sorted(isolation)) or "none"
        if gap == "tmp" and "readonly" in isolation:
            log.warning("training sandbox: %s; isolation in effect: %s", NO_PRIVATE_TMP, in_effect)
            continue
        log.warning(
            "training sandbox: %s: this host does not let the worker create namespaces "
            "(run as root or allow unprivileged user namespaces; in Docker, a seccomp profile "
            "that allows unshare); isolation in effect: %s",
            ISOLATION_GAPS[gap],
            in_effect,
        )


def _spawn(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    limits: ResourceLimits,
    timeout_s: float,
    report_fd: int,
    server: forkserver.ForkServer | None,
) -> Child:
    """Start the launcher, which applies the limits, isolates and runs argv, in a new session:
    forked by `server` if it can, else exec'd."""
    mode = "network" if limits.network else "isolated"
    if server is not None:
        launcher = {"limits": limits.launcher_arg(timeout_s), "mode": mode}
        try:
            return _fork(server, argv, cwd, env, launcher, report_fd)
        except forkserver.ForkServerError as exc:
            forkserver.discard(server, f"{exc}; this run starts a fresh interpreter")
    launcher_argv = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        sandbox_launcher.LAUNCH,
        str(PACKAGE_ROOT),
        limits.launcher_arg(timeout_s),
    ]
    proc = subprocess.Popen(
        [*launcher_argv, mode, str(report_fd), *argv],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        pass_fds=(report_fd,),
    )
    assert proc.stdout is not None and proc.stderr is not None
    return Child(proc.pid, proc.stdout, proc.stderr, popen=proc)


def _fork(
    server: forkserver.ForkServer,
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    launcher: dict[str, str],
    report_fd: int,
) -> Child:
    """Have the fork server start the launcher, with pipes for its output."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        remote = server.start(argv, cwd, env, launcher, (out_w, err_w, report_fd))
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w):
            os.close(fd)
    stdout, stderr = open(out_r, "rb", buffering=0), open(err_r, "rb", buffering=0)  # noqa: SIM115
    return Child(remote.pid, stdout, stderr, remote=remote)


def _watch(
    child: Child,
    streams: Streams,
    deadline: float,
    cancel: threading.Event | None,
    poll_interval_s: float,
    limits: ResourceLimits,
) -> str:
    """Pump output until the child exits, the deadline passes, `cancel` is set or it forks
    past its process limit."""
    next_count = time.monotonic() + poll_interval_s
    while True:
        if child.exited():
            return "exited"
        if cancel is not None and cancel.is_set():
            return "cancelled"
        now = time.monotonic()
        if now >= deadline:
            return "timed_out"
        if limits.processes is not None and now >= next_count:
            # The launcher and, in a PID namespace, its init are not the program's.
            if len(processes_below(child.pid)) > limits.processes + 1:
                return "too_many_processes"
            next_count = now + poll_interval_s
        streams.pump(min(poll_interval_s, deadline - now))


def _stop(child: Child, *, graceful: bool) -> tuple[int, Usage | None]:
    """Stop the program and everything it started (politely first if asked), then reap.

    The status is -1 where it cannot be known: something else in this process reaped the
    child, or the fork server that started it died (and its launcher with it).
    """
    if graceful:
        _killpg(child.pid, signal.SIGTERM)
        _wait_exit(child, KILL_GRACE_S)
    # The launcher survives this, reaps the program (so its cost is counted) and exits.
    kill_processes_below(child.pid)
    _wait_exit(child, KILL_GRACE_S)
    # The unreaped child still holds the group id, so this cannot hit a recycled group (a fork
    # server reaps its child only when asked, below).
    _killpg(child.pid, signal.SIGKILL)
    status, usage = child.reap()
    child.close()
    return status, usage


def _wait_exit(child: Child, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not child.exited() and time.monotonic() < end:
        child.wait(min(0.05, end - time.monotonic()))


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_status(status: int) -> tuple[int, int | None]:
    """(returncode as subprocess reports it, the signal that killed the child or None)."""
    if status < 0:
        return -1, None
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return os.waitstatus_to_exitcode(status), killed_by
