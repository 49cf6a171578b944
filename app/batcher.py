"""A dynamic batcher: concurrent requests share one ONNX Runtime call.

Like Triton's dynamic batcher it has two knobs, `max_batch_size` and
`max_delay`: the first waiting request opens a batch, which is run as soon as
it holds `max_batch_size` rows or the first request has waited `max_delay`.
With `max_delay` 0 (Triton's default too) a batch is whatever queued while the
previous call ran. The model call runs in a worker thread, off the event loop,
and its outputs are split back so every request gets exactly its own rows, in
order.

Requests are validated before they get here, so a batch only fails when the
runtime does. The queue is bounded in rows: `submit` either queues all of a
request or none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# One ONNX call: a batch of rows in, one array per graph output out, each (rows, ...).
RunBatch = Callable[[np.ndarray], Sequence[np.ndarray]]


class QueueFull(Exception):
    """The batcher holds `max_queue` rows already; nothing of the request was queued."""


class BatcherClosed(Exception):
    """The batcher is stopping (shutdown or a retired model version)."""


@dataclass(frozen=True)
class BatchStats:
    """What the batcher reports after each call, for metrics."""

    size: int  # rows in the call
    queue_wait_s: list[float]  # per merged chunk, from submit to the call
    run_s: float


@dataclass
class _Chunk:
    x: np.ndarray  # (n, ...) with n <= max_batch_size
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float


class Batcher:
    """Merges `submit` calls into calls of `run`; start and stop it from the lifespan."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        name: str = "batcher",
        on_batch: Callable[[BatchStats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size or max_delay_s < 0:
            raise ValueError("need max_batch_size >= 1, max_queue >= max_batch_size, delay >= 0")
        self._run_batch = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.name = name
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[_Chunk] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a call (not counting the call in progress)."""
        return self._queued_rows

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, and end the worker task."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            await self._task

    async def submit(self, x: np.ndarray) -> list[np.ndarray]:
        """Run `x` (rows, ...) through the model; returns each output's rows for `x`.

        A request larger than `max_batch_size` is cut into chunks that may
        travel in different calls. An oversized request is still admitted into
        an empty queue, so it cannot be refused forever.
        """
        if self._closed or self._task is None:
            raise BatcherClosed(f"{self.name} is not running")
        rows = len(x)
        if rows == 0:
            raise ValueError("empty batch")
        if self._queued_rows and self._queued_rows + rows > self.max_queue:
            raise QueueFull(f"{self._queued_rows} images are queued for {self.name}")
        loop = asyncio.get_running_loop()
        now = self._clock()
        step = self.max_batch_size
        chunks = [_Chunk(x[i : i + step], loop.create_future(), now) for i in range(0, rows, step)]
        self._queue.extend(chunks)
        self._queued_rows += rows
        self._arrived.set()
        if len(chunks) == 1:  # the common case, without gather's bookkeeping
            return await chunks[0].future
        parts = await asyncio.gather(*(chunk.future for chunk in chunks))
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]

    async def _serve(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_batch_mates()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _wait_for_batch_mates(self) -> None:
        deadline = self._queue[0].enqueued + self.max_delay_s
        while not self._closed and self._queued_rows < self.max_batch_size:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _take(self) -> list[_Chunk]:
        """Pop whole chunks, oldest first, while they fit in one call."""
        batch: list[_Chunk] = []
        rows = 0
        while self._queue:
            chunk = self._queue[0]
            n = len(chunk.x)
            if chunk.future.done():  # its request was cancelled (client went away)
                self._queue.popleft()
                self._queued_rows -= n
                continue
            if batch and rows + n > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= n
            batch.append(chunk)
            rows += n
        return batch

    async def _run(self, batch: list[_Chunk]) -> None:
        started = self._clock()
        x = batch[0].x if len(batch) == 1 else np.concatenate([chunk.x for chunk in batch])
        try:
            outputs = await asyncio.to_thread(self._run_batch, x)
            if any(len(output) != len(x) for output in outputs):
                raise RuntimeError(f"{self.name}: outputs do not have {len(x)} rows")
        except Exception as exc:
            log.exception("%s: a batch of %d rows failed", self.name, len(x))
            for chunk in batch:
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
            return
        finished = self._clock()
        offset = 0
        for chunk in batch:
            n = len(chunk.x)
            if not chunk.future.done():
                chunk.future.set_result([output[offset : offset + n] for output in outputs])
            offset += n
        if self._on_batch is not None:
            waits = [started - chunk.enqueued for chunk in batch]
            self._on_batch(BatchStats(size=len(x), queue_wait_s=waits, run_s=finished - started))
