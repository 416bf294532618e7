"""Secrets and model files at rest: AES-256-GCM under master keys from ML_MASTER_KEYS.

ML_MASTER_KEYS holds comma-separated `keyid:base64(32 bytes)` entries. The first one is current
and encrypts; every listed key decrypts what names its id. To rotate, put a new key first and keep
the old ones until `trainctl secrets reencrypt` has run and the model versions sealed with them
are gone. The master keys only feed HKDF-SHA256: secrets use a key derived for text, model files a
key derived per organization, so a key of one kind or organization never opens another's data.

This module needs only the standard library, `cryptography` and the error hierarchy, so the model
cache (which imports neither Celery nor SQLAlchemy) can open model files with it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from training_tasks.errors import PermanentError, SettingsError
from training_tasks.files import fsync_dir

ENV_NAME = "ML_MASTER_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
TEXT_PREFIX = "enc:v1:"
MODEL_MAGIC = b"MLENC1\n"
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
TEXT_INFO = b"text:v1"
MODEL_INFO = b"model:"
KEY_HINT = "make one with `trainctl secrets new-key`"


class SealedDataError(PermanentError):
    """Encrypted data cannot be opened: no key with its id here, damaged, or bound elsewhere."""


@dataclass(frozen=True)
class MasterKey:
    """One master key and its id; the key bytes never show in a repr."""

    key_id: str
    secret: bytes = field(repr=False)


def parse_master_keys(raw: str) -> tuple[MasterKey, ...]:
    """Parse ML_MASTER_KEYS; a bad entry raises SettingsError naming it by position, never by value."""
    entries = [entry.strip() for entry in raw.split(",")]
    keys: list[MasterKey] = []
    for number, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        where = f"entry {number} of {len(entries)}"
        if not entry:
            raise SettingsError(
                ENV_NAME, f"{where} is empty; separate keyid:base64 entries by commas"
            )
        if not sep or not KEY_ID_PATTERN.fullmatch(key_id):
            raise SettingsError(
                ENV_NAME,
                f"{where} is not keyid:base64key with a key id of 1-32 letters, digits, '.', '_' "
                f"or '-'; {KEY_HINT}",
            )
        keys.append(MasterKey(key_id, _decode_key(encoded, f"{where} (key id {key_id})")))
    ids = [key.key_id for key in keys]
    duplicates = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
    if duplicates:
        raise SettingsError(
            ENV_NAME, f"key id {', '.join(duplicates)} is listed twice; give every key its own id"
        )
    return tuple(keys)


def _decode_key(encoded: str, where: str) -> bytes:
    try:
        secret = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(ENV_NAME, f"{where} is not valid base64; {KEY_HINT}") from None
    if len(secret) != KEY_BYTES:
        raise SettingsError(
            ENV_NAME,
            f"{where} decodes to {len(secret)} bytes; a key must be {KEY_BYTES} random bytes, "
            f"base64-encoded; {KEY_HINT}",
        )
    return secret


def generate_key(key_id: str | None = None) -> str:
    """A fresh `keyid:base64` entry for ML_MASTER_KEYS (the id defaults to today's date)."""
    key_id = key_id or f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(2)}"
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError(f"{key_id!r} is not a key id: 1-32 letters, digits, '.', '_' or '-'")
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def is_sealed(data: bytes) -> bool:
    """Whether `data` is a sealed model file (an ONNX protobuf never starts with the header)."""
    return data.startswith(MODEL_MAGIC)


def is_encrypted_text(value: str) -> bool:
    """Whether a stored value is an `enc:v1:` token rather than plain text."""
    return value.startswith(TEXT_PREFIX)


def text_key_id(token: str) -> str:
    """The id of the key an `enc:v1:` token was encrypted with."""
    return token[len(TEXT_PREFIX) :].split(":", 1)[0]


def model_aad(org_id: str, version: str) -> bytes:
    """What a model file is bound to: its organization and version."""
    return f"{org_id}\0{version}".encode()


