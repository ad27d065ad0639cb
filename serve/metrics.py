"""Prometheus metrics for one server process (one model): requests, latencies, tokens,
queue depth and batch sizes.

Each app has its own registry, so several apps in one process (tests) never share counters.
Batcher figures are read from the batcher at scrape time instead of being mirrored on every
request: the batcher already keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from distillery.engine import BatcherStats

# Seconds: from a few tokens of a small model on a GPU to long answers on a CPU.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class ModelSnapshot:
    ready: bool
    footprint_bytes: int | None
    batcher: BatcherStats | None


class _ModelCollector(Collector):
    def __init__(self, snapshot: Callable[[], ModelSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield GaugeMetricFamily("distill_serve_model_ready", "1 once the model is loaded and serving",
                                value=int(snap.ready))
        if snap.footprint_bytes is not None:
            yield GaugeMetricFamily("distill_serve_model_bytes", "Memory held by the model's weights",
                                    value=snap.footprint_bytes)
        stats = snap.batcher or BatcherStats()
        yield GaugeMetricFamily("distill_serve_queue_depth", "Requests waiting for the model", value=stats.waiting)
        yield CounterMetricFamily("distill_serve_batches", "generate() calls run by the batcher", value=stats.batches)
        buckets = [(str(bound), sum(n for size, n in stats.sizes.items() if size <= bound)) for bound in _BATCH_BUCKETS]
        yield HistogramMetricFamily(
            "distill_serve_batch_size",
            "Requests per generate() call",
            buckets=[*buckets, ("+Inf", stats.batches)],
            sum_value=stats.requests,
        )


class Metrics:
    def __init__(self, snapshot: Callable[[], ModelSnapshot]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("distill_serve_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("distill_serve_request_seconds", "Time from request to response, by endpoint",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("distill_serve_requests_in_flight", "Requests being handled now",
                               registry=self.registry)
        self.tokens = Counter("distill_serve_tokens", "Tokens processed, by endpoint and kind (prompt|completion)",
                              ["endpoint", "kind"], registry=self.registry)
        self.completions = Counter("distill_serve_completions",
                                   "Answers by endpoint and finish reason (stop = EOS or a stop string, the "
                                   "early exit at the separator included; length = max_new_tokens)",
                                   ["endpoint", "finish_reason"], registry=self.registry)
        self.registry.register(_ModelCollector(snapshot))
        ProcessCollector(registry=self.registry)  # resident memory, CPU seconds, open fds

    def observe_generation(self, endpoint: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        self.tokens.labels(endpoint, "prompt").inc(prompt_tokens)
        self.tokens.labels(endpoint, "completion").inc(completion_tokens)
        self.completions.labels(endpoint, finish_reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
