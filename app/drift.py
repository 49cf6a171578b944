"""The drift signal for clients that only encode: a sample of /encode traffic, scored.

With VAE_DRIFT_SAMPLE_RATE = p > 0, each /encode request (and each request to the v2
protocol's encoder) is picked with probability p, and its images are scored with the
version's default score (k and seed as /elbo's defaults) after the request has been
answered, in a task of their own: the scores land in vae_anomaly_percentile as /elbo's
do, and the client waits for none of it. The work is admitted like a request's
(`ModelVersion.admit`): when the version's budget is taken the sample is dropped, not
queued, and at most `max_in_flight` samples are scored at once. So a loaded server
spends nothing on it beyond what it had spare. vae_drift_samples_total counts what
happened to each sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

import numpy as np

from app import inference
from app.errors import known_failure
from app.metrics import Metrics
from vae_contract import scores

if TYPE_CHECKING:
    from app.registry import ModelVersion

log = logging.getLogger(__name__)


class DriftSampler:
    def __init__(self, rate: float, metrics: Metrics, max_k: int, max_in_flight: int = 1) -> None:
        self.rate = rate
        self.max_k = max_k
        self.max_in_flight = max_in_flight
        self.outcomes = {
            outcome: metrics.drift_samples.labels(outcome)
            for outcome in ("scored", "busy", "failed")
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()

    def offer(self, mv: ModelVersion, x: np.ndarray) -> None:
        """Maybe score x (N, C, H, W), encoded just now by mv, in the background."""
        if self._random.random() >= self.rate:
            return
        if len(self._tasks) >= self.max_in_flight:
            self.outcomes["busy"].inc(len(x))
            return
        lease = mv.lease()  # taken now, in the request: the version cannot retire under it
        lease.__enter__()
        task = asyncio.create_task(self._score(mv, x, lease), name=f"drift:{mv.label}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(
        self, mv: ModelVersion, x: np.ndarray, lease: contextlib.AbstractContextManager[object]
    ) -> None:
        try:
            score = inference.choose_score(mv, None)
            k = min(scores.default_k(mv.manifest.calibration, score), self.max_k)
            await inference.assess(mv, x, k=k, seed=0, score=score, fpr=0.01)
            self.outcomes["scored"].inc(len(x))
        except Exception as exc:
            found = known_failure(exc)
            if found is not None and found[0] == 503:  # over budget, or unloading: dropped
                self.outcomes["busy"].inc(len(x))
            else:
                self.outcomes["failed"].inc(len(x))
                log.warning("scoring a drift sample of %s failed: %s", mv.label, exc)
        finally:
            lease.__exit__(None, None, None)

    async def stop(self) -> None:
        """Cancel the samples being scored (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
