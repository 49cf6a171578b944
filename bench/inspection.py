"""Surface inspection, measured: a default VAE per texture, defects painted into
held-out crops (bench/defects.py), image-level and pixel-level AUROC.

    python -m bench.inspection                               # brick, grass, gravel
    python -m bench.inspection --textures gravel --store bench/results/ppca/gravel/store/gravel

For each texture: 2,000 training crops from the left three quarters of the image
(bench/crops.py), trained on with `vae-train --data <folder> --out <store>` and nothing
else (or an existing store given with --store, such as bench.ppca_anchor's); 300
normal crops and 300 crops per defect kind from the right quarter. Image level: the
AUROC of the service's default anomaly score (typicality, as /elbo computes it) and
of -ELBO, normal crops against each kind, and of the largest |deviation| in the crop
(the map used as an image score). Pixel level: the AUROC of |deviation|, the
two-sided map of /elbo/map, and of the one-sided nats map, against the masks, pooled
over the normal and the defective crops of each kind. Goals: image ≥ 0.95, pixel ≥ 0.90.
Writes <out>/results.json and <out>/<texture>/<kind>.png (rows of input |
reconstruction | deviation map | mask).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from app.render import diverging
from bench.crops import crops, write_folder
from bench.defects import KINDS, defective
from bench.ppca_anchor import newest, train
from trainer import report
from trainer.evaluate import Graphs
from trainer.scores import anomaly_scores
from vae_contract import maps
from vae_contract.likelihood import pixel_means
from vae_contract.manifest import Manifest

GOALS = {"image": 0.95, "pixel": 0.90}


def _maps(graphs: Graphs, manifest: Manifest, images: np.ndarray) -> dict[str, np.ndarray]:
    """The /elbo/map numbers of uint8 images: means, nats and deviation."""
    x = np.asarray(images, np.float32) / np.float32(255)
    mean, _ = graphs.run_encoder(x)
    logits = graphs.run_decoder(mean)
    nats = maps.nats(x, logits, manifest.likelihood)
    return {
        "means": pixel_means(logits, manifest.likelihood),
        "nats": nats,
        "deviation": maps.deviation(nats, logits, manifest.likelihood),
    }


def _picture(
    path: Path, images: np.ndarray, found: dict[str, np.ndarray], masks: np.ndarray
) -> None:
    """Rows of input | reconstruction | deviation (the service's diverging scale) | mask."""
    grey = images[:8].astype(np.float32) / 255

    def rgb(a: np.ndarray) -> np.ndarray:
        return np.repeat(a.astype(np.float32), 3, axis=1)

    panels = [rgb(grey), rgb(found["means"][:8]), diverging(found["deviation"][:8])]
    panels.append(rgb(masks[:8, None]))
    tiles = np.stack(panels, axis=1).reshape(-1, 3, *grey.shape[2:])
    picture = report.grid(tiles, columns=4)
    picture.resize((picture.width * 3, picture.height * 3), Image.Resampling.NEAREST).save(path)


def inspect(texture: str, version: Path, out: Path, n: int) -> list[dict[str, Any]]:
    manifest = Manifest.model_validate_json((version / "manifest.json").read_text())
    graphs = Graphs(version)
    normal = crops((texture,), n, "held_out", seed=2)
    names = ("typicality", "elbo")

    def image_scores(images: np.ndarray) -> dict[str, np.ndarray]:
        lik, cal = manifest.likelihood, manifest.calibration
        return anomaly_scores(graphs, lik, images, names, calibration=cal)

    normal_scores, normal_maps = image_scores(normal), _maps(graphs, manifest, normal)
    rows = []
    for i, kind in enumerate(KINDS):
        images, masks = defective(texture, kind, n, seed=10 + i)
        found, defect_maps = image_scores(images), _maps(graphs, manifest, images)
        labels = np.r_[np.zeros(n), np.ones(n)]
        pixel_labels = np.r_[np.zeros(normal.size, bool), masks.ravel()]
        row: dict[str, Any] = {"texture": texture, "kind": kind, "n_normal": n, "n_defective": n}
        for name in names:
            row[f"image_auroc_{name}"] = roc_auc_score(
                labels, np.r_[normal_scores[name], found[name]]
            )
        # The map as an image score: the largest |deviation| anywhere in the crop.
        peak = [np.abs(m["deviation"]).max(axis=(1, 2)) for m in (normal_maps, defect_maps)]
        row["image_auroc_max_deviation"] = roc_auc_score(labels, np.r_[peak[0], peak[1]])
        row["pixel_auroc_deviation"] = roc_auc_score(
            pixel_labels,
            np.abs(np.r_[normal_maps["deviation"].ravel(), defect_maps["deviation"].ravel()]),
        )
        row["pixel_auroc_nats"] = roc_auc_score(
            pixel_labels, np.r_[normal_maps["nats"].ravel(), defect_maps["nats"].ravel()]
        )
        row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        row["goals_met"] = (
            row["image_auroc_typicality"] >= GOALS["image"]
            and row["pixel_auroc_deviation"] >= GOALS["pixel"]
        )
        rows.append(row)
        _picture(out / texture / f"{kind}.png", images, defect_maps, masks)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="bench.inspection", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--textures",
        nargs="+",
        choices=("brick", "grass", "gravel"),
        default=["brick", "grass", "gravel"],
    )
    p.add_argument("--store", type=Path, help="a trained store to use (one texture only)")
    p.add_argument("--train", type=int, default=2000, help="training crops per texture")
    p.add_argument("--n", type=int, default=300, help="normal crops, and crops per defect kind")
    p.add_argument("--out", type=Path, default=Path("bench/results/inspection"))
    args = p.parse_args(own)
    if args.store is not None and len(args.textures) != 1:
        p.error("--store is one texture's model: name that texture alone with --textures")
    results = []
    header = f"{'texture':8} {'defect':8} {'image typicality':>17} {'image -elbo':>12}"
    header += f" {'image max|dev|':>15} {'pixel |deviation|':>18} {'pixel nats':>11}  goals"
    print(header)
    for texture in args.textures:
        (args.out / texture).mkdir(parents=True, exist_ok=True)
        if args.store is not None:
            version = newest(args.store)
        else:
            folder = write_folder(
                crops((texture,), args.train, "train", seed=0), args.out / texture / "train"
            )
            version = train(folder, args.out / texture / "store" / texture, extra)
        for row in inspect(texture, version, args.out, args.n):
            results.append(row)
            print(
                f"{texture:8} {row['kind']:8} {row['image_auroc_typicality']:17.3f} "
                f"{row['image_auroc_elbo']:12.3f} {row['image_auroc_max_deviation']:15.3f} "
                f"{row['pixel_auroc_deviation']:18.3f} "
                f"{row['pixel_auroc_nats']:11.3f}  {'met' if row['goals_met'] else 'missed'}",
                flush=True,
            )
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
