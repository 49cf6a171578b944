"""A dynamic batcher: concurrent requests share ONNX Runtime calls, in fair turns.

Like Triton's dynamic batcher it has two knobs, `max_batch_size` and
`max_delay`: the first waiting job opens a batch, which is run as soon as the
queue holds `max_batch_size` rows or the first job has waited `max_delay`.
With `max_delay` 0 (Triton's default too) a batch is whatever queued while the
previous call ran. The model call runs on a thread of its own (`GraphThreads`),
off the event loop, and its outputs are split back so every job gets exactly its own rows,
in order.

Each `submit` is one job. A call is filled in turns, not first come first
served: every waiting job gets an equal share of the call's rows (what a small
job does not need goes to the others), and a job with rows left goes to the
back of the line. So a large job is spread over many calls and cannot hold up
small ones: while fewer than `max_batch_size` jobs wait, a one-row job runs in
the next call whatever else is queued. (Deficit round robin, the rule network
schedulers use to share a link between flows.)

The batcher admits whatever it is given; how much work may wait is the
caller's decision (`ModelVersion.admit`, in rows). A caller bounds its own wait
with `asyncio.timeout`: a job whose caller stopped waiting (a deadline, a client
that left) is dropped with the rows it had not yet run.

Requests are validated before they get here, so a batch only fails when the
runtime does, and only its jobs fail. If the serving task itself dies (a bug,
an exception in `on_batch`), the error is logged, every waiting job fails at
once with `BatcherFailed`, `failure` says why, and the next `submit` starts a
new task.

Each call's `BatchStats` names the jobs it carried by their `owner`: whatever the
submitting task had set in `job_owner` (app.statistics sets one per inference
request), so per-request figures are derived from the same record as the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# One ONNX call: a batch of rows in, one array per graph output out, each (rows, ...).
RunBatch = Callable[[np.ndarray], Sequence[np.ndarray]]
Outputs = list[np.ndarray]
# Whose work a `submit` is: read in the submitting task, handed back in BatchStats.jobs.
job_owner: ContextVar[object | None] = ContextVar("job_owner", default=None)


class QueueFull(Exception):
    """Admitting the request would exceed the work allowed to wait; nothing of it ran."""


class BatcherClosed(Exception):
    """The batcher is stopping (shutdown or a retired model version)."""


class BatcherFailed(Exception):
    """The batcher's serving task died; the message says why. The next submit restarts it."""


class GraphThreads:
    """Threads of their own for graph calls, shared by every batcher of the service.

    Image decoding and numpy work use the event loop's default executor; graph
    calls never queue behind them. A plain queue in, one `call_soon_threadsafe`
    per result out: concurrent.futures' ThreadPoolExecutor, chaining its future
    to an asyncio one both ways, cost the event loop about three times as much
    per call (bench/profile.md). ONNX Runtime releases the GIL while it computes.
    """

    def __init__(self, threads: int, name: str = "graphs") -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._count, self._name = threads, name
        self._threads: list[threading.Thread] = []

    async def run(self, run: RunBatch, x: np.ndarray) -> Outputs:
        if not self._threads:  # started on first use, not when the app is built
            self._threads = [
                threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
                for i in range(self._count)
            ]
            for thread in self._threads:
                thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._calls.put((run, x, future, loop))
        return await future

    def shutdown(self) -> None:
        """Let the threads end once the calls queued before have run."""
        for _ in self._threads:
            self._calls.put(None)
        self._threads = []

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            run, x, future, loop = call
            try:
                outcome: Outputs | BaseException = list(run(x))
            except BaseException as exc:  # handed to the awaiting batcher, which logs it
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, outcome)


