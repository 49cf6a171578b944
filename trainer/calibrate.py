"""Recompute the anomaly calibration of a published version and rewrite its manifest.

For versions published before a score existed: the held-out validation split is
drawn again exactly as training drew it (the manifest's training config), scored
on the exported graphs as the service scores, and `calibration` is replaced.
With --normal, a separate folder of normal images is calibrated on instead, all
of it (decoded by the service's rule to the model's input size): the way to give
a small training set's thresholds the images the rule needs (vae_contract.calibration).
The graph files and their sha256 are left as they are; the manifest is written
to a temporary file beside it and renamed over it, so a reader sees either the
old manifest or the new one.

    vae-calibrate model_store/mnist/1 --data ../shared/data/mnist
    vae-calibrate model_store/photos/1 --normal more-photos/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainer import data as datasets
from trainer.evaluate import Graphs
from trainer.scores import calibration
from vae_contract.scores import IW_K


def recalibrate(
    version_dir: Path, data: str, k: int = IW_K, threads: int | None = None
) -> dict[str, Any]:
    """The new `calibration` of a version, from its validation split."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    _, validation, _ = datasets.as_trained(data, manifest["training"])
    graphs = Graphs(version_dir, threads)
    return calibration(graphs, manifest["likelihood"], validation, k)


def normal_images(folder: str, manifest: dict[str, Any]) -> np.ndarray:
    """Every image of a folder of normal images, uint8 (N, C, H, W) at the version's
    input shape, decoded as its training data was (centre-cropped when it was)."""
    spec = manifest["input"]
    center_crop = bool(manifest.get("training", {}).get("center_crop", False))
    dataset = datasets.load(folder, spec["channels"], (spec["height"], spec["width"]), center_crop)
    parts = [dataset.train] + ([dataset.test] if dataset.test is not None else [])
    return np.concatenate([datasets.array(part) for part in parts])


def calibrate_on(
    version_dir: Path, folder: str, k: int = IW_K, threads: int | None = None
) -> dict[str, Any]:
    """The new `calibration` of a version, from a separate folder of normal images."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    images = normal_images(folder, manifest)
    graphs = Graphs(version_dir, threads)
    result = calibration(graphs, manifest["likelihood"], images, k, split="normal")
    result["source"] = str(Path(folder).resolve())
    return result


def rewrite(version_dir: Path, calibration: dict[str, Any]) -> None:
    """Replace the manifest's calibration atomically (temp file in the folder, os.replace)."""
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["calibration"] = calibration
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=version_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the service may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path, help="a store version: model_store/mnist/1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--data", help="the dataset the model was trained on (its validation split, redrawn)"
    )
    where.add_argument(
        "--normal",
        metavar="FOLDER",
        help="a separate folder of normal images, not trained on: all of them are used",
    )
    parser.add_argument("--k", type=int, default=IW_K, help=f"iwae samples (default {IW_K})")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    try:
        result = (
            calibrate_on(args.version_dir, args.normal, args.k, args.threads)
            if args.normal
            else recalibrate(args.version_dir, args.data, args.k, args.threads)
        )
        rewrite(args.version_dir, result)
    except (OSError, KeyError, json.JSONDecodeError, datasets.DataError) as e:
        print(f"vae-calibrate: error: {e}", file=sys.stderr)
        return 1
    median = result["levels"].index(0.5)
    summary = {"elbo_median": result["elbo_quantiles"][median]}
    for name, entry in result.get("scores", {}).items():
        summary[f"{name}_median"] = entry["quantiles"][median]
    for name, problem in result["problems"].items():
        print(f"vae-calibrate: {name}: {problem}", file=sys.stderr)
    print(json.dumps({"calibrated": str(args.version_dir), "n": result["n"], **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
