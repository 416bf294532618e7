"""The worker's side of the fork server (`zygote`): one per interpreter and environment, started
on first use, handed runs; where it cannot take a run, the caller execs the launcher as before.

A fork server is keyed by the interpreter and the whole environment of the runs it serves: its
environment is theirs (so what libraries read at import, such as OMP_*, MALLOC_ARENA_MAX or
ARROW_*, is what a fresh process would read), and a run with another environment gets another
server (at most MAX_SERVERS per process, the least recently used stopping first). One that fails
to start is not tried again for RETRY_AFTER_S; one that dies or misbehaves is dropped, and the
next run starts a new one. A run whose memory limit leaves less than HEADROOM_MB above what the
server has mapped is exec'd, so that a small limit means what it means in a fresh process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from training_tasks.sandbox import zygote
from training_tasks.sandbox.result import MB, ResourceLimits

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 10.0
RETRY_AFTER_S = 300.0
HEADROOM_MB = 256
MAX_SERVERS = 2
PACKAGE_ROOT = Path(zygote.__file__).resolve().parents[2]  # holds training_tasks/
ServerKey = tuple[str, tuple[tuple[str, str], ...]]


class ForkServerError(Exception):
    """The fork server could not start a run; nothing of the run has started."""


class Usage(NamedTuple):
    """What a finished run cost: CPU seconds and peak resident memory (KiB, as Linux says)."""

    cpu_s: float
    max_rss_kb: int


def supported() -> bool:
    """Whether this platform has what a fork server needs (Linux pidfds, SCM_RIGHTS)."""
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def runs_a_script(argv: Sequence[str]) -> bool:
    """Whether argv is `<python> <script.py> [ARG...]`, which a fork server runs in-process."""
    return len(argv) >= 2 and argv[1].endswith(".py") and os.path.isfile(argv[1])


class RemoteRun:
    """A run the fork server started: its pid, a pidfd of it, and the socket its status comes on."""

    def __init__(self, sock: socket.socket, pid: int, pidfd: int) -> None:
        self.sock = sock
        self.pid = pid
        self.pidfd = pidfd

    def reap(self, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[int, Usage | None]:
        """Have the server reap the run: its wait status and usage, or -1 if the server is gone."""
        try:
            zygote.send(self.sock, {"reap": True})
            while (reply := _reply(self.sock, timeout_s)) is not None:
                if "status" in reply:
                    return int(reply["status"]), Usage(float(reply["cpuS"]), int(reply["maxRssKb"]))
        except (OSError, ValueError, KeyError):
            pass
        return -1, None

    def close(self) -> None:
        """Close the socket and the pidfd (the server kills the run if it was still going)."""
        self.sock.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


class ForkServer:
    """One fork server process and its control socket."""

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [python, "-c", zygote.MAIN, str(PACKAGE_ROOT), str(theirs.fileno())]
        try:
            self.proc = subprocess.Popen(
                [*argv, " " * zygote.COMMAND_LINE_ROOM],
                env=dict(env),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a ^C meant for the worker is not for the server
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"cannot start {python}: {exc}") from exc
        finally:
            theirs.close()
        self.control = ours
        try:
            hello = _reply(ours, START_TIMEOUT_S)
        except (OSError, ValueError):
            hello = None
        if hello is None or "vmBytes" not in hello:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1)  # it closed the socket: it is exiting
            code = self.proc.poll()
            self.kill()
            what = f"was not ready in {START_TIMEOUT_S:g} s"
            if code is not None:
                what = f"exited with code {code} before it was ready"
            raise ForkServerError(f"fork server {self.proc.pid} ({python}) {what}")
        self.hello: dict[str, Any] = hello
        self.vm_bytes = int(hello["vmBytes"])

    def start(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        launcher: dict[str, Any],
        fds: tuple[int, int, int],
    ) -> RemoteRun:
        """Have the server fork a child that runs argv sandboxed with stdout, stderr and report
        `fds`; raise ForkServerError (nothing started) or OSError (a bad cwd, as Popen would)."""
        request = {"argv": list(argv), "cwd": str(cwd), "env": dict(env), "inProcess": True}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                zygote.send(ours, {**request, **launcher}, fds)
                zygote.send(self.control, {"run": True}, [theirs.fileno()])
            except OSError as exc:
                raise ForkServerError(self._ended(f"refused the run ({exc})")) from exc
            finally:
                theirs.close()
            return self._started(ours)
        except BaseException:
            ours.close()  # the server kills whatever it started for us
            raise

    def _started(self, sock: socket.socket) -> RemoteRun:
        try:
            reply, fds = _reply_with_fds(sock, REPLY_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            raise ForkServerError(self._ended(f"answered badly ({exc})")) from exc
        if reply is not None and "pid" in reply and len(fds) == 1:
            return RemoteRun(sock, int(reply["pid"]), fds[0])
        for fd in fds:
            os.close(fd)
        if reply is not None and "error" in reply:
            raise OSError(int(reply.get("errno") or 0), str(reply["error"]))
        if reply is not None and reply.get("exited"):
            status, _ = RemoteRun(sock, -1, -1).reap()
            raise ForkServerError(f"fork server's child ended before the run began ({status})")
        raise ForkServerError(self._ended(f"did not start the run in {REPLY_TIMEOUT_S:g} s"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Take no more runs; the server exits once the runs it holds are over."""
        self.control.close()

    def kill(self) -> None:
        """End the server now; its runs die with it (their launchers' parent-death signal)."""
        self.control.close()
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def _ended(self, what: str) -> str:
        code = self.proc.poll()
        state = "is still running" if code is None else f"exited with code {code}"
        return f"fork server {self.proc.pid} {what} ({state})"


