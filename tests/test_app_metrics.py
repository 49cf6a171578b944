"""The metrics of app.metrics, rendered as Prometheus reads them."""

from __future__ import annotations

import numpy as np
from app_support import metric

from app.metrics import PERCENTILE_BUCKETS, Metrics


def test_request_counts_and_latency_render_as_prometheus_families() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.002, 0.002, 7.0):
        metrics.http.observe("/encode", 200, ("mnist", "2"), seconds)
    metrics.http.observe("/encode", 415, None, 0.001)
    text = metrics.render().decode()
    served = {"model": "mnist", "version": "2"}
    assert metric(text, "vae_http_requests_total", endpoint="/encode", status="200", **served) == 4
    # A request that named no model it could be served by has the labels empty.
    assert metric(text, "vae_http_errors_total", endpoint="/encode", status="415", model="") == 1
    assert metric(text, "vae_http_errors_total", endpoint="/encode", status="200") == 0
    latency = "vae_http_request_duration_seconds_bucket"
    assert metric(text, latency, endpoint="/encode", status="200", le="0.0005") == 1
    assert metric(text, latency, endpoint="/encode", status="200", le="0.0025") == 3
    assert metric(text, latency, endpoint="/encode", status="200", le="5.0") == 3
    assert metric(text, latency, endpoint="/encode", status="200", le="+Inf") == 4
    total = metric(text, "vae_http_request_duration_seconds_sum", endpoint="/encode", status="200")
    assert abs(total - 7.0044) < 1e-9


def test_grpc_requests_count_by_method_and_code() -> None:
    metrics = Metrics()
    metrics.grpc.observe("ModelInfer", "OK", ("mnist-encoder", "2"), 0.001)
    metrics.grpc.observe("ModelInfer", "NOT_FOUND", None, 0.001)
    text = metrics.render().decode()
    ok = {"method": "ModelInfer", "code": "OK", "model": "mnist-encoder", "version": "2"}
    assert metric(text, "vae_grpc_requests_total", **ok) == 1
    assert metric(text, "vae_grpc_errors_total", **ok) == 0
    assert metric(text, "vae_grpc_errors_total", method="ModelInfer", code="NOT_FOUND") == 1


def test_the_percentile_histogram_counts_images_flagged_at_each_rate() -> None:
    metrics = Metrics()
    metrics.anomaly.declare("mnist", "2", "iwae")
    text = metrics.render().decode()
    labels = {"model": "mnist", "version": "2", "score": "iwae"}
    # Declared: the series exist at 0 before the first image, so rate() sees it.
    assert "vae_images_scored_total{" in text
    assert metric(text, "vae_anomaly_percentile_count", **labels) == 0

    percentiles = np.array([0.0, 0.05, 0.5, 1.0, 3.0, 50.0, 99.9, 100.0])
    metrics.anomaly.observe("mnist", "2", "iwae", len(percentiles), percentiles)
    metrics.anomaly.observe("mnist", "2", "iwae", 3, None)  # scored, calibration withheld
    text = metrics.render().decode()
    assert metric(text, "vae_images_scored_total", **labels) == 11
    assert metric(text, "vae_anomaly_percentile_count", **labels) == 8
    assert metric(text, "vae_anomaly_percentile_sum", **labels) == percentiles.sum()
    bucket = "vae_anomaly_percentile_bucket"
    # Flagged at fpr f: percentile below 100·f (le is "at most": 1.0 itself is not flagged
    # at 1 %, and a score exactly on a calibration quantile has probability 0).
    for le, expected in {"0.1": 2, "1": 4, "5": 5, "50": 6, "90": 6, "100": 8, "+Inf": 8}.items():
        assert metric(text, bucket, le=le, **labels) == expected, le
    assert [f"{b:g}" for b in PERCENTILE_BUCKETS][:4] == ["0.1", "1", "5", "10"]


def test_a_retired_version_takes_its_series_with_it() -> None:
    metrics = Metrics()
    for version in ("1", "2"):
        metrics.anomaly.observe("mnist", version, "elbo", 1, np.array([50.0]))
        metrics.http.observe("/encode", 200, ("mnist", version), 0.001)
        metrics.http.observe("/v2/models/{name}/infer", 200, ("mnist-encoder", version), 0.001)
        metrics.grpc.observe("ModelInfer", "OK", ("mnist-elbo", version), 0.001)
        metrics.batch_observer("mnist", version, "encoder")
    metrics.retire("mnist", "1")
    text = metrics.render().decode()
    for name in ("vae_images_scored_total", "vae_http_requests_total", "vae_grpc_requests_total"):
        assert metric(text, name, version="2") == 1, name
        assert 'version="1"' not in text, name


def test_readiness_is_a_gauge_read_at_each_scrape() -> None:
    metrics = Metrics()
    reason: list[str | None] = ["loading"]
    metrics.watch_readiness(lambda: reason[0])
    assert metric(metrics.render().decode(), "vae_ready") == 0
    reason[0] = None
    assert metric(metrics.render().decode(), "vae_ready") == 1
