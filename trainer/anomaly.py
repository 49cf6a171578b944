"""Measure anomaly detection: AUROC, AUPRC and FPR at 95% TPR for every score.

Out-of-distribution images are the positives (anomalies), the in-distribution
test images the negatives; every score is computed exactly as the service's
/elbo computes it (trainer/scores.py, with vae_contract's maths), on the exported
graphs, with the thresholds' calibration read from the version's manifest.
Out-of-distribution sets are other data sets (--out) and families of shift made
from the normal test images (--shifts; trainer/shifts.py).

    vae-anomaly evaluate model_store/fashion-mnist/1 --in ../shared/data/fashion-mnist \\
        --out ../shared/data/mnist --shifts all --plot docs/anomaly/fashion-mnist.png
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

from trainer import calibrate
from trainer import data as datasets
from trainer.evaluate import Graphs
from trainer.scores import anomaly_scores
from trainer.shifts import FAMILIES, shift
from trainer.train import main as train
from vae_contract.manifest import Manifest
from vae_contract.scores import IW_K, SCORES, Score, threshold

# One-class models: small, so ten of them train in minutes on two cores.
ONE_CLASS_MODEL = [
    "--architecture", "mlp", "--hidden", "256", "--latent-dim", "16",
    "--validation", "0.1", "--eval-k", "100", "--eval-limit", "1000", "--no-report",
]  # fmt: skip
ONE_CLASS_EPOCHS = 20
GOAL = 0.95  # the AUROC every out-of-distribution set should reach (docs/anomaly.md)


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
    """A data set's test split (its own, e.g. t10k, else all of it) and labels if any:
    for out-of-distribution sets and one-class experiments, never trained on."""
    dataset = datasets.load(source)
    if dataset.test is not None:
        return datasets.array(dataset.test), dataset.test_labels
    return datasets.array(dataset.train), dataset.train_labels


def held_out(source: str, manifest: Manifest) -> np.ndarray:
    """The normal test images of a version's own training data: the test split the
    trainer held out (vae-eval's), drawn again from the manifest's training config, so
    no training or validation image is scored as a normal test image."""
    _, _, test = datasets.as_trained(source, manifest.training)
    return test


class Scorer:
    """One published version's scores of uint8 images, as /elbo computes them."""

    def __init__(self, version_dir: Path, names: tuple[Score, ...], k: int) -> None:
        self.manifest = Manifest.model_validate_json((version_dir / "manifest.json").read_bytes())
        self.graphs = Graphs(version_dir)
        self.names, self.k = names, k

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        m = self.manifest
        names, k = self.names, self.k
        return anomaly_scores(self.graphs, m.likelihood, images, names, k, 0, m.calibration)


Pairs = list[tuple[str, np.ndarray, np.ndarray]]  # (label, normal scores, anomalous scores)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)


def plot_shifts(
    path: Path,
    title: str,
    rows: list[dict[str, Any]],
    panels: dict[str, Pairs],
    threshold: float | None = None,
) -> None:
    """The AUROC of every score on every out-of-distribution set (a heat map, the goal
    marked), and the typicality score's histograms for the data sets and noise, with
    its calibrated `threshold` (fpr 1%) if given."""
    plt = _pyplot()
    outs = list(dict.fromkeys(r["out"] for r in rows))
    names = list(dict.fromkeys(r["score"] for r in rows))
    auroc = np.array([[_cell(rows, out, name) for name in names] for out in outs])
    fig, (heat, hist) = plt.subplots(
        1, 2, figsize=(13, 0.32 * len(outs) + 2), gridspec_kw={"width_ratios": [1, 1.3]}
    )
    heat.imshow(auroc, cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(auroc):
        weight = "bold" if value >= GOAL else "normal"
        heat.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, weight=weight)
    heat.set(xticks=range(len(names)), xticklabels=names, yticks=range(len(outs)))
    heat.set_yticklabels(outs, fontsize=7)
    heat.set_title(f"AUROC (bold: ≥ {GOAL})", fontsize=9)
    pairs = panels.get("typicality") or next(iter(panels.values()))
    shown = [p for p in pairs if p[0] in _data_sets(rows) or "noise" in p[0]]
    every = np.log10(1 + np.concatenate([pairs[0][1], *(b for _, _, b in shown)]).clip(0))
    bins = np.linspace(float(every.min()), float(every.max()), 80)
    hist.hist(
        np.log10(1 + pairs[0][1].clip(0)), bins=bins, alpha=0.6, label="in (normal)", density=True
    )
    for label, _, anomalous in shown:
        hist.hist(np.log10(1 + anomalous.clip(0)), bins=bins, alpha=0.5, label=label, density=True)
    if threshold is not None:
        hist.axvline(
            np.log10(1 + threshold), color="black", lw=1, ls="--", label="threshold, fpr 1%"
        )
    hist.set(xlabel="log10(1 + anomaly score)", title="typicality: normal vs data sets and noise")
    hist.legend(fontsize=7)
    _save(fig, path, title)


def plot_roc(path: Path, title: str, panels: dict[str, Pairs]) -> None:
    """Per score, a panel of ROC curves, one per (normal, anomalous) pair."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for roc, (name, pairs) in zip(axes[0], panels.items(), strict=True):
        for label, normal, anomalous in pairs:
            y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
            s = np.r_[normal, anomalous]
            fpr, tpr, _ = roc_curve(y, s)
            roc.plot(fpr, tpr, lw=1, label=f"{label} ({roc_auc_score(y, s):.3f})")
        roc.plot([0, 1], [0, 1], color="grey", lw=0.5)
        roc.set(title=f"{name}: ROC", xlabel="false-positive rate", ylabel="true-positive rate")
        roc.legend(fontsize=6)
    _save(fig, path, title)


def _cell(rows: list[dict[str, Any]], out: str, score: str) -> float:
    return float(next(r["auroc"] for r in rows if r["out"] == out and r["score"] == score))


def _data_sets(rows: list[dict[str, Any]]) -> set[str]:
    return {r["out"] for r in rows if r["kind"] == "data set"}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per (model, in, out) with the AUROC of each score, and the worst
    AUROC of each score over the lines (`--json` keeps AUPRC and FPR at 95% TPR too)."""
    names = list(dict.fromkeys(r["score"] for r in rows))
    keys = list(dict.fromkeys((r["model"], r["in"], r["out"], r["kind"]) for r in rows))
    auroc = {(r["model"], r["in"], r["out"], r["kind"], r["score"]): r["auroc"] for r in rows}
    lines = [
        "| model | in | out | kind | " + " | ".join(names) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for key in keys:
        cells = [f"{auroc[(*key, name)]:.4f}" for name in names]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(cells) + " |")
    worst = [f"{min(auroc[(*key, name)] for key in keys):.4f}" for name in names]
    lines.append("| worst |  |  |  | " + " | ".join(worst) + " |")
    return "\n".join(lines)


def _rows(
    model: str, normal_name: str, out: str, kind: str, normal: Any, anomalous: Any
) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "in": normal_name,
            "out": out,
            "kind": kind,
            "score": name,
            "n_in": len(normal[name]),
            "n_out": len(anomalous[name]),
            **detection(normal[name], anomalous[name]),
        }
        for name in normal
    ]


def evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One model: its in-distribution test set against each other data set and shift."""
    scorer = Scorer(args.version_dir, tuple(args.scores), args.k)
    normal_images = held_out(args.in_data, scorer.manifest)[: args.limit]
    normal = scorer(normal_images)
    model = f"{args.version_dir.parent.name}/{args.version_dir.name}"
    outs: list[tuple[str, str, np.ndarray]] = [
        (Path(source).name, "data set", test_images(source)[0][: args.limit])
        for source in args.out_data
    ]
    shifts = list(FAMILIES) if args.shifts == ["all"] else args.shifts
    outs += [(name, FAMILIES[name].kind, shift(name, normal_images)) for name in shifts]
    rows: list[dict[str, Any]] = []
    panels: dict[str, Pairs] = {name: [] for name in scorer.names}
    for label, kind, images in outs:
        anomalous = scorer(images)
        rows += _rows(model, Path(args.in_data).name, label, kind, normal, anomalous)
        for name in scorer.names:
            panels[name].append((label, normal[name], anomalous[name]))
    if args.plot:
        limit = threshold(scorer.manifest.calibration, "typicality", 0.01)
        plot_shifts(args.plot, f"{model}: {Path(args.in_data).name} (in)", rows, panels, limit)
    return rows


def _one_class_model(args: argparse.Namespace, store: Path, c: int) -> Path:
    """The published model of class c: trained unless a rerun finds it, calibrated for
    every score (models from before a score existed are recalibrated)."""
    out = store / f"class-{c}"
    version = out / "1"
    if not version.exists():
        argv = ["--data", args.data, "--out", str(out), "--classes", str(c), "--seed", "0"]
        argv += ["--checkpoint-dir", str(store / "runs" / str(c)), *ONE_CLASS_MODEL]
        argv += ["--epochs", str(args.epochs)]
        argv += ["--threads", str(args.threads)] if args.threads else []
        if train(argv) != 0:
            raise RuntimeError(f"training the model of class {c} failed")
    manifest = json.loads((version / "manifest.json").read_text())
    if "typicality" not in (manifest.get("calibration") or {}).get("scores", {}):
        calibrate.rewrite(version, calibrate.recalibrate(version, args.data, args.k, args.threads))
    return version


def one_class(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one small model per class; that class's test images are normal, the rest anomalous."""
    images, labels = test_images(args.data)
    if labels is None:
        raise datasets.DataError(f"{args.data}: no test labels for a one-class experiment")
    images, labels = images[: args.limit], labels[: args.limit]
    store = Path(args.store or tempfile.mkdtemp(prefix="one-class-"))
    rows: list[dict[str, Any]] = []
    panels: dict[str, Pairs] = {name: [] for name in args.scores}
    for c in args.classes:
        scores = Scorer(_one_class_model(args, store, c), tuple(args.scores), args.k)(images)
        normal = labels == c
        inside = {name: s[normal] for name, s in scores.items()}
        outside = {name: s[~normal] for name, s in scores.items()}
        rows += _rows(f"one-class/{c}", f"class {c}", "other classes", "class", inside, outside)
        for name in args.scores:
            panels[name].append((f"class {c}", inside[name], outside[name]))
    for name in args.scores:
        mine = [r for r in rows if r["score"] == name]
        metrics = ("auroc", "auprc", "fpr_at_95_tpr")
        rows.append(
            {
                "model": "one-class",
                "in": "mean of classes",
                "out": "other classes",
                "kind": "class",
                "score": name,
                **{m: float(np.mean([r[m] for r in mine])) for m in metrics},
            }
        )
    if args.plot:
        plot_roc(args.plot, f"one-class {Path(args.data).name}", panels)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-anomaly", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="one model: in-distribution vs out-of-distribution")
    ev.add_argument("version_dir", type=Path, help="a store version: model_store/mnist/1")
    ev.add_argument("--in", dest="in_data", required=True, help="the in-distribution data")
    ev.add_argument("--out", dest="out_data", nargs="*", default=[], help="anomalous data sets")
    ev.add_argument(
        "--shifts",
        nargs="*",
        default=[],
        choices=["all", *FAMILIES],
        metavar="FAMILY",
        help="families of shift made from the normal test images, or all (trainer/shifts.py)",
    )
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
        sub.add_argument("--plot", type=Path, default=None, help="a PNG of AUROCs or ROCs")
        sub.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args(argv)
    if args.command == "evaluate" and not (args.out_data or args.shifts):
        parser.error("evaluate needs --out data sets, --shifts, or both")
    try:
        rows = evaluate(args) if args.command == "evaluate" else one_class(args)
    except (OSError, KeyError, ValueError, datasets.DataError, RuntimeError) as e:
        # ValueError covers Unusable (a version calibrated before typicality existed),
        # json.JSONDecodeError and pydantic's ValidationError of a broken manifest.
        print(f"vae-anomaly: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