class Keyring:
    """The master keys of this process: the first encrypts, any of them decrypts by key id."""

    def __init__(self, keys: Sequence[MasterKey] = ()) -> None:
        self._keys = {key.key_id: key for key in keys}
        self._current = keys[0] if keys else None
        self._ciphers: dict[tuple[str, bytes], AESGCM] = {}

    @classmethod
    def parse(cls, raw: str | None) -> Keyring:
        """The keyring of an ML_MASTER_KEYS value; None or "" gives an empty keyring."""
        return _parsed(raw or None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """The keyring of ML_MASTER_KEYS in `environ` (default: this process's environment)."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ENV_NAME))

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self._keys)})"

    @property
    def enabled(self) -> bool:
        """Whether any key is set: without one, secrets and models are stored plain."""
        return self._current is not None

    @property
    def current(self) -> MasterKey | None:
        """The key that encrypts (the first listed), or None."""
        return self._current

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def get(self, key_id: str) -> MasterKey | None:
        """The key with this id, or None."""
        return self._keys.get(key_id)

    def encrypt_text(self, plaintext: str, aad: str) -> str:
        """`enc:v1:<keyid>:<base64url(nonce|ciphertext)>` of `plaintext`, bound to `aad`."""
        key = self._require_current("encrypt a secret")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._cipher(key, TEXT_INFO).encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{TEXT_PREFIX}{key.key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt_text(self, token: str, aad: str) -> str:
        """The plaintext of an `enc:v1:` token bound to `aad`; SealedDataError says why not."""
        key_id, _, body = token[len(TEXT_PREFIX) :].partition(":")
        if not is_encrypted_text(token) or not body:
            raise SealedDataError(f"the stored value for {aad!r} is not an enc:v1 token")
        key = self._known(key_id, f"the secret for {aad!r}")
        try:
            raw = base64.b64decode(body, altchars=b"-_", validate=True)
            nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
            return self._cipher(key, TEXT_INFO).decrypt(nonce, sealed, aad.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedDataError(
                f"the secret for {aad!r} fails authentication: it was changed in the database or "
                "copied from another record; store it again"
            ) from None

    def seal_model(self, data: bytes, org_id: str, version: str) -> bytes:
        """`MLENC1\\n<keyid>\\n<nonce><ciphertext+tag>`, under the organization's derived key."""
        key = self._require_current(f"seal the model of organization {org_id} version {version}")
        nonce = os.urandom(NONCE_BYTES)
        cipher = self._cipher(key, MODEL_INFO + org_id.encode())
        sealed = cipher.encrypt(nonce, data, model_aad(org_id, version))
        return MODEL_MAGIC + key.key_id.encode() + b"\n" + nonce + sealed

    def open_model(self, data: bytes, org_id: str, version: str) -> bytes:
        """The ONNX bytes of a model file: plain files pass through, sealed ones are opened."""
        if not is_sealed(data):
            return data
        what = f"the model file of organization {org_id} version {version}"
        key_id, nonce, sealed = _split_sealed(data, what)
        key = self._known(key_id, what)
        cipher = self._cipher(key, MODEL_INFO + org_id.encode())
        try:
            return cipher.decrypt(nonce, sealed, model_aad(org_id, version))
        except InvalidTag:
            raise SealedDataError(
                f"{what} does not open: it was sealed for another organization or version (moved "
                "or renamed), or changed on disk; deploy that version's own file or train again"
            ) from None

    def seal_file(self, path: Path, org_id: str, version: str) -> None:
        """Replace a plain model file with its sealed form in one rename (fsynced)."""
        data = Path(path).read_bytes()
        if is_sealed(data):
            return
        tmp = path.with_name(f".{path.name}.sealing-{secrets.token_hex(4)}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(self.seal_model(data, org_id, version))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def _require_current(self, action: str) -> MasterKey:
        if self._current is None:
            raise SettingsError(
                ENV_NAME, f"is not set, so there is no key to {action}; {KEY_HINT} and set it"
            )
        return self._current

    def _known(self, key_id: str, what: str) -> MasterKey:
        key = self._keys.get(key_id)
        if key is not None:
            return key
        if not self._keys:
            raise SealedDataError(
                f"{what} is encrypted with key {key_id!r}, but {ENV_NAME} is not set in this "
                f"process; set it to the keys the training service uses"
            )
        raise SealedDataError(
            f"{what} is encrypted with key {key_id!r}, which {ENV_NAME} here does not list "
            f"(it lists {', '.join(self._keys)}); add that key back to {ENV_NAME}"
        )

    def _cipher(self, key: MasterKey, info: bytes) -> AESGCM:
        cached = self._ciphers.get((key.key_id, info))
        if cached is None:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
            cached = self._ciphers[(key.key_id, info)] = AESGCM(hkdf.derive(key.secret))
        return cached


def _split_sealed(data: bytes, what: str) -> tuple[str, bytes, bytes]:
    """Key id, nonce and ciphertext of a sealed model file."""
    start = len(MODEL_MAGIC)
    end = data.find(b"\n", start, start + 34)
    key_id = data[start:end].decode("ascii", "replace") if end > start else ""
    body = data[end + 1 :]
    if not KEY_ID_PATTERN.fullmatch(key_id) or len(body) < NONCE_BYTES + TAG_BYTES:
        raise SealedDataError(
            f"{what} has a damaged encryption header; deploy that version again or train again"
        )
    return key_id, body[:NONCE_BYTES], body[NONCE_BYTES:]


@functools.lru_cache(maxsize=8)
def _parsed(raw: str | None) -> Keyring:
    """One parse per distinct value: a process's environment rarely changes, tests' does."""
    return Keyring(parse_master_keys(raw) if raw is not None else ())
