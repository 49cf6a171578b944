"""Prometheus metrics, one CollectorRegistry per app so apps (and tests) never share counters.

The per-request figures are the hot path: every request updates them, so they
are plain integers and floats on the event loop (no locks, no label lookups),
turned into Prometheus families only when /metrics is scraped. The rest (per
batch, per load) use prometheus_client's metric objects as they are.

Labels take bounded values only: route templates, status codes, gRPC methods and
codes, the score enum, and the model versions being served, whose series go when
the version does. docs/operations.md says what each series is for.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

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


class RequestStats(Collector):
    """Requests answered, their latency and errors, by what was called, its outcome and
    the model version that answered (empty where none did): HTTP by route template and
    status, gRPC by method and status code. Every label has a bounded set of values."""

    def __init__(
        self, prefix: str, called: str, outcome: str, error: Callable[[int | str], bool]
    ) -> None:
        self.prefix, self.labels, self.error = prefix, [called, outcome, "model", "version"], error
        self.in_flight = 0
        self.timings: dict[tuple[str, int | str, tuple[str, str] | None], _Timings] = {}

    def observe(
        self, called: str, outcome: int | str, served: tuple[str, str] | None, seconds: float
    ) -> None:
        timings = self.timings.get((called, outcome, served))
        if timings is None:
            timings = self.timings[called, outcome, served] = _Timings()
        timings.observe(seconds)

    def forget(self, models: set[str], version: str) -> None:
        """Drop the series of a model version that is no longer served."""
        for key in [k for k in self.timings if k[2] and k[2][1] == version and k[2][0] in models]:
            del self.timings[key]

    def collect(self) -> Iterator[Metric]:
        prefix, labels = self.prefix, self.labels
        requests = CounterMetricFamily(f"{prefix}_requests", "Requests answered.", labels=labels)
        errors = CounterMetricFamily(f"{prefix}_errors", "Requests that failed.", labels=labels)
        latency = HistogramMetricFamily(
            f"{prefix}_request_duration_seconds", "Request to response.", labels=labels
        )
        for (called, outcome, served), t in sorted(
            self.timings.items(), key=lambda item: (item[0][0], str(item[0][1]), item[0][2] or ())
        ):
            values = [called, str(outcome), *(served or ("", ""))]
            requests.add_metric(values, t.count)
            if self.error(outcome):
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
            f"{prefix}_requests_in_flight",
            "Requests received and not yet answered.",
            value=self.in_flight,
        )


# Percentiles of the calibration (0-100; low is unusual): an image is flagged at the
# false-positive rate f when its percentile is below 100·f, so the buckets at 0.1, 1,
# 5 and 10 count the images flagged at those rates; the deciles show the whole shape.
PERCENTILE_BUCKETS = (0.1, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
_PERCENTILE_BOUNDS = np.asarray(PERCENTILE_BUCKETS)


@dataclass
class _Scored:
    images: int = 0  # every image scored
    calibrated: int = 0  # those with a percentile (the calibration holds)
    total: float = 0.0  # the sum of their percentiles
    buckets: np.ndarray = field(
        default_factory=lambda: np.zeros(len(PERCENTILE_BUCKETS) + 1, np.int64)
    )


class AnomalyStats(Collector):
    """The anomaly signal: images scored, and where their scores fall in the version's
    calibration, per (model, version, score). Under traffic like the calibration set
    the percentile is uniform on [0, 100]; any drift shows as a tilt of its histogram."""

    def __init__(self) -> None:
        self.scored: dict[tuple[str, str, str], _Scored] = {}

    def declare(self, model: str, version: str, score: str) -> None:
        """Start a series at zero, so that rate() sees the first images scored."""
        self.scored.setdefault((model, version, score), _Scored())

    def observe(
        self, model: str, version: str, score: str, images: int, percentile: np.ndarray | None
    ) -> None:
        scored = self.scored.get((model, version, score))
        if scored is None:
            scored = self.scored[model, version, score] = _Scored()
        scored.images += images
        if percentile is not None and len(percentile):
            scored.calibrated += len(percentile)
            scored.total += float(percentile.sum())
            # le: the first bound >= it; NaN (never produced) would land in +Inf.
            where = np.searchsorted(_PERCENTILE_BOUNDS, percentile, side="left")
            scored.buckets += np.bincount(where, minlength=len(scored.buckets))

    def forget(self, model: str, version: str) -> None:
        for key in [key for key in self.scored if key[:2] == (model, version)]:
            del self.scored[key]

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "score"]
        images = CounterMetricFamily(
            "vae_images_scored", "Images given an anomaly score.", labels=labels
        )
        percentile = HistogramMetricFamily(
            "vae_anomaly_percentile",
            "Where each image's anomaly score falls among the held-out normal images' "
            "(0-100, low is unusual); uniform while traffic looks like the calibration set.",
            labels=labels,
        )
        bounds = [*(f"{b:g}" for b in PERCENTILE_BUCKETS), "+Inf"]
        for key, scored in sorted(self.scored.items()):
            images.add_metric(list(key), scored.images)
            cumulative = list(zip(bounds, np.cumsum(scored.buckets).tolist(), strict=True))
            percentile.add_metric(list(key), cumulative, scored.total)
        yield images
        yield percentile


class Metrics:
    """The service's metrics; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.http = RequestStats("vae_http", "endpoint", "status", lambda s: int(s) >= 400)
        self.grpc = RequestStats("vae_grpc", "method", "code", lambda code: code != "OK")
        self.anomaly = AnomalyStats()
        for collector in (self.http, self.grpc, self.anomaly):
            r.register(collector)
        graph = ["model", "version", "graph"]

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
        self.ready = Gauge(
            "vae_ready", "1 while /readyz answers 200 (the default model serves).", registry=r
        )
        self.drift_samples = Counter(
            "vae_drift_samples",
            "Images of /encode traffic sampled for the drift signal, by outcome "
            "(VAE_DRIFT_SAMPLE_RATE; app/drift.py).",
            ["outcome"],
            registry=r,
        )

    def watch_readiness(self, readiness: Callable[[], str | None]) -> None:
        """vae_ready follows `readiness` (None: ready), read at each scrape."""
        self.ready.set_function(lambda: float(readiness() is None))

    def batch_observer(self, model: str, version: str, graph: str) -> Callable[[BatchStats], None]:
        """The batcher's `on_batch` callback for one graph of a model version."""
        size = self.batch_size.labels(model, version, graph)
        wait = self.queue_wait.labels(model, version, graph)
        run = self.inference.labels(model, version, graph)

        def observe(stats: BatchStats) -> None:
            size.observe(stats.size)
            for seconds in stats.queue_wait_s:
                wait.observe(seconds)
            run.observe(stats.run_s)

        return observe

    def retire(self, model: str, version: str) -> None:
        """Drop the series of a model version that is no longer served."""
        for histogram in (self.batch_size, self.queue_wait, self.inference):
            for graph in ("encoder", "decoder"):
                with contextlib.suppress(KeyError):
                    histogram.remove(model, version, graph)
        # The v2 protocol's requests name the model as its clients do: mnist-encoder.
        names = {model, *(f"{model}-{role}" for role in ("encoder", "decoder", "elbo"))}
        self.http.forget(names, version)
        self.grpc.forget(names, version)
        self.anomaly.forget(model, version)

    def render(self) -> bytes:
        return generate_latest(self.registry)
