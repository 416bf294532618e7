"""Database URLs in SQLAlchemy's form (`backend[+driver]://user:password@host:port/database`),
read without SQLAlchemy so that settings and configs stay light. The pattern is SQLAlchemy's own."""

from __future__ import annotations

import re

_URL = re.compile(
    r"""
    (?P<name>[\w\+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/\?]+)\]|(?P<ipv4host>[^/:\?]+))?(?::(?P<port>[^/\?]*))?)?
    (?:/(?P<database>[^\?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X,
)


def driver_name(url: str) -> str:
    """`postgresql+psycopg` of `postgresql+psycopg://...`; ValueError if `url` is not such a URL."""
    match = _URL.match(url)
    port = match and match.group("port")
    if match is None or (port and not port.isdigit()):
        raise ValueError("not a SQLAlchemy URL (backend+driver://user:password@host:port/database)")
    return match.group("name")


def backend_name(url: str) -> str:
    """`postgresql` of `postgresql+psycopg://...`; ValueError if `url` is not such a URL."""
    return driver_name(url).split("+", 1)[0]
