"""The trainer's side of anomaly detection: class filters, vae-calibrate on a published
version, and the vae-anomaly evaluation command, on real MNIST and Fashion-MNIST files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_support import SHARED_DATA
from PIL import Image

from trainer import anomaly, calibrate, data, store
from vae_contract.manifest import Manifest

MNIST, FASHION = SHARED_DATA / "mnist", SHARED_DATA / "fashion-mnist"


def test_select_keeps_only_the_asked_classes_in_both_splits() -> None:
    dataset = data.load(MNIST)
    assert dataset.train_labels is not None and dataset.test_labels is not None
    threes = data.select(dataset, [3])
    assert threes.test is not None and threes.test_labels is not None
    assert threes.train_labels is not None
    assert len(threes.train) == int(np.sum(dataset.train_labels == 3)) > 5000
    assert set(threes.train_labels.tolist()) == {3} == set(threes.test_labels.tolist())
    assert len(threes.test) == int(np.sum(dataset.test_labels == 3))
    np.testing.assert_array_equal(threes.train[0], dataset.train[dataset.train_labels == 3][0])


def test_select_needs_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    with pytest.raises(data.DataError, match="no train labels"):
        data.select(data.load(tmp_path / "x.npy"), [1])
    with pytest.raises(data.DataError, match="no training images of classes"):
        data.select(data.load(MNIST), [42])


def test_calibrate_adds_the_scores_and_leaves_the_graphs_alone(
    version_dir: Path, tmp_path: Path
) -> None:
    version = tmp_path / "mnist" / "1"
    shutil.copytree(version_dir, version)
    before = json.loads((version / "manifest.json").read_text())
    legacy = {key: v for key, v in before["calibration"].items() if key != "scores"}
    (version / "manifest.json").write_text(json.dumps({**before, "calibration": legacy}))
    graphs = {p.name: p.read_bytes() for p in version.glob("*.onnx")}

    assert calibrate.main([str(version), "--data", str(MNIST), "--k", "64"]) == 0

    after = json.loads((version / "manifest.json").read_text())
    assert {p.name: p.read_bytes() for p in version.glob("*.onnx")} == graphs
    for name, spec in after["graphs"].items():
        assert spec["sha256"] == store.sha256(version / f"{name}.onnx")
    # Same split, same noise, same graphs: the numbers training wrote, once more.
    np.testing.assert_allclose(
        after["calibration"]["elbo_quantiles"], legacy["elbo_quantiles"], atol=2e-3
    )
    for name in ("iwae", "complexity"):
        np.testing.assert_allclose(
            after["calibration"]["scores"][name]["quantiles"],
            before["calibration"]["scores"][name]["quantiles"],
            atol=2e-3,
        )
    assert {key: v for key, v in after.items() if key != "calibration"} == {
        key: v for key, v in before.items() if key != "calibration"
    }
    Manifest.model_validate(after)  # the service accepts it
    assert sorted(p.name for p in version.iterdir()) == sorted(
        ["encoder.onnx", "decoder.onnx", "manifest.json"]
    )  # no temporary file left behind


def test_calibrate_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibrate.main([str(tmp_path), "--data", str(MNIST)]) == 1
    assert capsys.readouterr().err.startswith("vae-calibrate: error: ")


def test_evaluate_reports_every_score_for_every_out_set_and_plots(
    version_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", str(version_dir), "--in", str(MNIST), "--out", str(FASHION)]
    argv += ["--limit", "300", "--k", "4", "--plot", str(tmp_path / "p.png")]
    assert anomaly.main([*argv, "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["out"], r["score"]) for r in rows] == [
        ("fashion-mnist", "elbo"),
        ("fashion-mnist", "iwae"),
        ("fashion-mnist", "complexity"),
    ]
    # Even a model trained for seconds tells digits from clothes by their ELBO.
    assert rows[0]["auroc"] > 0.8
    for r in rows:
        assert 0 <= r["auroc"] <= 1 and 0 <= r["auprc"] <= 1 and 0 <= r["fpr_at_95_tpr"] <= 1
    table = capsys.readouterr().out
    assert table.startswith("| model | in | out | score | AUROC | AUPRC | FPR at 95% TPR |")
    assert f"| mnist/1 | mnist | fashion-mnist | elbo | {rows[0]['auroc']:.4f} |" in table
    with Image.open(tmp_path / "p.png") as plot:
        assert plot.size[0] > 500 and plot.size[1] > 500  # 3 rows of histogram and ROC


def test_one_class_trains_a_model_per_class_and_averages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["one-class", "--data", str(MNIST), "--store", str(tmp_path), "--classes", "0", "1"]
    argv += ["--epochs", "1", "--limit", "1000", "--scores", "elbo", "--threads", "2"]
    assert anomaly.main([*argv, "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["model"] for r in rows] == ["one-class/0", "one-class/1", "one-class"]
    assert rows[2]["auroc"] == pytest.approx((rows[0]["auroc"] + rows[1]["auroc"]) / 2)
    assert (tmp_path / "class-0" / "1" / "manifest.json").is_file()
    manifest = json.loads((tmp_path / "class-1" / "1" / "manifest.json").read_text())
    assert manifest["training"]["classes"] == [1]
    assert "| one-class | mean of classes | other classes | elbo |" in capsys.readouterr().out
