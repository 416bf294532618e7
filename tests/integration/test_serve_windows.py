"""`trainctl serve` with a window model: windows in a list or one per asset get the model
cache's probabilities and alarms, GET /models/<org> says what to send, and a request of the
other kind gets 400 saying what to send, also right after a swap changes the model's kind."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pytest

from tests.integration.conftest import version_id
from tests.support.onnx_fixtures import (
    FEATURES,
    WINDOW,
    make_windows,
    to_onnx_window,
    train_window_booster,
)
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache.model import load_model
from workers.prediction_service import PredictionService

pytestmark = pytest.mark.integration
WINDOWS, _ = make_windows(12, seed=3)
ASSETS = {f"pump-{i:03d}": WINDOWS[i].tolist() for i in range(len(WINDOWS))}


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


@pytest.fixture(scope="module")
def window_booster() -> lgb.Booster:
    return train_window_booster(*make_windows(1500), rounds=20)


@pytest.fixture
def deploy_window(
    deploy: Callable[..., Deployment], window_booster: lgb.Booster
) -> Callable[[str, int], Deployment]:
    def run(org_id: str, n: int) -> Deployment:
        model = to_onnx_window(window_booster, threshold=0.4, org_id=org_id, version=version_id(n))
        return deploy(org_id, n, data=model.SerializeToString())

    return run


@pytest.fixture
def served(
    redis_url: str, base: Path, org: str, deploy_window: Callable[[str, int], Deployment]
) -> Iterator[tuple[PredictionService, Deployment]]:
    deployment = deploy_window(org, 1)
    with PredictionService(redis_url, base, [org], port=0) as service:
        yield service, deployment


def test_windows_get_the_probabilities_and_alarms_of_the_model_cache(
    served: tuple[PredictionService, Deployment], org: str, base: Path
) -> None:
    service, deployment = served
    status, doc = call(service.port, "POST", f"/predict/{org}", {"windows": WINDOWS.tolist()})
    probabilities, alarms = load_model(base, org, deployment).decide(WINDOWS)
    assert status == 200 and doc["version"] == deployment.version
    assert doc["probabilities"] == probabilities.astype(float).tolist()
    assert doc["alarms"] == alarms.tolist() and doc["threshold"] == 0.4
    assert any(doc["alarms"]) and not all(doc["alarms"])


def test_one_window_per_asset_is_answered_per_asset(
    served: tuple[PredictionService, Deployment], org: str
) -> None:
    service, _ = served
    _, listed = call(service.port, "POST", f"/predict/{org}", {"windows": WINDOWS.tolist()})
    status, doc = call(service.port, "POST", f"/predict/{org}", {"assets": ASSETS})
    assert status == 200 and set(doc) == {"organizationId", "version", "assets", "threshold"}
    assert list(doc["assets"]) == list(ASSETS)
    assert [a["probability"] for a in doc["assets"].values()] == listed["probabilities"]
    assert [a["alarm"] for a in doc["assets"].values()] == listed["alarms"]


def test_the_model_endpoint_says_which_windows_to_send(
    served: tuple[PredictionService, Deployment], org: str
) -> None:
    service, deployment = served
    status, doc = call(service.port, "GET", f"/models/{org}")
    assert status == 200
    assert doc == {
        "organizationId": org,
        "version": deployment.version,
        "threshold": 0.4,
        "featureColumns": WINDOW["columns"],
        "window": WINDOW,
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"rows": [[1.0, 60.0]]}, ["window model", '{"windows"', '{"assets"', "36 buckets"]),
        ({}, ["window model", "[vibration, temperature]"]),
        ({"windows": WINDOWS.tolist(), "assets": ASSETS}, ["window model"]),
        ({"windows": WINDOWS[:, :30].tolist()}, ["windows: windows must be [n_windows, 36, 2]"]),
        ({"windows": [[[1.0, 2.0]], [[1.0]]]}, ["windows: not every window is a grid"]),
        ({"assets": {"pump-001": [[1.0, 2.0]] * 35}}, ["assets: windows must be [n_windows, 36"]),
        ({"assets": []}, ["assets: give 1 to"]),
    ],
)
def test_a_request_a_window_model_cannot_take_gets_400_saying_what_to_send(
    served: tuple[PredictionService, Deployment], org: str, body: Any, words: list[str]
) -> None:
    service, _ = served
    status, doc = call(service.port, "POST", f"/predict/{org}", body)
    assert status == 400
    for word in words:
        assert word in doc["error"]


def test_an_asset_whose_window_has_a_gap_is_named(
    served: tuple[PredictionService, Deployment], org: str
) -> None:
    service, _ = served
    gappy = {**ASSETS, "pump-004": [[1.0, float("nan")], *ASSETS["pump-004"][1:]]}
    status, doc = call(service.port, "POST", f"/predict/{org}", {"assets": gappy})
    assert status == 400 and "['pump-004'] hold NaN or infinity" in doc["error"]


def test_a_swap_to_a_window_model_turns_rows_away_and_says_to_send_windows(
    redis_url: str,
    base: Path,
    org: str,
    deploy: Callable[..., Deployment],
    deploy_window: Callable[[str, int], Deployment],
) -> None:
    row = [0.5] * len(FEATURES)
    deploy(org, 1)  # a model on single readings
    with PredictionService(redis_url, base, [org], port=0) as service:
        status, before = call(service.port, "POST", f"/predict/{org}", {"rows": [row]})
        assert status == 200 and len(before["probabilities"]) == 1
        status, refused = call(service.port, "POST", f"/predict/{org}", {"assets": ASSETS})
        assert status == 400 and "single readings" in refused["error"]
        assert "[temperature, pressure, vibration, rpm]" in refused["error"]
        assert call(service.port, "GET", f"/models/{org}")[1]["window"] is None
        _wait_served(service, org, deploy_window(org, 2).version)
        status, after = call(service.port, "POST", f"/predict/{org}", {"rows": [row]})
        assert status == 400 and '{"windows"' in after["error"]
        status, windows = call(service.port, "POST", f"/predict/{org}", {"assets": ASSETS})
        assert status == 200 and windows["version"] == version_id(2)


def _wait_served(service: PredictionService, org: str, version: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if service.cache.version(org) == version:
            return
        time.sleep(0.005)
    raise AssertionError(f"{version} not served within 10 s")
