"""Train a VAE, evaluate it, and publish it as a new version in the model store.

vae-train --data ../shared/data/mnist --out model_store/mnist
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer import data as datasets
from trainer import report, store
from trainer.config import TrainConfig
from trainer.evaluate import Graphs, evaluate, prepare
from trainer.export import OPSET, ExportError, export
from trainer.likelihood import LIKELIHOODS, Likelihood, mean
from trainer.model import VAE, Shape
from trainer.objectives import elbo, iwae, log_weights
from trainer.scores import anomaly_scores
from vae_contract.manifest import FORMAT_VERSION, MODEL_NAME, Manifest
from vae_contract.scores import calibrate


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d = TrainConfig(data="", out="")
    p = argparse.ArgumentParser(prog="vae-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="IDX folder/file, image folder, or .npy/.npz")
    p.add_argument("--out", required=True, help="the model's store folder: model_store/mnist")
    p.add_argument("--version", type=int, default=None, help="default: the next free integer")
    p.add_argument("--architecture", choices=["mlp", "conv"], default=d.architecture)
    p.add_argument(
        "--hidden", type=int, nargs="+", default=d.hidden, help="mlp: layer widths; conv: C1 C2 FC"
    )
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--likelihood", choices=LIKELIHOODS, default=d.likelihood)
    p.add_argument(
        "--no-binarize",
        dest="binarize",
        action="store_false",
        help="train a Bernoulli model on grey values instead of dynamic binarisation",
    )
    p.add_argument("--channels", type=int, choices=[1, 3], default=d.channels)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=None,
        help="train on these labels only (IDX label files next to the images)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-min", type=float, default=d.lr_min)
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.warmup_epochs,
        help="KL warm-up: its weight rises from 0 to 1 over these epochs",
    )
    p.add_argument("--objective", choices=["elbo", "iwae"], default=d.objective)
    p.add_argument("--iw-k", type=int, default=d.iw_k, help="samples for --objective iwae")
    p.add_argument(
        "--validation",
        type=float,
        default=d.validation,
        help="held-out images: a count, or a fraction if < 1",
    )
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--eval-k",
        type=int,
        default=d.eval_k,
        help="importance samples for the test log-likelihood",
    )
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint-dir", default=None, help="default: runs/<name>")
    p.add_argument("--resume", default=None, help="a checkpoint (last.pt) to continue from")
    p.add_argument("--no-report", dest="report", action="store_false")
    args = vars(p.parse_args(argv))
    config = TrainConfig(**args)
    problem = _check(config)
    if problem:
        p.error(problem)
    return config


def _check(c: TrainConfig) -> str | None:
    """The first nonsense in a config, in words, or None."""
    positive = {
        "--epochs": c.epochs,
        "--batch-size": c.batch_size,
        "--latent-dim": c.latent_dim,
        "--iw-k": c.iw_k,
        "--eval-k": c.eval_k,
    }
    for flag, value in positive.items():
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if not c.hidden or min(c.hidden) < 1:
        return "--hidden needs positive widths"
    if c.architecture == "conv" and len(c.hidden) != 3:
        return "--architecture conv takes --hidden C1 C2 FC (three widths)"
    if not (c.lr > 0 and 0 <= c.lr_min <= c.lr):
        return "need 0 < --lr and 0 <= --lr-min <= --lr"
    if c.version is not None and c.version < 1:
        return "--version must be a positive integer"
    if not MODEL_NAME.fullmatch(Path(c.out).name):
        return f"--out must end in a model name like 'mnist' (a-z, 0-9, . _ -), got {c.out!r}"
    return None


@dataclass
class State:
    """What a checkpoint restores besides the weights."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_elbo: float = -math.inf
    best_epoch: int = 0
    seconds: float = 0.0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def _lr(c: TrainConfig, progress: float) -> float:
    """Cosine decay from lr to lr_min as training progresses from 0 to 1."""
    return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * min(progress, 1.0)))


