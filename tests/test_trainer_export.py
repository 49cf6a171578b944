"""The export check: ONNX Runtime against torch at a tolerance that scales with the values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.export import ExportError, export, parity
from trainer.model import VAE, Shape


def test_a_correct_export_of_large_logits_is_accepted_and_says_what_it_compared(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = VAE(Shape(3, 8, 8), 4, "mlp", [16], parameters_per_value=2).eval()
    # Logits in the thousands, as a long training run can leave them: the float32 sums of
    # the two runtimes then differ by more than 1e-4 (2.4e-4 here), the old fixed tolerance.
    with torch.no_grad():
        last = model.decoder.body[-1]
        last.weight.mul_(3000.0)
        last.bias.mul_(3000.0)
    examples = torch.rand(8, 3, 8, 8)
    graphs, check = export(model, tmp_path, examples)
    assert graphs["decoder"]["outputs"] == {"logits": ["batch", 6, 8, 8]}
    logits = check["results"]["logits at batch 7"]
    assert logits["max_abs"] > 100  # large values...
    assert (
        logits["max_abs_diff"]
        <= logits["tolerance"]
        == pytest.approx(1e-4 * logits["max_abs"], rel=1e-2)
    )
    assert "ONNX Runtime against torch" in check["compared"]
    assert set(check["results"]) == {
        f"{name} at batch {n}" for name in ("mean", "log_var", "logits") for n in (1, 7)
    }


def test_a_real_disagreement_is_refused_with_what_was_compared() -> None:
    want = np.full((2, 3), 50.0, np.float32)
    assert parity("logits", 2, want, want + 0.004)["tolerance"] == pytest.approx(5e-3)
    with pytest.raises(
        ExportError,
        match=r"logits at batch 2: .*max abs diff 0\.006 over 6 "
        r"values whose largest magnitude is 50 \(tolerance 0\.0001 × max\(1, 50\)",
    ):
        parity("logits", 2, want, want + 0.006)
    with pytest.raises(ExportError, match=r"shape \(2, 2\) vs \(2, 3\)"):
        parity("mean", 2, want, want[:, :2])
    small = np.zeros((1, 4), np.float32)  # below 1 the tolerance is absolute: 1e-4
    with pytest.raises(ExportError, match=r"tolerance 0\.0001"):
        parity("mean", 1, small, small + 2e-4)
