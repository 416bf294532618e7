"""The launcher of a sandboxed program: limits, isolation, then the program.

Started as `python -I -S -c LAUNCH ROOT LIMITS MODE REPORT_FD PROGRAM [ARG...]` (see
`sandbox.run_sandboxed`), `launch` is the launcher: with ROOT (the folder holding `training_tasks`)
on sys.path it imports only the standard library, `mounts` and `processes`. It applies the limits,
isolates what the kernel lets it, starts the program and exits the way the program did. A fork
server's child (see `zygote`) takes the very same path through `run_launcher`, and only at the
last step runs the script in-process instead of exec'ing it. Isolation, where allowed:

- new PID, mount and (unless MODE is `network`) network namespaces, as root directly, otherwise
  inside a new user namespace that maps only the caller's own uid and gid;
- in the PID namespace a tiny init runs the program and reaps; when the program ends the init
  exits, and the kernel kills every process left in the namespace, whatever session it started;
- a fresh /proc that shows only the namespace (not the worker's environment), the whole
  filesystem read-only except the working folder and a private tmpfs on /tmp, /var/tmp and
  /dev/shm, with TMPDIR (if set) pointing at it (see `mounts`), and at most
  `processes` + 300 pids (the per-namespace pid_max of Linux 6.14 and later);
- for the program itself: no capabilities (also as root), no_new_privs, and (without network) a
  seccomp filter that refuses `socket()` and `io_uring_setup()`, which also shuts the database's
  Unix socket, that a network namespace does not;
- without a PID namespace the launcher is a child subreaper and kills whatever the program left.

What took effect goes to REPORT_FD as words (`pid net proc readonly tmp pidmax nocaps ...`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import select
import signal
import sys
from collections.abc import Callable
from typing import NamedTuple, NoReturn

from training_tasks.sandbox import mounts
from training_tasks.sandbox.mounts import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC
from training_tasks.sandbox.processes import kill_processes_below

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 22, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47
# (audit arch, socket syscall number); io_uring_setup is 425 on both.
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
# Launched as `python -I -S -c LAUNCH ROOT ...`: -I leaves the service's folder off sys.path.
LAUNCH = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from training_tasks.sandbox.launcher import launch; launch(sys.argv[2:])"
)
EXTRA_PIDS = 300  # pids below 300 are not reused after a wrap, so pid_max needs this headroom
Start = Callable[[list[str]], NoReturn]


class _Program(NamedTuple):
    """What the launcher runs, and where it reports the isolation that took effect."""

    argv: list[str]
    network: bool
    report_fd: int
    start: Start


def read_report(fd: int) -> frozenset[str] | None:
    """What isolation the launcher reported on `fd` (non-blocking); None if it reported nothing."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            data += chunk
    return frozenset(data.decode().split()) if data else None


# ----- The launcher: everything below runs in the sandboxed child, before the program. -----


def launch(args: list[str]) -> NoReturn:
    """The launcher's entry: `LIMITS MODE REPORT_FD PROGRAM [ARG...]`; ends by exec'ing PROGRAM."""
    limits, network, report_fd, argv = args[0], args[1] == "network", int(args[2]), args[3:]
    run_launcher(limits, network, report_fd, argv, exec_program)


def run_launcher(
    limits: str, network: bool, report_fd: int, argv: list[str], start: Start
) -> NoReturn:
    """Apply limits, isolate, run the program under a reaper, then exit the way it did.

    `start` becomes the program once it is isolated, limited and stripped of its privileges:
    `exec_program` here, or (in a fork server's child) a function that runs a script in-process.
    """
    os.set_inheritable(report_fd, False)  # the program never sees it
    libc = ctypes.CDLL(None, use_errno=True)
    # Die with the process that started us, even if it is SIGKILLed.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    max_processes, tmp_bytes = _apply_limits(limits)
    done = _isolate(libc, network)
    _report(report_fd, done)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program come to us, not to init
    life_r, life_w = os.pipe()
    status_r, status_w = os.pipe()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the program
    child = os.fork()
    if child == 0:
        os.close(life_w)
        os.close(status_r)
        program = _Program(argv, network, report_fd, start)
        if "pid" in done:
            _init(libc, program, (life_r, status_w), (max_processes, tmp_bytes), done)
        os.close(life_r)
        os.close(status_w)
        _exec(libc, program)
    for fd in (report_fd, life_r, status_w):
        os.close(fd)
    status = _reap_until(child)
    if "pid" in done:
        status = int(os.read(status_r, 32) or status)
    else:
        kill_processes_below(os.getpid())
    _exit_like(status)


def exec_program(argv: list[str]) -> NoReturn:
    """Replace this process with `argv`; exit 127 saying why if it cannot be run."""
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"sandbox: cannot run {argv[0]!r}: {exc}\n")
    os._exit(127)


def _apply_limits(arg: str) -> tuple[int | None, int]:
    """Set each `NAME:soft:hard` (never above the inherited hard limit); returns NPROC and the
    size of the private /tmp in bytes (`TMP`, not an rlimit)."""
    processes, tmp_bytes = None, mounts.DEFAULT_TMP_MB << 20
    for item in filter(None, arg.split(",")):
        name, soft_text, hard_text = item.split(":")
        if name == "TMP":
            tmp_bytes = int(hard_text)
            continue
        which = getattr(resource, "RLIMIT_" + name)
        ceiling = resource.getrlimit(which)[1]
        soft, hard = int(soft_text), int(hard_text)
        if ceiling != resource.RLIM_INFINITY:
            hard = min(hard, ceiling)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
        if name == "NPROC":
            processes = soft
    return processes, tmp_bytes


