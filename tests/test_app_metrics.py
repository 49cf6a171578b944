"""The per-request metrics of app.metrics."""

from __future__ import annotations

from app_support import metric

from app.metrics import Metrics


def test_request_counts_and_latency_render_as_prometheus_families() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.002, 0.002, 7.0):
        metrics.http.observe("/encode", 200, seconds)
    metrics.http.observe("/encode", 415, 0.001)
    text = metrics.render().decode()
    assert metric(text, "vae_http_requests_total", endpoint="/encode", status="200") == 4
    assert metric(text, "vae_http_errors_total", endpoint="/encode", status="415") == 1
    assert metric(text, "vae_http_errors_total", endpoint="/encode", status="200") == 0
    latency = "vae_http_request_duration_seconds_bucket"
    assert metric(text, latency, endpoint="/encode", status="200", le="0.0005") == 1
    assert metric(text, latency, endpoint="/encode", status="200", le="0.0025") == 3
    assert metric(text, latency, endpoint="/encode", status="200", le="5.0") == 3
    assert metric(text, latency, endpoint="/encode", status="200", le="+Inf") == 4
    total = metric(text, "vae_http_request_duration_seconds_sum", endpoint="/encode", status="200")
    assert abs(total - 7.0044) < 1e-9
