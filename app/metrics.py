"""Prometheus metrics, one CollectorRegistry per app so apps (and tests) never share counters.

The per-request figures are the hot path: every request updates them, so they
are plain integers and floats on the event loop (no locks, no label lookups),
turned into Prometheus families only when /metrics is scraped. The rest (per
batch, per load) use prometheus_client's metric objects as they are.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class _Timings:
    """Requests of one (endpoint, status): a count, a sum and a histogram of seconds."""

    count: int = 0
    total_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_FAST_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.buckets[bisect_left(_FAST_BUCKETS, seconds)] += 1  # le: the first bound >= it


class HttpStats(Collector):
    """Requests answered, their latency and errors, by route template and status."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.timings: dict[tuple[str, int], _Timings] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        timings = self.timings.get((endpoint, status))
        if timings is None:
            timings = self.timings[endpoint, status] = _Timings()
        timings.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "status"]
        requests = CounterMetricFamily("vae_http_requests", "Requests answered.", labels=labels)
        errors = CounterMetricFamily(
            "vae_http_errors", "Responses with status >= 400.", labels=labels
        )
        latency = HistogramMetricFamily(
            "vae_http_request_duration_seconds", "Request to response.", labels=labels
        )
        for (endpoint, status), t in sorted(self.timings.items()):
            values = [endpoint, str(status)]
            requests.add_metric(values, t.count)
            if status >= 400:
                errors.add_metric(values, t.count)
            cumulative, running = [], 0
            for bound, n in zip([*map(str, _FAST_BUCKETS), "+Inf"], t.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric(values, cumulative, t.total_s)
        yield requests
        yield errors
        yield latency
        yield GaugeMetricFamily(
            "vae_http_requests_in_flight",
            "Requests received and not yet answered.",
            value=self.in_flight,
        )


class Metrics:
    """The service's metrics; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.http = HttpStats()
        r.register(self.http)
        graph = ["model", "graph"]

        def histogram(
            name: str, doc: str, labels: list[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.batch_size = histogram(
            "vae_batch_size", "Rows per ONNX Runtime call.", graph, _BATCH_BUCKETS
        )
        self.queue_wait = histogram(
            "vae_batch_queue_wait_seconds", "Wait in the batcher queue.", graph, _FAST_BUCKETS
        )
        self.inference = histogram(
            "vae_inference_duration_seconds", "One ONNX Runtime call.", graph, _FAST_BUCKETS
        )
        self.versions_loaded = Gauge(
            "vae_model_versions_loaded", "Model versions being served.", registry=r
        )
        self.loads = Counter(
            "vae_model_loads", "Model version loads, by outcome.", ["outcome"], registry=r
        )
        self.shed = Counter(
            "vae_http_requests_shed",
            "Requests answered 503 at once (app/overload.py).",
            registry=r,
        )

    def batch_observer(self, model: str, graph: str) -> Callable[[BatchStats], None]:
        """The batcher's `on_batch` callback for one model graph."""
        size = self.batch_size.labels(model, graph)
        wait = self.queue_wait.labels(model, graph)
        run = self.inference.labels(model, graph)

        def observe(stats: BatchStats) -> None:
            size.observe(stats.size)
            for seconds in stats.queue_wait_s:
                wait.observe(seconds)
            run.observe(stats.run_s)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status.

    Pure ASGI. Labels use the route's path template (`/models/{name}`), never
    the raw path, so clients cannot blow up the label cardinality.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.http = metrics.http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        http = self.http
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        http.in_flight += 1
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            http.in_flight -= 1
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            http.observe(endpoint, status, time.perf_counter() - started)
