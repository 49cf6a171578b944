"""The dynamic batcher, driven by events: no sleeps, no timing assertions."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from app.batcher import Batcher, BatcherClosed, BatcherFailed, BatchStats, GraphThreads

HOUR = 3600.0  # a max_delay that never expires during a test: batches flush on size


class Model:
    """A stand-in graph: two outputs per row, records each call's batch size.

    With `gated`, every call blocks until the test releases it, so the test
    decides what is queued while a call is in progress.
    """

    def __init__(self, gated: bool = False) -> None:
        self.sizes: list[int] = []
        self.gated = gated
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, x: np.ndarray) -> Sequence[np.ndarray]:
        self.sizes.append(len(x))
        if self.gated:
            self.started.set()
            assert self.release.wait(timeout=30), "the test never released the call"
        return [x * 2.0, x.sum(axis=1)]

    async def running(self) -> None:
        """Return once a call is in progress (blocked on the gate)."""
        assert await asyncio.to_thread(self.started.wait, 30)


class Stepped:
    """A stand-in graph whose calls the test lets finish one at a time: it records
    each call's rows, says when one starts, and blocks it until `finish()`."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []
        self._started: queue.Queue[None] = queue.Queue()
        self._go = threading.Semaphore(0)

    def __call__(self, x: np.ndarray) -> Sequence[np.ndarray]:
        self.calls.append(x.copy())
        self._started.put(None)
        assert self._go.acquire(timeout=30), "the test never let the call finish"
        return [x * 2.0, x.sum(axis=1)]

    async def call_started(self) -> None:
        await asyncio.to_thread(self._started.get, timeout=30)

    def finish(self) -> None:
        self._go.release()


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(n * 3, dtype=np.float32)).reshape(n, 3)


async def started(batcher: Batcher) -> Batcher:
    batcher.start()
    return batcher


def check(result: list[np.ndarray], x: np.ndarray) -> None:
    """The request got exactly its own rows of each output."""
    np.testing.assert_array_equal(result[0], x * 2.0)
    np.testing.assert_array_equal(result[1], x.sum(axis=1))


async def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    model = Model()
    batcher = await started(Batcher(model, max_batch_size=8, max_delay_s=HOUR))
    inputs = [rows(3, 0), rows(1, 100), rows(4, 200)]  # 8 rows: flushed by size
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    assert model.sizes == [8]
    for result, x in zip(results, inputs, strict=True):
        check(result, x)
    await batcher.stop()


async def test_a_request_larger_than_a_batch_is_cut_and_reassembled_in_order() -> None:
    model = Model()
    batcher = await started(Batcher(model, max_batch_size=4, max_delay_s=0))
    x = rows(10)
    check(await batcher.submit(x), x)
    assert model.sizes == [4, 4, 2]
    await batcher.stop()


async def test_requests_that_queue_during_a_call_go_together_in_the_next() -> None:
    model = Model(gated=True)
    batcher = await started(Batcher(model, max_batch_size=8, max_delay_s=0))
    first = asyncio.create_task(batcher.submit(rows(1)))
    await model.running()
    later = [rows(1, 10 * i) for i in range(1, 4)]
    tasks = [asyncio.create_task(batcher.submit(x)) for x in later]
    await asyncio.sleep(0)  # let the tasks enqueue (one loop turn, not a timed wait)
    assert batcher.queued_rows == 3
    model.release.set()
    check(await first, rows(1))
    for task, x in zip(tasks, later, strict=True):
        check(await task, x)
    assert model.sizes == [1, 3]
    await batcher.stop()


async def test_a_lone_request_is_flushed_by_the_delay() -> None:
    model = Model()
    batcher = await started(Batcher(model, max_batch_size=64, max_delay_s=0.001))
    x = rows(2)
    async with asyncio.timeout(30):  # a bound on a hang, not a timing claim
        check(await batcher.submit(x), x)
    assert model.sizes == [2]
    await batcher.stop()


