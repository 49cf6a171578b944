"""Measure anomaly detection: AUROC, AUPRC and FPR at 95% TPR for every score.

Out-of-distribution images are the positives (anomalies), the in-distribution
test images the negatives; every score is computed exactly as the service's
/elbo computes it (trainer/scores.py, with vae_contract's maths), on the exported graphs.

    vae-anomaly evaluate model_store/fashion-mnist/1 --in ../shared/data/fashion-mnist \\
        --out ../shared/data/mnist --plot reports/fashion-mnist.png
    vae-anomaly one-class --data ../shared/data/mnist --store /tmp/one-class
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from trainer import data as datasets
from trainer.evaluate import Graphs
from trainer.scores import anomaly_scores
from trainer.train import main as train
from vae_contract.scores import IW_K, SCORES

# One-class models: small, so ten of them train in minutes on two cores.
ONE_CLASS_MODEL = [
    "--architecture", "mlp", "--hidden", "256", "--latent-dim", "16",
    "--validation", "0.1", "--eval-k", "100", "--eval-limit", "1000", "--no-report",
]  # fmt: skip
ONE_CLASS_EPOCHS = 20


def detection(normal: np.ndarray, anomalous: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC (anomalies positive) and the FPR at the threshold catching 95% of them."""
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    s = np.r_[normal, anomalous]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # every threshold, so 95% is hit
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95)]),  # tpr is non-decreasing
    }


