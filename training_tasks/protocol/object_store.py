"""Write-once object storage of versions, artifacts, extracted data and deployed models.

With MODEL_STORE_URL=s3://bucket/prefix every host keeps its own ML_BASE_PATH as a working
folder and cache, and the store holds the same files under the same relative keys
(`models/<org>/model_<version>.onnx`, `models/<org>/deployed_<version>/model.onnx`,
`artifacts/<org>/<version>/...`, `data/<org>/<version>/...`; see `paths.check_key`). An object
is written once: putting the same bytes again is accepted (a stage delivered twice), other bytes
are refused with `ObjectConflict`. Nothing mutable lives in the store: the current version is in
the database and the Redis key. A fetch lands under a temporary name and is renamed into place
only once its sha256 (and size) match what the caller recorded.

Endpoint, region and credentials come from the AWS_* variables, which obstore reads itself;
nothing here shows them (messages name the bucket, prefix and key only). This module imports no
Celery or SQLAlchemy: the model cache of a prediction service embeds it.

obstore runs its requests on a tokio runtime that does not survive fork(): a process that made a
request must not fork a child that makes one. Celery's prefork pool is fine because the worker's
main process never touches the store (each pool process opens its own after the fork).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from training_tasks.errors import PermanentError, SettingsError, TransientError
from training_tasks.files import fsync_dir, sha256_file
from training_tasks.protocol.keys import check_key

STORE_SCHEMES = ("s3",)
# Up to this size an object is put in one request with If-None-Match (truly write-once); a larger
# one is checked first and then uploaded in parts (two writers of the same new key could race).
SINGLE_PUT_MAX_BYTES = 256 << 20
_CHUNK_BYTES = 8 << 20
_RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=60)}
_CLIENT = {"connect_timeout": "5s", "timeout": "300s"}


class ObjectConflict(PermanentError):
    """The store already holds other bytes under a key that is written once."""


class ObjectMissing(PermanentError):
    """A key that a stage or a cache needs is not in the store."""


class ObjectCorrupt(PermanentError):
    """Fetched bytes do not match the sha256 or size recorded for them."""


class StoreUnavailable(TransientError):
    """The object store did not answer (network, credentials, throttling): retry later."""


@dataclass(frozen=True)
class StoredObject:
    """One object as written or found: its key, sha256 and size."""

    key: str
    sha256: str
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "sizeBytes": self.size_bytes}


def check_store_url(value: str | None, ml_base_path: Path) -> str | None:
    """MODEL_STORE_URL: an s3:// URL, or None when unset or a local path (ML_BASE_PATH only).

    A local path must be ML_BASE_PATH itself: the files stay where they are today.
    """
    if not value:
        return None
    parsed = urlparse(value)
    if parsed.scheme in STORE_SCHEMES:
        if not parsed.netloc or "@" in parsed.netloc:
            raise SettingsError(
                "MODEL_STORE_URL",
                "names no bucket; use s3://bucket/prefix (credentials go in AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, never in the URL)",
            )
        return value
    if parsed.scheme not in ("", "file"):
        raise SettingsError(
            "MODEL_STORE_URL",
            f"scheme {parsed.scheme!r} is not supported; use s3://bucket/prefix, or leave it "
            "unset to keep everything in ML_BASE_PATH",
        )
    local = Path(parsed.path if parsed.scheme == "file" else value).expanduser().resolve()
    if local != ml_base_path.resolve():
        raise SettingsError(
            "MODEL_STORE_URL",
            f"the local path {local} is not ML_BASE_PATH ({ml_base_path}); a local store is "
            "ML_BASE_PATH itself: unset MODEL_STORE_URL, or use s3://bucket/prefix",
        )
    return None


def open_store(url: str | None) -> ObjectStore | None:
    """The object store of a checked MODEL_STORE_URL; None for the local layout only."""
    return None if url is None else ObjectStore.from_url(url)


class ObjectStore:
    """Write-once puts, verified fetches, listing and deletion under organization keys."""

    def __init__(self, backend: Any, where: str) -> None:
        """`backend` is an obstore store (S3Store, LocalStore, MemoryStore); `where` names it."""
        self.backend = backend
        self.where = where.rstrip("/")

    @classmethod
    def from_url(cls, url: str) -> ObjectStore:
        """An S3-compatible store; AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP and the
        credentials come from the environment."""
        from obstore.store import S3Store

        # Client options given here replace those obstore reads from AWS_*: keep AWS_ALLOW_HTTP.
        allow_http = os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in ("true", "1")
        client = {**_CLIENT, "allow_http": allow_http}
        backend = S3Store.from_url(url, client_options=client, retry_config=_RETRY)  # type: ignore[arg-type]
        return cls(backend, url)

    def __repr__(self) -> str:
        return f"ObjectStore({self.where})"

    def describe(self, key: str) -> str:
        """Where a key lives, for messages: `s3://bucket/prefix/key`."""
        return f"{self.where}/{key}"

    # -- writing -------------------------------------------------------------------------------

    def put_file(self, org_id: str, key: str, path: Path) -> StoredObject:
        """Write the file at `path` under `key` once; the same bytes again are accepted."""
        check_key(org_id, key)
        size = os.stat(path).st_size
        if size <= SINGLE_PUT_MAX_BYTES:
            return self.put_bytes(org_id, key, Path(path).read_bytes())
        mine = StoredObject(key, sha256_file(path), size)
        if self._exists(key):
            return self._same_or_conflict(mine, str(path))
        self._call(key, lambda: self.backend.put(key, Path(path), mode="overwrite"))
        return mine

    def put_bytes(self, org_id: str, key: str, data: bytes) -> StoredObject:
        """Write `data` under `key` once (If-None-Match); the same bytes again are accepted."""
        from obstore.exceptions import AlreadyExistsError

        check_key(org_id, key)
        mine = StoredObject(key, hashlib.sha256(data).hexdigest(), len(data))
        try:
            self._call(key, lambda: self.backend.put(key, data, mode="create"), AlreadyExistsError)
        except AlreadyExistsError:
            return self._same_or_conflict(mine, "the new bytes")
        return mine

    def _same_or_conflict(self, mine: StoredObject, source: str) -> StoredObject:
        theirs = self.stat(mine.key)
        if (theirs.sha256, theirs.size_bytes) == (mine.sha256, mine.size_bytes):
            return mine
        raise ObjectConflict(
            f"{self.describe(mine.key)} already holds other bytes (sha256 {theirs.sha256}, "
            f"{theirs.size_bytes} bytes) than {source} (sha256 {mine.sha256}, {mine.size_bytes} "
            "bytes); objects of a version are written once. Train again for a new version; if "
            "the stored object itself is wrong, delete it from the store and run the stage again"
        )

    # -- reading -------------------------------------------------------------------------------

    def fetch(
        self, org_id: str, key: str, dest: Path, sha256: str, size_bytes: int | None = None
    ) -> Path:
        """Download `key` to `dest` (temporary name, verify, rename); a verified file stays."""
        check_key(org_id, key)
        if _matches(dest, sha256, size_bytes):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.fetch-{secrets.token_hex(6)}")
        try:
            digest, size = self._download(key, tmp)
            if digest != sha256.lower() or (size_bytes is not None and size != size_bytes):
                raise ObjectCorrupt(
                    f"{self.describe(key)} has sha256 {digest} ({size} bytes), but "
                    f"{sha256} ({size_bytes if size_bytes is not None else '?'} bytes) was "
                    "recorded for it; it was changed in the store. Nothing was used: deploy or "
                    "train the version again"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dest.parent)
        return dest

    def _download(self, key: str, tmp: Path) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with open(tmp, "xb") as out:
            for chunk in self._stream(key):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return digest.hexdigest(), size

    def _stream(self, key: str) -> Iterator[bytes]:
        result = self._call(key, lambda: self.backend.get(key))
        try:
            for chunk in result.stream(min_chunk_size=_CHUNK_BYTES):
                yield bytes(chunk)
        except OSError as exc:
            raise StoreUnavailable(
                f"reading {self.describe(key)} failed ({_short(exc)}); try again"
            ) from None

    def read_bytes(self, org_id: str, key: str) -> bytes:
        """The whole object (small ones: reports, manifests)."""
        check_key(org_id, key)
        return b"".join(self._stream(key))

    def stat(self, key: str) -> StoredObject:
        """The sha256 and size of what the store holds under `key` (read in full)."""
        digest, size = hashlib.sha256(), 0
        for chunk in self._stream(key):
            digest.update(chunk)
            size += len(chunk)
        return StoredObject(key, digest.hexdigest(), size)

    def exists(self, org_id: str, key: str) -> bool:
        """Whether the store holds `key`."""
        return self._exists(check_key(org_id, key))

    def _exists(self, key: str) -> bool:
        try:
            self._call(key, lambda: self.backend.head(key), ObjectMissing)
        except ObjectMissing:
            return False
        return True

    def list_keys(self, org_id: str, prefix: str) -> list[str]:
        """Every key under `prefix` (a key or a folder key such as `artifacts/<org>/<version>`)."""
        check_key(org_id, prefix.rstrip("/"), folder=True)
        found: list[str] = []
        for batch in self._call(prefix, lambda: list(self.backend.list(prefix.rstrip("/") + "/"))):
            found.extend(str(meta["path"]) for meta in batch)
        return found

    def delete_keys(self, org_id: str, keys: list[str]) -> None:
        """Delete objects (a missing one is no error)."""
        checked = [check_key(org_id, key) for key in keys]
        if checked:  # S3 deletes are idempotent: a key already gone is no error
            self._call(checked[0], lambda: self.backend.delete(checked))

    def delete_prefix(self, org_id: str, prefix: str) -> list[str]:
        """Delete `prefix` itself and every key under it; returns the keys deleted."""
        keys = self.list_keys(org_id, prefix)
        if prefix.count("/") >= 2 and self._exists(check_key(org_id, prefix)):
            keys.append(prefix)
        self.delete_keys(org_id, keys)
        return keys

    def _call(self, key: str, action: Any, *passing: type[BaseException]) -> Any:
        """Run one store request; a missing key is ObjectMissing, any other failure transient."""
        try:
            return action()
        except passing:
            raise
        except FileNotFoundError:
            if ObjectMissing in passing:
                raise ObjectMissing(key) from None
            raise ObjectMissing(
                f"{self.describe(key)} is not in the object store; the stage that writes it has "
                "not run on any host (or garbage collection removed it): train again"
            ) from None
        except Exception as exc:  # obstore's errors: network, permissions, throttling
            raise StoreUnavailable(
                f"the object store at {self.where} failed on {key} ({_short(exc)}); check "
                "AWS_ENDPOINT_URL, AWS_REGION and the credentials of this host, then try again"
            ) from None


def _short(exc: BaseException) -> str:
    """The first line of an obstore error (its later lines hold the whole request)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}" if str(exc) else repr(exc)


def _matches(path: Path, sha256: str, size_bytes: int | None) -> bool:
    """Whether a regular file with this size and sha256 is already at `path`."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    if size_bytes is not None and found.st_size != size_bytes:
        return False
    return sha256_file(path) == sha256.lower()
