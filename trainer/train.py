"""Train a VAE, evaluate it, and publish it as a new version in the model store.

vae-train --data ../shared/data/mnist --out model_store/mnist
torchrun --nproc-per-node 2 -m trainer.train --data … --out …   (DistributedDataParallel)
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer import config as configuration
from trainer import data as datasets
from trainer import distributed, report, store
from trainer.config import STREAM_ABOVE, TrainConfig
from trainer.defaults import settle
from trainer.evaluate import Graphs, evaluate, prepare
from trainer.export import OPSET, ExportError, export
from trainer.likelihood import Likelihood, mean, parameters_per_value
from trainer.loader import Batches, decoded_bytes, default_workers, to_x
from trainer.model import VAE, Shape
from trainer.objectives import elbo, iwae, log_weights
from trainer.scores import calibration
from vae_contract.manifest import FORMAT_VERSION, MODEL_NAME, Manifest

LOG_EVERY = 50  # steps between progress-bar loss updates (each costs a device sync)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = configuration.parser("vae-train", __doc__.split("\n\n")[0])
    config = configuration.from_args(p.parse_args(argv))
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
    if c.hidden is not None and (not c.hidden or min(c.hidden) < 1):
        return "--hidden needs positive widths"
    if c.architecture == "conv" and c.hidden is not None and len(c.hidden) != 3:
        return "--architecture conv takes --hidden C1 C2 FC (three widths)"
    if not (c.lr > 0 and 0 <= c.lr_min <= c.lr):
        return "need 0 < --lr and 0 <= --lr-min <= --lr"
    if c.version is not None and c.version < 1:
        return "--version must be a positive integer"
    if c.validation <= 0 or c.test_fraction <= 0:
        return "--validation and --test-fraction must be positive"
    if c.image_size is not None and min(c.image_size) < 1:
        return "--image-size needs positive H W"
    if c.workers is not None and c.workers < 0:
        return "--workers must be 0 or more"
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
    replica_drift: float = 0.0  # DDP: largest weight difference between ranks at the end


def _loss(net: torch.nn.Module, c: TrainConfig, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Minus the objective, averaged over the batch (the per-example values are the bound)."""
    assert c.likelihood is not None
    if c.objective == "iwae":
        mean_, log_var, z, logits = net(x, k=c.iw_k)
        log_w, _ = log_weights(c.likelihood, x, mean_, log_var, z, logits)
        return -iwae(log_w).mean()
    mean_, log_var, _, logits = net(x)
    return -elbo(c.likelihood, x, mean_, log_var, logits[0], beta).elbo.mean()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _validation_elbo(model: VAE, c: TrainConfig, x_val: torch.Tensor) -> float:
    """The validation ELBO (k = 1, seeded noise). Every rank scores the whole set: the
    replicas are identical, so they agree without a reduction, and the figure does not
    depend on how many processes there are (held-out sets are capped, so this is cheap)."""
    assert c.likelihood is not None
    scores = evaluate(model.encode, model.decode, c.likelihood, x_val, 1, c.seed, 1000, False)
    return float(scores["elbo"])


