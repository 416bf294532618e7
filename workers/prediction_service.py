"""The reference prediction service: HTTP in front of the model cache (`trainctl serve`).

It exists so the hot-swap can be exercised the way prediction services use it. Endpoints:

    POST /predict/<org>   {"rows": [[f1, f2, ...], ...]}  ->  {"organizationId", "version",
                                                               "probabilities": [...],
                                                               "alarms": [true, ...],
                                                               "threshold": 0.5}
                          a window model takes windows instead ([length][columns], oldest
                          bucket first), in a list or one per asset:
                          {"windows": [[[c1, c2], ...], ...]}  ->  the same answer, one per window
                          {"assets": {"pump-001": [[c1, c2], ...], ...}}  ->  {"organizationId",
                              "version", "threshold", "assets": {"pump-001": {"probability",
                              "alarm"}, ...}}
    GET  /models/<org>    what to send: {"organizationId", "version", "threshold",
                          "featureColumns", "window": null or {"interval", "intervalSeconds",
                          "length", "columns", "stats"}}
    GET  /health          {"status": "ok", "replicaId", "versions": {org: version}}
    GET  /metrics         Prometheus metrics: requests by organization and outcome, their
                          latency, the version each organization is served by, the last swap,
                          loads and failed loads (workers/model_cache/metrics.py)

`alarms` holds the model's decision for each row or window, made at its `threshold` (0.5 for a
model exported without one). A request of the other kind than the organization's model takes
(rows for a window model, windows for a model on single readings) gets 400 saying what to send.

Connections are HTTP/1.1 keep-alive. Each response leaves in one send (status line, headers and
body are buffered and flushed together) on a socket with TCP_NODELAY: a response split in two small
sends would otherwise wait for the client's delayed ACK (Nagle), about 40 ms per request.

It binds to loopback unless told otherwise and imports neither Celery nor SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from workers.model_cache import Fallback, ModelCache, ModelUnavailable
from workers.model_cache.metrics import PredictionMetrics
from workers.model_cache.remote import FROM_ENV, FromEnvironment

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ROWS = 100_000
PREDICT_PATH = re.compile(r"^/predict/([a-z0-9][a-z0-9-]{0,62})$")
MODEL_PATH = re.compile(r"^/models/([a-z0-9][a-z0-9-]{0,62})$")
WINDOW_KEYS = ("windows", "assets")
# Most replies (a few hundred rows) fit, so they leave in one send; a larger one is sent in pieces,
# which TCP_NODELAY keeps from waiting on ACKs.
RESPONSE_BUFFER_BYTES = 64 * 1024
# An idle keep-alive connection holds a thread; a client that went quiet this long reconnects.
IDLE_TIMEOUT_S = 75.0


class PredictionServer(ThreadingHTTPServer):
    """A threading HTTP server that owns a model cache and closes its keep-alive connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache: ModelCache) -> None:
        super().__init__(address, _Handler)
        self.cache = cache
        self.metrics = PredictionMetrics(cache)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and remember it until its handler is done."""
        conn, address = super().get_request()
        with self._open_lock:
            self._open.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        """Forget and close a connection whose handler is done."""
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Close the listening socket, then end the idle keep-alive connections."""
        super().server_close()
        with self._open_lock:
            still_open = list(self._open)
        for conn in still_open:  # the handler blocked on the next request sees EOF and ends
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    _status: HTTPStatus = HTTPStatus.OK  # of the reply being written, for the metrics
    protocol_version = "HTTP/1.1"
    wbufsize = RESPONSE_BUFFER_BYTES  # handle_one_request flushes once the reply is written
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S

    def handle_expect_100(self) -> bool:
        """Send the 100 Continue now: the buffer would hold it while the client waits for it."""
        answered = super().handle_expect_100()
        self.wfile.flush()
        return answered

    def do_GET(self) -> None:
        if self.path == "/metrics":
            body, content_type = self.server.metrics.render()
            self._send(HTTPStatus.OK, body, content_type)
            return
        model = MODEL_PATH.match(self.path)
        if model is not None:
            self._describe(model.group(1))
            return
        if self.path != "/health":
            self._reply(
                HTTPStatus.NOT_FOUND,
                {"error": f"no such path {self.path}; try /health, /metrics or /models/<org>"},
            )
            return
        cache = self.server.cache
        self._reply(
            HTTPStatus.OK,
            {"status": "ok", "replicaId": cache.replica_id, "versions": cache.versions()},
        )

    def do_POST(self) -> None:
        started = time.perf_counter()
        self._status = HTTPStatus.INTERNAL_SERVER_ERROR  # unless a reply says otherwise
        try:
            self._predict()
        finally:
            # Until the reply is in the buffer; handle_one_request flushes it right after.
            match = PREDICT_PATH.match(self.path)
            if match is not None:
                elapsed_s = time.perf_counter() - started
                self.server.metrics.observe(match.group(1), self._status, elapsed_s)

    def _predict(self) -> None:
        try:
            body = self._body()  # read first, so the connection is ready for the next request
        except _BadRequest as exc:
            self.close_connection = True  # an unread body would be taken for the next request
            self._reply(exc.status, {"error": str(exc)})
            return
        match = PREDICT_PATH.match(self.path)
        if match is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST /predict/<organizationId>"})
            return
        org_id = match.group(1)
        cache, key = self.server.cache, "rows"
        try:
            doc = _json(body)
            key, inputs, assets = _inputs(doc, cache.model_info(org_id))
            prediction = cache.predict(org_id, inputs)
        except _BadRequest as exc:
            self._reply(exc.status, {"error": str(exc)})
            return
        except ModelUnavailable as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except (ValueError, TypeError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"{key}: {exc}"})
            return
        answer: dict[str, Any] = {"organizationId": org_id, "version": prediction.version}
        probabilities = [float(p) for p in prediction.probabilities]
        if assets is None:
            answer.update(probabilities=probabilities, alarms=prediction.alarms.tolist())
        else:
            pairs = zip(assets, probabilities, prediction.alarms.tolist(), strict=True)
            answer["assets"] = {a: {"probability": p, "alarm": b} for a, p, b in pairs}
        self._reply(HTTPStatus.OK, {**answer, "threshold": prediction.threshold})

    def _describe(self, org_id: str) -> None:
        """GET /models/<org>: what the organization's model takes, so a caller knows what to send."""
        try:
            self._reply(HTTPStatus.OK, self.server.cache.model_info(org_id))
        except ModelUnavailable as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})

    def _body(self) -> bytes:
        raw = self.headers.get("Content-Length")
        if raw is None:  # also a chunked body: this service reads Content-Length bodies only
            raise _BadRequest(
                "send the JSON body with a Content-Length header", HTTPStatus.LENGTH_REQUIRED
            )
        try:
            length = int(raw)
        except ValueError:
            raise _BadRequest(f"Content-Length {raw!r} is not a number of bytes") from None
        if length <= 0 or length > MAX_BODY_BYTES:
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0 else HTTPStatus.BAD_REQUEST
            raise _BadRequest(f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes", status)
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadRequest(f"the body ended after {len(body)} of {length} bytes")
        return body

    def _reply(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)  # into the same buffer as the headers: one send

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _BadRequest(Exception):
    """The request body is not what /predict takes; the message says what is."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def _json(body: bytes) -> Any:
    """The JSON document of a /predict body, or _BadRequest."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise _BadRequest(f"the body is not JSON ({reason})") from None


def _inputs(doc: Any, model: dict[str, Any]) -> tuple[str, Any, list[str] | None]:
    """(the body's key, what to predict on, the asset ids of an `assets` body); _BadRequest
    saying what to send when the body is not what the organization's model takes.

    `model` is the cache's model_info of the organization."""
    doc = doc if isinstance(doc, dict) else {}
    given = [key for key in ("rows", *WINDOW_KEYS) if key in doc]
    window, org_id = model["window"], model["organizationId"]
    if window is None:
        if given and given != ["rows"]:
            raise _BadRequest(
                f"organization {org_id} is served by a model on single readings, which takes "
                f'rows, not {" or ".join(given)}: send {{"rows": [row, ...]}}, each row '
                f"[{', '.join(model['featureColumns'])}]"
            )
        return "rows", _rows(doc.get("rows")), None
    if len(given) != 1 or given == ["rows"]:
        raise _BadRequest(f"organization {org_id} is served by a window model: {_send(window)}")
    if given == ["windows"]:
        return "windows", _windows(doc["windows"], "windows", window), None
    assets = doc["assets"]
    if not isinstance(assets, dict):
        assets = {}
    windows = _windows(list(assets.values()), "assets", window)
    # Named here: the model can only say which window of the list holds a gap.
    gaps = [a for a, ok in zip(assets, _finite(windows), strict=True) if not ok]
    if gaps:
        raise _BadRequest(
            f"assets: the windows of {gaps[:10]} hold NaN or infinity; the model was trained on "
            "windows without gaps: forward-fill a short gap with the last value, or leave the "
            "asset out until it has a whole window"
        )
    return "assets", windows, list(assets)


def _rows(rows: Any) -> list[list[float]]:
    """The rows of a /predict body, or _BadRequest saying what the body should be."""
    if not isinstance(rows, list) or not rows or len(rows) > MAX_ROWS:
        raise _BadRequest(f'rows: give {{"rows": [[...], ...]}} with 1 to {MAX_ROWS} rows')
    if not all(isinstance(row, list) for row in rows):
        raise _BadRequest("rows: every row must be a list of numbers in feature order")
    return rows


def _windows(windows: Any, key: str, window: dict[str, Any]) -> np.ndarray:
    """Windows as a float32 array (its shape is the model's to check), or _BadRequest when
    they are not 1 to MAX_ROWS grids of numbers."""
    if not isinstance(windows, list) or not 1 <= len(windows) <= MAX_ROWS:
        raise _BadRequest(f"{key}: give 1 to {MAX_ROWS} windows; {_send(window)}")
    try:
        return np.asarray(windows, dtype=np.float32)
    except (ValueError, TypeError):  # ragged, or not numbers
        raise _BadRequest(
            f"{key}: not every window is a grid of numbers; {_send(window)}"
        ) from None


def _finite(windows: np.ndarray) -> np.ndarray:
    """Per window, whether all its values are finite."""
    return np.isfinite(windows.reshape(len(windows), -1)).all(axis=1)


def _send(window: dict[str, Any]) -> str:
    """What a window model takes, as a sentence."""
    columns = ", ".join(window["columns"])
    return (
        'send {"windows": [window, ...]} or {"assets": {"<asset id>": window, ...}}, each '
        f"window {window['length']} buckets of {window['interval']} (oldest first), each "
        f"bucket [{columns}]"
    )


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
        fallback: Fallback | None = None,
        model_store_url: str | FromEnvironment | None = FROM_ENV,
    ) -> None:
        self.cache = ModelCache(
            redis_url,
            ml_base_path,
            organizations,
            replica_id=replica_id,
            fallback=fallback,
            model_store_url=model_store_url,
        )
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
    fallback: Fallback | None = None,
    model_store_url: str | FromEnvironment | None = FROM_ENV,
) -> None:
    """Run the service until SIGTERM or SIGINT.

    `fallback` finds an organization's deployment while Redis holds no announcement of it
    (default: the `models/<org>/current` link, see workers.model_cache.fallback).
    `model_store_url` (default: MODEL_STORE_URL) is the object store deployed models are
    fetched from into `ml_base_path` (see workers.model_cache.remote).
    """
    stop = threading.Event()

    def shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping the prediction service", signum)
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    service = PredictionService(
        redis_url,
        ml_base_path,
        organizations,
        host=host,
        port=port,
        replica_id=replica_id,
        fallback=fallback,
        model_store_url=model_store_url,
    )
    with service:
        log.info("serving %s on http://%s:%s", ", ".join(organizations), host, service.port)
        print(f"serving {', '.join(organizations)} on http://{host}:{service.port}", flush=True)
        stop.wait()
