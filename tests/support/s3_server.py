"""A real S3-protocol server for tests: moto in server mode in a subprocess, a bucket per test.

A test module starts one server on a free loopback port (bounded wait for the port) and
stopped by its PID. `store_env` is what a service process or a prediction service on another
host needs to reach it: MODEL_STORE_URL and the usual AWS_* variables.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, spawn_logged, stop_group

START_TIMEOUT_S = 30.0
# moto accepts any credentials; these are test values, never real ones.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class S3Server:
    """A running moto server: its endpoint URL and log."""

    endpoint: str
    log_path: Path

    def new_bucket(self) -> str:
        """Create a bucket of its own for one test."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200, reply.read()
        return name

    def store_env(self, bucket: str, prefix: str = "ml") -> dict[str, str]:
        """MODEL_STORE_URL and the AWS_* variables a host needs for this bucket."""
        return {
            "MODEL_STORE_URL": f"s3://{bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            **TEST_CREDENTIALS,
        }

    def keys(self, bucket: str, prefix: str = "ml") -> list[str]:
        """Every key in the bucket under `prefix`, relative to it (read with obstore)."""
        store = self._client(bucket, prefix)
        return sorted(meta["path"] for batch in store.list() for meta in batch)

    def read(self, bucket: str, key: str, prefix: str = "ml") -> bytes:
        """The bytes of one object."""
        return bytes(self._client(bucket, prefix).get(key).bytes())

    def write(self, bucket: str, key: str, data: bytes, prefix: str = "ml") -> None:
        """Overwrite one object, as an operator (or an attacker) with write access could."""
        self._client(bucket, prefix).put(key, data)

    def _client(self, bucket: str, prefix: str) -> Any:
        from obstore.store import S3Store

        return S3Store(
            bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            client_options={"allow_http": True},
        )


@contextlib.contextmanager
def running_s3_server(log_dir: Path) -> Iterator[S3Server]:
    """Start `python -m moto.server` on a free port; stop it by PID afterwards."""
    port = free_port()
    log_path = log_dir / f"moto-{port}.log"
    argv = [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"]
    proc = spawn_logged(argv, dict(os.environ), log_path)
    try:
        _wait_port(port, proc, log_path)
        yield S3Server(f"http://127.0.0.1:{port}", log_path)
    finally:
        stop_group(proc)


def _wait_port(port: int, proc: object, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # type: ignore[attr-defined]
            raise RuntimeError(f"moto server exited early:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto server not listening in {START_TIMEOUT_S} s")
