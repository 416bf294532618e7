"""The Grafana dashboard in docs/grafana asks only for metrics the service exports.

The exported names come from the real registries of `trainctl metrics` and `trainctl serve`
(every family they declare, with the sample names its type gives in Prometheus's text format),
so a metric renamed in the code and not in the dashboard fails here instead of leaving an empty
panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from tests.support.registry_fixtures import migrated_engine, register
from training_tasks.registry.metrics import registry_for
from workers.model_cache import ModelCache
from workers.model_cache.metrics import PredictionMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "training-service.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# PromQL words that look like metric names: functions are followed by "(", these are not always.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}


def exported(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    }


@pytest.fixture
def service_names(sqlite_url: str, tmp_path: Path) -> Iterator[set[str]]:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme-corp")
    cache = ModelCache("redis://127.0.0.1:1/0", tmp_path, ["acme-corp"])  # never started
    yield exported(registry_for(engine)) | exported(PredictionMetrics(cache).registry)
    engine.dispose()


def queries(node: Any) -> Iterator[str]:
    """Every PromQL expression of the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (a small scanner, enough for dashboards)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # dashboard variables
    expr = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"(\1)", expr)  # Grafana's, with a label
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):  # not in 5m, 1e3
        following = expr[match.end() :].lstrip()
        if not following.startswith("(") and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def test_the_scanner_finds_metric_names_and_skips_functions_labels_and_ranges() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, organization) (rate(a_bucket{o=~"$org"}[5m])))'
        " / on (organization) group_left (version) b_info unless c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_info", "c"}


def test_the_dashboard_is_grafana_json_with_panels_that_query_prometheus() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert doc["uid"] and doc["title"] and len(panels) >= 10
    assert all(p["targets"] and p["datasource"]["type"] == "prometheus" for p in panels)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_the_dashboard_queries_is_one_the_service_exports(
    service_names: set[str],
) -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {name for expr in queries(doc) for name in metric_names(expr)}
    assert used - service_names == set(), f"not exported: {sorted(used - service_names)}"
    required = {
        "prediction_requests_total",
        "prediction_request_duration_seconds_bucket",
        "prediction_model_info",
        "prediction_model_last_swap_timestamp_seconds",
        "prediction_model_load_failures_total",
        "model_deployed_info",
        "training_last_success_timestamp_seconds",
        "model_deployed_holdout_auc",
        "model_deployed_holdout_precision",
        "model_deployed_holdout_recall",
    }
    assert required <= used
