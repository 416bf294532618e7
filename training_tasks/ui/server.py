"""Running the dashboard: in the foreground (`trainctl ui`) or on a thread (`trainctl demo`).

The listening socket is bound before anything else starts, so a taken port or a bad address
fails at once with its reason, and port 0 picks a free port that `url` then names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from types import TracebackType

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from training_tasks.ui.app import Dashboard, make_app

STOP_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """The dashboard on `host:port`; `serve_forever` in the foreground or `start` on a thread."""

    def __init__(self, dash: Dashboard, host: str = "127.0.0.1", port: int = 8088) -> None:
        self.dash = dash
        self.host = host
        self.sockets = bind_sockets(port, host)
        self.port: int = self.sockets[0].getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve until `stop` is called (from another thread) or the process is interrupted."""
        asyncio.run(self._main())

    def start(self) -> DashboardServer:
        """Serve on a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(STOP_TIMEOUT_S):
            raise RuntimeError(f"the dashboard did not start within {STOP_TIMEOUT_S} s")
        return self

    def stop(self) -> None:
        """Stop serving (open connections are closed) and wait for the thread, bounded."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        self.dash.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _main(self) -> None:
        server = HTTPServer(make_app(self.dash))
        server.add_sockets(self.sockets)
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.stop()
            await asyncio.wait_for(server.close_all_connections(), STOP_TIMEOUT_S)