def _isolate(libc: ctypes.CDLL, network: bool) -> list[str]:
    """Unshare what we may, as we are or in a user namespace; returns what took effect."""
    everything = CLONE_NEWPID | CLONE_NEWNS | (0 if network else CLONE_NEWNET)
    uid, gid = os.getuid(), os.getgid()
    for flags in (everything, 0 if network else CLONE_NEWNET):
        for user in (0, CLONE_NEWUSER):
            if flags and libc.unshare(flags | user) == 0:
                done = [] if not user else ["user"]
                if user:  # map only ourselves, so files keep their owners
                    _write("/proc/self/setgroups", "deny")
                    _write("/proc/self/uid_map", f"{uid} {uid} 1")
                    _write("/proc/self/gid_map", f"{gid} {gid} 1")
                done += [n for f, n in _NAMESPACES if flags & f]
                if (
                    flags & CLONE_NEWNS
                    and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
                ):
                    done.append("private")  # our mounts stay ours
                return done
    return []


_NAMESPACES = ((CLONE_NEWPID, "pid"), (CLONE_NEWNS, "mount"), (CLONE_NEWNET, "net"))


def _init(
    libc: ctypes.CDLL,
    program: _Program,
    pipes: tuple[int, int],
    sizes: tuple[int | None, int],
    done: list[str],
) -> NoReturn:
    """Pid 1 of the namespace: prepare it, run the program, reap, report its status."""
    life_r, status_w = pipes
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([life_r], [], [], 0)[0]:
        os._exit(1)  # the launcher died before we could tie our life to it
    made = _prepare_namespace(libc, done, *sizes)
    _report(program.report_fd, made)
    if "tmp" in made:
        mounts.point_temp_vars_at_private_tmp(os.environ)
    child = os.fork()
    if child == 0:
        # Exec would close these (close-on-exec); a program run in-process must not hold them.
        os.close(life_r)
        os.close(status_w)
        _exec(libc, program)
    os.close(program.report_fd)
    os.write(status_w, b"%d" % _reap_until(child))
    os._exit(0)  # the kernel now kills whatever is left in the namespace


def _prepare_namespace(
    libc: ctypes.CDLL, done: list[str], max_processes: int | None, tmp_bytes: int
) -> list[str]:
    """Our own /proc, pid_max and filesystem view, as far as allowed; returns what worked."""
    made = []
    private = "private" in done
    if (
        private
        and libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0
    ):
        made.append("proc")
    # Before the read-only remount, which covers /proc/sys too.
    if max_processes and _set_pid_max(max_processes + EXTRA_PIDS):
        made.append("pidmax")
    if private:
        made += mounts.restrict_filesystem(libc, tmp_bytes)
    return made


def _set_pid_max(value: int) -> bool:
    try:
        version = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
        # Before Linux 6.14 pid_max is global: writing it would cap the whole machine.
        if version < (6, 14):
            return False
        _write("/proc/sys/kernel/pid_max", str(value))
    except (ValueError, OSError):
        return False
    return True


def _exec(libc: ctypes.CDLL, program: _Program) -> NoReturn:
    """Become the program: default signals, no capabilities, no sockets unless allowed."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # Python ignores some; exec would keep them ignored
    # Idle CPU priority, for good (RLIMIT_NICE 0 and no CAP_SYS_NICE: no way back), so the
    # worker and its watchdog always get the CPU first, even against a fork bomb.
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    made = ["nocaps"] if _drop_capabilities(libc) else []
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if not program.network and _deny_sockets(libc):
        made.append("seccomp")
    _report(program.report_fd, made)
    os.close(program.report_fd)
    program.start(program.argv)


def _drop_capabilities(libc: ctypes.CDLL) -> bool:
    """Empty the bounding, ambient and inheritable sets: root then gains nothing from exec."""
    if os.geteuid() != 0:
        return True  # exec gives a non-root user no capabilities (no_new_privs stops file caps)
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() != errno.EINVAL:  # EINVAL: past the last capability
                return False
            break
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all empty
    return bool(libc.capset(header, data) == 0)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _deny_sockets(libc: ctypes.CDLL) -> bool:
    """Install a seccomp filter: socket() and io_uring_setup() fail with EACCES."""
    if os.uname().machine not in SECCOMP_ARCH:
        return False
    arch, socket_nr = SECCOMP_ARCH[os.uname().machine]
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    deny, allow = 0x00050000 | errno.EACCES, 0x7FFF0000
    program = [
        (load, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, deny),  # another ABI (32-bit calls): refuse them all
        (load, 0, 0, 0),  # seccomp_data.nr
        (jge, 2, 0, 0x40000000),  # the x32 ABI
        (jeq, 1, 0, socket_nr),
        (jeq, 0, 1, 425),  # io_uring_setup: io_uring can open sockets without socket()
        (ret, 0, 0, deny),
        (ret, 0, 0, allow),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*line) for line in program))
    fprog = _SockFprog(len(program), filters)
    return bool(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0) == 0)


def _reap_until(child: int) -> int:
    """Reap every child (orphans come to us) until `child` ends; returns its wait status."""
    while True:
        pid, status = os.wait()
        if pid == child:
            return status


def _exit_like(status: int) -> NoReturn:
    """Exit with the program's code, or die of the program's signal."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status))


def _report(fd: int, words: list[str]) -> None:
    os.write(fd, (" ".join(words) + " ").encode())


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
