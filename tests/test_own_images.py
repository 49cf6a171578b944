"""A folder of one's own photos, end to end: runs that keep their checkpoints, anomaly
numbers from the held-out split, thresholds withheld where too few images back them,
and a separate folder of normal images to calibrate on.

Tiny data (crops of scikit-image's bundled photos) and one short epoch.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from app_support import image_file
from fastapi.testclient import TestClient
from test_trainer_recipes import photo_crops

from app.config import Settings
from app.main import create_app
from trainer import anomaly, calibrate
from trainer.train import main as train
from vae_contract import calibration as rule
from vae_contract.manifest import Calibration
from vae_contract.scores import Statistics, threshold
from vae_contract.scores import calibrate as calibrate_scores

SMALL = [
    "--architecture", "mlp", "--hidden", "32", "--latent-dim", "4", "--epochs", "1",
    "--batch-size", "32", "--validation", "0.2", "--test-fraction", "0.25",
    "--eval-k", "2", "--eval-limit", "50", "--no-report", "--threads", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 photo crops trained on, with the default checkpoint folder (runs/ under the
    cwd), where an earlier run of the same model left its checkpoints."""
    root = tmp_path_factory.mktemp("own")
    folder = photo_crops(root / "photos", n=60)
    earlier = root / "runs" / "photos" / "1"
    earlier.mkdir(parents=True)
    for name in ("best.pt", "last.pt", "metrics.jsonl"):
        (earlier / name).write_text("the first run's")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        argv = ["--data", str(folder), "--out", str(root / "store" / "photos"), *SMALL]
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            assert train(argv) == 0
    (root / "said").write_text(said.getvalue())
    return root