def _reply(sock: socket.socket, timeout_s: float) -> dict[str, Any] | None:
    reply, fds = _reply_with_fds(sock, timeout_s)
    for fd in fds:
        os.close(fd)
    return reply


def _reply_with_fds(
    sock: socket.socket, timeout_s: float
) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message within `timeout_s` (None if none came or the socket closed)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if not poller.poll(timeout_s * 1000):
        return None, []
    return zygote.receive(sock, 1)


# ----- One fork server per interpreter and environment, per process -----

_servers: dict[ServerKey, ForkServer] = {}
_failed_until: dict[ServerKey, float] = {}
_stopped: list[ForkServer] = []
_lock = threading.Lock()


def server_for(
    argv: Sequence[str], env: Mapping[str, str], limits: ResourceLimits
) -> ForkServer | None:
    """The fork server to run argv with `env` and `limits`, started if need be; None when the run
    should be exec'd instead (not a script, no support here, the server cannot start, or the
    memory limit is too small for what the server has mapped)."""
    if not supported() or not runs_a_script(argv):
        return None
    key: ServerKey = (argv[0], tuple(sorted(env.items())))
    with _lock:
        server = _servers.pop(key, None)
        if server is not None and not server.alive():
            log.warning("training sandbox: %s; starting a new one", server._ended("died"))
            server.kill()
            server = None
        if server is None:
            server = _start(key)
            if server is None:
                return None
        _servers[key] = server  # now the most recently used
        _evict()
    if limits.memory_mb is not None and limits.memory_mb * MB < server.vm_bytes + HEADROOM_MB * MB:
        return None
    return server


def discard(server: ForkServer, reason: str) -> None:
    """Drop a server that misbehaved (logged with `reason`); the next run starts a new one."""
    log.warning("training sandbox: dropping the fork server: %s", reason)
    with _lock:
        for key, known in list(_servers.items()):
            if known is server:
                del _servers[key]
    server.kill()


def _start(key: ServerKey) -> ForkServer | None:
    if _failed_until.get(key, 0.0) > time.monotonic():
        return None
    started = time.monotonic()
    try:
        server = ForkServer(key[0], dict(key[1]))
    except ForkServerError as exc:
        _failed_until[key] = time.monotonic() + RETRY_AFTER_S
        log.warning(
            "training sandbox: %s; training runs start a fresh interpreter each (about 1 s "
            "more per run) and the fork server is tried again in %g s",
            exc,
            RETRY_AFTER_S,
        )
        return None
    hello = server.hello
    log.info(
        "training sandbox: fork server %d ready in %.1f s (%s, %.0f MB resident%s)",
        server.proc.pid,
        time.monotonic() - started,
        key[0],
        hello["rssBytes"] / MB,
        f", missing {', '.join(hello['missing'])}" if hello["missing"] else "",
    )
    return server


def _evict() -> None:
    while len(_servers) > MAX_SERVERS:
        oldest = next(iter(_servers))
        server = _servers.pop(oldest)
        server.stop()
        _stopped.append(server)
    _stopped[:] = [server for server in _stopped if server.alive()]  # reaps those that ended


def _forget_after_fork() -> None:
    """A forked child does not share its parent's servers (nor the lock's state)."""
    global _lock
    for server in [*_servers.values(), *_stopped]:
        server.control.close()
        server.proc.returncode = 0  # not ours to reap
    _servers.clear()
    _stopped.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
