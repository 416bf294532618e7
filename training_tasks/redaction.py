"""Secrets masked out of what is shown or logged: URLs, free text and JSON-like data.

The one home of the masking rules that the organization config, alerts, task arguments, the CLI
and beat all apply. The bottom layer: imports only the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"
# Deeper than this a value is not looked into but hidden whole.
MAX_DEPTH = 32
# A path segment this long is taken for a token (Slack, Teams and Discord put theirs in the path).
SECRET_SEGMENT_LEN = 20
# A mapping key holding one of these words (`dbPassword`, `api_key`, `AWS_SECRET_ACCESS_KEY`)
# names a secret.
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "authorization",
    }
)

# `scheme://user:password@`, also with no user (`redis://:password@host`, the usual Redis form).
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")
_KEY_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# libpq keyword strings (`host=h password=p`) and query strings (`?token=t&x=1`).
_KEYWORD_SECRET = re.compile(
    r"(?i)(?<![\w-])((?:[\w-]*[_-])?(?:password|passwd|pwd|secret|token|api[_-]?key"
    r"|access[_-]?key))(\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)"
)


def mask_url(url: str) -> str:
    """A connection URL, or text holding URLs, with every password replaced by ***."""
    return _URL_PASSWORD.sub(rf"\1{MASK}@", url)


def mask_text(text: str) -> str:
    """`text` with URL passwords and `password=...`-style values replaced by ***."""
    return _KEYWORD_SECRET.sub(rf"\1\2{MASK}", mask_url(text))


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret: a word of it is password, token, key, ..."""
    if not isinstance(key, str):
        return False
    return any(word.lower() in SECRET_WORDS for word in _KEY_WORDS.findall(key))


def masked(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` (JSON-like data) that is safe to show: secrets replaced by ***."""
    if isinstance(value, str):
        return mask_text(value)
    if _depth >= MAX_DEPTH:
        return MASK
    if isinstance(value, Mapping):
        return {
            k: MASK if is_secret_key(k) and v is not None else masked(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [masked(v, _depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def display_url(url: str) -> str:
    """A webhook URL fit for logs: credentials, query values and long path segments as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    path = "/".join(
        MASK if len(segment) >= SECRET_SEGMENT_LEN else segment for segment in parts.path.split("/")
    )
    query = "&".join(f"{key}={MASK}" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, path, query, ""))
