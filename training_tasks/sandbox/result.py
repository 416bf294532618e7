"""The limits a sandboxed run gets, and how it ended, told in words a person can act on."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass

from training_tasks.sandbox import mounts

DEFAULT_MEMORY_MB = 8192
MB = 1024 * 1024
MEMORY_SIGNS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory")


@dataclass(frozen=True)
class ResourceLimits:
    """Per-process limits for the child; None leaves a limit as inherited.

    `cpu_s=None` means wall timeout x CPU count: a backstop for anything that escapes the kill.
    `processes` bounds the program's processes at once (see `training_tasks.sandbox.runner`);
    `network=True` lets it use the network (and sockets at all). `tmp_size_mb` bounds its private
    /tmp, /var/tmp and /dev/shm together (memory: they are one tmpfs); None means `file_size_mb`,
    or 1024 MB.
    """

    memory_mb: int | None = DEFAULT_MEMORY_MB
    cpu_s: int | None = None
    file_size_mb: int | None = 1024
    processes: int | None = 1024
    open_files: int | None = 1024
    network: bool = False
    tmp_size_mb: int | None = None

    @property
    def private_tmp_mb(self) -> int:
        """The size of the private /tmp, /var/tmp and /dev/shm together."""
        return self.tmp_size_mb or self.file_size_mb or mounts.DEFAULT_TMP_MB

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
        items.append(("TMP", self.private_tmp_mb * MB, self.private_tmp_mb * MB))
        return ",".join(f"{n}:{soft}:{hard}" for n, soft, hard in items)


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended and what it cost.

    `signal` is the signal that ended the program, None if it exited or if the sandbox stopped
    it for going over its process limit (`process_limit_hit`). `isolation` holds what the
    launcher reported as in effect (`pid`, `net`, `proc`, `readonly`, `seccomp`, ...); `forked`
    says that a fork server started it (in-process, after the same launcher steps), and
    `fork_server_lost` that the fork server died during the run, which killed it.
    """

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
    process_limit_hit: bool = False
    isolation: frozenset[str] = frozenset()
    forked: bool = False
    fork_server_lost: bool = False

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 on its own."""
        return self.returncode == 0 and not (
            self.timed_out or self.cancelled or self.process_limit_hit or self.fork_server_lost
        )

    def reason(self) -> str:
        """A sentence saying how the run ended, for error messages and logs."""
        if self.cancelled:
            return f"cancelled after {self.elapsed_s:.1f} s"
        if self.timed_out:
            return f"killed after {self.timeout_s:g} s timeout"
        if self.process_limit_hit:
            return (
                f"was killed with all its processes for starting more than "
                f"{self.limits.processes} at once (the process limit; a fork bomb?)"
            )
        if self.fork_server_lost:
            return (
                "was killed when the fork server it was started from died "
                "(the next run starts a new one)"
            )
        if self.signal is not None:
            return self._signal_reason(self.signal)
        if self.returncode == 0:
            return f"finished in {self.elapsed_s:.1f} s"
        line = self.last_error_line() or "no error output"
        return f"{self._cause()}exited with code {self.returncode}: {line}"

    def last_error_line(self) -> str:
        """The last non-blank line the program wrote on stderr."""
        return next((line.strip() for line in reversed(self.stderr_tail) if line.strip()), "")

    def _cause(self) -> str:
        """What the error output says the program ran into, as `... — `, or nothing."""
        tail = "\n".join(self.stderr_tail)
        limits = self.limits
        if any(sign in tail for sign in MEMORY_SIGNS):
            limit = limits.memory_mb
            return f"hit the memory limit of {limit} MB — " if limit else "ran out of memory — "
        if "No space left on device" in tail:
            return (
                f"ran out of space (its private /tmp holds {limits.private_tmp_mb} MB; or the "
                "disk of its working folder is full) — "
            )
        if "File too large" in tail:
            return f"wrote a file past the file size limit of {limits.file_size_mb} MB — "
        if "Read-only file system" in tail:
            return "wrote outside its working folder, which training scripts may not — "
        if "Resource temporarily unavailable" in tail and "fork" in tail:
            return f"hit the process limit of {limits.processes} — "
        if not limits.network and (
            "Network is unreachable" in tail or ("socket" in tail and "Permission denied" in tail)
        ):
            return "tried to use the network, which training scripts may not — "
        return ""

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
