"""Run a Python script in this process as `python script.py ARG...` would run it.

A fork server's child (see `zygote`) calls `run_script` at the launcher's last step instead of
exec: the interpreter and the libraries imported before the fork are reused, and the state a
fresh interpreter would start with is set up again here: sys.argv and sys.path[0], standard
streams on the run's pipes, Python's signal dispositions, fresh random seeds, the temporary
folder, no other descriptors, and the command line that /proc and `ps` show. It then runs the
script as `__main__` and exits the way the interpreter would: with the script's exit code (or
SystemExit's), or 1 after printing an uncaught exception to stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import os
import random
import resource
import runpy
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

STAT_ARG_START = 45  # /proc/self/stat fields 48 and 49 (arg_start, arg_end) after the name
MAX_FDS = 1 << 20  # Linux's default ceiling of open files (fs.nr_open)


def run_script(
    argv: list[str], keep_fds: Collection[int] = (), path: Sequence[str] = ()
) -> NoReturn:
    """Run `argv[1]` with `argv[2:]` as its arguments, then exit as `python` would.

    `keep_fds` stay open besides stdio (the libraries' own); `path` is sys.path without the
    script's folder, which comes first as for `python script.py`.
    """
    script = os.path.abspath(argv[1])
    close_other_fds({0, 1, 2, *keep_fds})
    _python_signals()
    show_command_line(argv)
    _reopen_stdio()
    if not os.path.isfile(script):
        sys.stderr.write(f"{sys.executable}: can't open file {script!r}: no such file\n")
        _exit(2)
    sys.argv = [argv[1], *argv[2:]]
    sys.path[:] = [os.path.dirname(os.path.realpath(script)), *(path or sys.path)]
    tempfile.tempdir = None  # TMPDIR may have moved to the private /tmp since the fork
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # the global RandomState was seeded once, in the fork server
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        _exit(_exit_code(exc.code))
    except KeyboardInterrupt:
        _print_exception(script)
        _die_of(signal.SIGINT)  # as the interpreter does, so the caller sees the signal
    except BaseException:
        _print_exception(script)
        _exit(1)
    _exit(0)


def close_other_fds(keep: set[int]) -> None:
    """Close every descriptor but `keep`, as exec closes the close-on-exec ones."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # close_range(2) makes even a high limit cheap.
    os.closerange(low, max(MAX_FDS if hard == resource.RLIM_INFINITY else hard, low + 1))


def _python_signals() -> None:
    """As a fresh interpreter sets them: SIGPIPE and SIGXFSZ ignored, KeyboardInterrupt on SIGINT."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def show_command_line(argv: list[str]) -> None:
    """Write `argv` over the fork server's own command line, so /proc and `ps` show the run."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        start, end = int(fields[STAT_ARG_START]), int(fields[STAT_ARG_START + 1])
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size > 1:
        text = b"\0".join(os.fsencode(arg) for arg in argv)
        # The last byte stays NUL: otherwise the kernel reads on into the environment.
        ctypes.memmove(start, text[: size - 1].ljust(size, b"\0"), size)


def _reopen_stdio() -> None:
    """New sys.stdin, stdout and stderr on descriptors 0-2, configured as the server's were."""
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        old = getattr(sys, f"__{name}__")
        if old is None:
            continue
        writing = fd != 0
        unbuffered = writing and isinstance(old.buffer, io.RawIOBase)
        raw = io.FileIO(fd, "wb" if writing else "rb", closefd=False)
        raw.name = f"<{name}>"  # what the interpreter names them
        buffer: Any = raw  # unbuffered: the text layer writes straight through, as python -u
        if not unbuffered:
            buffer = io.BufferedWriter(raw) if writing else io.BufferedReader(raw)
        stream = io.TextIOWrapper(
            buffer,
            encoding=old.encoding,
            errors=old.errors,
            newline="\n",
            line_buffering=old.line_buffering or (writing and raw.isatty()),
            write_through=old.write_through,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _exit_code(code: object) -> int:
    """The status SystemExit(code) ends the interpreter with; a message is printed first."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _print_exception(script: str) -> None:
    """The traceback as the interpreter prints it, from the script's first frame on."""
    kind, value, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename != script and tb.tb_next:
        tb = tb.tb_next
    with contextlib.suppress(Exception):
        traceback.print_exception(kind, value, tb, file=sys.stderr)


def _exit(code: int) -> NoReturn:
    """Finish as the interpreter does (wait for threads, run atexit, flush), then exit."""
    with contextlib.suppress(BaseException):
        getattr(threading, "_shutdown", lambda: None)()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def _die_of(number: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)
    os._exit(128 + number)