def manifest_of(version: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((version / "manifest.json").read_text())
    return result


def test_a_run_keeps_an_earlier_runs_checkpoints(photos: Path) -> None:
    runs = photos / "runs" / "photos"
    assert sorted(p.name for p in runs.iterdir()) == ["1", "2"]
    for name in ("best.pt", "last.pt", "metrics.jsonl"):
        assert (runs / "1" / name).read_text() == "the first run's"
        assert (runs / "2" / name).stat().st_size > 0
    assert len((runs / "2" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_small_calibration_records_what_it_cannot_back(photos: Path) -> None:
    calibration = manifest_of(photos / "store" / "photos" / "1")["calibration"]
    n = calibration["n"]  # 20 % of the 45 images left after the test split
    assert n == 9 and calibration["min_tail"] == rule.MIN_TAIL
    problems = calibration["problems"]
    # Too few to fit typicality's detector (4 images, 4 statistics): said, not dropped.
    assert "typicality" not in calibration.get("scores", {})
    assert "no detector fitted on 5 held-out images" in problems["typicality"]
    assert f"score=elbo was calibrated on {n}" in problems["elbo"]
    assert "needs at least 1000 held-out normal images" in problems["elbo"]
    said = (photos / "said").read_text()  # and the trainer says so, where it was silent
    assert f"vae-train: calibration: typicality: {problems['typicality']}" in said
    assert "vae-train: checkpoints: runs/photos/2" in said


def test_the_rule_withholds_thresholds_the_images_cannot_back() -> None:
    """54 held-out images: typicality fits on 27 and measures on 27, so no threshold
    below fpr 10/27; the elbo's 54 images back fpr 0.2 but not 0.01."""
    rng = np.random.default_rng(0)
    stats = Statistics(*(rng.normal(size=(4, 54)) * [[10], [3], [100], [20]]))
    made = calibrate_scores(stats, (1, 8, 8))
    calibration = Calibration.model_validate(made)
    assert made["scores"]["typicality"]["n"] == 27
    assert set(made["problems"]) == {"elbo", "typicality", "complexity"}
    assert rule.threshold_problem(calibration, "typicality", 0.01) is not None
    assert rule.threshold_problem(calibration, "typicality", 10 / 27) is None
    assert rule.threshold_problem(calibration, "elbo", 0.2) is None
    assert "at least 1000" in str(rule.threshold_problem(calibration, "elbo", 0.01))
    assert rule.threshold_problem(calibration, "elbo", 0.0) is not None  # the maximum: never


def test_elbo_withholds_a_threshold_below_the_rule_and_says_why(
    model_store: Path, mnist: np.ndarray
) -> None:
    """The tests' MNIST version: 2,000 validation images back fpr ≥ 0.005 (typicality's
    1,000 back fpr ≥ 0.01). At fpr 0.05 the numbers are the calibration's, as before; at
    0.001 the threshold is withheld and calibration_problem says why; percentiles stay."""
    version = model_store / "mnist" / "1"
    calibration = Calibration.model_validate(manifest_of(version)["calibration"])
    files = [("images", (f"{i}.png", image_file(mnist[i]), "image/png")) for i in range(3)]
    settings = Settings(model_store=model_store, device="cpu", reload_interval_s=0)
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(app.state.registry.loaded_once.wait)  # the background load
        _ask(client, calibration, files)


def _ask(client: TestClient, calibration: Calibration, files: list[Any]) -> None:
    for score in ("elbo", "complexity", "typicality"):
        backed = client.post(f"/elbo?score={score}&fpr=0.05", files=files).json()
        assert backed["calibration_problem"] is None
        assert backed["anomaly_threshold"] == pytest.approx(threshold(calibration, score, 0.05))
        withheld = client.post(f"/elbo?score={score}&fpr=0.001", files=files).json()
        assert withheld["anomaly_threshold"] is None and withheld["threshold"] is None
        assert "needs at least 10000 held-out normal images" in withheld["calibration_problem"]
        assert [r["is_anomaly"] for r in withheld["results"]] == [None] * 3
        assert [r["percentile"] for r in withheld["results"]] == [
            r["percentile"] for r in backed["results"]
        ]


def test_vae_calibrate_takes_a_separate_folder_of_normal_images(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = tmp_path / "photos" / "1"
    version.parent.mkdir()
    shutil.copytree(photos / "store" / "photos" / "1", version)
    normal = photo_crops(tmp_path / "normal", n=80)
    assert calibrate.main([str(version), "--normal", str(normal), "--k", "2"]) == 0
    calibration = manifest_of(version)["calibration"]
    assert (calibration["split"], calibration["n"]) == ("normal", 80)
    assert calibration["source"] == str(normal.resolve())
    typicality = calibration["scores"]["typicality"]
    assert (typicality["images"], typicality["n"]) == ("normal[1::2]", 40)
    assert "typicality" in calibration["problems"]  # 40 images back fpr ≥ 0.25 only
    assert "score=typicality was calibrated on 40" in capsys.readouterr().err
    parsed = Calibration.model_validate(calibration)
    assert rule.threshold_problem(parsed, "typicality", 0.25) is None


def test_vae_anomaly_scores_the_held_out_test_split_only(photos: Path, tmp_path: Path) -> None:
    version = photos / "store" / "photos" / "1"
    argv = ["evaluate", str(version), "--in", str(photos / "photos"), "--shifts", "uniform noise"]
    argv += ["--scores", "elbo", "--k", "2", "--json", str(tmp_path / "rows.json")]
    assert anomaly.main(argv) == 0
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    held_out = manifest_of(version)["training"]["data"]["n_test"]
    assert held_out == 15  # 25 % of 60
    assert (row["n_in"], row["n_out"]) == (held_out, held_out)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_the_bundled_versions_keep_their_thresholds_at_the_default_fpr(name: str) -> None:
    """5,000 validation images (typicality: 2,500): fpr 0.01 stands as before; only
    rates the images cannot back are withheld."""
    root = Path(__file__).resolve().parents[1] / "model_store" / name
    for version in sorted(p for p in root.iterdir() if p.name.isdigit()):
        calibration = Calibration.model_validate(manifest_of(version)["calibration"])
        for score in ("elbo", "typicality", "iwae", "complexity"):
            assert rule.threshold_problem(calibration, score, 0.01) is None
            assert threshold(calibration, score, 0.01) is not None
            assert rule.threshold_problem(calibration, score, 0.001) is not None
