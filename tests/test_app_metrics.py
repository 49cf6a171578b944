"""The per-request metrics and load shedding of app.metrics, at the ASGI level."""

from __future__ import annotations

import json
from typing import Any

from app_support import metric

from app.metrics import LoopLag, Metrics, MetricsMiddleware


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(app: MetricsMiddleware, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "GET"}, receive, send)
    return sent


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


async def test_requests_beyond_the_cap_or_a_loop_far_behind_are_shed_but_probes_pass() -> None:
    metrics, lag = Metrics(), LoopLag()
    app = MetricsMiddleware(answer, metrics, max_in_flight=8, lag=lag, max_lag_s=0.1)
    assert (await call(app, "/encode"))[0]["status"] == 200

    metrics.http.in_flight = 8  # as if 8 requests were in progress
    shed = await call(app, "/encode")
    assert shed[0]["status"] == 503 and (b"retry-after", b"1") in shed[0]["headers"]
    assert "VAE_MAX_CONCURRENCY" in json.loads(shed[1]["body"])["detail"]
    assert (await call(app, "/healthz"))[0]["status"] == 200

    lag.lag_s = 0.5  # the loop is half a second behind
    metrics.http.in_flight = 1  # ... but hardly busy: no one is shed for it
    assert (await call(app, "/encode"))[0]["status"] == 200
    metrics.http.in_flight = 2  # a quarter of the cap in progress: now it counts
    behind = await call(app, "/encode")
    assert behind[0]["status"] == 503
    assert "VAE_MAX_LAG_MS" in json.loads(behind[1]["body"])["detail"]
    assert (await call(app, "/metrics"))[0]["status"] == 200
    assert metric(metrics.render().decode(), "vae_http_requests_shed_total") == 2
