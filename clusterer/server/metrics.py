"""Prometheus metrics of the HTTP service, in a registry of its own (one per app)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clusterer_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clusterer_http_request_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.writes = Histogram(
            "clusterer_writer_job_seconds",
            "Time the writer spent on each job, by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batches = Histogram(
            "clusterer_batch_requests",
            "Requests answered together by each call of a reader batcher, by stage",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(snapshot))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StoreCollector:
    """Gauges read at scrape time: queue depth, sentences, index size, the latest run."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        s = self.snapshot()
        gauges = [
            ("clusterer_writer_queue_depth", "Writes queued or in progress", s.get("queue_depth")),
            ("clusterer_sentences", "Sentences in the database", s.get("sentences")),
            ("clusterer_index_vectors", "Vectors in the in-memory FAISS index", s.get("index_vectors")),
            ("clusterer_index_file_bytes", "Size of the FAISS index file", s.get("index_bytes")),
            ("clusterer_ready", "1 once the model is loaded and the index open", s.get("ready")),
            ("clusterer_last_run_id", "Id of the latest finished clustering run", s.get("last_run_id")),
            ("clusterer_last_run_clusters", "Clusters in the latest run", s.get("last_run_clusters")),
            ("clusterer_last_run_assigned", "Sentences assigned in the latest run", s.get("last_run_assigned")),
            (
                "clusterer_last_run_finished_timestamp_seconds",
                "When the latest run finished (Unix time)",
                s.get("last_run_finished"),
            ),
        ]
        for name, doc, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))


def now() -> float:
    return time.perf_counter()
