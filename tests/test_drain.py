"""Graceful drain on a real `vae-serve` process: SIGTERM with requests in flight.

The requests are held in flight by the test (tests/inflight.py), so every step is
ordered by events, not by timing: the signal comes while they wait; /readyz and
new requests are checked during the drain window; the held requests are released
only once the socket refuses connections, so they finish after the server has
stopped accepting, as they would in a real scale-down.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_support import Reference, npy, serve
from inflight import HeldRequest, wait_in_flight, wait_refused

NPY = "application/x-npy"
HELD = 3


async def test_sigterm_drains_then_finishes_the_requests_in_flight(
    model_store: Path, version_dir: Path, tmp_path: Path, mnist: np.ndarray
) -> None:
    reference = Reference(version_dir)
    settings = {"VAE_DRAIN_S": "2", "VAE_SHUTDOWN_GRACE_S": "60"}
    with serve(model_store, tmp_path, **settings) as server:
        held = [
            await HeldRequest.start(server.url, "/encode", npy(mnist[i : i + 1]), NPY)
            for i in range(HELD)
        ]
        await wait_in_flight(server.url, HELD)

        server.process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            # The first question after the signal already gets the answer: the flag is
            # set in the signal handler, before the event loop serves anything else.
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()["detail"]) == (503, "draining")
            # ... and the service still serves while load balancers take note.
            during = await http.post(
                "/encode", content=npy(mnist[:2]), headers={"content-type": NPY}
            )
            assert during.status_code == 200, during.text
            assert (await http.get("/healthz")).status_code == 200

        await wait_refused(server.url)
        assert server.process.poll() is None, "exited with requests in flight"
        answers = await asyncio.gather(*(request.finish() for request in held))
        mean, _ = reference.encode(reference.x(mnist[:HELD]))
        for i, (status, body) in enumerate(answers):
            assert status == 200, body
            np.testing.assert_allclose(body["results"][0]["mean"], mean[i], rtol=1e-5, atol=1e-6)
        assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log_tail()
        log = server.log.read_text()
        assert "drained for 2 s after SIGTERM" in log


async def test_requests_past_the_grace_are_cut_and_the_exit_is_still_clean(
    model_store: Path, tmp_path: Path, mnist: np.ndarray
) -> None:
    settings = {"VAE_DRAIN_S": "0", "VAE_SHUTDOWN_GRACE_S": "1"}
    # uvicorn logs the request it cancels with its traceback and answers it 500.
    with serve(model_store, tmp_path, clean_log=False, **settings) as server:
        held = await HeldRequest.start(server.url, "/encode", npy(mnist[:1]), NPY)
        await wait_in_flight(server.url, 1)
        server.process.send_signal(signal.SIGTERM)
        # Never released: the grace runs out, uvicorn cancels it, the process exits 0.
        assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log_tail()
        assert "timeout graceful shutdown exceeded" in server.log.read_text()
        assert "Application shutdown complete" in server.log.read_text()
        held.writer.close()


@pytest.mark.parametrize("value", ["-1", "0.5", "soon"])
def test_drain_settings_are_whole_non_negative_seconds(value: str) -> None:
    from app.config import Settings

    for name in ("drain_s", "shutdown_grace_s"):
        with pytest.raises(ValueError, match=name):
            Settings(**{name: value})