def _resume(
    c: TrainConfig,
    rank: distributed.Rank,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> State:
    """Restore a last.pt on every rank: weights, optimiser, schedule and this rank's noise."""
    assert c.resume is not None
    checkpoint = torch.load(c.resume, map_location=rank.device, weights_only=False)
    if "schedule" not in checkpoint:
        raise ValueError(f"{c.resume}: a checkpoint of an older trainer; train afresh")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    state = State(**checkpoint["state"])
    rng = checkpoint["rng"]
    if len(rng) == rank.world:
        _set_rng_state(rng[rank.rank], rank.device)
    else:  # another number of processes: fresh noise, still seeded
        torch.manual_seed(c.seed + rank.rank + 1_000_003 * state.step)
    return state


def fit(
    c: TrainConfig,
    rank: distributed.Rank,
    train: datasets.Images,
    validation: np.ndarray,
    run_dir: Path,
) -> tuple[VAE, State]:
    """Train; rank 0 returns the model of the best validation epoch."""
    assert c.hidden is not None and c.likelihood is not None and c.architecture is not None
    device = rank.device
    torch.manual_seed(c.seed)  # the same initial weights on every rank
    shape, per_value = Shape(*train.shape[1:]), parameters_per_value(c.likelihood)
    model = VAE(shape, c.latent_dim, c.architecture, c.hidden, per_value).to(device)
    model.bf16 = c.precision == "bf16"
    optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    stream = c.stream if c.stream is not None else decoded_bytes(train) > STREAM_ABOVE
    workers = c.workers if c.workers is not None else default_workers(rank)
    batches = Batches(train, c.batch_size, rank, c.seed, stream, workers)
    per_epoch = len(batches)
    total = c.epochs * per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * per_epoch)
    # PyTorch's cosine schedule from lr to lr_min, stepped once per optimiser step.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=c.lr_min)
    torch.manual_seed(c.seed + rank.rank)  # each rank its own noise: binarisation, eps
    state = _resume(c, rank, model, optimizer, schedule) if c.resume else State()
    net: torch.nn.Module = model
    if rank.distributed:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    binarize, flip = bool(c.binarize), c.flip
    x_val = prepare(validation, binarize, c.seed).to(device)

    # Redraw at most every second off a terminal, so logs stay readable.
    progress = tqdm(
        total=total,
        initial=state.step,
        desc="train",
        unit="step",
        file=sys.stderr,
        mininterval=0.1 if sys.stderr.isatty() else 5.0,
        disable=not rank.main,
    )
    while state.epoch < c.epochs and state.step < total:
        started = time.monotonic()
        model.train()
        objective = torch.zeros((), device=device)  # summed on the device: no sync per step
        seen, beta = 0, 1.0
        for batch in batches.epoch(state.epoch):
            if state.step >= total:
                break
            x = to_x(batch, binarize, flip)
            epoch_float = state.step / per_epoch
            beta = min(1.0, epoch_float / c.warmup_epochs) if c.warmup_epochs > 0 else 1.0
            loss = _loss(net, c, x, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            state.step += 1
            objective -= loss.detach() * len(x)
            seen += len(x)
            progress.update()
            if rank.main and state.step % LOG_EVERY == 0:
                progress.set_postfix(loss=f"{loss.item():.2f}", epoch=state.epoch + 1)
        model.eval()
        val = _validation_elbo(model, c, x_val)
        summed, n = distributed.total(rank, objective, seen)
        state.epoch += 1
        state.seconds += time.monotonic() - started
        line = {
            "epoch": state.epoch,
            "step": state.step,
            "train_elbo": round(summed / n, 4),
            "validation_elbo": round(val, 4),
            "beta": beta,
            "lr": schedule.get_last_lr()[0],
            "seconds": round(state.seconds, 1),
        }
        state.history.append(line)
        improved = val > state.best_elbo
        if improved:
            state.best_elbo, state.best_epoch = val, state.epoch
        rng = distributed.gather(rank, _rng_state(device))
        if rank.main:
            _save_epoch(run_dir, line, model, optimizer, schedule, state, rng, c, improved)
            progress.write(json.dumps(line), file=sys.stdout)
    progress.close()
    state.replica_drift = distributed.replica_drift(rank, model)
    model.bf16 = False
    if rank.main:  # the only rank that publishes, and the one that wrote best.pt
        best = torch.load(run_dir / "best.pt", map_location=device, weights_only=True)
        model.load_state_dict(best)
    return model.cpu().eval(), state


def _save_epoch(
    run_dir: Path,
    line: dict[str, Any],
    model: VAE,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    state: State,
    rng: list[dict[str, Any]],
    c: TrainConfig,
    improved: bool,
) -> None:
    """Rank 0's files after each epoch: the metrics line, best.pt, last.pt."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    if improved:
        torch.save(model.state_dict(), run_dir / "best.pt")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "state": vars(state),
            "rng": rng,  # every rank's, so each resumes its own noise
            "config": c.to_dict(),
        },
        run_dir / "last.pt",
    )


def publish(
    c: TrainConfig,
    model: VAE,
    state: State,
    dataset: datasets.Dataset,
    splits: tuple[datasets.Images, np.ndarray, np.ndarray],
    rank: distributed.Rank,
) -> Path:
    """Export, evaluate the exported graphs, calibrate, write the manifest and report,
    then rename the version into place."""
    assert c.likelihood is not None
    train, validation, test = splits
    model_dir = Path(c.out)
    version = c.version if c.version is not None else store.next_version(model_dir)
    if (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} exists; versions are never overwritten")
    likelihood: Likelihood = c.likelihood
    binarize = bool(c.binarize)
    staged = store.staging(model_dir, version)
    try:
        graphs_io, export_check = export(model, staged, prepare(test[:16], False, c.seed))
        graphs = Graphs(staged, c.threads, rank.device.type)
        x_test = prepare(test[: c.eval_limit] if c.eval_limit else test, binarize, c.seed)
        metrics = evaluate(graphs.encode, graphs.decode, likelihood, x_test, c.eval_k, c.seed)
        metrics["binarization"] = "dynamic" if binarize else "none"
        shape = Shape(*train.shape[1:])
        calibrated = calibration(graphs, likelihood, validation)
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
                    "sha256_of": dataset.sha256_of,
                    "n_train": len(train),
                    "n_validation": len(validation),
                    "n_test": len(test),
                },
                "epochs_run": state.epoch,
                "steps": state.step,
                "best_epoch": state.best_epoch,
                "best_validation_elbo": round(state.best_elbo, 4),
                "seconds": round(state.seconds, 1),
                "device": str(rank.device),
                "processes": rank.world,
                "replica_drift": state.replica_drift,
                "torch": torch.__version__,
                "export_check": export_check,
            },
            "metrics": {"test": metrics},
            "calibration": calibrated,
        }
        Manifest.model_validate(manifest)  # never publish what the service would refuse
        for name, problem in calibrated["problems"].items():
            print(f"vae-train: calibration: {name}: {problem}", file=sys.stderr)
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


def _warn(rank: distributed.Rank) -> Any:
    def warn(message: str) -> None:
        if rank.main:
            print(f"vae-train: warning: {message}", file=sys.stderr)

    return warn


Trained = tuple[TrainConfig, VAE, State, datasets.Dataset, tuple[datasets.Images, Any, Any]]


def train(c: TrainConfig, rank: distributed.Rank) -> Trained:
    """Load and split the data, settle the defaults, and fit (every rank)."""
    size = (c.image_size[0], c.image_size[1]) if c.image_size else None
    dataset = datasets.load(c.data, c.channels, size, c.center_crop)
    if c.classes is not None:
        dataset = datasets.select(dataset, c.classes)
    c = settle(c, dataset, _warn(rank))
    if c.precision == "auto":  # the manifest says what ran
        c = replace(c, precision="bf16" if rank.device.type == "cuda" else "fp32")
    train, validation, test = datasets.splits(
        dataset, c.validation, c.test_fraction, c.seed, c.held_out_max
    )
    # The held-out splits as arrays: a fraction holds out at most --held-out-max images.
    splits = (
        train,
        datasets.array(validation),
        datasets.array(test),
    )
    if rank.main:
        _, channels, height, width = train.shape
        summary = {
            "images": f"{channels}×{height}×{width}",
            "train": len(train),
            "validation": len(validation),
            "test": len(test),
            "likelihood": c.likelihood,
            "binarize": c.binarize,
            "processes": rank.world,
            "device": str(rank.device),
        }
        print(f"vae-train: data: {json.dumps(summary)}", file=sys.stderr)
    run_dir = Path(c.checkpoint_dir) if c.checkpoint_dir else Path("runs") / Path(c.out).name
    if rank.main:
        if c.checkpoint_dir is None:
            # Only rank 0 writes checkpoints, so only it needs to know the folder.
            run_dir = Path(c.resume).parent if c.resume else new_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not c.resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        print(f"vae-train: checkpoints: {run_dir}", file=sys.stderr)
    model, state = fit(c, rank, train, splits[1], run_dir)
    return c, model, state, dataset, splits


def new_run(runs: Path) -> Path:
    """runs/<name>/<n>, n the first number no run of this model has taken: one run's
    best.pt, last.pt and metrics.jsonl never overwrite another's (mkdir is atomic, so
    two runs started at once take different numbers)."""
    runs.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in runs.iterdir() if p.name.isdigit()]
    n = max(taken, default=0) + 1
    while True:
        try:
            (runs / str(n)).mkdir()
            return runs / str(n)
        except FileExistsError:
            n += 1


def main(argv: list[str] | None = None) -> int:
    c = parse_args(argv)
    if c.threads:
        torch.set_num_threads(c.threads)
    errors = (datasets.DataError, ExportError, FileExistsError, ValueError, OSError)
    try:
        rank = distributed.start(c.device)
        trained = train(c, rank)  # a rank that fails exits, and torchrun stops the rest
        distributed.stop(rank)  # before publishing: the other ranks need not wait for it
        if not rank.main:
            return 0
        settled, model, state, dataset, splits = trained
        final = publish(settled, model, state, dataset, splits, rank)
    except errors as e:
        print(f"vae-train: error: {e}", file=sys.stderr)
        return 1
    metrics = json.loads((final / "manifest.json").read_text())["metrics"]["test"]
    print(json.dumps({"published": str(final), "test": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
