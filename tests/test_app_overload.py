"""Load shedding and deadlines (app/overload.py), at the ASGI level, driven by events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from app_support import metric

from app.metrics import Metrics
from app.overload import Deadlines, LoopLag, OverloadMiddleware

Message = dict[str, Any]


async def answer(scope: Message, receive: Any, send: Any) -> None:
    await receive()  # the body first, as the model routes read it
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(
    app: OverloadMiddleware,
    path: str,
    receive: Callable[[], Awaitable[Message]] | None = None,
) -> list[Message]:
    sent: list[Message] = []

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST"}, receive or no_body, send)
    return sent


def guard(app: Any, metrics: Metrics, timeout_s: float = 30.0) -> OverloadMiddleware:
    return OverloadMiddleware(
        app,
        metrics,
        max_in_flight=8,
        max_lag_s=0.1,
        lag=LoopLag(),
        deadlines=Deadlines(timeout_s),
    )


def detail(sent: list[Message]) -> str:
    text: str = json.loads(sent[1]["body"])["detail"]
    return text


async def test_requests_beyond_the_cap_or_a_loop_far_behind_are_shed_but_probes_pass() -> None:
    metrics = Metrics()
    app = guard(answer, metrics)
    assert (await call(app, "/encode"))[0]["status"] == 200

    app.in_flight = 8  # as if 8 requests were in progress
    shed = await call(app, "/encode")
    assert shed[0]["status"] == 503 and (b"retry-after", b"1") in shed[0]["headers"]
    assert "VAE_MAX_CONCURRENCY" in detail(shed)
    assert (await call(app, "/healthz"))[0]["status"] == 200

    app.lag.lag_s = 0.5  # the loop is half a second behind
    app.in_flight = 1  # ... but hardly busy: no one is shed for it
    assert (await call(app, "/encode"))[0]["status"] == 200
    app.in_flight = 2  # a quarter of the cap in progress: now it counts
    behind = await call(app, "/encode")
    assert behind[0]["status"] == 503 and "VAE_MAX_LAG_MS" in detail(behind)
    assert (await call(app, "/metrics"))[0]["status"] == 200
    assert (await call(app, "/v2/health/ready"))[0]["status"] == 200
    v2 = await call(app, "/v2/models/mnist-encoder/infer")  # the protocol's own error shape
    assert v2[0]["status"] == 503 and "VAE_MAX_LAG_MS" in json.loads(v2[1]["body"])["error"]
    assert metric(metrics.render().decode(), "vae_http_requests_shed_total") == 3
    await app.deadlines.stop()


async def test_a_request_past_its_deadline_is_ended_with_504_upload_included() -> None:
    """A client that never finishes its upload holds a connection, not the service:
    the deadline runs from the request's arrival."""
    app = guard(answer, Metrics(), timeout_s=0.05)
    never = asyncio.Event()

    async def endless_upload() -> Message:
        await never.wait()  # the body never arrives
        return {"type": "http.request", "body": b"", "more_body": False}

    async with asyncio.timeout(30):  # a bound on a hang, not a timing claim
        sent = await call(app, "/encode", endless_upload)
    assert sent[0]["status"] == 504
    assert "longer than 0.05 s (VAE_REQUEST_TIMEOUT_S)" in detail(sent)
    assert app.in_flight == 0
    assert (await call(app, "/encode"))[0]["status"] == 200  # the task was uncancelled
    await app.deadlines.stop()


async def test_a_cancellation_that_is_not_a_deadline_goes_on() -> None:
    started = asyncio.Event()

    async def hangs(scope: Message, receive: Any, send: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    app = guard(hangs, Metrics())
    task = asyncio.create_task(call(app, "/encode"))
    await started.wait()
    task.cancel()  # a shutdown, say
    with pytest.raises(asyncio.CancelledError):
        await task
    assert app.in_flight == 0
    await app.deadlines.stop()
