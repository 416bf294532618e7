"""Crash-safe file operations: atomic writes and copies, directory fsync, symlink replacement."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` through a temporary name: fsync, rename, fsync the directory."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dst)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