async def test_a_small_job_does_not_wait_behind_a_large_one() -> None:
    """A large job is served in turns: a one-row job that arrives while the large
    one runs goes into the next call, not behind all of the large job's rows."""
    model = Stepped()
    batcher = await started(Batcher(model, max_batch_size=4, max_delay_s=0))
    large, small = rows(12), rows(1, 100)
    large_task = asyncio.create_task(batcher.submit(large))
    await model.call_started()  # the first call: rows 0-3 of the large job
    small_task = asyncio.create_task(batcher.submit(small))
    await asyncio.sleep(0)  # one loop turn: the small job queues
    model.finish()
    await model.call_started()  # the second call: half of it for each job waiting
    model.finish()
    async with asyncio.timeout(30):  # a bound on a hang, not a timing claim
        check(await small_task, small)
    assert not large_task.done()
    np.testing.assert_array_equal(model.calls[1], np.concatenate([large[4:7], small]))
    for _ in range(2):  # the rest of the large job: 4 rows, then 1
        await model.call_started()
        model.finish()
    check(await large_task, large)
    assert [len(call) for call in model.calls] == [4, 4, 4, 1]
    await batcher.stop()


async def test_large_jobs_take_turns() -> None:
    model = Stepped()
    batcher = await started(Batcher(model, max_batch_size=4, max_delay_s=0))
    first = asyncio.create_task(batcher.submit(rows(1)))
    await model.call_started()
    a, b = rows(6, 100), rows(6, 200)
    tasks = [asyncio.create_task(batcher.submit(x)) for x in (a, b)]
    await asyncio.sleep(0)
    model.finish()
    for _ in range(3):
        await model.call_started()
        model.finish()
    await first
    check(await tasks[0], a)
    check(await tasks[1], b)
    np.testing.assert_array_equal(model.calls[1], np.concatenate([a[:2], b[:2]]))
    np.testing.assert_array_equal(model.calls[2], np.concatenate([a[2:4], b[2:4]]))
    np.testing.assert_array_equal(model.calls[3], np.concatenate([a[4:], b[4:]]))
    await batcher.stop()


async def test_a_job_whose_caller_leaves_mid_way_runs_no_further() -> None:
    """A deadline or a client that hangs up cancels the caller: the rows of its job
    that have not run are dropped."""
    model = Stepped()
    batcher = await started(Batcher(model, max_batch_size=4, max_delay_s=0))
    large = asyncio.create_task(batcher.submit(rows(12)))
    await model.call_started()
    large.cancel()
    model.finish()
    with pytest.raises(asyncio.CancelledError):
        await large
    after = asyncio.create_task(batcher.submit(rows(2, 50)))
    await model.call_started()
    model.finish()
    check(await after, rows(2, 50))
    assert [len(call) for call in model.calls] == [4, 2]
    assert batcher.queued_rows == 0
    await batcher.stop()


async def test_a_dead_serving_task_fails_the_waiting_jobs_at_once_and_restarts() -> None:
    """An exception outside the model call (here in the metrics callback) ends the
    serving task: it is logged, the jobs that wait fail with BatcherFailed instead
    of hanging, `failure` says why, and the next submit starts a new task."""
    model = Stepped()
    broken = True

    def on_batch(stats: BatchStats) -> None:
        if broken:
            raise RuntimeError("a bug in a callback")

    batcher = await started(Batcher(model, max_batch_size=1, max_delay_s=0, on_batch=on_batch))
    first = asyncio.create_task(batcher.submit(rows(1)))
    await model.call_started()
    waiting = asyncio.create_task(batcher.submit(rows(1, 5)))
    await asyncio.sleep(0)
    model.finish()
    check(await first, rows(1))  # answered before the callback broke
    async with asyncio.timeout(30):
        with pytest.raises(BatcherFailed, match="RuntimeError: a bug in a callback"):
            await waiting
    assert batcher.failure is not None and "a bug in a callback" in batcher.failure
    broken = False
    again = asyncio.create_task(batcher.submit(rows(1, 9)))
    await model.call_started()
    model.finish()
    check(await again, rows(1, 9))
    assert batcher.failure is None
    await batcher.stop()


