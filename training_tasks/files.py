"""Crash-safe file operations (atomic writes and copies, directory fsync, symlink replacement) and
the bounded, link-refusing reader for files a training script wrote."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from training_tasks.errors import TrainingError

# Regular files only, never through a link, never waiting on a FIFO or a device.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# Temporary names are created, never reused: a link planted under one is not followed.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK_BYTES = 1 << 20


class UnsafeFile(TrainingError):
    """A file a training script left behind is not a plain regular file of an allowed size."""


def sha256_file(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_fd(fd: int, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """The sha256 hex digest of an open file from its start; the offset is left unchanged."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, chunk_bytes, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def describe_kind(mode: int) -> str:
    """What a file of this mode is, in words (for messages)."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    )
    return next((words for test, words in kinds if test(mode)), "not a regular file")


def _megabytes(size_bytes: int) -> str:
    if size_bytes >= 10 << 30:
        return f"{size_bytes / (1 << 30):.4g} GB"
    return f"{size_bytes / (1 << 20):.4g} MB"


def _refuse(path: Path, what: str, problem: str, max_bytes: int) -> UnsafeFile:
    return UnsafeFile(
        f"{what} ({path}) is {problem}; only a regular file of its own (no symbolic link, hard "
        f"link, FIFO or device) of at most {_megabytes(max_bytes)} is accepted"
    )


def open_regular(path: Path, max_bytes: int, what: str) -> int:
    """Open `path` for reading if it is a regular file of at most `max_bytes`; returns the fd.

    Raises FileNotFoundError when it does not exist and UnsafeFile for a symbolic link, a FIFO,
    a device, a hard link or a file over the limit; such files are never opened (or read).
    """
    first = os.lstat(path)
    if not stat.S_ISREG(first.st_mode):
        raise _refuse(path, what, describe_kind(first.st_mode), max_bytes)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):  # swapped after the lstat
            raise _refuse(path, what, "no longer a regular file", max_bytes) from None
        raise
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or (found.st_dev, found.st_ino) != (
            first.st_dev,
            first.st_ino,
        ):
            raise _refuse(path, what, "no longer the file it was a moment ago", max_bytes)
        if found.st_nlink > 1:  # the same inode under a name outside the script's folder
            raise _refuse(path, what, f"a hard link ({found.st_nlink} names)", max_bytes)
        if found.st_size > max_bytes:
            raise _refuse(path, what, _megabytes(found.st_size), max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, max_bytes: int, path: Path, what: str) -> bytes:
    """Read an open file from its current offset, refusing it once it holds over `max_bytes`."""
    parts: list[bytes] = []
    left = max_bytes + 1  # one byte more shows a file that grew past the limit
    while left > 0 and (chunk := os.read(fd, min(left, _CHUNK_BYTES))):
        parts.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise _refuse(path, what, "larger than allowed", max_bytes)
    return b"".join(parts)


def read_script_output(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of a file a training script wrote, read without following links or blocking."""
    fd = open_regular(Path(path), max_bytes, what)
    try:
        return read_fd(fd, max_bytes, Path(path), what)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")


def _create_new(path: Path, mode: int = 0o666) -> int:
    """Create `path` as a new file; fails rather than follow or reuse what is there."""
    return os.open(path, _CREATE_FLAGS, mode)


def _write_new(tmp: Path, write: Any) -> None:
    """Create `tmp`, let `write(handle)` fill it, fsync and close it."""
    with open(_create_new(tmp), "wb") as fout:
        write(fout)
        fout.flush()
        os.fsync(fout.fileno())


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` through a temporary name: fsync, rename, fsync the directory."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dst)
    try:
        with open(src, "rb") as fin:
            _write_new(tmp, lambda fout: shutil.copyfileobj(fin, fout, _CHUNK_BYTES))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a new temporary name: fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        _write_new(tmp, lambda fout: fout.write(data))
        os.replace(tmp, path)  # replaces a link at `path` itself, never what it points at
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_move(src: Path, dst: Path) -> None:
    """Move a file into place atomically (same filesystem) and fsync the directory."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        atomic_copy(src, dst)
        src.unlink()
    fsync_dir(dst.parent)


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON through a temporary name so readers never see half a file."""
    text = json.dumps(doc, indent=2, sort_keys=True, default=str)
    write_bytes_atomic(path, text.encode("utf-8"))


def open_append_own(path: Path) -> int:
    """Open `path` to append, as a regular file of its own; anything else there is replaced.

    A link, FIFO, device or hard link left under that name (by a training script, say) is
    removed and a new empty file created, so nothing is ever written through it.
    """
    try:
        fd = os.open(path, _APPEND_FLAGS)
    except FileNotFoundError:
        return _create_new(path, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EMLINK, errno.EISDIR):
            raise
    else:
        found = os.fstat(fd)
        if stat.S_ISREG(found.st_mode) and found.st_nlink == 1:
            return fd
        os.close(fd)
    remove_entry(path)
    return _create_new(path, 0o644)


def remove_entry(path: Path) -> None:
    """Remove whatever is at `path`: a file, link, FIFO or a whole folder (never a link's target)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # does not follow the links inside
    else:
        path.unlink(missing_ok=True)


def replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` in one step (a new link renamed over the old one)."""
    tmp = _temp_sibling(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
