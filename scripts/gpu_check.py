"""On a machine with an NVIDIA GPU: train the bundled recipe on CUDA, serve the result
with onnxruntime-gpu and with the CPU side by side, and measure /encode (single
images, many connections) and bulk throughput (256-image .npy requests) on both.

    .venv/bin/python scripts/gpu_check.py --work /tmp/gpu-check      # under ten minutes

Needs a CUDA build of torch 2.13.0 and onnxruntime-gpu in place of onnxruntime
(`pip uninstall -y onnxruntime && pip install -e '.[train,gpu]'`). It stops with the
reason when either is missing. `--smoke` runs the same steps with a few training steps
on whatever the machine has (CPU included), to check the script itself.

Writes <work>/results.json and prints a Markdown table. The load comes from Python
clients (asyncio + httpx) in several processes on the same machine: a fair
comparison between the two servers, not a ceiling for either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
BIN = Path(sys.executable).parent
RECIPE = [
    "--architecture",
    "mlp",
    "--hidden",
    "512",
    "512",
    "--latent-dim",
    "50",
    "--objective",
    "iwae",
    "--iw-k",
    "5",
    "--epochs",
    "150",
    "--batch-size",
    "128",
    "--lr",
    "1e-3",
    "--lr-min",
    "1e-4",
    "--eval-k",
    "5000",
    "--seed",
    "0",
]  # fmt: skip  (docs/training.md, "The bundled model")
SMOKE = ["--max-steps", "30", "--eval-k", "10", "--eval-limit", "500", "--no-report"]


def preflight(smoke: bool) -> str:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not smoke and not (cuda and ort_cuda):
        sys.exit(
            f"gpu_check: needs torch with CUDA (found: {cuda}) and onnxruntime-gpu's "
            f"CUDAExecutionProvider (found: {ort_cuda}); see this script's docstring"
        )
    name = torch.cuda.get_device_name(0) if cuda else "no GPU"
    return f"{name}; torch {torch.__version__}; onnxruntime {ort.__version__}"


def train(work: Path, smoke: bool) -> dict[str, Any]:
    store = work / "store" / "mnist"
    argv = [str(BIN / "vae-train"), "--data", str(MNIST), "--out", str(store)]
    argv += ["--checkpoint-dir", str(work / "run"), *RECIPE, *(SMOKE if smoke else [])]
    argv += ["--device", "auto" if smoke else "cuda"]
    started = time.monotonic()
    subprocess.run(argv, check=True, cwd=ROOT)
    manifest: dict[str, Any] = json.loads((store / "1" / "manifest.json").read_text())
    return {"seconds": round(time.monotonic() - started, 1), "manifest": manifest}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(stack: ExitStack, work: Path, device: str) -> str:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env |= {"VAE_MODEL_STORE": str(work / "store"), "VAE_DEVICE": device}
    env |= {"VAE_PORT": str(port), "VAE_LOG_LEVEL": "warning"}
    env |= {"VAE_GRPC_PORT": "0", "VAE_DRAIN_S": "0"}  # two servers side by side; no drain
    log = (work / f"serve-{device}.log").open("wb")
    process = subprocess.Popen([str(BIN / "vae-serve")], env=env, stdout=log, stderr=log)
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # bounded polling for an external process
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"gpu_check: vae-serve ({device}) exited; see {log.name}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"gpu_check: vae-serve ({device}) not ready after 120 s")


async def _client(url: str, body: bytes, connections: int, seconds: float) -> list[float]:
    headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npz"}
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                response = await client.post(f"{url}/encode", content=body, headers=headers)
                response.raise_for_status()
                latencies.append(time.monotonic() - started)

        await asyncio.gather(*(loop() for _ in range(connections)))
    return latencies


def _process(args: tuple[str, bytes, int, float]) -> list[float]:
    return asyncio.run(_client(*args))


def load(url: str, images: np.ndarray, connections: int, seconds: float) -> dict[str, float]:
    """POST the .npy of `images` to /encode from 4 client processes for `seconds`
    (each counts from its own start; a request started in time is counted)."""
    per = max(1, connections // 4)
    with multiprocessing.Pool(4) as pool:
        runs = pool.map(_process, [(url, _npy(images), per, seconds)] * 4)
    latencies = np.concatenate([np.asarray(r) for r in runs])
    if not len(latencies):
        sys.exit(f"gpu_check: no request to {url} finished within {seconds} s")
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "images_per_s": round(len(latencies) * len(images) / seconds),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"))
    p.add_argument("--seconds", type=float, default=5.0, help="per cell")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--reuse", action="store_true", help="serve <work>/store as it is: no training")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": preflight(args.smoke)}
    if args.reuse:
        manifest_path = args.work / "store" / "mnist" / "1" / "manifest.json"
        trained = {"seconds": None, "manifest": json.loads(manifest_path.read_text())}
    else:
        trained = train(args.work, args.smoke)
    manifest = trained["manifest"]
    results["training"] = {
        "wall_seconds": trained["seconds"],
        "train_seconds": manifest["training"]["seconds"],
        "device": manifest["training"]["device"],
        "precision": manifest["training"]["precision"],
        "test": manifest["metrics"]["test"],
    }
    print(json.dumps(results), flush=True)

    from trainer.data import read_idx

    digits = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:256]  # uint8 (256, 1, 28, 28)
    devices = ["cuda", "cpu"] if not args.smoke or "cuda" in results["machine"] else ["cpu"]
    cells: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        urls = {device: serve(stack, args.work, device) for device in devices}
        means = {}
        for device, url in urls.items():
            headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npz"}
            response = httpx.post(f"{url}/encode", content=_npy(digits), headers=headers)
            means[device] = np.load(BytesIO(response.content))["mean"]
            providers = httpx.get(f"{url}/models").json()
            results.setdefault("providers", {})[device] = providers
        if len(means) == 2:
            results["max_abs_diff_mean_cuda_vs_cpu"] = float(
                np.abs(means["cuda"] - means["cpu"]).max()
            )
        for _ in range(args.rounds):  # every cell of a round back to back
            for device, url in urls.items():
                for case, images, connections in (("single", digits[:1], 32), ("bulk", digits, 4)):
                    cell = load(url, images, connections, args.seconds)
                    cells.setdefault(f"{device} {case}", []).append(cell)
    results["cells"] = {name: _median(runs) for name, runs in cells.items()}
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| server | single-image /encode, 32 connections | p99 | bulk /encode (256/request) |")
    print("| --- | --- | --- | --- |")
    for device in devices:
        single, bulk = results["cells"][f"{device} single"], results["cells"][f"{device} bulk"]
        print(
            f"| vae-serve, {device} | {single['requests_per_s']} req/s | {single['p99_ms']} ms "
            f"| {bulk['images_per_s']} images/s |"
        )
    print(json.dumps({k: v for k, v in results.items() if k != "providers"}))
    return 0


def _npy(array: np.ndarray) -> bytes:
    out = BytesIO()
    np.save(out, array)
    return out.getvalue()


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


if __name__ == "__main__":
    sys.exit(main())
