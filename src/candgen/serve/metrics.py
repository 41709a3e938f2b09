"""Prometheus metrics of one app, on a private registry so that several apps (tests) never collide.

Latencies are in seconds with buckets from 0.5 ms to 1 s (the request path is a few milliseconds).
Engine-level numbers (index size, ...) are read from `Engine.stats()` at scrape time by a collector,
so they are never stale and cost nothing per request.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from candgen.serve.protocol import CandidatesResult

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0)
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


class _EngineStatsCollector(Collector):
    """Exports the numeric entries of `Engine.stats()` when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._stats() or {}
        except Exception:  # a broken stats() must not break /metrics
            log.exception("engine stats() failed")
            stats = {}
        index = GaugeMetricFamily("candgen_index_size", "items in the ANN index")
        other = GaugeMetricFamily("candgen_engine_stat", "numeric engine statistics by name", labels=["name"])
        for name, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if name == "index_size":
                index.add_metric([], float(value))
            else:
                other.add_metric([str(name)], float(value))
        yield index
        yield other

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily: the engine may not exist when the collector is registered


class ServeMetrics:
    """Every metric of the online service; `observe_*` methods are called by the app."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None] | None = None) -> None:
        # no `*_created` timestamp series next to every counter and histogram: they double the scrape
        # for no query anyone runs (process-wide, like the PROMETHEUS_DISABLE_CREATED_SERIES variable)
        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "candgen_http_request_duration_seconds", "server time per HTTP request",
            ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_seconds = Histogram(
            "candgen_stage_duration_seconds", "time per stage of the request path (engine-reported)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.source_candidates = Counter(
            "candgen_source_candidates", "candidates each source returned", ["source", "variant"], registry=r,
        )
        self.source_empty = Counter(
            "candgen_source_empty", "requests where a source returned nothing", ["source", "variant"], registry=r,
        )
        self.source_degraded = Counter(
            "candgen_source_degraded", "requests where a source failed or was late and was dropped",
            ["source", "variant"], registry=r,
        )
        self.connections_rebalanced = Counter(
            "candgen_connections_rebalanced", "keep-alive connections this worker closed after their answer, to even"
            " out the workers' shares (serve/balance.py)", registry=r,
        )
        self.cache_requests = Counter(
            "candgen_cache_requests", "candidate requests by the cache level that answered them (miss: none)",
            ["level"], registry=r,
        )
        self.variant_requests = Counter(
            "candgen_variant_requests", "candidate requests per A/B variant", ["variant"], registry=r,
        )
        self.events_ingested = Counter(
            "candgen_events_ingested", "events accepted by POST /v1/events", ["event"], registry=r,
        )
        self.items_added = Counter("candgen_items_added", "items added by POST /v1/items", registry=r)
        self.items_deleted = Counter("candgen_items_deleted", "items deleted by DELETE /v1/items", registry=r)
        self.model = Info("candgen_model", "the model version serving", registry=r)
        self.ann_recall = Histogram(
            "candgen_ann_recall", "sampled recall of the ANN search against exact search",
            buckets=UNIT_BUCKETS, registry=r,
        )
        self.diversity = Histogram(
            "candgen_intra_list_diversity", "intra-list diversity of answered candidate lists",
            buckets=UNIT_BUCKETS, registry=r,
        )
        self.attributed_candidates = Counter(
            "candgen_attributed_candidates",
            "candidates served to users sampled for engagement attribution, per source that found them",
            ["source", "variant"], registry=r,
        )
        self.attributed_lists = Counter(
            "candgen_attributed_lists", "candidate lists served to users sampled for attribution", ["variant"],
            registry=r,
        )
        self.attributed_events = Counter(
            "candgen_attributed_events",
            "events of sampled users on an item of the list last served to them, credited to every source "
            "that found the item", ["source", "variant", "event"], registry=r,
        )
        self.attributed_list_events = Counter(
            "candgen_attributed_list_events",
            "events of sampled users on an item of the list last served to them, once per event (A/B)",
            ["variant", "event"], registry=r,
        )
        self.unattributed_events = Counter(
            "candgen_unattributed_events",
            "events of sampled users on items outside the list last served to them (or none remembered)",
            ["event"], registry=r,
        )
        self.in_flight = Gauge("candgen_engine_calls_in_flight", "engine calls being served now", registry=r)
        self.shed = Counter("candgen_requests_shed", "requests refused with 503 because too many were in flight",
                            registry=r)
        if stats is not None:
            r.register(_EngineStatsCollector(stats))
        self._model_version: str | None = None
        # labelled children memoised: prometheus_client's labels() costs ~5 µs and a candidates answer
        # touches ten of them; the label sets are few (endpoints, sources, variants, stages)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_model_version(self, version: str) -> None:
        if version != self._model_version:
            self._model_version = version
            self.model.info({"version": version})

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        if method not in _METHODS:
            method = "other"  # clients choose the method token: never let them mint label values
        self._child(self.request_seconds, endpoint, method, str(status)).observe(seconds)

    def observe_candidates(self, res: CandidatesResult) -> None:
        variant = res.variant
        self._child(self.variant_requests, variant).inc()
        self._child(self.cache_requests, res.cache).inc()
        for stage, seconds in res.timings.items():
            self._child(self.stage_seconds, stage).observe(seconds)
        counts: dict[str, int] = dict(res.source_counts) if res.source_counts else dict(
            Tally(chain.from_iterable(res.sources))  # counted in C: a generator costs ~0.3 ms per 1000
        )
        for source, n in counts.items():
            if n > 0:
                self._child(self.source_candidates, source, variant).inc(n)
            else:
                self._child(self.source_empty, source, variant).inc()
        for source in res.degraded:
            self._child(self.source_degraded, source, variant).inc()
        if "ann_recall" in res.quality:
            self.ann_recall.observe(res.quality["ann_recall"])
        if "diversity" in res.quality:
            self.diversity.observe(res.quality["diversity"])
        if res.model_version:
            self.set_model_version(res.model_version)

    def observe_served(self, res: CandidatesResult) -> None:
        """A list served to a user sampled for attribution (see serve/attribution.py)."""
        self._child(self.attributed_lists, res.variant).inc()
        for source, n in Tally(chain.from_iterable(res.sources)).items():
            self._child(self.attributed_candidates, source, res.variant).inc(n)

    def observe_engagement(self, event: str, credit: tuple[list[str], str] | None) -> None:
        """An event of a sampled user, with the (sources, variant) it is credited to, or None."""
        if credit is None:
            self._child(self.unattributed_events, event).inc()
            return
        sources, variant = credit
        self._child(self.attributed_list_events, variant, event).inc()
        for source in sources:
            self._child(self.attributed_events, source, variant, event).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
