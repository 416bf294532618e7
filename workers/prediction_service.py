"""The reference prediction service: HTTP in front of the model cache (`trainctl serve`).

It exists so the hot-swap can be exercised the way prediction services use it. Endpoints:

    POST /predict/<org>   {"rows": [[f1, f2, ...], ...]}  ->  {"organizationId", "version",
                                                               "probabilities": [...]}
    GET  /health          {"status": "ok", "replicaId", "versions": {org: version}}

It binds to loopback unless told otherwise and imports neither Celery nor SQLAlchemy.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workers.model_cache import ModelCache, ModelUnavailable

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ROWS = 100_000
PREDICT_PATH = re.compile(r"^/predict/([a-z0-9][a-z0-9-]{0,62})$")


class PredictionServer(ThreadingHTTPServer):
    """A threading HTTP server that owns a model cache."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache: ModelCache) -> None:
        super().__init__(address, _Handler)
        self.cache = cache


class _Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/health":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}; try /health"})
            return
        cache = self.server.cache
        self._reply(
            HTTPStatus.OK,
            {"status": "ok", "replicaId": cache.replica_id, "versions": cache.versions()},
        )

    def do_POST(self) -> None:
        match = PREDICT_PATH.match(self.path)
        if match is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST /predict/<organizationId>"})
            return
        org_id = match.group(1)
        try:
            rows = self._rows()
            prediction = self.server.cache.predict(org_id, rows)
        except _BadRequest as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except ModelUnavailable as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except (ValueError, TypeError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"rows: {exc}"})
            return
        self._reply(
            HTTPStatus.OK,
            {
                "organizationId": org_id,
                "version": prediction.version,
                "probabilities": [float(p) for p in prediction.probabilities],
            },
        )

    def _rows(self) -> list[list[float]]:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            raise _BadRequest(f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except json.JSONDecodeError as exc:
            raise _BadRequest(f"the body is not JSON ({exc.msg})") from None
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows or len(rows) > MAX_ROWS:
            raise _BadRequest(f'rows: give {{"rows": [[...], ...]}} with 1 to {MAX_ROWS} rows')
        if not all(isinstance(row, list) for row in rows):
            raise _BadRequest("rows: every row must be a list of numbers in feature order")
        return rows

    def _reply(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _BadRequest(Exception):
    """The request body is not what /predict takes; the message says what is."""


class PredictionService:
    """The model cache plus the HTTP server in a background thread; a context manager."""

    def __init__(
        self,
        redis_url: str,
        ml_base_path: str | Path,
        organizations: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        replica_id: str | None = None,
    ) -> None:
        self.cache = ModelCache(redis_url, ml_base_path, organizations, replica_id=replica_id)
        self.address = (host, port)
        self.server: PredictionServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.server.server_port if self.server else self.address[1]

    def start(self) -> PredictionService:
        """Load the organizations' models, then open the port."""
        self.cache.start()
        self.server = PredictionServer(self.address, self.cache)
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering, then stop the cache."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.cache.close()

    def __enter__(self) -> PredictionService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(
    redis_url: str,
    ml_base_path: str | Path,
    organizations: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    replica_id: str | None = None,
) -> None:
    """Run the service until SIGTERM or SIGINT."""
    stop = threading.Event()

    def shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping the prediction service", signum)
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    service = PredictionService(
        redis_url, ml_base_path, organizations, host=host, port=port, replica_id=replica_id
    )
    with service:
        log.info("serving %s on http://%s:%s", ", ".join(organizations), host, service.port)
        print(f"serving {', '.join(organizations)} on http://{host}:{service.port}", flush=True)
        stop.wait()
