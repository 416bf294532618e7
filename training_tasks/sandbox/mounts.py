"""What a sandboxed program sees of the filesystem, built inside its own mount namespace.

Used by the launcher (see `launcher`), so it imports only the standard library. In order:

1. every mount becomes read-only, whatever lies where (the service's code, its virtualenv,
   `ML_BASE_PATH`, other organizations' models and data, the host's /tmp);
2. one fresh tmpfs (nosuid, nodev, at most `tmp_bytes`) serves as /tmp, /var/tmp and /dev/shm,
   as three folders of it, so the three share one size limit and its root stays hidden;
3. the files, folders and links the host has at the top of /tmp and /var/tmp when the run
   starts show again at the same paths, read-only, so a checkout, a venv or the data files the
   program reads there stay readable (sockets and FIFOs there stay hidden, and so does the host's
   /dev/shm, which holds other processes' shared memory rather than files to read);
4. the working folder is bound writable on top of all that, wherever it lies.

So the program can write into its working folder and into its private /tmp, /var/tmp and
/dev/shm (new names only: what the host keeps there is read-only), and nowhere else. What it
leaves in the private folders dies with the run: neither the host nor another run ever sees it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections.abc import MutableMapping
from typing import NoReturn

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
# Each temporary folder and its folder in the private tmpfs.
TMP_FOLDERS = (("/var/tmp", "var-tmp"), ("/dev/shm", "shm"))
HOST_ENTRIES_SHOWN = ("/tmp", "/var/tmp")
DEFAULT_TMP_MB = 1024


def restrict_filesystem(libc: ctypes.CDLL, tmp_bytes: int) -> list[str]:
    """Read-only everywhere but the working folder and a private /tmp; returns what took effect.

    `readonly` once every mount is read-only, `tmp` once the private temporary folders are in
    place. A step that fails half-way ends the process (exit 127) rather than run the program
    with a view it was not promised.
    """
    workdir = os.getcwd()
    # Resolved and opened before anything covers them: /var/tmp may be a link into /tmp, and
    # what the host keeps there is bound back from beneath the tmpfs.
    folders = _tmp_folders()
    work_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    host_fds = {path: os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in _shown(folders)}
    try:
        if _mount_setattr(libc, "/", AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY) != 0:
            return []
        made = ["readonly"]
        try:
            if _private_tmp(libc, tmp_bytes, folders):
                made.append("tmp")
                for path, fd in host_fds.items():
                    _show_host_entries(libc, fd, path)
            _keep_writable(libc, work_fd, workdir)
        except OSError as exc:
            _die(f"cannot prepare the program's view of the filesystem: {exc}")
        return made
    finally:
        for fd in (work_fd, *host_fds.values()):
            os.close(fd)


def point_temp_vars_at_private_tmp(environ: MutableMapping[str, str]) -> None:
    """TMPDIR, TEMP and TMP, where set, name the private /tmp instead of the host's folder."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        if name in environ:
            environ[name] = "/tmp"


def _tmp_folders() -> dict[str, str]:
    """The real path of each temporary folder and its folder's name in the tmpfs; /tmp's last.

    /var/tmp or /dev/shm may be a link (to /tmp, to /run/shm): what it names is covered, once.
    """
    tmp = os.path.realpath("/tmp")
    found: dict[str, str] = {}
    for path, name in TMP_FOLDERS:
        real = os.path.realpath(path)
        if real != tmp and real not in found and os.path.isdir(real):
            found[real] = name
    found[tmp] = "tmp"
    return found


def _shown(folders: dict[str, str]) -> list[str]:
    """Of the real temporary folders, those whose host entries stay readable."""
    shown = {os.path.realpath(path) for path in HOST_ENTRIES_SHOWN}
    return [real for real in folders if real in shown and os.path.isdir(real)]


def _private_tmp(libc: ctypes.CDLL, tmp_bytes: int, folders: dict[str, str]) -> bool:
    """Mount one tmpfs on /tmp and bind its folders on the others and, last, /tmp itself."""
    tmp = next(reversed(folders))
    options = f"size={tmp_bytes},mode=755".encode()
    if libc.mount(b"tmpfs", tmp.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        return False  # the host's /tmp stays as it is: read-only
    for real, name in folders.items():
        folder = f"{tmp}/{name}"
        os.mkdir(folder)
        os.chmod(folder, 0o1777)  # shared by every user, like the folders it stands in for
        if not _bind(libc, folder, real):
            _die(f"cannot put a private {real} in place ({_errno_text()})")
    return True


def _show_host_entries(libc: ctypes.CDLL, host_fd: int, path: str) -> None:
    """Bind each entry of the host's `path` (open as `host_fd`) read-only at the same place.

    Other processes come and go in /tmp meanwhile: an entry that vanishes is left out. So is a
    socket or a FIFO, which a read-only mount would not stop the program from writing to.
    """
    for name in os.listdir(host_fd):
        target = f"{path}/{name}"
        try:
            mode = os.stat(name, dir_fd=host_fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=host_fd), target)
                continue
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            os.mkdir(target)
        elif stat.S_ISREG(mode):
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        else:
            continue
        if _bind(libc, f"/proc/self/fd/{host_fd}/{name}", target):
            if _mount_setattr(libc, target, AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY) == 0:
                continue
        elif ctypes.get_errno() == errno.ENOENT:
            (os.rmdir if stat.S_ISDIR(mode) else os.unlink)(target)
            continue
        _die(
            f"cannot show the host's {target} read-only in the private {path} "
            f"({_errno_text()}); remove what is no longer needed from {path}"
        )


def _keep_writable(libc: ctypes.CDLL, work_fd: int, workdir: str) -> None:
    """Bind the working folder (open as `work_fd`) writable at its path, and move into it."""
    with contextlib.suppress(OSError):
        os.makedirs(workdir, exist_ok=True)  # a mount point, where a private folder hides it
    source = f"/proc/self/fd/{work_fd}"
    if not _bind(libc, source, workdir) or (
        _mount_setattr(libc, workdir, 0, clear=MOUNT_ATTR_RDONLY) != 0
    ):
        _die(f"cannot keep the working folder {workdir} writable ({_errno_text()})")
    os.chdir(workdir)  # onto the writable bind mount, not the folder beneath it


def _bind(libc: ctypes.CDLL, source: str, target: str) -> bool:
    flags = MS_BIND | MS_REC
    return bool(libc.mount(source.encode(), target.encode(), None, flags, None) == 0)


class _MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns")]


def _mount_setattr(libc: ctypes.CDLL, path: str, flags: int, set_: int = 0, clear: int = 0) -> int:
    attr = _MountAttr(set_, clear, 0, 0)
    result: int = libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    return result


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def _die(message: str) -> NoReturn:
    sys.stderr.write(f"sandbox: {message}\n")
    os._exit(127)
