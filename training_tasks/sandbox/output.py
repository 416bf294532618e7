"""Output of a sandboxed program: its stdout and stderr pumped line by line, and a bounded log."""

from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from training_tasks.files import open_append_own

MAX_LINE_BYTES = 1 << 20
STDERR_TAIL_LINES = 40
LOG_TAIL_LINES = 200


class Streams:
    """Reads the child's stdout and stderr without blocking; splits lines; writes the log."""

    def __init__(
        self,
        stdout: IO[bytes],
        stderr: IO[bytes],
        on_line: Callable[[str], None] | None,
        log: BoundedLog | None,
    ) -> None:
        self.files = {stdout.fileno(): stdout, stderr.fileno(): stderr}
        self.stdout_fd = stdout.fileno()
        self.pending = {fd: b"" for fd in self.files}
        self.on_line = on_line
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.log = log
        self.poller = select.poll()
        for fd in self.files:
            os.set_blocking(fd, False)
            self.poller.register(fd, select.POLLIN)

    def wake_on(self, fd: int | None) -> None:
        """Also return from `pump` as soon as `fd` is readable (the child's pidfd)."""
        if fd is not None:
            self.poller.register(fd, select.POLLIN)

    def pump(self, timeout_s: float) -> None:
        """Handle whatever arrives within `timeout_s`."""
        # poll, unlike select, copes with descriptor numbers above 1024 in a busy worker.
        for fd, _ in self.poller.poll(max(timeout_s, 0.0) * 1000):
            if fd in self.pending:
                self._read(fd)

    def drain(self, deadline: float) -> None:
        """Read what is left after the kill, but never wait on a pipe past `deadline`."""
        self.poller = select.poll()
        for fd in self.pending:
            self.poller.register(fd, select.POLLIN)
        while self.pending and (remaining_s := deadline - time.monotonic()) > 0:
            self.pump(remaining_s)
        for fd, rest in list(self.pending.items()):
            if rest:
                self._line(fd, rest)
            self.pending[fd] = b""

    def close(self, footer: str) -> None:
        """Close both pipes, then the log with `footer` as its last line."""
        for stream in self.files.values():
            stream.close()
        if self.log:
            self.log.close(footer)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.poller.unregister(fd)
            rest = self.pending.pop(fd)
            if rest:
                self._line(fd, rest)
            return
        buffer = self.pending[fd] + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > MAX_LINE_BYTES:  # a runaway line must not grow without bound
            lines.append(rest)
            rest = b""
        self.pending[fd] = rest
        for line in lines:
            self._line(fd, line)

    def _line(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if self.log:
            self.log.write(text)
        if fd == self.stdout_fd:
            if self.on_line:
                self.on_line(text)
        else:
            self.stderr_tail.append(text)


class BoundedLog:
    """Appends lines to a file up to a size; past it, keeps only the last lines for the end."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        # The log lies in the script's folder: a link or FIFO left there by an earlier attempt
        # is replaced, never written through.
        self.handle = open(open_append_own(path), "ab")  # noqa: SIM115  # closed in close()
        self.budget = max_bytes
        self.tail: deque[bytes] = deque(maxlen=LOG_TAIL_LINES)
        self.omitted = 0

    def write(self, text: str) -> None:
        """Append one line, or keep it for the tail once the size limit is reached."""
        data = text.encode("utf-8") + b"\n"
        if self.budget >= len(data) and not self.tail:
            self.handle.write(data)
            self.budget -= len(data)
            return
        if len(self.tail) == self.tail.maxlen:
            self.omitted += 1
        self.tail.append(data)

    def close(self, footer: str) -> None:
        """Write the kept tail, a note of how many lines were left out, and `footer`; close."""
        if self.tail:
            self.handle.write(
                f"[... log size limit reached; {self.omitted} lines left out ...]\n".encode()
            )
            self.handle.writelines(self.tail)
        self.handle.write(footer.encode("utf-8") + b"\n")
        self.handle.close()
