"""Overload protection: refuse at once what cannot be served in time, end what runs too long.

`OverloadMiddleware` (pure ASGI) answers 503 with Retry-After before any work is
spent on a request when VAE_MAX_CONCURRENCY requests are in progress, or when
the event loop runs VAE_MAX_LAG_MS behind with a quarter of that in progress;
and 504 when a request has taken VAE_REQUEST_TIMEOUT_S since it arrived (its
upload included), cancelling it so that its batcher jobs drop the rows that
had not run. The probes (the v2 protocol's too) and /metrics are never refused:
orchestrators and scrapers must see a busy service. Answers are JSON in the
caller's shape: {"detail": ...}, or {"error": ...} under /v2 (app.errors.error_key).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import OPEN_PATHS
from app.errors import RETRY_AFTER_S, error_key
from app.metrics import Metrics

UNGUARDED_PATHS = OPEN_PATHS | {"/metrics"}


class LoopLag:
    """How far behind the event loop runs: a task asks to wake every `interval_s` and
    records how late it woke, twice in a row (one slow step is not saturation).

    On an event-loop server this is the queue that counts: a request that arrives
    while the loop is 0.1 s behind waits at least that long before it is even read,
    however few requests the app holds (the others wait in socket buffers).
    """

    def __init__(self, interval_s: float = 0.025) -> None:
        self.interval_s = interval_s
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval_s)
            late = loop.time() - asked - self.interval_s
            self.lag_s, last = min(late, last), late


class Deadlines:
    """Cancels requests that run past their deadline.

    One task watches every request, instead of a timer each: with uvloop a
    timer set and cancelled per request cost the event loop 10-30 µs, a few
    percent of a one-image /encode (bench/profile.md). Every request gets the
    same timeout, so deadlines come due in the order the requests arrived, and
    the watcher only ever looks at the oldest.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._due: dict[asyncio.Task[Any], float] = {}  # oldest first
        self._expired: set[asyncio.Task[Any]] = set()
        self._arrived = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any]) -> None:
        self._due[task] = time.monotonic() + self.timeout_s
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="deadlines")
        self._arrived.set()

    def release(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching `task`; True if its deadline passed (and it was cancelled)."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])

    async def _watch(self) -> None:
        while True:
            if not self._due:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            task, due = next(iter(self._due.items()))
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            del self._due[task]
            self._expired.add(task)
            task.cancel()


TOO_MANY = "server busy: too many requests in progress (VAE_MAX_CONCURRENCY); retry shortly"
BEHIND = "server busy: it is behind on the requests it has (VAE_MAX_LAG_MS); retry shortly"


class Admission:
    """Requests in progress at every door (HTTP here, gRPC in app.oip.admission), held
    to one limit: a client cannot get past VAE_MAX_CONCURRENCY by switching protocol."""

    def __init__(self, max_in_flight: int, max_lag_s: float, lag: LoopLag) -> None:
        self.max_in_flight = max_in_flight
        self.max_lag_s = max_lag_s
        self.lag = lag
        self.in_flight = 0

    def refusal(self) -> str | None:
        """Why a new request is refused now (TOO_MANY or BEHIND), None when it is not."""
        # Behind, and busy: with fewer in progress, a loop slowed by something
        # else (a noisy machine, one long step) sheds no one.
        if self.in_flight >= self.max_in_flight:
            return TOO_MANY
        if self.lag.lag_s > self.max_lag_s and self.in_flight >= self.max_in_flight // 4:
            return BEHIND
        return None


Answer = dict[str, tuple[Message, Message]]  # error_key -> start, body


def _answer(status: int, sentence: str) -> Answer:
    """The two messages of a JSON answer, in both shapes, written once."""
    answers: Answer = {}
    for key in ("detail", "error"):
        body = json.dumps({key: sentence}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if status == 503:
            headers.append((b"retry-after", RETRY_AFTER_S.encode()))
        start: Message = {"type": "http.response.start", "status": status, "headers": headers}
        answers[key] = (start, {"type": "http.response.body", "body": body})
    return answers


_REFUSALS = {TOO_MANY: _answer(503, TOO_MANY), BEHIND: _answer(503, BEHIND)}


class OverloadMiddleware:
    """Pure ASGI: sheds requests past saturation (503) and ends those past their
    deadline (504); see the module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_in_flight: int,
        max_lag_s: float,
        lag: LoopLag,
        deadlines: Deadlines,
        admission: Admission | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.admission = admission or Admission(max_in_flight, max_lag_s, lag)
        self.lag = self.admission.lag
        self.deadlines = deadlines
        self._timed_out = _answer(
            504,
            f"the request took longer than {deadlines.timeout_s:g} s (VAE_REQUEST_TIMEOUT_S) "
            "and was stopped; its work that had not started was dropped",
        )

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self.admission.in_flight = value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self.admission.refusal()
        if refusal is not None:
            self.metrics.shed.inc()
            for message in _REFUSALS[refusal][error_key(scope["path"])]:
                await send(message)
            return
        task = asyncio.current_task()
        assert task is not None
        deadlines = self.deadlines
        started = False

        async def send_watched(message: Message) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
                deadlines.release(task)  # answering: no cancelling it half-way now
            await send(message)

        self.in_flight += 1
        deadlines.watch(task)
        try:
            await self.app(scope, receive, send_watched)
        except asyncio.CancelledError:
            if not deadlines.release(task):
                raise  # not ours: the server is shutting down, say
            task.uncancel()
            if not started:
                for message in self._timed_out[error_key(scope["path"])]:
                    await send(message)
        finally:
            self.in_flight -= 1
            if deadlines.release(task):  # expired after the app had returned
                task.uncancel()
