"""The reference prediction service answers through every swap: no failed or wrong-version reply."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import version_id
from tests.unit.onnx_fixtures import FEATURES
from training_tasks.hotswap import Deployment
from workers.prediction_service import PredictionService

pytestmark = pytest.mark.integration
ROW = [0.5] * len(FEATURES)


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def service(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> Iterator[PredictionService]:
    deploy(org, 1)
    with PredictionService(redis_url, base, [org], port=0) as running:
        yield running


def test_predict_answers_with_probabilities_and_the_version(service, org) -> None:
    status, doc = call(service.port, "POST", f"/predict/{org}", {"rows": [ROW, ROW]})
    assert status == 200
    assert doc["version"] == version_id(1) and len(doc["probabilities"]) == 2
    assert all(0.0 <= p <= 1.0 for p in doc["probabilities"])
    status, health = call(service.port, "GET", "/health")
    assert status == 200 and health["versions"] == {org: version_id(1)}


@pytest.mark.parametrize(
    ("body", "word"),
    [({"rowz": []}, "rows"), ({"rows": [[1.0]]}, "temperature"), ({"rows": ["x"]}, "rows")],
)
def test_a_bad_request_gets_400_saying_what_is_expected(service, org, body, word) -> None:
    status, doc = call(service.port, "POST", f"/predict/{org}", body)
    assert status == 400 and word in doc["error"]


def test_an_organization_this_service_does_not_hold_gets_503(service) -> None:
    status, doc = call(service.port, "POST", "/predict/someone-else", {"rows": [ROW]})
    assert status == 503 and "someone-else" in doc["error"]


def test_deploys_and_rollbacks_under_load_fail_no_request(service, org, deploy) -> None:
    stop, replies, errors = threading.Event(), [], []

    def load() -> None:
        while not stop.is_set():
            status, doc = call(service.port, "POST", f"/predict/{org}", {"rows": [ROW]})
            (replies if status == 200 else errors).append((status, doc))

    clients = [threading.Thread(target=load) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        for n in range(2, 22):  # ten deploys, ten "rollbacks" (an older version, newer sequence)
            deployment = deploy(org, n)
            _wait_served(service, org, deployment.version)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)
    assert errors == []
    assert len(replies) > 20
    served = {doc["version"] for _, doc in replies}
    assert served <= {version_id(n) for n in range(1, 22)}


def _wait_served(service: PredictionService, org: str, version: str) -> None:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if service.cache.version(org) == version:
            return
        time.sleep(0.005)
    raise AssertionError(f"{version} not served within 5 s")


def test_trainctl_serve_answers_and_status_shows_its_confirmation(
    tmp_path: Path, redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> None:
    import os
    import subprocess
    import sys

    from tests.registry_fixtures import migrated_engine, register
    from training_tasks.child_process import die_with_parent

    database_url = f"sqlite:///{tmp_path / 'svc.db'}"
    engine = migrated_engine(database_url)
    register(engine, org)
    engine.dispose()
    deployed = deploy(org, 1)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "ML_BASE_PATH": str(base),
    }
    trainctl = [sys.executable, "-m", "training_tasks.cli"]
    proc = subprocess.Popen(
        [*trainctl, "serve", "--port", "0", "--org", org, "--replica-id", "replica-a"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving" in line, line
        port = int(line.rsplit(":", 1)[1])
        status, doc = call(port, "POST", f"/predict/{org}", {"rows": [ROW]})
        assert (status, doc["version"]) == (200, deployed.version)
        shown = subprocess.run(
            [*trainctl, "status", org], env=env, capture_output=True, text=True, timeout=60
        )
        assert "replica-a" in shown.stdout and deployed.version in shown.stdout, (
            shown.stdout + shown.stderr
        )
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
