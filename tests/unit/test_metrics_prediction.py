"""A prediction service's /metrics: requests by organization and outcome, latency, the cache's state.

The cache here is never started (no network): what it serves comes from integration tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from workers.model_cache import ModelCache
from workers.model_cache.metrics import OTHER_ORGANIZATION, PredictionMetrics, outcome_of

ORGS = ["acme-corp", "globex"]


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[PredictionMetrics]:
    cache = ModelCache("redis://127.0.0.1:1/0", tmp_path, ORGS)  # never started: no connection
    yield PredictionMetrics(cache)


def sample(metrics: PredictionMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_http_statuses_map_to_four_outcomes() -> None:
    assert [outcome_of(s) for s in (200, 400, 411, 413, 503, 500)] == [
        "ok",
        "bad_request",
        "bad_request",
        "bad_request",
        "unavailable",
        "error",
    ]


def test_every_organization_starts_with_zero_requests_of_every_outcome(
    metrics: PredictionMetrics,
) -> None:
    for org in ORGS:
        for outcome in ("ok", "bad_request", "unavailable", "error"):
            labels = {"organization": org, "outcome": outcome}
            assert sample(metrics, "prediction_requests_total", **labels) == 0
        assert sample(metrics, "prediction_request_duration_seconds_count", organization=org) == 0


def test_requests_are_counted_by_organization_and_outcome_with_their_latency(
    metrics: PredictionMetrics,
) -> None:
    metrics.observe("acme-corp", 200, 0.004)
    metrics.observe("acme-corp", 200, 0.2)
    metrics.observe("acme-corp", 503, 0.001)
    ok = sample(metrics, "prediction_requests_total", organization="acme-corp", outcome="ok")
    assert ok == 2
    labels = {"organization": "acme-corp", "outcome": "unavailable"}
    assert sample(metrics, "prediction_requests_total", **labels) == 1
    latency = "prediction_request_duration_seconds"
    assert sample(metrics, f"{latency}_count", organization="acme-corp") == 3
    assert sample(metrics, f"{latency}_bucket", organization="acme-corp", le="0.005") == 2
    assert sample(metrics, f"{latency}_sum", organization="acme-corp") == pytest.approx(0.205)


def test_requests_for_organizations_the_cache_does_not_serve_share_one_label(
    metrics: PredictionMetrics,
) -> None:
    for n in range(50):
        metrics.observe(f"guessed-{n}", 503, 0.001)
    labels = {"organization": OTHER_ORGANIZATION, "outcome": "unavailable"}
    assert sample(metrics, "prediction_requests_total", **labels) == 50
    body, _content_type = metrics.render()
    assert b"guessed-" not in body


def test_an_organization_without_a_model_reports_not_loaded_and_no_version(
    metrics: PredictionMetrics,
) -> None:
    assert sample(metrics, "prediction_model_loaded", organization="acme-corp") == 0
    assert sample(metrics, "prediction_model_load_failures_total", organization="acme-corp") == 0
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["prediction_model_info"].samples == []
    assert families["prediction_requests"].type == "counter"
    assert families["prediction_request_duration_seconds"].type == "histogram"
    labels = {"organization": "globex", "reason": "stale"}
    assert sample(metrics, "prediction_hotswap_messages_ignored_total", **labels) == 0