_Call = tuple[RunBatch, np.ndarray, "asyncio.Future[Outputs]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Outputs], outcome: Outputs | BaseException) -> None:
    if future.done():  # its batcher was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass(frozen=True)
class BatchStats:
    """What the batcher reports after each call, for metrics."""

    size: int  # rows in the call
    queue_wait_s: list[float]  # per job that started in this call, from submit to the call
    run_s: float
    started: float = 0.0  # when the call began, on the batcher's clock
    # Every job in the call: (its owner, seconds it waited for this call since it was
    # submitted or since its previous call ended). The statistics charge owners.
    jobs: list[tuple[object | None, float]] = field(default_factory=list)
    # With `capture`: per job in the call, what capture() gave at its submit, and its
    # queue wait if it started in this call (app/tracing.py links the call to them).
    traced: list[tuple[object, float | None]] = field(default_factory=list)


@dataclass(eq=False)  # jobs are told apart by identity
class _Job:
    x: np.ndarray  # (n, ...)
    future: asyncio.Future[Outputs]
    enqueued: float
    owner: object | None = None  # the request it serves (app/statistics.py)
    ready: float = 0.0  # since when it waits: submitted, or its previous call ended
    context: object = None  # what `capture` gave at submit (app/tracing.py)
    taken: int = 0  # rows handed to calls so far
    parts: list[Outputs] = field(default_factory=list)  # outputs of the calls so far, in order
    done: int = 0  # rows whose outputs came back

    def finish(self, outputs: Outputs, rows: int) -> None:
        """Record `rows` more rows of outputs; answer the caller once all are back."""
        if self.future.done():  # the caller stopped waiting
            return
        self.done += rows
        if self.done == len(self.x) and not self.parts:  # the whole job in one call
            self.future.set_result(outputs)
            return
        self.parts.append(outputs)
        if self.done == len(self.x):
            self.future.set_result([np.concatenate(p) for p in zip(*self.parts, strict=True)])


class Batcher:
    """Merges `submit` calls into calls of `run`; start and stop it from the lifespan."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_delay_s: float,
        name: str = "batcher",
        on_batch: Callable[[BatchStats], None] | None = None,
        threads: GraphThreads | None = None,
        clock: Callable[[], float] = time.monotonic,
        capture: Callable[[], object] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_delay_s < 0:
            raise ValueError("need max_batch_size >= 1 and max_delay_s >= 0")
        self._run_batch = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.name = name
        self._on_batch = on_batch
        self._threads = threads  # None: the event loop's default executor
        self._clock = clock
        self._capture = capture  # called at each submit, in the caller's task (tracing)
        self._jobs: deque[_Job] = deque()  # jobs with rows not yet run, in turn order
        self._in_call: list[_Job] = []  # jobs with rows in the call in progress
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why the serving task died, until it restarts

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a call (not counting the call in progress)."""
        return self._queued_rows

    def start(self) -> None:
        """Start the serving task (again, after it died)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self.failure = None
        self._task = asyncio.create_task(self._serve(), name=f"batcher:{self.name}")
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, and end the serving task."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # a death was logged by _ended; nothing to raise

    async def submit(self, x: np.ndarray) -> Outputs:
        """Run `x` (rows, ...) through the model; returns each output's rows for `x`.

        A job of more rows than the share of one call is spread over several
        calls, in turns with the other jobs. Raises BatcherClosed when the
        batcher is stopping, and BatcherFailed if its serving task dies.
        """
        if self._closed or self._task is None:
            raise BatcherClosed(f"{self.name} is not running")
        if self._task.done():  # it died; this request brings it back
            log.warning("%s: restarting the batching task (%s)", self.name, self.failure)
            self.start()
        if len(x) == 0:
            raise ValueError("empty batch")
        now = self._clock()
        job = _Job(x, asyncio.get_running_loop().create_future(), now, job_owner.get(), now)
        if self._capture is not None:
            job.context = self._capture()
        self._jobs.append(job)
        self._queued_rows += len(x)
        self._arrived.set()
        return await job.future

    async def _serve(self) -> None:
        while True:
            while not self._jobs:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_batch_mates()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _wait_for_batch_mates(self) -> None:
        deadline = self._jobs[0].enqueued + self.max_delay_s
        while not self._closed and self._queued_rows < self.max_batch_size:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _take(self) -> dict[_Job, tuple[int, int]]:
        """The rows of the next call, job by job: {job: (start, stop)} in call order.

        Round by round, each waiting job takes an equal share of the room left
        (at least one row), and goes to the back of the line if rows remain.
        """
        picked: dict[_Job, tuple[int, int]] = {}
        room = self.max_batch_size
        while room and self._jobs:
            share = max(1, room // len(self._jobs))
            for _ in range(len(self._jobs)):
                job = self._jobs.popleft()
                left = len(job.x) - job.taken
                if job.future.done():  # its caller stopped waiting: drop what did not run
                    self._queued_rows -= left
                    continue
                n = min(share, room, left)
                start = picked[job][0] if job in picked else job.taken
                job.taken += n
                picked[job] = (start, job.taken)
                room -= n
                self._queued_rows -= n
                if n < left:
                    self._jobs.append(job)
                if not room:
                    break
        return picked

    async def _run(self, batch: dict[_Job, tuple[int, int]]) -> None:
        started = self._clock()
        self._in_call = list(batch)
        if len(batch) == 1:
            ((job, (start, stop)),) = batch.items()
            x = job.x if (start, stop) == (0, len(job.x)) else job.x[start:stop]
        else:
            x = np.concatenate([job.x[start:stop] for job, (start, stop) in batch.items()])
        try:
            if self._threads is not None:
                outputs = await self._threads.run(self._run_batch, x)
            else:
                outputs = list(await asyncio.to_thread(self._run_batch, x))
            if any(len(output) != len(x) for output in outputs):
                raise RuntimeError(f"{self.name}: outputs do not have {len(x)} rows")
        except Exception as exc:
            log.exception("%s: a batch of %d rows failed", self.name, len(x))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            self._in_call = []
            return
        finished = self._clock()
        offset = 0
        jobs = []
        for job, (start, stop) in batch.items():
            n = stop - start
            job.finish([output[offset : offset + n] for output in outputs], n)
            offset += n
            jobs.append((job.owner, started - job.ready))
            job.ready = finished
        self._in_call = []
        if self._on_batch is not None:
            waits = [started - job.enqueued for job, (start, _) in batch.items() if start == 0]
            traced = []
            if self._capture is not None:
                traced = [
                    (job.context, started - job.enqueued if start == 0 else None)
                    for job, (start, _) in batch.items()
                ]
            self._on_batch(
                BatchStats(
                    len(x), waits, finished - started, started=started, jobs=jobs, traced=traced
                )
            )

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The serving task returned (stopped) or died: fail whatever still waits on it."""
        if task.cancelled():
            reason = "it was cancelled"
        elif (exc := task.exception()) is not None:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("%s: the batching task died", self.name, exc_info=exc)
        else:
            return
        self.failure = f"{self.name}: the batching task died ({reason})"
        error = BatcherFailed(self.failure)
        for job in [*self._in_call, *self._jobs]:
            if not job.future.done():
                job.future.set_exception(error)
        self._in_call = []
        self._jobs.clear()
        self._queued_rows = 0
