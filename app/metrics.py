"""Prometheus metrics, one CollectorRegistry per app so apps (and tests) never share counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The service's metrics; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        http, graph = ["endpoint", "status"], ["model", "graph"]

        def histogram(
            name: str, doc: str, labels: list[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.requests = Counter("vae_http_requests", "HTTP requests answered.", http, registry=r)
        self.errors = Counter("vae_http_errors", "Responses with status >= 400.", http, registry=r)
        self.latency = histogram(
            "vae_http_request_duration_seconds", "Request to response.", http, _FAST_BUCKETS
        )
        self.batch_size = histogram(
            "vae_batch_size", "Rows per ONNX Runtime call.", graph, _BATCH_BUCKETS
        )
        self.queue_wait = histogram(
            "vae_batch_queue_wait_seconds", "Wait in the batcher queue.", graph, _FAST_BUCKETS
        )
        self.inference = histogram(
            "vae_inference_duration_seconds", "One ONNX Runtime call.", graph, _FAST_BUCKETS
        )
        self.in_flight = Gauge(
            "vae_http_requests_in_flight", "Requests received and not yet answered.", registry=r
        )
        self.versions_loaded = Gauge(
            "vae_model_versions_loaded", "Model versions being served.", registry=r
        )
        self.loads = Counter(
            "vae_model_loads", "Model version loads, by outcome.", ["outcome"], registry=r
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

    Labels use the route's path template (`/models/{name}`), never the raw
    path, so clients cannot blow up the label cardinality.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            labels = (endpoint, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            if status >= 400:
                self.metrics.errors.labels(*labels).inc()