async def test_a_failing_call_fails_its_requests_and_the_batcher_serves_on() -> None:
    calls = 0

    def flaky(x: np.ndarray) -> Sequence[np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the runtime broke")
        return [x]

    batcher = await started(Batcher(flaky, max_batch_size=4, max_delay_s=0))
    with pytest.raises(RuntimeError, match="the runtime broke"):
        await batcher.submit(rows(1))
    (out,) = await batcher.submit(rows(2))
    np.testing.assert_array_equal(out, rows(2))
    await batcher.stop()


async def test_outputs_with_the_wrong_row_count_are_an_error_not_a_misassignment() -> None:
    batcher = await started(Batcher(lambda x: [x[:1]], max_batch_size=4, max_delay_s=0))
    with pytest.raises(RuntimeError, match="rows"):
        await batcher.submit(rows(3))
    await batcher.stop()


async def test_a_cancelled_request_is_dropped_before_it_runs() -> None:
    model = Model(gated=True)
    batcher = await started(Batcher(model, max_batch_size=8, max_delay_s=0))
    first = asyncio.create_task(batcher.submit(rows(1)))
    await model.running()
    gone = asyncio.create_task(batcher.submit(rows(5)))
    kept = asyncio.create_task(batcher.submit(rows(2, 7)))
    await asyncio.sleep(0)
    gone.cancel()  # the client went away while it waited
    model.release.set()
    await first
    check(await kept, rows(2, 7))
    assert gone.cancelled()
    assert model.sizes == [1, 2]
    await batcher.stop()


async def test_stop_finishes_queued_work_then_refuses_new_work() -> None:
    model = Model(gated=True)
    batcher = await started(Batcher(model, max_batch_size=1, max_delay_s=HOUR))
    first = asyncio.create_task(batcher.submit(rows(1)))
    await model.running()
    second = asyncio.create_task(batcher.submit(rows(1, 5)))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0)
    with pytest.raises(BatcherClosed):
        await batcher.submit(rows(1))
    model.release.set()
    await stopping
    check(await first, rows(1))
    check(await second, rows(1, 5))


async def test_each_call_is_reported_with_its_size_and_queue_waits() -> None:
    stats: list[BatchStats] = []
    ticks = iter(range(100))  # a fake clock: every reading is one second later
    batcher = await started(
        Batcher(
            Model(),
            max_batch_size=3,
            max_delay_s=HOUR,
            on_batch=stats.append,
            clock=lambda: float(next(ticks)),
        )
    )
    await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)))
    assert len(stats) == 1 and stats[0].size == 3
    assert len(stats[0].queue_wait_s) == 2 and all(w > 0 for w in stats[0].queue_wait_s)
    await batcher.stop()


def test_nonsense_knobs_are_refused() -> None:
    with pytest.raises(ValueError):
        Batcher(Model(), max_batch_size=0, max_delay_s=0)
    with pytest.raises(ValueError):
        Batcher(Model(), max_batch_size=8, max_delay_s=-1)


async def test_graph_threads_run_the_calls_and_hand_back_their_errors() -> None:
    threads = GraphThreads(1)
    batcher = await started(Batcher(Model(), max_batch_size=4, max_delay_s=0, threads=threads))
    x = rows(6)
    check(await batcher.submit(x), x)

    def broken(x: np.ndarray) -> Sequence[np.ndarray]:
        raise RuntimeError("the runtime broke")

    failing = await started(Batcher(broken, max_batch_size=4, max_delay_s=0, threads=threads))
    with pytest.raises(RuntimeError, match="the runtime broke"):
        await failing.submit(rows(1))
    check(await batcher.submit(rows(2, 7)), rows(2, 7))  # the thread serves on
    await batcher.stop()
    await failing.stop()
    threads.shutdown()
