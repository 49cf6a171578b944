"""The own-image scenarios of bench/ run end to end on tiny settings: the PPCA anchor
(bench/ppca_anchor.py) and surface inspection (bench/inspection.py). Their figures come
from the full runs (docs/inspection.md); here only that they run and report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a folder of the repository, not an installed package

from bench import crops, defects, inspection, ppca_anchor  # noqa: E402

TINY = ["--hidden", "8", "16", "32", "--latent-dim", "4", "--max-steps", "3", "--eval-k", "2"]
TINY += ["--no-report", "--threads", "2", "--batch-size", "64"]


def test_training_and_held_out_crops_come_from_disjoint_regions() -> None:
    pixels = crops.image("gravel")
    split = int(pixels.shape[2] * crops.TRAIN_SHARE)
    train = crops.crops(("gravel",), 50, "train", seed=0)
    held_out = crops.crops(("gravel",), 50, "held_out", seed=1)
    assert train.shape == held_out.shape == (50, 1, 32, 32)
    # Each crop is found in its own region of the texture and nowhere in the other.
    left, right = pixels[0, :, :split], pixels[0, :, split:]
    windows = np.lib.stride_tricks.sliding_window_view

    def found(crop: np.ndarray, region: np.ndarray) -> bool:
        return bool((windows(region, (32, 32)) == crop[0]).all(axis=(2, 3)).any())

    assert all(found(c, left) and not found(c, right) for c in train[:5])
    assert all(found(c, right) and not found(c, left) for c in held_out[:5])


@pytest.mark.parametrize("kind", defects.KINDS)
def test_each_defect_changes_exactly_its_mask(kind: defects.Kind) -> None:
    images, masks = defects.defective("brick", kind, 20, seed=3)
    clean = crops.crops(("brick",), 20, "held_out", seed=3)
    changed = images != clean
    assert not changed[:, 0][~masks].any()  # nothing outside the mask
    assert changed[:, 0][masks].mean() > 0.5  # most of the mask is repainted
    area = masks.sum(axis=(1, 2))
    expected = {"scratch": (30, 50), "hole": (45, 55), "patch": (105, 120), "smudge": (105, 120)}
    low, high = expected[kind]
    assert ((area >= low) & (area <= high)).all(), area


@pytest.mark.slow
def test_the_anchor_and_the_inspection_run_with_one_command_each(tmp_path: Path) -> None:
    out = tmp_path / "ppca"
    argv = ["--sets", "gravel", "--train", "160", "--held-out", "40", "--out", str(out)]
    assert ppca_anchor.main([*argv, "--", *TINY, "--checkpoint-dir", str(tmp_path / "run")]) == 0
    (row,) = json.loads((out / "results.json").read_text())
    assert row["likelihood"] == "discretized_logistic" and row["architecture"] == "conv"
    assert 0 < row["ppca_bits_per_dim"] < 8 and row["vae_bits_per_dim"] > 0
    assert (out / "gravel" / "reconstructions.png").is_file()

    store = out / "gravel" / "store" / "gravel"
    argv = ["--textures", "gravel", "--store", str(store), "--n", "20"]
    assert inspection.main([*argv, "--out", str(tmp_path / "inspection")]) == 0
    rows = json.loads((tmp_path / "inspection" / "results.json").read_text())
    assert [r["kind"] for r in rows] == list(defects.KINDS)
    for r in rows:
        for key in ("image_auroc_typicality", "image_auroc_max_deviation", "pixel_auroc_deviation"):
            assert 0 <= r[key] <= 1
        assert (tmp_path / "inspection" / "gravel" / f"{r['kind']}.png").is_file()
