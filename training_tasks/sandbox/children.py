"""A started sandboxed program as the worker sees it: its pid and output pipes, whether it has
exited, and its reaping, be it the worker's own child (exec) or a fork server's (`forkserver`)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import IO

from training_tasks.sandbox.forkserver import RemoteRun, Usage


class Child:
    """The launcher of one run: watched through a pidfd where Linux offers one."""

    def __init__(
        self,
        pid: int,
        stdout: IO[bytes],
        stderr: IO[bytes],
        *,
        popen: subprocess.Popen[bytes] | None = None,
        remote: RemoteRun | None = None,
    ) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.popen = popen
        self.remote = remote
        self.fd: int | None = remote.pidfd if remote is not None else _pidfd(pid)

    @property
    def forked(self) -> bool:
        """Whether a fork server started it."""
        return self.remote is not None

    def exited(self) -> bool:
        """Whether it has ended (without reaping it)."""
        if self.remote is not None:
            poller = select.poll()  # not select(): a busy worker's descriptors pass 1024
            poller.register(self.remote.pidfd, select.POLLIN)
            return bool(poller.poll(0))
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def wait(self, timeout_s: float) -> None:
        """Sleep until it exits or `timeout_s` passes."""
        if self.fd is None:
            time.sleep(max(timeout_s, 0.0))
        else:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poller.poll(max(timeout_s, 0.0) * 1000)

    def reap(self) -> tuple[int, Usage | None]:
        """Its wait status and what it cost; (-1, None) if that cannot be known."""
        if self.remote is not None:
            return self.remote.reap()
        try:
            _, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:  # something else in this process reaped it
            if self.popen is not None:
                self.popen.returncode = -1
            return -1, None
        if self.popen is not None:
            self.popen.returncode = os.waitstatus_to_exitcode(status)
        return status, Usage(usage.ru_utime + usage.ru_stime, usage.ru_maxrss)

    def close(self) -> None:
        """Let go of the pidfd (and a fork server's socket)."""
        if self.remote is not None:
            self.remote.close()
        elif self.fd is not None:
            os.close(self.fd)
        self.fd = None


def _pidfd(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None
