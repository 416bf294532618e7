"""A fork server: one interpreter that imported the training script's libraries once and forks a
sandboxed child for each run. The worker's side is `forkserver`.

Started as `PYTHON_ENV -c MAIN ROOT FD PAD` with exactly the sandbox's allow-listed environment
(so no secret is ever in its memory), it imports what the bundled training script imports, the
way the script does (LightGBM with pandas and scikit-learn hidden), says hello on the control
socket FD and waits. It starts no thread of its own (numpy's OpenBLAS and Arrow's jemalloc start
theirs at import and stop them at fork), never runs a parallel region and never runs tenant code.

For each run the worker sends one end of a socket pair over FD, and the server forks. The child
reads the run itself from that socket (argv, cwd, env, limits, mode, and its output and report
descriptors), so no run's data passes through the server's memory. It closes what it inherited,
starts a session, sends its pid and a pidfd of itself to the worker and takes the launcher's
path (`launcher.run_launcher`: limits, namespaces, init, capabilities, no_new_privs, SCHED_IDLE,
seccomp); at the last step it runs the script in-process (`inprocess`) where the worker said so,
and execs argv otherwise.

The server says on the run's socket when the child has exited, but reaps it only when the worker
asks, so its pid and process group stay taken until the worker has killed what the run left; it
then sends the wait status and resource usage. If the worker's end closes first (the worker
died), the server kills the child and all below it. Once FD closes it takes no more runs, and
exits when its children are gone. PAD only makes room in the command line, which each child
overwrites with its run's argv.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from training_tasks.sandbox.inprocess import close_other_fds, run_script, show_command_line
from training_tasks.sandbox.launcher import exec_program, run_launcher
from training_tasks.sandbox.processes import kill_processes_below

# Run as `python -c MAIN ROOT FD PAD`: -c put the current folder first on sys.path; it goes,
# and ROOT (the folder holding `training_tasks`) comes first only for the server's own code.
MAIN = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "path = list(sys.path)\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from training_tasks.sandbox.zygote import serve\n"
    "serve(int(sys.argv[2]), path)\n"
)
COMMAND_LINE_ROOM = 1024
MAX_MESSAGE_BYTES = 1 << 20
# What ml/scripts/train_model.py imports, as it does: under its HideModules("pandas", "sklearn"),
# which also decides what LightGBM supports. A script that wants LightGBM's scikit-learn API
# would find it missing here: only the bundled script is sent to a fork server.
PRELOAD = (
    "numpy",
    "numpy.lib.stride_tricks",
    "pyarrow",
    "pyarrow.parquet",
    "pyarrow.compute",
    "lightgbm",
    "onnx",
    "onnx.helper",
    "onnx.numpy_helper",
    "onnxmltools",
    "onnxmltools.convert.common.data_types",
    "concurrent.futures",
)
HIDDEN = ("pandas", "sklearn")


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One JSON message, with `fds` passed along (SCM_RIGHTS)."""
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One JSON message and the descriptors that came with it; None at the end of the stream."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE_BYTES, max_fds, socket.MSG_CMSG_CLOEXEC)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or (data and not data.startswith(b"{")):
        for fd in fds:
            os.close(fd)
        raise ValueError("a truncated or malformed message on the fork server's socket")
    return (json.loads(data) if data else None), fds


def serve(control_fd: int, path: list[str]) -> NoReturn:
    """The server's life: import, say hello, serve runs until the worker closes `control_fd`."""
    control = socket.socket(fileno=control_fd)
    hello = preload()
    keep = frozenset(_open_fds()) - {control_fd}  # the libraries' own descriptors, if any
    send(control, hello)
    _Server(control, keep, path).loop()
    os._exit(0)


def preload() -> dict[str, Any]:
    """Import PRELOAD as the bundled script would; returns the hello (its cost, what is missing)."""
    hidden = _Hide(HIDDEN)
    sys.meta_path.insert(0, hidden)
    missing = []
    try:
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)  # the script will say so itself, in its own run
    finally:
        sys.meta_path.remove(hidden)
    gc.collect()
    gc.freeze()  # children never scan (and so never copy) what the server imported
    status = _status()
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "missing": missing,
        "vmBytes": int(status["VmSize"].split()[0]) * 1024,
        "rssBytes": int(status["VmRSS"].split()[0]) * 1024,
        "threads": int(status["Threads"]),
    }


