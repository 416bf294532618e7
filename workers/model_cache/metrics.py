"""Prometheus metrics of a prediction service that embeds the model cache (`trainctl serve` does).

    metrics = PredictionMetrics(cache)
    metrics.observe("acme-corp", 200, elapsed_s)   # once per prediction request
    body, content_type = metrics.render()          # the reply to GET /metrics

Requests and their latency are counted as they are observed; what each organization serves, its
last swap and the cache's load counters are read from the cache at each scrape. Organization
labels are the cache's own organizations, so a client naming others cannot grow the series.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from http import HTTPStatus

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.model_cache.cache import ModelCache

# Not a valid organization id (ids have no `_`): the label of requests for an organization the
# cache does not serve.
OTHER_ORGANIZATION = "_other"
OUTCOMES = ("ok", "bad_request", "unavailable", "error")
# Scoring a few rows takes about a millisecond; a large batch, up to seconds.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def outcome_of(status: int) -> str:
    """The outcome label of an HTTP status: ok, bad_request (4xx), unavailable (503), error."""
    if status < 400:
        return "ok"
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        return "unavailable"
    return "bad_request" if status < 500 else "error"


class CacheCollector(Collector):
    """What each organization serves and the cache's load counters, read at scrape time."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        labels = ["organization"]
        served = InfoMetricFamily(
            "prediction_model", "The model version each organization is served by.", labels=labels
        )
        loaded = GaugeMetricFamily(
            "prediction_model_loaded",
            "1 if the organization has a model to serve, else 0.",
            labels=labels,
        )
        swapped = GaugeMetricFamily(
            "prediction_model_last_swap_timestamp_seconds",
            "Unix time the model served now was swapped in (its load finished).",
            labels=labels,
        )
        for org, view in self.cache.served().items():
            loaded.add_metric([org], 0.0 if view.version is None else 1.0)
            if view.version is not None:
                served.add_metric([org], {"version": view.version})
            if view.loaded_at is not None:
                swapped.add_metric([org], _unix_s(view.loaded_at))
        yield from (served, loaded, swapped)
        yield from self._counters()

    def _counters(self) -> Iterator[Metric]:
        stats = self.cache.stats()
        counters = {
            "prediction_model_loads": ("Models loaded and verified.", "loads"),
            "prediction_model_swaps": ("Served models replaced by a newer one.", "swaps"),
            "prediction_model_load_failures": (
                "Models refused: missing, wrong sha256, corrupt or outside the organization folder.",
                "load_failures",
            ),
        }
        for name, (doc, field) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["organization"])
            for org, org_stats in stats.items():
                family.add_metric([org], getattr(org_stats, field))
            yield family
        ignored = CounterMetricFamily(
            "prediction_hotswap_messages_ignored",
            "Hot-swap messages ignored: reason=stale (not newer than what is served) or invalid.",
            labels=["organization", "reason"],
        )
        for org, org_stats in stats.items():
            ignored.add_metric([org, "stale"], org_stats.ignored_stale)
            ignored.add_metric([org, "invalid"], org_stats.bad_messages)
        yield ignored


def _unix_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class PredictionMetrics:
    """The metrics registry of one prediction service: requests, latency and the cache's state."""

    def __init__(self, cache: ModelCache, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._organizations = frozenset(cache.organizations)
        self.requests = Counter(
            "prediction_requests",
            "Prediction requests by organization and outcome (ok, bad_request, unavailable, error).",
            ["organization", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "prediction_request_duration_seconds",
            "Time from a prediction request's arrival to its reply, by organization.",
            ["organization"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        for org in cache.organizations:  # every series exists from the start, so rate() works
            self.latency.labels(org)
            for outcome in OUTCOMES:
                self.requests.labels(org, outcome)
        self.registry.register(CacheCollector(cache))
        ProcessCollector(registry=self.registry)

    def observe(self, org_id: str, status: int, seconds: float) -> None:
        """Count one prediction request for `org_id` that got HTTP `status` after `seconds`."""
        org = org_id if org_id in self._organizations else OTHER_ORGANIZATION
        self.requests.labels(org, outcome_of(status)).inc()
        self.latency.labels(org).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
