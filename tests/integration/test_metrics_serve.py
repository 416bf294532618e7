"""`trainctl serve`'s /metrics, scraped as Prometheus would while models are deployed and refused.

A real Redis carries the deployments; the prediction service runs in this process on a free port.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import version_id
from tests.support.onnx_fixtures import FEATURES
from tests.support.processes import wait_for
from training_tasks.protocol.hotswap import Deployment
from workers.prediction_service import PredictionService

pytestmark = [pytest.mark.integration, pytest.mark.redis]
SWAP_TIMEOUT_S = 10.0


@pytest.fixture
def service(
    redis_url: str, base: Path, org: str, deploy: Callable[..., Deployment]
) -> Iterator[PredictionService]:
    deploy(org, 1)
    with PredictionService(redis_url, base, [org], port=0) as running:
        yield running


def post(port: int, path: str, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[Any, float], name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def test_metrics_count_requests_by_outcome_and_time_them(
    service: PredictionService, org: str
) -> None:
    row = json.dumps({"rows": [[0.5] * len(FEATURES)] * 3}).encode()
    assert [post(service.port, f"/predict/{org}", row) for _ in range(4)] == [200] * 4
    assert post(service.port, f"/predict/{org}", b"not json") == 400
    assert post(service.port, "/predict/someone-else", row) == 503
    scraped = scrape(service.port)
    count = "prediction_requests_total"
    assert value(scraped, count, organization=org, outcome="ok") == 4
    assert value(scraped, count, organization=org, outcome="bad_request") == 1
    assert value(scraped, count, organization="_other", outcome="unavailable") == 1
    latency = "prediction_request_duration_seconds"
    assert value(scraped, f"{latency}_count", organization=org) == 5
    assert 0 < (value(scraped, f"{latency}_sum", organization=org) or 0) < 5
    assert value(scraped, f"{latency}_bucket", organization=org, le="+Inf") == 5


def test_metrics_show_the_version_served_the_last_swap_and_refused_loads(
    service: PredictionService, org: str, deploy: Callable[..., Deployment]
) -> None:
    first = scrape(service.port)
    assert value(first, "prediction_model_info", organization=org, version=version_id(1)) == 1
    assert value(first, "prediction_model_loaded", organization=org) == 1
    first_swap = value(first, "prediction_model_last_swap_timestamp_seconds", organization=org)
    assert first_swap is not None and abs(first_swap - time.time()) < 60

    deploy(org, 2)
    wait_for(lambda: service.cache.version(org) == version_id(2), SWAP_TIMEOUT_S, "the swap")
    deploy(org, 3, sha256="0" * 64)  # announced with a checksum the file does not have
    wait_for(lambda: service.cache.stats()[org].load_failures == 1, SWAP_TIMEOUT_S, "the refusal")

    after = scrape(service.port)
    assert value(after, "prediction_model_info", organization=org, version=version_id(2)) == 1
    assert value(after, "prediction_model_info", organization=org, version=version_id(1)) is None
    swapped = value(after, "prediction_model_last_swap_timestamp_seconds", organization=org)
    assert swapped is not None and swapped > first_swap
    assert value(after, "prediction_model_swaps_total", organization=org) == 1
    assert value(after, "prediction_model_load_failures_total", organization=org) == 1
