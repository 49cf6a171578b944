"""Train a tiny model on real MNIST, export it, and check what lands in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainer import data, evaluate, store
from trainer.model import VAE, Shape
from trainer.scores import anomaly_scores
from trainer.train import main as train_main
from vae_contract.manifest import Calibration

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
TINY = [
    "--architecture",
    "mlp",
    "--hidden",
    "64",
    "--latent-dim",
    "8",
    "--batch-size",
    "128",
    "--eval-k",
    "20",
    "--eval-limit",
    "500",
    "--threads",
    "2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train")
    argv = [
        "--data",
        str(MNIST),
        "--out",
        str(root / "store" / "mnist"),
        "--epochs",
        "1",
        "--max-steps",
        "300",
        "--checkpoint-dir",
        str(root / "run"),
        *TINY,
    ]
    assert train_main(argv) == 0
    version_dir = root / "store" / "mnist" / "1"
    return {
        "root": root,
        "dir": version_dir,
        "manifest": json.loads((version_dir / "manifest.json").read_text()),
    }


@pytest.mark.slow
def test_training_publishes_a_complete_version(trained: dict[str, Any]) -> None:
    version_dir, manifest = trained["dir"], trained["manifest"]
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
        "report",
    ]
    assert sorted(p.name for p in (version_dir / "report").iterdir()) == [
        "curves.png",
        "reconstructions.png",
        "samples.png",
    ]
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]  # no staging
    assert manifest["name"] == "mnist" and manifest["version"] == 1
    assert manifest["input"] == {"channels": 1, "height": 28, "width": 28}
    assert manifest["likelihood"] == "bernoulli" and manifest["latent_dim"] == 8
    for name in ("encoder", "decoder"):
        graph = manifest["graphs"][name]
        assert graph["sha256"] == store.sha256(version_dir / graph["file"])
    assert manifest["graphs"]["encoder"]["inputs"] == {"x": ["batch", 1, 28, 28]}
    assert manifest["graphs"]["decoder"]["outputs"] == {"logits": ["batch", 1, 28, 28]}
    assert manifest["training"]["steps"] == 300
    assert manifest["training"]["data"]["sha256"] == data.load(MNIST).sha256
    test = manifest["metrics"]["test"]
    assert test["k"] == 20 and test["n"] == 500 and test["binarization"] == "dynamic"
    # 300 steps learn something: far better than the ~543 nats of an untrained model.
    assert -200 < test["elbo"] <= test["log_likelihood"] < 0
    calibration = manifest["calibration"]
    assert len(calibration["levels"]) == len(calibration["elbo_quantiles"])
    assert calibration["elbo_quantiles"] == sorted(calibration["elbo_quantiles"])


@pytest.mark.slow
def test_onnx_runtime_matches_torch_on_real_images(trained: dict[str, Any]) -> None:
    model = VAE(Shape(1, 28, 28), 8, "mlp", [64]).eval()
    model.load_state_dict(torch.load(trained["root"] / "run" / "best.pt", weights_only=True))
    encoder = ort.InferenceSession(str(trained["dir"] / "encoder.onnx"))
    decoder = ort.InferenceSession(str(trained["dir"] / "decoder.onnx"))
    images = data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[100:133]
    x = images.astype(np.float32) / 255
    for batch in (x[:1], x[:13], x):  # batch 1, ragged, 33
        mean, log_var = encoder.run(None, {"x": batch})
        (logits,) = decoder.run(None, {"z": mean})
        with torch.no_grad():
            want_mean, want_log_var = model.encode(torch.from_numpy(batch))
            want_logits = model.decode(want_mean)
        assert np.abs(mean - want_mean.numpy()).max() <= 1e-4
        assert np.abs(log_var - want_log_var.numpy()).max() <= 1e-4
        assert np.abs(logits - want_logits.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_eval_command_reproduces_the_manifest(trained: dict[str, Any]) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.evaluate",
            str(trained["dir"]),
            "--data",
            str(MNIST),
            "--k",
            "20",
            "--limit",
            "500",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    measured = json.loads(out.stdout)["measured"]
    recorded = trained["manifest"]["metrics"]["test"]
    for key in ("elbo", "log_likelihood", "bits_per_dim"):
        assert measured[key] == pytest.approx(recorded[key], abs=1e-6)


@pytest.mark.slow
def test_calibration_is_the_serving_elbo_of_held_out_images(trained: dict[str, Any]) -> None:
    graphs = evaluate.Graphs(trained["dir"])
    dataset = data.load(MNIST)
    _, validation, _ = data.splits(dataset, 5000, 0.1, seed=0)
    calibration = trained["manifest"]["calibration"]
    fitted = Calibration.model_validate(calibration)
    scores = anomaly_scores(graphs, "bernoulli", validation, calibration=fitted)
    median = calibration["levels"].index(0.5)
    assert float(np.median(-scores["elbo"])) == pytest.approx(
        calibration["elbo_quantiles"][median], abs=1e-3
    )
    for name in ("iwae", "complexity"):
        recorded = calibration["scores"][name]["quantiles"][median]
        assert float(np.median(scores[name])) == pytest.approx(recorded, abs=1e-3)
    # typicality's detector is fitted on the even images, its quantiles are of the odd ones.
    recorded = calibration["scores"]["typicality"]["quantiles"][median]
    assert float(np.median(scores["typicality"][1::2])) == pytest.approx(recorded, abs=1e-3)


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(tmp_path: Path) -> None:
    digits = data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:1200]
    np.savez(tmp_path / "digits.npz", x=digits)
    common = [
        "--data",
        str(tmp_path / "digits.npz"),
        "--out",
        str(tmp_path / "s" / "digits"),
        "--validation",
        "200",
        "--test-fraction",
        "0.1",
        "--checkpoint-dir",
        str(tmp_path / "run"),
        "--no-report",
        *TINY,
    ]
    assert train_main([*common, "--epochs", "1"]) == 0
    last = str(tmp_path / "run" / "last.pt")
    assert train_main([*common, "--epochs", "2", "--resume", last]) == 0
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    lines = [json.loads(line) for line in log.splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert store.versions(tmp_path / "s" / "digits") == [1, 2]  # the next free version
    manifest = json.loads((tmp_path / "s" / "digits" / "2" / "manifest.json").read_text())
    assert manifest["training"]["epochs_run"] == 2
    assert manifest["training"]["data"]["n_test"] == 120


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--out", "x/Bad Name"], "--out must end in a model name"),
        (["--architecture", "conv", "--hidden", "8"], "three widths"),
        (["--likelihood", "gaussian"], "invalid choice: 'gaussian'"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--data", str(MNIST), "--out", "x/mnist", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unreadable_data_exits_1_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "junk.npy").write_bytes(b"this is not an array")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--data",
            str(tmp_path / "junk.npy"),
            "--out",
            str(tmp_path / "store" / "m"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("vae-train: error: ")
    assert "junk.npy: cannot read array" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()