class _Hide:
    """Makes the named packages look absent while the server imports (see train_model.py)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)


def _status() -> dict[str, str]:
    with open("/proc/self/status") as status:
        return dict(line.split(":\t", 1) for line in status.read().splitlines() if ":\t" in line)


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]


@dataclass
class _Run:
    """A child and the socket its worker listens on."""

    sock: socket.socket
    pid: int
    pidfd: int
    exited: bool = False
    reap_asked: bool = False
    listening: bool = True


class _Server:
    """The poll loop: the control socket, each run's socket and each child's pidfd.

    A run's socket holds the run's request until the child has read it, so the server listens
    only for its closing (POLLHUP) until the child has exited, and for messages after.
    """

    def __init__(self, control: socket.socket, keep: frozenset[int], path: list[str]) -> None:
        self.control = control
        self.keep = keep
        self.path = path
        self.poller = select.poll()
        self.poller.register(control.fileno(), select.POLLIN)
        self.by_sock: dict[int, _Run] = {}
        self.by_pidfd: dict[int, _Run] = {}
        self.accepting = True
        self.changes = 0  # descriptors opened or closed: the rest of a poll's events may be stale

    def loop(self) -> None:
        while self.accepting or self.by_sock:
            for fd, events in self.poller.poll():
                changes = self.changes
                if fd == self.control.fileno() and self.accepting:
                    self._on_control()
                elif fd in self.by_pidfd:
                    self._on_exit(self.by_pidfd[fd])
                elif fd in self.by_sock:
                    self._on_message(self.by_sock[fd], events)
                if self.changes != changes:
                    break

    def _on_control(self) -> None:
        try:
            message, fds = receive(self.control, 1)
        except (OSError, ValueError):
            message, fds = None, []
        if message is None:  # the worker closed it, or died: no more runs
            self.accepting = False
            self.poller.unregister(self.control.fileno())
        for fd in fds:
            if message is None:
                os.close(fd)
            else:
                self._start(fd)

    def _start(self, fd: int) -> None:
        self.changes += 1
        try:
            pid = os.fork()
        except OSError:
            os.close(fd)  # the worker sees the socket close and runs the program itself
            return
        if pid == 0:
            _child(fd, self.keep, self.path)
        run = _Run(socket.socket(fileno=fd), pid, os.pidfd_open(pid))
        self.by_sock[fd] = run
        self.by_pidfd[run.pidfd] = run
        self.poller.register(fd, 0)  # POLLHUP only: the request is the child's to read
        self.poller.register(run.pidfd, select.POLLIN)

    def _on_exit(self, run: _Run) -> None:
        run.exited = True
        self.poller.unregister(run.pidfd)
        del self.by_pidfd[run.pidfd]
        if run.reap_asked:
            self._reap(run)
            return
        self.poller.modify(run.sock.fileno(), select.POLLIN)
        self._tell(run, {"exited": True})

    def _on_message(self, run: _Run, events: int) -> None:
        message = None
        if events & select.POLLIN:
            with contextlib.suppress(OSError, ValueError):
                message, _ = receive(run.sock)
        if message is None:  # the worker is gone: nobody else will stop what is left
            run.listening = False
            self.poller.unregister(run.sock.fileno())
            kill_processes_below(run.pid)
        elif not message.get("reap"):
            return  # a request the child never read
        run.reap_asked = True
        if run.exited:
            self._reap(run)
        else:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)

    def _reap(self, run: _Run) -> None:
        self.changes += 1
        _, status, usage = os.wait4(run.pid, 0)
        cpu_s = usage.ru_utime + usage.ru_stime
        self._tell(run, {"status": status, "cpuS": cpu_s, "maxRssKb": usage.ru_maxrss})
        if run.listening:
            self.poller.unregister(run.sock.fileno())
        del self.by_sock[run.sock.fileno()]
        run.sock.close()
        os.close(run.pidfd)

    def _tell(self, run: _Run, message: dict[str, Any]) -> None:
        if run.listening:
            with contextlib.suppress(OSError):
                send(run.sock, message)


def _child(fd: int, keep: frozenset[int], path: list[str]) -> NoReturn:
    """In the forked child: take the run from `fd`, then become its launcher and program."""
    try:
        close_other_fds({0, 1, 2, fd, *keep})  # the control socket and other runs' sockets
        sock = socket.socket(fileno=fd)
        request, report_fd = _take_run(sock)
    except BaseException:  # nothing of the run has started: the worker is told by the exit
        os._exit(127)
    argv = list(request["argv"])
    show_command_line([sys.executable, "(sandbox launcher)", *argv])  # as `ps` shows an exec'd one
    start = exec_program
    if request.get("inProcess"):
        start = functools.partial(run_script, keep_fds=keep, path=path)
    run_launcher(request["limits"], request["mode"] == "network", report_fd, argv, start)


def _take_run(sock: socket.socket) -> tuple[dict[str, Any], int]:
    """Read the run, set up its session, stdio, folder and environment; tell the worker our pid."""
    request, fds = receive(sock, 3)
    if request is None or len(fds) != 3:
        raise ValueError("a run needs its stdout, stderr and report descriptors")
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    for target, source in ((0, null), (1, fds[0]), (2, fds[1])):
        os.dup2(source, target)
    for source in (null, fds[0], fds[1]):
        if source > 2:
            os.close(source)
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        send(sock, {"error": str(exc), "errno": exc.errno})
        os._exit(127)
    os.environ.clear()
    os.environ.update(request["env"])
    pidfd = os.pidfd_open(os.getpid())
    send(sock, {"pid": os.getpid()}, [pidfd])
    os.close(pidfd)
    sock.close()
    return request, fds[2]
