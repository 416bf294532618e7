"""The dashboard over HTTP: a login when a password is set, only GET, only the report file.

The server runs in this process on a free loopback port over a PostgreSQL registry.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from tests.support.registry_fixtures import NOW, migrated_engine, register
from tests.unit.test_ui_pages import GOOD, add_run, add_version
from training_tasks.protocol.paths import ModelStore
from training_tasks.ui.app import Dashboard
from training_tasks.ui.server import DashboardServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def server(postgres_url: str, tmp_path: Path) -> Iterator[tuple[DashboardServer, ModelStore]]:
    engine = migrated_engine(postgres_url)
    register(engine, "acme-corp")
    add_version(
        engine,
        "acme-corp",
        GOOD,
        add_run(engine, "acme-corp", GOOD, "succeeded", NOW),
        "validated",
        NOW,
    )
    store = ModelStore(tmp_path / "ml")
    dash = Dashboard(engine, store, lambda: NOW, {"ops": "s3cret"})
    with DashboardServer(dash, "127.0.0.1", 0) as running:
        yield running, store
    engine.dispose()


def get(
    url: str, login: str | None = "ops:s3cret", method: str = "GET"
) -> tuple[int, Message, str]:
    request = urllib.request.Request(url, method=method)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def test_pages_ask_for_the_login_and_open_with_it(
    server: tuple[DashboardServer, ModelStore],
) -> None:
    url = server[0].url
    status, headers, _ = get(url, login=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert get(url, login="ops:wrong")[0] == 401
    status, headers, body = get(url)
    assert status == 200 and "acme-corp" in body and "app;dur=" in headers["Server-Timing"]
    assert get(f"{url}healthz", login=None)[0] == 200  # for the container health check


def test_the_dashboard_changes_nothing_it_answers_get_only(
    server: tuple[DashboardServer, ModelStore],
) -> None:
    assert get(f"{server[0].url}orgs/acme-corp", method="POST")[0] == 405


def test_only_the_report_of_a_known_version_is_served(
    server: tuple[DashboardServer, ModelStore],
) -> None:
    running, store = server
    base = f"{running.url}orgs/acme-corp/versions/{GOOD}/report.html"
    assert get(base)[0] == 404  # no file yet: "has no report"
    store.artifacts("acme-corp", GOOD).mkdir(parents=True)
    (store.artifacts("acme-corp", GOOD) / "report.html").write_text("<h1>the report</h1>")
    status, headers, body = get(base)
    assert status == 200 and body == "<h1>the report</h1>"
    assert headers["Content-Security-Policy"].startswith("sandbox")
    for path in (
        f"orgs/acme-corp/versions/{GOOD}/metrics.json",
        "orgs/acme-corp/versions/..%2F..%2F..%2Fetc/report.html",
        f"orgs/globex/versions/{GOOD}/report.html",
        "orgs/..%2Fetc",
    ):
        assert get(f"{running.url}{path}")[0] == 404, path
