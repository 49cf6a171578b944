"""The trainer's side of anomaly detection: class filters, vae-calibrate on a published
version, the families of shift, and the vae-anomaly evaluation command, on real MNIST and
Fashion-MNIST files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_support import SHARED_DATA
from PIL import Image

from trainer import anomaly, calibrate, data, shifts, store
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
    for name in ("typicality", "iwae", "complexity"):
        np.testing.assert_allclose(
            after["calibration"]["scores"][name]["quantiles"],
            before["calibration"]["scores"][name]["quantiles"],
            atol=2e-3,
        )
    # The detector is refitted to the same numbers: publishing and vae-calibrate agree.
    fitted, refitted = (
        m["calibration"]["scores"]["typicality"]["gaussian"] for m in (before, after)
    )
    assert refitted["n"] == fitted["n"] == before["calibration"]["n"] // 2
    np.testing.assert_allclose(refitted["mean"], fitted["mean"], rtol=1e-9)
    np.testing.assert_allclose(refitted["covariance"], fitted["covariance"], rtol=1e-9)
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


def test_every_family_shifts_the_images_it_is_given_reproducibly() -> None:
    images = data.load(MNIST).test
    assert images is not None
    normal = images[:32]
    for name, family in shifts.FAMILIES.items():
        shifted = shifts.shift(name, normal)
        assert shifted.dtype == np.uint8 and shifted.shape == normal.shape, name
        assert not np.array_equal(shifted, normal), name
        np.testing.assert_array_equal(shifted, shifts.shift(name, normal), err_msg=name)
        assert family.kind in {"noise", "synthetic", "transform"}
    np.testing.assert_array_equal(shifts.shift("horizontal flip", normal), normal[..., ::-1])
    assert shifts.shift("black", normal).max() == 0


def test_evaluate_reports_every_score_for_every_out_set_and_plots(
    version_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", str(version_dir), "--in", str(MNIST), "--out", str(FASHION)]
    argv += ["--shifts", "uniform noise", "black", "--limit", "300", "--k", "4"]
    argv += ["--plot", str(tmp_path / "p.png")]
    assert anomaly.main([*argv, "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    scores = ["typicality", "elbo", "iwae", "complexity"]
    assert [(r["out"], r["kind"], r["score"]) for r in rows] == [
        (out, kind, score)
        for out, kind in (
            ("fashion-mnist", "data set"),
            ("uniform noise", "noise"),
            ("black", "synthetic"),
        )
        for score in scores
    ]
    auroc = {(r["out"], r["score"]): r["auroc"] for r in rows}
    # Even a model trained for seconds tells digits from clothes by their ELBO,
    # and a blank page from digits by how atypical it is.
    assert auroc["fashion-mnist", "elbo"] > 0.8
    assert auroc["black", "typicality"] > 0.9
    for r in rows:
        assert 0 <= r["auroc"] <= 1 and 0 <= r["auprc"] <= 1 and 0 <= r["fpr_at_95_tpr"] <= 1
    table = capsys.readouterr().out
    assert table.startswith("| model | in | out | kind | typicality | elbo | iwae | complexity |")
    cells = " | ".join(f"{auroc['fashion-mnist', s]:.4f}" for s in scores)
    assert f"| mnist/1 | mnist | fashion-mnist | data set | {cells} |" in table
    worst = " | ".join(f"{min(auroc[o, s] for o, _ in auroc):.4f}" for s in scores)
    assert table.rstrip().endswith(f"| worst |  |  |  | {worst} |")
    with Image.open(tmp_path / "p.png") as plot:
        assert plot.size[0] > 800 and plot.size[1] > 200  # the heat map and the histograms


def test_evaluate_says_when_a_version_cannot_compute_typicality(
    version_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = tmp_path / "mnist" / "1"
    shutil.copytree(version_dir, version)
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["calibration"]["scores"]["typicality"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    argv = ["evaluate", str(version), "--in", str(MNIST), "--shifts", "black", "--limit", "50"]
    assert anomaly.main(argv) == 1
    assert "vae-calibrate" in capsys.readouterr().err
    assert anomaly.main([*argv, "--scores", "elbo"]) == 0


def test_one_class_trains_a_model_per_class_and_averages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["one-class", "--data", str(MNIST), "--store", str(tmp_path), "--classes", "0", "1"]
    argv += ["--epochs", "1", "--limit", "1000", "--scores", "typicality", "elbo"]
    argv += ["--threads", "2", "--k", "4", "--plot", str(tmp_path / "roc.png")]
    assert anomaly.main([*argv, "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["model"], r["score"]) for r in rows] == [
        (model, score)
        for model in ("one-class/0", "one-class/1", "one-class")
        for score in ("typicality", "elbo")
    ]
    for i in (0, 1):  # the means of the two classes, per score
        assert rows[4 + i]["auroc"] == pytest.approx((rows[i]["auroc"] + rows[2 + i]["auroc"]) / 2)
    assert (tmp_path / "class-0" / "1" / "manifest.json").is_file()
    manifest = json.loads((tmp_path / "class-1" / "1" / "manifest.json").read_text())
    assert manifest["training"]["classes"] == [1]
    assert "| one-class | mean of classes | other classes | class | " in capsys.readouterr().out
    assert "typicality" in manifest["calibration"]["scores"]  # published with every score
    with Image.open(tmp_path / "roc.png") as plot:
        assert plot.size[0] > 500
    # A rerun reuses the models, and calibrates what one published before a score lacks.
    old = tmp_path / "class-1" / "1" / "manifest.json"
    del manifest["calibration"]["scores"]["typicality"]
    old.write_text(json.dumps(manifest))
    assert anomaly.main([*argv, "--classes", "1", "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again[0]["auroc"] == pytest.approx(rows[2]["auroc"])  # class 1, typicality
    assert "typicality" in json.loads(old.read_text())["calibration"]["scores"]
