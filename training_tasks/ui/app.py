"""The dashboard's Tornado application: read-only pages, basic auth, safe report serving.

Every handler answers GET only. Page data is read in a thread pool (the registry is blocking),
rendered from autoescaping templates, and sent with headers that keep it out of frames and
keep a report's markup from running scripts.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import tornado.web
from tornado.ioloop import IOLoop

from training_tasks.db.errors import DatabaseError
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.files import UnsafeFile
from training_tasks.pipeline.version_objects import fetch_artifacts
from training_tasks.protocol.ids import check_org_id
from training_tasks.protocol.object_store import ObjectCorrupt, ObjectMissing, StoreUnavailable
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import orgs, versions
from training_tasks.ui.pages import org_page, overview_page
from training_tasks.ui.reports import REPORT_NAME, read_report
from training_tasks.ui.templates import loader
from training_tasks.ui.views import TREND_METRICS, when

REALM = "training service"
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
# A report is a standalone HTML file: its own styles and images, no scripts, no requests out.
REPORT_CSP = "sandbox; " + PAGE_CSP
READ_THREADS = 4


@dataclass
class Dashboard:
    """What the handlers read from: the service database, the model store and the clock.

    With an object store (`store.objects`) a report is fetched into `store.base` when it is not
    there yet, so the dashboard runs on any host.
    """

    engine: Any
    store: ModelStore
    now: Callable[[], datetime]
    # user -> password; empty: no login asked (the server is then bound to loopback by default).
    credentials: Mapping[str, str] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dashboard")
    )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def parse_basic_auth(spec: str) -> dict[str, str]:
    """`user:password[,user2:password2]` (Flower's --basic-auth form) as a dict."""
    credentials = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ConfigError(
                "basicAuth",
                "give USER:PASSWORD (several separated by commas), both parts non-empty, "
                "for example 'ops:a-long-password'",
            )
        credentials[user] = password
    return credentials


class BaseHandler(tornado.web.RequestHandler):
    """Security headers, basic auth and error pages shared by every page."""

    dash: Dashboard

    def initialize(self, dash: Dashboard) -> None:
        self.dash = dash
        self.started = time.perf_counter()

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if self.dash.credentials and not self._authorized():
            raise tornado.web.HTTPError(401, reason="Unauthorized")

    def _authorized(self) -> bool:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Compared in constant time against every user, so timing tells nothing.
        matches = [
            hmac.compare_digest(user.encode(), known.encode())
            & hmac.compare_digest(password.encode(), secret.encode())
            for known, secret in self.dash.credentials.items()
        ]
        return any(matches)

    async def read(self, build: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking page read in the pool; a database failure becomes a 503 that says why."""
        try:
            return await IOLoop.current().run_in_executor(self.dash.pool, build, *args)
        except NotFoundError as exc:
            raise tornado.web.HTTPError(404, reason="Not Found", log_message=str(exc)) from None
        except ConfigError as exc:  # an id that cannot be one (bad characters, `..`)
            raise tornado.web.HTTPError(404, reason="Not Found", log_message=str(exc)) from None
        except (ObjectMissing, ObjectCorrupt) as exc:  # a report the object store lost or changed
            raise tornado.web.HTTPError(404, reason="Not Found", log_message=str(exc)) from None
        except StoreUnavailable as exc:
            raise tornado.web.HTTPError(503, reason="Unavailable", log_message=str(exc)) from None
        except DatabaseError as exc:
            message = (
                f"the service database could not be read ({type(exc).__name__}); check "
                "DATABASE_URL, and run `trainctl db upgrade` if it has no tables yet"
            )
            raise tornado.web.HTTPError(503, reason="Unavailable", log_message=message) from None

    def page(self, template: str, **namespace: Any) -> None:
        """Render and send a page, with the server's time for it (Server-Timing)."""
        html = self.render_string(template, metric_names=TREND_METRICS, **namespace)
        self._timing()
        self.finish(html)

    def _timing(self) -> None:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        self.set_header("Server-Timing", f"app;dur={elapsed_ms:.1f}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        if status_code == 401:  # set here: an error clears the headers set before it
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
            message = "Log in with a user and password given to `trainctl ui --basic-auth`."
        elif status_code >= 500 and not isinstance(exc, tornado.web.HTTPError):
            message = "The dashboard failed on this page; its log has the details."
        self.finish(
            self.render_string(
                "error.html",
                status=status_code,
                reason=self._reason,
                message=message,
                generated_at=when(self.dash.now()),
            )
        )


class OverviewHandler(BaseHandler):
    """`/`: every organization."""

    async def get(self) -> None:
        data = await self.read(overview_page, self.dash.engine, self.dash.now())
        self.page("overview.html", **data)


class OrgHandler(BaseHandler):
    """`/orgs/<org>`: runs, versions with the trend chart, schedule."""

    async def get(self, org_id: str) -> None:
        data = await self.read(org_page, self.dash.engine, self.dash.store, org_id, self.dash.now())
        self.page("org.html", **data)


class ReportHandler(BaseHandler):
    """`/orgs/<org>/versions/<version>/report.html`: the version's own report file."""

    async def get(self, org_id: str, version: str) -> None:
        body = await self.read(self._report, org_id, version)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", REPORT_CSP)
        self._timing()
        self.finish(body)

    def _report(self, org_id: str, version: str) -> bytes:
        record = versions.get_version(self.dash.engine, version)
        if record["organization_id"] != check_org_id(org_id):
            raise NotFoundError(f"organization {org_id} has no version {version}")
        # With an object store the report may have been written on another host: fetch it here.
        fetch_artifacts(self.dash.engine, self.dash.store, org_id, version, (REPORT_NAME,))
        try:
            body = read_report(self.dash.store, org_id, version)
        except UnsafeFile as exc:
            raise NotFoundError(f"the report of {org_id} {version} is not served: {exc}") from None
        if body is None:
            raise NotFoundError(f"version {version} of {org_id} has no report")
        return body


class HealthHandler(BaseHandler):
    """`/healthz`: 200 once the service database answers (no login, nothing shown)."""

    def prepare(self) -> None:
        """No login: a container health check has none."""

    async def get(self) -> None:
        await self.read(orgs.list_org_ids, self.dash.engine)
        self.finish("ok\n")


def make_app(dash: Dashboard) -> tornado.web.Application:
    """The dashboard's routes; `/orgs/<org>/...` parts are checked as ids by the handlers."""
    part = r"([^/]+)"
    routes: list[Any] = [
        (r"/", OverviewHandler, {"dash": dash}),
        (rf"/orgs/{part}", OrgHandler, {"dash": dash}),
        (rf"/orgs/{part}/versions/{part}/report\.html", ReportHandler, {"dash": dash}),
        (r"/healthz", HealthHandler, {"dash": dash}),
    ]
    return tornado.web.Application(
        routes, template_loader=loader(), compress_response=True, xheaders=False
    )
