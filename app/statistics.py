"""Per-model inference statistics, in the shape of Triton's statistics extension.

Every inference request, through whichever door (the native /encode, /decode, /sample,
/elbo and /elbo/map, or the protocol's infer over HTTP or gRPC), is counted once, under
the protocol model that answers its question and the version that served it:

    /encode, {m}-encoder             -> {m}-encoder
    /decode, /sample, {m}-decoder    -> {m}-decoder
    /elbo, /elbo/map, {m}-elbo       -> {m}-elbo

A request is counted from the moment its inputs are validated and it asks for graph
time (`counted`, around app.inference's entry points) to its answer; one that is refused
before (a malformed body, an unknown model) never reached a model, as in Triton.

The durations come from the batcher's own record of each graph call (`BatchStats`, the
record the Prometheus histograms read too): each job carries its request as its owner,
so a request's queue time is the sum of its jobs' waits, its compute_infer the sum of
the calls that carried its rows, compute_input the time before its first job was queued
(admission), and compute_output the rest (the numpy maths between and after the calls:
likelihoods, scores, pixel means). Their sum is the request's success duration.

One graph call carries rows of every door (an /encode and an {m}-elbo request may share
one encoder call): `execution_count` and `batch_stats` of a protocol model count the
calls that carried at least one of its rows, each once, by the call's full size.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from app.batcher import BatchStats, job_owner

if TYPE_CHECKING:
    from app.registry import ModelVersion

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their total time in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))


@dataclass
class ModelStatistics:
    """One protocol model version's figures since it was loaded."""

    last_inference_ms: int = 0  # wall clock, ms since the epoch; 0: never
    inference_count: int = 0  # rows (images or latents) answered
    execution_count: int = 0  # graph calls that carried its rows
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)  # by call size: compute_infer

    def executed(self, size: int, run_s: float) -> None:
        self.execution_count += 1
        self.batches.setdefault(size, Duration()).add(run_s)


class _Request:
    """One request's account: the owner of its batcher jobs."""

    __slots__ = ("first_queued", "infer_s", "model", "queue_s", "rows", "started")

    def __init__(self, model: ModelStatistics, rows: int) -> None:
        self.model = model
        self.rows = rows
        self.started = time.monotonic()  # the batcher's clock
        self.first_queued: float | None = None
        self.queue_s = 0.0
        self.infer_s = 0.0

    def charge(self, wait_s: float, started: float, run_s: float) -> None:
        if self.first_queued is None:
            self.first_queued = started - wait_s
        self.queue_s += wait_s
        self.infer_s += run_s

    def end(self, ok: bool) -> None:
        total = time.monotonic() - self.started
        model = self.model
        if not ok:
            model.fail.add(total)
            return
        queued = self.started if self.first_queued is None else self.first_queued
        compute_input = max(0.0, queued - self.started)
        model.success.add(total)
        model.queue.add(self.queue_s)
        model.compute_input.add(compute_input)
        model.compute_infer.add(self.infer_s)
        model.compute_output.add(max(0.0, total - compute_input - self.queue_s - self.infer_s))
        model.inference_count += self.rows
        model.last_inference_ms = time.time_ns() // 1_000_000


_BY_VERSION: weakref.WeakKeyDictionary[ModelVersion, dict[str, ModelStatistics]] = (
    weakref.WeakKeyDictionary()
)


def of(mv: ModelVersion, role: str) -> ModelStatistics:
    """The statistics of protocol model `{mv.name}-{role}`, version `mv.version`."""
    found = _BY_VERSION.setdefault(mv, {})
    if role not in found:
        found[role] = ModelStatistics()
    return found[role]


def observe_batch(stats: BatchStats) -> None:
    """A batcher's `on_batch`: charge each job's request, count the call once per model."""
    models: dict[int, ModelStatistics] = {}
    for owner, wait_s in stats.jobs:
        if isinstance(owner, _Request):
            owner.charge(wait_s, stats.started, stats.run_s)
            models[id(owner.model)] = owner.model
    for model in models.values():
        model.executed(stats.size, stats.run_s)


def counted(
    role: str,
) -> Callable[
    [Callable[Concatenate[ModelVersion, np.ndarray, P], Awaitable[T]]],
    Callable[Concatenate[ModelVersion, np.ndarray, P], Awaitable[T]],
]:
    """Count each call of an inference entry point `(mv, rows, ...)` as one request of
    protocol model `{mv.name}-{role}`; a call made inside a counted one is not counted
    again."""

    def wrap(
        function: Callable[Concatenate[ModelVersion, np.ndarray, P], Awaitable[T]],
    ) -> Callable[Concatenate[ModelVersion, np.ndarray, P], Awaitable[T]]:
        @functools.wraps(function)
        async def counting(
            mv: ModelVersion, rows: np.ndarray, /, *args: P.args, **kwargs: P.kwargs
        ) -> T:
            if isinstance(job_owner.get(), _Request):
                return await function(mv, rows, *args, **kwargs)
            request = _Request(of(mv, role), len(rows))
            token = job_owner.set(request)
            try:
                found = await function(mv, rows, *args, **kwargs)
            except BaseException:
                request.end(ok=False)
                raise
            finally:
                job_owner.reset(token)
            request.end(ok=True)
            return found

        return counting

    return wrap


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def report(name: str, version: int, s: ModelStatistics) -> dict[str, Any]:
    """One entry of the extension's `model_stats`, as Triton's HTTP endpoint writes it."""
    zero = {"count": 0, "ns": 0}
    return {
        "name": name,
        "version": str(version),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success),
            "fail": _duration(s.fail),
            "queue": _duration(s.queue),
            "compute_input": _duration(s.compute_input),
            "compute_infer": _duration(s.compute_infer),
            "compute_output": _duration(s.compute_output),
            "cache_hit": zero,  # no response cache
            "cache_miss": zero,
        },
        "batch_stats": [
            {
                # The batcher times a call whole (rows gathered, graph run, rows split
                # back): all of it is compute_infer.
                "batch_size": size,
                "compute_infer": _duration(d),
            }
            for size, d in sorted(s.batches.items())
        ],
        "memory_usage": [],
    }
