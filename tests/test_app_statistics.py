"""app.statistics: requests counted once, under their protocol model, from the batcher's
own record of each call; a call shared by two models counts once for each."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from app import statistics
from app.batcher import Batcher


class Version:
    """Stands for a loaded ModelVersion: the statistics are kept per version object."""


def doubled(x: np.ndarray) -> list[np.ndarray]:
    return [x * 2]


@pytest.fixture
async def batcher() -> Any:
    # Six rows start a call at once: the three requests below (2 + 1 + 3 rows) share it.
    found = Batcher(doubled, max_batch_size=6, max_delay_s=10.0, on_batch=statistics.observe_batch)
    found.start()
    yield found
    await found.stop()


def parts_ns(s: statistics.ModelStatistics) -> int:
    return s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns


async def test_a_shared_call_counts_once_per_model_and_each_request_once(batcher: Any) -> None:
    mv = Version()

    @statistics.counted("encoder")
    async def encode(mv: Any, x: np.ndarray) -> list[np.ndarray]:
        return await batcher.submit(x)

    @statistics.counted("elbo")
    async def elbo(mv: Any, x: np.ndarray) -> list[np.ndarray]:
        return await encode(mv, x)  # counted once, as the elbo request it serves

    await asyncio.gather(
        encode(mv, np.ones((2, 3))), encode(mv, np.ones((1, 3))), elbo(mv, np.ones((3, 3)))
    )
    encoder, scored = statistics.of(mv, "encoder"), statistics.of(mv, "elbo")
    assert (encoder.success.count, encoder.inference_count, encoder.execution_count) == (2, 3, 1)
    assert (scored.success.count, scored.inference_count, scored.execution_count) == (1, 3, 1)
    assert list(encoder.batches) == list(scored.batches) == [6]  # the call's full size
    assert encoder.batches[6].count == 1 and encoder.batches[6].ns > 0
    for s in (encoder, scored):
        assert s.fail.count == 0 and s.last_inference_ms > 0
        assert s.queue.count == s.compute_infer.count == s.success.count
        assert s.compute_infer.ns >= encoder.batches[6].ns  # each request was in the call
        assert abs(s.success.ns - parts_ns(s)) <= 4 * s.success.count  # rounding only
    assert statistics.of(mv, "decoder").success.count == 0


async def test_a_failed_request_counts_as_a_failure_only() -> None:
    mv = Version()

    @statistics.counted("decoder")
    async def decode(mv: Any, z: np.ndarray) -> None:
        raise RuntimeError("the graph failed")

    with pytest.raises(RuntimeError):
        await decode(mv, np.ones((4, 8)))
    found = statistics.of(mv, "decoder")
    assert found.fail.count == 1 and found.fail.ns >= 0
    assert (found.success.count, found.inference_count, found.queue.count) == (0, 0, 0)


def test_the_report_has_tritons_fields() -> None:
    found = statistics.report("mnist-encoder", 3, statistics.ModelStatistics())
    assert found["name"] == "mnist-encoder" and found["version"] == "3"
    assert set(found["inference_stats"]) == {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
        "cache_hit", "cache_miss",
    }  # fmt: skip
    assert found["batch_stats"] == [] and found["execution_count"] == 0
