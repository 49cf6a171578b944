"""The ceiling: images/s of ONNX Runtime called in-process, no HTTP.

Sessions get the service's own CPU options (vae_contract.graphs.session_options), so
the ceiling is what the service could reach if serving cost nothing:

- encode: encoder.onnx;
- decode: decoder.onnx;
- elbo: encoder, reparameterize, decoder, then log p(x|z) and the KL in numpy
  (vae_contract), as /elbo computes them at k = 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.loader import read_manifest
from vae_contract import bounds
from vae_contract.graphs import session_options
from vae_contract.likelihood import log_likelihood


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = session_options(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rate(step: Callable[[], object], images: int, seconds: float) -> float:
    """Images/s of `step` (one call on `images` images), run for about `seconds`."""
    step()  # warm-up: first-call allocations
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or calls < 3:
        step()
        calls += 1
    return calls * images / elapsed


def ceiling(
    version_dir: Path,
    batches: list[int],
    *,
    threads: int,
    seconds: float,
    ops: tuple[str, ...] = ("encode", "decode", "elbo"),
) -> dict[tuple[str, int], float]:
    """{(op, batch): images/s} for each op of encode, decode, elbo."""
    manifest = read_manifest(version_dir)
    encoder = _session(version_dir / manifest.graphs.encoder.file, threads)
    decoder = _session(version_dir / manifest.graphs.decoder.file, threads)
    latent, size, likelihood = manifest.latent_dim, manifest.input.size, manifest.likelihood
    rng = np.random.default_rng(0)
    eps = bounds.noise(0, 1, latent)
    rates: dict[tuple[str, int], float] = {}
    for n in batches:
        x = rng.random((n, *manifest.input.shape), dtype=np.float32)  # (N, C, H, W)
        z = rng.standard_normal((n, latent), dtype=np.float32)  # (N, L)

        def encode(x: np.ndarray = x) -> object:
            return encoder.run(["mean", "log_var"], {"x": x})

        def decode(z: np.ndarray = z) -> object:
            return decoder.run(["logits"], {"z": z})

        def elbo(x: np.ndarray = x, n: int = n) -> object:
            mean, log_var = encoder.run(["mean", "log_var"], {"x": x})
            draws = bounds.reparameterize(mean, log_var, np.broadcast_to(eps, (n, 1, latent)))
            (logits,) = decoder.run(["logits"], {"z": draws[:, 0]})
            log_px = log_likelihood(x.reshape(n, size), logits.reshape(n, -1), likelihood)
            return log_px - bounds.kl(mean, log_var)

        for op, step in (("encode", encode), ("decode", decode), ("elbo", elbo)):
            if op in ops:
                rates[op, n] = _rate(step, n, seconds)
    return rates
