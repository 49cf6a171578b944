"""Honest evaluation: test-set ELBO and the importance-sampled log-likelihood
log p(x) ≈ log (1/k) Σ p(x, z_k) / q(z_k|x) (Burda et al. 2016), in nats and
bits per dimension.

It runs on the exported ONNX graphs, so the numbers describe exactly the
files the service loads.

    vae-eval model_store/mnist/1 --data ../shared/data/mnist --k 5000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from trainer import data as datasets
from trainer.likelihood import Likelihood
from trainer.objectives import iwae, kl, log_weights, reparameterize
from vae_contract.graphs import session_options

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Decode = Callable[[torch.Tensor], torch.Tensor]


def execution_providers(device: str) -> list[str]:
    """ONNX Runtime's CUDA provider for a CUDA run when onnxruntime-gpu offers it."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Graphs:
    """encoder.onnx and decoder.onnx behind torch-tensor callables."""

    def __init__(self, version_dir: Path, threads: int | None = None, device: str = "cpu") -> None:
        options = session_options(threads)  # the service's, so both run the graphs alike
        providers = execution_providers(device)
        self.encoder = ort.InferenceSession(str(version_dir / "encoder.onnx"), options, providers)
        self.decoder = ort.InferenceSession(str(version_dir / "decoder.onnx"), options, providers)

    def run_encoder(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, C, H, W) float32 -> mean, log_var (N, L)."""
        mean, log_var = self.encoder.run(["mean", "log_var"], {"x": x})
        return mean, log_var

    def run_decoder(self, z: np.ndarray) -> np.ndarray:
        """z (N, L) float32 -> logits (N, P·C, H, W), P the likelihood's parameters per value."""
        (logits,) = self.decoder.run(["logits"], {"z": z})
        return np.asarray(logits)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.run_encoder(x.numpy())
        return torch.from_numpy(mean), torch.from_numpy(log_var)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        out = torch.from_numpy(self.run_decoder(z.reshape(-1, z.shape[-1]).numpy()))
        return out.reshape(*lead, *out.shape[1:])


def prepare(images: np.ndarray, binarize: bool, seed: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1]; binarised once with a fixed seed if asked
    (the dynamically binarised MNIST protocol evaluates one seeded draw of the test set)."""
    x = torch.from_numpy(np.array(images, np.float32)) / 255  # a copy: IDX buffers are read-only
    if binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


@torch.no_grad()
def evaluate(
    encode: Encode,
    decode: Decode,
    likelihood: Likelihood,
    x: torch.Tensor,
    k: int,
    seed: int = 0,
    batch_size: int = 100,
    rows_per_call: int = 20000,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean test ELBO (one sample) and importance-sampled log-likelihood (k samples)."""
    g = torch.Generator().manual_seed(seed)
    dims = x[0].numel()
    elbos, lls = [], []
    chunk = max(1, rows_per_call // batch_size)  # samples per decoder call
    batches = range(0, len(x), batch_size)
    for start in tqdm(
        batches,
        desc=f"eval k={k}",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    ):
        xb = x[start : start + batch_size]
        mean, log_var = encode(xb)
        divergence = kl(mean, log_var)
        log_w = []
        for s in range(0, k, chunk):
            # Drawn on the CPU, then moved: the same noise whatever device runs the model.
            eps = torch.randn((min(chunk, k - s), *mean.shape), generator=g).to(mean.device)
            z = reparameterize(mean, log_var, eps)  # (c, B, L)
            w, rec = log_weights(likelihood, xb, mean, log_var, z, decode(z))
            if s == 0:
                elbos.append(rec[0] - divergence)  # the first sample gives the ELBO estimate
            log_w.append(w)
        lls.append(iwae(torch.cat(log_w)))
    elbo = torch.cat(elbos).double().mean().item()
    ll = torch.cat(lls).double().mean().item()
    nats_per_bit = dims * math.log(2)
    return {
        "n": len(x),
        "elbo": elbo,
        "log_likelihood": ll,
        "k": k,
        "bits_per_dim_elbo": -elbo / nats_per_bit,
        "bits_per_dim": -ll / nats_per_bit,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path, help="a store version: model_store/mnist/1")
    parser.add_argument("--data", required=True, help="the dataset the model was trained on")
    parser.add_argument("--k", type=int, default=5000, help="importance samples (default 5000)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    parser.add_argument("--seed", type=int, default=None, help="default: the manifest's")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    try:
        manifest = json.loads((args.version_dir / "manifest.json").read_text())
        config = manifest["training"]
        _, _, test = datasets.as_trained(args.data, config)
    except (OSError, KeyError, json.JSONDecodeError, datasets.DataError) as e:
        print(f"vae-eval: error: {e}", file=sys.stderr)
        return 1
    if args.limit:
        test = test[: args.limit]
    recorded = manifest.get("metrics", {}).get("test", {})
    seed = args.seed if args.seed is not None else recorded.get("seed", 0)
    graphs = Graphs(args.version_dir, args.threads)
    binarize = manifest["likelihood"] == "bernoulli" and config["binarize"]
    x = prepare(test, binarize, seed)
    result = evaluate(
        graphs.encode, graphs.decode, manifest["likelihood"], x, args.k, seed, args.batch_size
    )
    result["binarization"] = "dynamic" if binarize else "none"
    print(json.dumps({"measured": result, "manifest": recorded}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
