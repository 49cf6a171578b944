"""The device paths: bf16 autocast (checked on the CPU, where torch also runs it) and a
whole run on CUDA wherever torch sees a GPU (skipped, with the reason, elsewhere)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from app_support import read_mnist

from trainer.train import main as train_main

RECIPE = [
    "--validation", "500", "--test-fraction", "0.1", "--hidden", "64", "--latent-dim", "8",
    "--batch-size", "64", "--eval-k", "4", "--eval-limit", "100", "--no-report",
]  # fmt: skip
# bf16 keeps 8 bits of mantissa in the networks' matrix products; z, the densities and
# the bound stay float32. With the same seed every noise draw is the same, so bf16 and
# fp32 differ by rounding alone: for this recipe (6 epochs) the best validation ELBOs
# differed by 0.009, 0.024 and 0.035 nats for seeds 0, 1, 2, against 0.6 to 1.8 nats
# between runs that differ in their noise (tests/test_trainer_distributed.py).
BF16_TOLERANCE_NATS = 0.5


def run(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    np.savez(tmp_path / "digits.npz", x=read_mnist(3000))
    argv = ["--data", str(tmp_path / "digits.npz"), "--out", str(tmp_path / name / "digits")]
    argv += ["--checkpoint-dir", str(tmp_path / f"run-{name}"), *RECIPE, *args]
    assert train_main(argv) == 0
    versions = sorted((tmp_path / name / "digits").iterdir())
    manifest: dict[str, Any] = json.loads((versions[-1] / "manifest.json").read_text())
    return manifest


@pytest.mark.slow
def test_bf16_autocast_keeps_the_validation_elbo_within_noise(tmp_path: Path) -> None:
    fp32 = run(tmp_path, "fp32", "--epochs", "6", "--precision", "fp32", "--threads", "2")
    bf16 = run(tmp_path, "bf16", "--epochs", "6", "--precision", "bf16", "--threads", "2")
    assert bf16["training"]["precision"] == "bf16"
    a, b = (m["training"]["best_validation_elbo"] for m in (fp32, bf16))
    assert a == pytest.approx(b, abs=BF16_TOLERANCE_NATS)
    # The exported graphs are float32 either way: evaluation does not see bf16.
    assert math.isfinite(bf16["metrics"]["test"]["log_likelihood"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")
def test_trains_evaluates_and_resumes_on_cuda(tmp_path: Path) -> None:
    first = run(tmp_path, "gpu", "--epochs", "1", "--device", "cuda")
    assert first["training"]["device"].startswith("cuda")
    # The first epoch's end used to die here: evaluation drew its noise on the CPU.
    last = str(tmp_path / "run-gpu" / "last.pt")
    resumed = run(tmp_path, "gpu", "--epochs", "2", "--device", "cuda", "--resume", last)
    assert resumed["version"] == 2 and resumed["training"]["epochs_run"] == 2
    assert resumed["training"]["precision"] == "bf16"  # what auto means on CUDA
    assert math.isfinite(resumed["metrics"]["test"]["log_likelihood"])
    lines = (tmp_path / "run-gpu" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