def _loss(model: VAE, c: TrainConfig, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Minus the objective, averaged over the batch (the per-example values are the bound)."""
    if c.objective == "iwae":
        mean_, log_var, z, logits = model(x, k=c.iw_k)
        log_w, _ = log_weights(c.likelihood, x, mean_, log_var, z, logits)
        return -iwae(log_w).mean()
    mean_, log_var, _, logits = model(x)
    return -elbo(c.likelihood, x, mean_, log_var, logits[0], beta).elbo.mean()


def fit(
    c: TrainConfig, train: np.ndarray, validation: np.ndarray, run_dir: Path
) -> tuple[VAE, State]:
    device = _device(c.device)
    torch.manual_seed(c.seed)
    shape = Shape(*train.shape[1:])
    model = VAE(shape, c.latent_dim, c.architecture, c.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    state = State()
    if c.resume:
        checkpoint = torch.load(c.resume, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = State(**checkpoint["state"])
        torch.set_rng_state(checkpoint["rng"])
    binarize = c.binarize and c.likelihood == "bernoulli"
    x_train = torch.from_numpy(train).to(device)  # uint8; scaled per batch
    x_val = prepare(validation, binarize, c.seed).to(device)
    per_epoch = math.ceil(len(train) / c.batch_size)
    total = c.epochs * per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * per_epoch)
    order = torch.Generator().manual_seed(c.seed)
    for _ in range(state.epoch):  # replay the shuffles a resumed run has already used
        torch.randperm(len(train), generator=order)

    # Redraw at most every second off a terminal, so logs stay readable.
    progress = tqdm(
        total=total,
        initial=state.step,
        desc="train",
        unit="step",
        file=sys.stderr,
        mininterval=0.1 if sys.stderr.isatty() else 5.0,
    )
    while state.epoch < c.epochs and state.step < total:
        started = time.monotonic()
        model.train()
        objective, seen = 0.0, 0
        for idx in torch.split(torch.randperm(len(train), generator=order), c.batch_size):
            if state.step >= total:
                break
            x = x_train[idx.to(device)].float() / 255
            if binarize:
                x = torch.bernoulli(x)  # a fresh draw every time: dynamic binarisation
            epoch_float = state.step / per_epoch
            beta = min(1.0, epoch_float / c.warmup_epochs) if c.warmup_epochs > 0 else 1.0
            for group in optimizer.param_groups:
                group["lr"] = _lr(c, state.step / total)
            loss = _loss(model, c, x, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            state.step += 1
            objective += -loss.item() * len(idx)
            seen += len(idx)
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.2f}", epoch=state.epoch + 1, refresh=False)
        model.eval()
        val = evaluate(
            model.encode,
            model.decode,
            c.likelihood,
            x_val,
            k=1,
            seed=c.seed,
            batch_size=1000,
            progress=False,
        )["elbo"]
        state.epoch += 1
        state.seconds += time.monotonic() - started
        line = {
            "epoch": state.epoch,
            "step": state.step,
            "train_elbo": round(objective / seen, 4),
            "validation_elbo": round(val, 4),
            "beta": beta,
            "lr": _lr(c, state.step / total),
            "seconds": round(state.seconds, 1),
        }
        state.history.append(line)
        progress.write(json.dumps(line), file=sys.stdout)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        if val > state.best_elbo:
            state.best_elbo, state.best_epoch = val, state.epoch
            torch.save(model.state_dict(), run_dir / "best.pt")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": vars(state),
                "rng": torch.get_rng_state(),
                "config": c.to_dict(),
            },
            run_dir / "last.pt",
        )
    progress.close()
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True))
    return model.cpu().eval(), state


def publish(
    c: TrainConfig,
    model: VAE,
    state: State,
    dataset: datasets.Dataset,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Path:
    """Export, evaluate the exported graphs, calibrate, write the manifest and report,
    then rename the version into place."""
    train, validation, test = splits
    model_dir = Path(c.out)
    version = c.version if c.version is not None else store.next_version(model_dir)
    if (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} exists; versions are never overwritten")
    likelihood = c.likelihood
    binarize = c.binarize and likelihood == "bernoulli"
    staged = store.staging(model_dir, version)
    try:
        graphs_io = export(model, staged, prepare(test[:16], False, c.seed))
        graphs = Graphs(staged, c.threads)
        x_test = prepare(test[: c.eval_limit] if c.eval_limit else test, binarize, c.seed)
        metrics = evaluate(graphs.encode, graphs.decode, likelihood, x_test, c.eval_k, c.seed)
        metrics["binarization"] = "dynamic" if binarize else "none"
        held_out = anomaly_scores(graphs, likelihood, validation)
        shape = Shape(*train.shape[1:])
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": model_dir.name,
            "version": version,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "input": {"channels": shape.channels, "height": shape.height, "width": shape.width},
            "preprocessing": {"scale": 255.0},
            "latent_dim": c.latent_dim,
            "likelihood": likelihood,
            "opset": OPSET,
            "graphs": {
                name: {
                    "file": f"{name}.onnx",
                    "sha256": store.sha256(staged / f"{name}.onnx"),
                    **graphs_io[name],
                }
                for name in ("encoder", "decoder")
            },
            "training": {
                **c.to_dict(),
                "data": {
                    "source": dataset.source,
                    "sha256": dataset.sha256,
                    "n_train": len(train),
                    "n_validation": len(validation),
                    "n_test": len(test),
                },
                "epochs_run": state.epoch,
                "steps": state.step,
                "best_epoch": state.best_epoch,
                "best_validation_elbo": round(state.best_elbo, 4),
                "seconds": round(state.seconds, 1),
                "device": str(_device(c.device)),
                "torch": torch.__version__,
            },
            "metrics": {"test": metrics},
            "calibration": calibrate(held_out),
        }
        Manifest.model_validate(manifest)  # never publish what the service would refuse
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if c.report:
            _write_report(staged / "report", graphs, likelihood, test, state.history, c.seed)
    except BaseException:
        store.discard(staged)  # half a version never stays behind, even on Ctrl-C
        raise
    return store.publish(staged, model_dir, version)


def _write_report(
    folder: Path,
    graphs: Graphs,
    likelihood: Likelihood,
    test: np.ndarray,
    history: list[dict[str, Any]],
    seed: int,
) -> None:
    x = prepare(test[:32], False, seed)
    reconstructions = mean(likelihood, graphs.decode(graphs.encode(x)[0]))
    z = torch.randn(
        (64, graphs.encoder.get_outputs()[0].shape[1]),
        generator=torch.Generator().manual_seed(seed),
    )
    samples = mean(likelihood, graphs.decode(z))
    report.write(folder, x.numpy(), reconstructions.numpy(), samples.numpy(), history)


def main(argv: list[str] | None = None) -> int:
    c = parse_args(argv)
    if c.likelihood != "bernoulli":
        c.binarize = False  # binarisation is the Bernoulli benchmark protocol only
    if c.threads:
        torch.set_num_threads(c.threads)
    try:
        size = (c.image_size[0], c.image_size[1]) if c.image_size else None
        dataset = datasets.load(c.data, c.channels, size)
        if c.classes is not None:
            dataset = datasets.select(dataset, c.classes)
        splits = datasets.splits(dataset, c.validation, c.test_fraction, c.seed)
        run_dir = Path(c.checkpoint_dir or Path("runs") / Path(c.out).name)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not c.resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        model, state = fit(c, splits[0], splits[1], run_dir)
        final = publish(c, model, state, dataset, splits)
    except (datasets.DataError, ExportError, FileExistsError, ValueError, OSError) as e:
        print(f"vae-train: error: {e}", file=sys.stderr)
        return 1
    metrics = json.loads((final / "manifest.json").read_text())["metrics"]["test"]
    print(json.dumps({"published": str(final), "test": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