def test_images(source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset's test split (its own, e.g. t10k, else all of it) and labels if any."""
    dataset = datasets.load(source)
    if dataset.test is not None:
        return datasets.array(dataset.test), dataset.test_labels
    return datasets.array(dataset.train), dataset.train_labels


def score(version_dir: Path, images: np.ndarray, names: tuple[str, ...], k: int) -> Any:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    graphs = Graphs(version_dir)
    return anomaly_scores(graphs, manifest["likelihood"], images, names, k)


Pairs = list[tuple[str, np.ndarray, np.ndarray]]  # (label, normal scores, anomalous scores)


def plot(path: Path, title: str, panels: dict[str, Pairs], histograms: bool = True) -> None:
    """Per score, a row: histograms of the scores (normal and each anomalous set; only when
    the pairs share their normal set) and the ROC curves."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    cols = 2 if histograms else 1
    fig, axes = plt.subplots(len(panels), cols, figsize=(5.5 * cols, 3.4 * len(panels)))
    axes = np.array(axes).reshape(len(panels), cols)
    for row, (name, pairs) in zip(axes, panels.items(), strict=True):
        roc = row[-1]
        if histograms:
            hist = row[0]
            everything = np.concatenate([pairs[0][1], *(b for _, _, b in pairs)])
            low, high = np.quantile(everything, [0.001, 0.999])
            bins = np.linspace(float(low), float(high), 80)
            hist.hist(pairs[0][1], bins=bins, density=True, alpha=0.5, label="in (normal)")
            for label, _, anomalous in pairs:
                hist.hist(anomalous, bins=bins, density=True, alpha=0.5, label=label)
            hist.set(title=f"{name}: anomaly score", xlabel="higher is more anomalous")
            hist.legend(fontsize=7)
        for label, normal, anomalous in pairs:
            y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
            s = np.r_[normal, anomalous]
            fpr, tpr, _ = roc_curve(y, s)
            roc.plot(fpr, tpr, lw=1, label=f"{label} ({roc_auc_score(y, s):.3f})")
        roc.plot([0, 1], [0, 1], color="grey", lw=0.5)
        roc.set(
            title=f"{name}: ROC (AUROC)", xlabel="false-positive rate", ylabel="true-positive rate"
        )
        roc.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, as the README shows it."""
    lines = [
        "| model | in | out | score | AUROC | AUPRC | FPR at 95% TPR |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['in']} | {r['out']} | {r['score']} | {r['auroc']:.4f} "
            f"| {r['auprc']:.4f} | {r['fpr_at_95_tpr']:.4f} |"
        )
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One model: its in-distribution test set against each out-of-distribution set."""
    names = tuple(args.scores)
    normal_images, _ = test_images(args.in_data)
    normal_images = normal_images[: args.limit]
    normal = score(args.version_dir, normal_images, names, args.k)
    model = f"{args.version_dir.parent.name}/{args.version_dir.name}"
    rows, panels = [], {name: [] for name in names}  # type: ignore[var-annotated]
    for source in args.out_data:
        images, _ = test_images(source)
        anomalous = score(args.version_dir, images[: args.limit], names, args.k)
        label = Path(source).name
        for name in names:
            rows.append(
                {
                    "model": model,
                    "in": Path(args.in_data).name,
                    "out": label,
                    "score": name,
                    **detection(normal[name], anomalous[name]),
                }
            )
            panels[name].append((label, normal[name], anomalous[name]))
    if args.plot:
        plot(args.plot, f"{model}: {Path(args.in_data).name} (in)", panels)
    return rows


def one_class(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one small model per class; that class's test images are normal, the rest anomalous."""
    names = tuple(args.scores)
    images, labels = test_images(args.data)
    if labels is None:
        raise datasets.DataError(f"{args.data}: no test labels for a one-class experiment")
    images, labels = images[: args.limit], labels[: args.limit]
    store = Path(args.store or tempfile.mkdtemp(prefix="one-class-"))
    rows, panels = [], {name: [] for name in names}  # type: ignore[var-annotated]
    for c in args.classes:
        out = store / f"class-{c}"
        version = out / "1"
        if not version.exists():  # a rerun reuses the models already trained
            argv = ["--data", args.data, "--out", str(out), "--classes", str(c), "--seed", "0"]
            argv += ["--checkpoint-dir", str(store / "runs" / str(c)), *ONE_CLASS_MODEL]
            argv += ["--epochs", str(args.epochs)]
            argv += ["--threads", str(args.threads)] if args.threads else []
            if train(argv) != 0:
                raise RuntimeError(f"training the model of class {c} failed")
        scores = score(version, images, names, args.k)
        normal = labels == c
        for name in names:
            rows.append(
                {
                    "model": f"one-class/{c}",
                    "in": f"class {c}",
                    "out": "other classes",
                    "score": name,
                    **detection(scores[name][normal], scores[name][~normal]),
                }
            )
            panels[name].append((f"class {c}", scores[name][normal], scores[name][~normal]))
    for name in names:
        mine = [r for r in rows if r["score"] == name]
        rows.append(
            {
                "model": "one-class",
                "in": "mean of classes",
                "out": "other classes",
                "score": name,
                **{
                    m: float(np.mean([r[m] for r in mine]))
                    for m in ("auroc", "auprc", "fpr_at_95_tpr")
                },
            }
        )
    if args.plot:
        plot(args.plot, f"one-class {Path(args.data).name}", panels, histograms=False)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-anomaly", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="one model: in-distribution vs out-of-distribution")
    ev.add_argument("version_dir", type=Path, help="a store version: model_store/mnist/1")
    ev.add_argument("--in", dest="in_data", required=True, help="the in-distribution data")
    ev.add_argument("--out", dest="out_data", nargs="+", required=True, help="anomalous data")
    oc = commands.add_parser("one-class", help="one model per class, the others anomalous")
    oc.add_argument("--data", required=True, help="an IDX folder with label files")
    oc.add_argument("--store", default=None, help="where the models go (default: a temp dir)")
    oc.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    oc.add_argument("--epochs", type=int, default=ONE_CLASS_EPOCHS, help="per model")
    oc.add_argument("--threads", type=int, default=None)
    for sub in (ev, oc):
        sub.add_argument("--scores", nargs="+", choices=SCORES, default=list(SCORES))
        sub.add_argument("--k", type=int, default=IW_K, help=f"iwae samples (default {IW_K})")
        sub.add_argument("--limit", type=int, default=None, help="only the first N test images")
        sub.add_argument("--plot", type=Path, default=None, help="a PNG of histograms and ROCs")
        sub.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args(argv)
    try:
        rows = evaluate(args) if args.command == "evaluate" else one_class(args)
    except (OSError, KeyError, json.JSONDecodeError, datasets.DataError, RuntimeError) as e:
        print(f"vae-anomaly: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
