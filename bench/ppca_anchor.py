"""The default VAE against its linear special case, probabilistic PCA, on 32×32 crops.

    python -m bench.ppca_anchor                    # photos and gravel, ~2 × 15 min
    python -m bench.ppca_anchor --sets gravel -- --epochs 5   # trainer flags after --
    python -m bench.ppca_anchor --sets gravel --store <store>  # a store trained on the crops

For each set: 2,000 training crops from one region of the images (bench/crops.py),
written as PNG files, trained on with `vae-train --data <folder> --out <store>` and
nothing else; held-out crops from the disjoint region. The VAE's figure is its
held-out ELBO at k = 1 in bits/dim (an upper bound, with its discretised logistic
likelihood); PPCA's, with the same latent size, fitted in closed form on the images
the VAE trained on, is its dequantised upper bound (trainer/ppca.py). Lower is better;
both bound the bits an 8-bit value costs. Writes <out>/results.json and, per set,
<out>/<set>/reconstructions.png: held-out crops, the VAE's and PPCA's reconstructions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.crops import PHOTOS, crops, write_folder
from trainer import data as datasets
from trainer import ppca, report
from trainer.evaluate import Graphs, evaluate, prepare
from trainer.likelihood import mean

SETS = {"photos": PHOTOS, "brick": ("brick",), "grass": ("grass",), "gravel": ("gravel",)}


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def train(folder: Path, store: Path, extra: list[str]) -> Path:
    """`vae-train --data folder --out store` plus `extra`; the version it published."""
    command = [sys.executable, "-m", "trainer.train", "--data", str(folder), "--out", str(store)]
    subprocess.run([*command, *extra], check=True)
    return newest(store)


def newest(store: Path) -> Path:
    """The highest version folder of a model's store."""
    return max((p for p in store.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def compare(
    name: str, out: Path, n_train: int, n_held_out: int, extra: list[str], store: Path | None
) -> dict[str, Any]:
    """Train (or take `store`, trained on this set's folder of crops), then compare."""
    names = SETS[name]
    folder = write_folder(crops(names, n_train, "train", seed=0), out / name / "train")
    held_out = crops(names, n_held_out, "held_out", seed=1)
    load_before = _load()
    version = newest(store) if store else train(folder, out / name / "store" / name, extra)
    manifest = json.loads((version / "manifest.json").read_text())
    seconds = manifest["training"]["seconds"]  # the trainer's own clock: the epochs alone
    likelihood, latent = manifest["likelihood"], manifest["latent_dim"]
    graphs = Graphs(version)
    x = prepare(held_out, False, 0)
    vae = evaluate(graphs.encode, graphs.decode, likelihood, x, 1, progress=False)
    # The VAE's own training split of the same crops (a given store names its folder).
    source = Path(manifest["training"]["data"]["source"])
    split_from = source if source.is_dir() else folder
    trained_on = datasets.array(datasets.as_trained(split_from, manifest["training"])[0])
    anchor = ppca.fit(trained_on, latent)
    ppca_bits = float(anchor.bits_per_dim(held_out).mean())
    shown = x[:16]
    with torch.no_grad():
        vae_out = mean(likelihood, graphs.decode(graphs.encode(shown)[0])).numpy()
    rows = [shown.numpy(), vae_out, anchor.reconstruct(held_out[:16]).astype(np.float32)]
    report.grid(np.concatenate(rows), columns=16).save(out / name / "reconstructions.png")
    return {
        "set": name,
        "images": list(names),
        "n_train_crops": n_train,
        "n_trained_on": len(trained_on),
        "n_held_out": n_held_out,
        "architecture": manifest["training"]["architecture"],
        "hidden": manifest["training"]["hidden"],
        "likelihood": likelihood,
        "latent_dim": latent,
        "epochs": manifest["training"]["epochs_run"],
        "train_seconds": round(seconds, 1),
        "load_before": load_before,
        "load_after": _load(),
        "vae_bits_per_dim": round(vae["bits_per_dim_elbo"], 4),
        "ppca_bits_per_dim": round(ppca_bits, 4),
        "vae_beats_ppca": vae["bits_per_dim_elbo"] < ppca_bits,
        "version": str(version),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="bench.ppca_anchor", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["photos", "gravel"])
    p.add_argument("--train", type=int, default=2000, help="training crops per set")
    p.add_argument("--held-out", type=int, default=1000, help="held-out crops per set")
    p.add_argument("--out", type=Path, default=Path("bench/results/ppca"))
    p.add_argument("--store", type=Path, help="a store trained on the set's crops (one set only)")
    args = p.parse_args(own)
    if args.store is not None and len(args.sets) != 1:
        p.error("--store is one set's model: name that set alone with --sets")
    results = []
    print(f"{'set':8} {'model':18} {'train s':>8} {'VAE bits/dim':>13} {'PPCA bits/dim':>14}")
    for name in args.sets:
        r = compare(name, args.out, args.train, args.held_out, extra, args.store)
        results.append(r)
        model = f"{r['architecture']} {r['likelihood'][:13]}"
        print(
            f"{name:8} {model:18} {r['train_seconds']:8.0f} {r['vae_bits_per_dim']:13.3f} "
            f"{r['ppca_bits_per_dim']:14.3f}  {'VAE wins' if r['vae_beats_ppca'] else 'PPCA wins'}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
