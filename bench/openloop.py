"""Open-loop load: requests sent on a fixed schedule, whatever the answers.

wrk (bench/loadgen.py) is closed-loop: a connection sends its next request only
once the last is answered, so it never offers more than the server serves, and
a slow answer delays the requests behind it instead of being counted against
the server (coordinated omission). Overload and interference need the other
kind: each stream sends `rate` requests per second on schedule, over a shared
pool of keep-alive connections (opened as needed, up to a bound), and every
latency runs from the moment the request was due, time spent waiting for a free
connection included.

A plain HTTP/1.1 client on asyncio streams over uvloop: a general client
(httpx) costs several times the CPU per request, which on a small machine the
server needs. `drive` says how much CPU the client itself took, so that a
report can say how much of the machine was left to the server.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvloop


@dataclass(frozen=True)
class Request:
    """One request, sent over and over by a stream."""

    method: str
    path: str
    body: bytes = b""
    content_type: str = ""

    def encode(self, host: str) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n"
        if self.body or self.method == "POST":
            head += f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
        return head.encode() + b"\r\n" + self.body


@dataclass(frozen=True)
class Stream:
    name: str
    request: Request
    rate: float  # requests per second


@dataclass
class Outcome:
    """What one stream got back."""

    sent: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status -> seconds
    # From the moment the request was written: the server's part, without the wait
    # for a free connection (which grows when the client has none left to open).
    server_latencies: dict[int, list[float]] = field(default_factory=dict)
    busy_without_retry_after: int = 0  # 503s without a Retry-After header

    def record(self, status: int, seconds: float, server_s: float, retry_after: bool) -> None:
        self.statuses[status] += 1
        self.latencies.setdefault(status, []).append(seconds)
        self.server_latencies.setdefault(status, []).append(server_s)
        if status == 503 and not retry_after:
            self.busy_without_retry_after += 1

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        """Answers that are neither 2xx nor a 503 with Retry-After, and transport errors."""
        other = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        busy = self.statuses[503] - self.busy_without_retry_after
        return other - busy + sum(self.errors.values())

    def percentile_ms(self, q: float, *, server: bool = False) -> float | None:
        """The q-th percentile of the 2xx answers' latency: from when each was due, or
        (`server`) from when it was written."""
        latencies = self.server_latencies if server else self.latencies
        values = [s for status, got in latencies.items() for s in got if status < 300]
        return float(np.percentile(values, q)) * 1e3 if values else None

    def summary(self) -> str:
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.errors.items()))
        due = [self.percentile_ms(q) for q in (50, 99, 100)]
        sent = [self.percentile_ms(q, server=True) for q in (50, 99, 100)]
        known = [v for v in (*due, *sent) if v is not None]
        timing = (
            "no 2xx answers"
            if len(known) < 6
            else "2xx p50/p99/max {:.1f}/{:.1f}/{:.0f} ms from when due, {:.1f}/{:.1f}/{:.0f} "
            "ms from when sent".format(*known)
        )
        return (
            f"{self.sent} sent; answers {answers or 'none'}"
            + (f"; errors {errors}" if errors else "")
            + (
                f"; 503 without Retry-After: {self.busy_without_retry_after}"
                if self.busy_without_retry_after
                else ""
            )
            + f"; {timing}"
        )


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Pool:
    """Keep-alive connections to one server, opened on demand up to `size`.

    A connection idle for longer than `max_idle_s` is closed instead of reused:
    uvicorn closes keep-alive connections idle for 5 s, and a request written
    into one it is closing would be lost to that race, not to the server.
    """

    def __init__(self, host: str, port: int, size: int, max_idle_s: float = 4.0) -> None:
        self.host, self.port, self.size, self.max_idle_s = host, port, size, max_idle_s
        self.opened = 0
        self._idle: list[tuple[Connection, float]] = []  # with when it was released
        self._freed = asyncio.Condition()

    async def acquire(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with self._freed:
            while not self._idle and self.opened >= self.size:
                await self._freed.wait()
            while self._idle:
                connection, since = self._idle.pop()
                if loop.time() - since < self.max_idle_s:
                    return connection
                connection[1].close()
                self.opened -= 1
            self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            await self.discard(None)
            raise

    async def release(self, connection: Connection) -> None:
        async with self._freed:
            self._idle.append((connection, asyncio.get_running_loop().time()))
            self._freed.notify()

    async def discard(self, connection: Connection | None) -> None:
        if connection is not None:
            connection[1].close()
        async with self._freed:
            self.opened -= 1
            self._freed.notify()

    def close(self) -> None:
        for (_, writer), _ in self._idle:
            writer.close()
        self._idle.clear()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, bool, bool]:
    """Send one request, read its answer: (status, has Retry-After, connection kept)."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, "retry-after" in headers, headers.get("connection", "").lower() != "close"


async def run(
    host: str,
    port: int,
    streams: list[Stream],
    seconds: float,
    *,
    max_connections: int = 512,
    timeout_s: float = 60.0,
) -> dict[str, Outcome]:
    """Send every stream on schedule for `seconds`, then wait (at most `timeout_s`) for
    the answers. Returns each stream's outcome."""
    loop = asyncio.get_running_loop()
    pool = _Pool(host, port, max_connections)
    outcomes = {stream.name: Outcome() for stream in streams}
    pending: dict[asyncio.Task[None], str] = {}  # in flight -> its stream
    started = loop.time()

    async def one(stream: Stream, raw: bytes, due: float) -> None:
        outcome = outcomes[stream.name]
        connection = None
        try:
            connection = await pool.acquire()
            sent = loop.time()
            status, retry_after, keep = await _exchange(*connection, raw)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            outcome.errors[type(exc).__name__] += 1
            await pool.discard(connection)
            return
        now = loop.time()
        outcome.record(status, now - due, now - sent, retry_after)
        if keep:
            await pool.release(connection)
        else:
            await pool.discard(connection)

    async def schedule(stream: Stream) -> None:
        raw = stream.request.encode(host)
        total = int(stream.rate * seconds)
        for i in range(total):
            due = started + i / stream.rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            outcomes[stream.name].sent += 1
            task = asyncio.create_task(one(stream, raw, due))
            pending[task] = stream.name
            task.add_done_callback(pending.pop)

    await asyncio.gather(*(schedule(stream) for stream in streams))
    if pending:
        _, late = await asyncio.wait(list(pending), timeout=timeout_s)
        for task in late:  # bounded: what has not come back by now is counted, and dropped
            outcomes[pending[task]].errors[f"unanswered after {timeout_s:g} s"] += 1
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    pool.close()
    return outcomes


def drive(
    host: str, port: int, streams: list[Stream], seconds: float, **options: Any
) -> tuple[dict[str, Outcome], float]:
    """`run` on a uvloop event loop: the outcomes, and the cores the client used
    meanwhile (its CPU seconds over the wall-clock seconds)."""
    cpu, wall = time.process_time(), time.monotonic()
    outcomes = uvloop.run(run(host, port, streams, seconds, **options))
    return outcomes, (time.process_time() - cpu) / (time.monotonic() - wall)
