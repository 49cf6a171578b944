"""How fast the trainer's two data paths deliver batches, and how much memory each holds,
on a folder of generated PNGs.

    .venv/bin/python scripts/data_throughput.py --images 100000 --folder /tmp/pngs-64

It writes the folder once (smooth random colour images, size × size; kept for the
next run), then measures, each in a fresh process so that its peak memory is its own:

- listing: `trainer.data.load` (walk, stat, read every header, fingerprint);
- stream: one epoch of batches from worker processes decoding the files;
- memory: decoding the folder once into one array (the same workers), then one
  epoch of batches gathered from it.

Figures are images per second and peak resident memory (the main process, and the
largest worker). It prints one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _write(args: tuple[Path, int, int, int]) -> None:
    folder, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, np.int16) + rng.integers(-8, 9, (size, size, 3))
        path = folder / f"{i // 1000:03d}" / f"{i:06d}.png"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)


def generate(folder: Path, n: int, size: int, processes: int) -> None:
    """n PNGs in subfolders of 1000, unless the folder already holds them."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == n:
        return
    for sub in range(-(-n // 1000)):
        (folder / f"{sub:03d}").mkdir(parents=True, exist_ok=True)
    chunks = [(folder, s, min(s + 1000, n), size) for s in range(0, n, 1000)]
    with multiprocessing.Pool(processes) as pool:
        pool.map(_write, chunks)


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, folder: Path, batch: int, workers: int) -> dict[str, Any]:
    """One measurement, in this process."""
    import torch

    from trainer import data
    from trainer.distributed import Rank
    from trainer.loader import Batches

    torch.set_num_threads(1)
    started = time.perf_counter()
    images = data.load(folder).train
    listed = time.perf_counter() - started
    result: dict[str, Any] = {"mode": mode, "images": len(images), "workers": workers}
    if mode == "listing":
        result |= {"seconds": round(listed, 2), "images_per_s": round(len(images) / listed)}
    else:
        rank = Rank(0, 1, 0, 1, torch.device("cpu"))
        started = time.perf_counter()
        batches = Batches(images, batch, rank, seed=0, stream=mode == "stream", workers=workers)
        prepared = time.perf_counter() - started
        started = time.perf_counter()
        seen = sum(len(b) for b in batches.epoch(0))
        epoch = time.perf_counter() - started
        del batches  # the workers exit, so their peak memory is counted below
        result |= {
            "prepare_seconds": round(prepared, 2),  # memory: decoding the folder once
            "epoch_seconds": round(epoch, 2),
            "epoch_images_per_s": round(seen / epoch),
        }
        if mode == "memory":
            result["decode_images_per_s"] = round(len(images) / prepared)
    result["peak_mib_main"] = round(_peak_mib(resource.RUSAGE_SELF))
    result["peak_mib_largest_worker"] = round(_peak_mib(resource.RUSAGE_CHILDREN))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--folder", type=Path, default=Path("/tmp/vae-throughput-pngs"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mode", choices=["listing", "stream", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:  # a child: one measurement
        print(json.dumps(measure(args.mode, args.folder, args.batch_size, args.workers)))
        return 0
    started = time.perf_counter()
    generate(args.folder, args.images, args.size, args.workers)
    print(json.dumps({"generated_seconds": round(time.perf_counter() - started, 1)}))
    results = {}
    for mode in ("listing", "stream", "memory"):
        command = [sys.executable, __file__, "--mode", mode, "--folder", str(args.folder)]
        command += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[mode]))
    stream, memory = results["stream"], results["memory"]
    print(
        f"{args.images} PNGs {args.size}×{args.size} RGB, {args.workers} workers, "
        f"batch {args.batch_size}: listing {results['listing']['seconds']} s; streaming "
        f"{stream['epoch_images_per_s']} images/s, peak {stream['peak_mib_main']} MiB main "
        f"+ {stream['peak_mib_largest_worker']} MiB per worker; in memory: decoded once at "
        f"{memory['decode_images_per_s']} images/s, then {memory['epoch_images_per_s']} "
        f"images/s, peak {memory['peak_mib_main']} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
