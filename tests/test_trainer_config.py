"""The command line derived from TrainConfig, and the defaults the data decides:
no training here, so these run in a second or two."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from app_support import SHARED_DATA, read_mnist
from PIL import Image

from trainer import config, data
from trainer.config import TrainConfig
from trainer.defaults import ConfigError, settle
from trainer.train import main as train_main
from trainer.train import parse_args

MNIST, FASHION = SHARED_DATA / "mnist", SHARED_DATA / "fashion-mnist"


def test_every_field_has_a_flag_and_help_shows_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
    assert "--latent-dim LATENT_DIM latent dimensions L (default: 50)" in help_text
    hidden = "conv: C1 C2 FC (default: mlp 512 256, conv 32 64 256)"
    assert f"--hidden HIDDEN [HIDDEN ...] mlp: layer widths; {hidden}" in help_text
    assert "--eval-k EVAL_K importance samples" in help_text and "(default: 100)" in help_text
    # Every flag states its default, in numbers or in words, or that it is required.
    for action in config.parser()._actions[1:]:  # after -h
        assert action.help and ("default" in action.help or "required" in action.help), action


def test_parsed_defaults_are_the_dataclass_defaults() -> None:
    parsed = parse_args(["--data", "d", "--out", "x/m"])
    assert parsed == TrainConfig(data="d", out="x/m")
    flags = parse_args(["--data", "d", "--out", "x/m", "--no-report", "--binarize"])
    assert (flags.report, flags.binarize) == (False, True)
    sized = parse_args(["--data", "d", "--out", "x/m", "--image-size", "8", "9"])
    assert sized.image_size == [8, 9]
    assert config.parser().get_default("validation") == TrainConfig.validation


def _settled(source: Path, warnings: list[str], **changes: object) -> TrainConfig:
    c = dataclasses.replace(TrainConfig(data=str(source), out="x/m"), **changes)
    size = tuple(c.image_size) if c.image_size else None
    dataset = data.load(source, c.channels, size, c.center_crop)
    return settle(c, dataset, warnings.append)


def photo_folder(folder: Path, n: int = 8) -> Path:
    """n colour crops of a real photo (scikit-image ships it) as 24×32 PNGs."""
    from skimage import data as photos

    chelsea = photos.chelsea()  # (300, 451, 3)
    folder.mkdir(exist_ok=True)
    for i in range(n):
        crop = chelsea[i * 20 : i * 20 + 24, i * 30 : i * 30 + 32]
        Image.fromarray(crop).save(folder / f"{i}.png")
    return folder


def test_binary_grey_gets_bernoulli_grey_values_and_colour_a_discretised_logistic(
    tmp_path: Path,
) -> None:
    warnings: list[str] = []
    mnist = _settled(MNIST, warnings)
    assert (mnist.likelihood, mnist.binarize, mnist.channels) == ("bernoulli", True, 1)
    assert (mnist.image_size, mnist.architecture, mnist.hidden) == ([28, 28], "mlp", [512, 256])
    fashion = _settled(FASHION, warnings, architecture="conv")
    assert (fashion.likelihood, fashion.binarize) == ("discretized_logistic", False)
    assert fashion.hidden == [32, 64, 256]  # conv's own default widths
    assert _settled(FASHION, warnings).architecture == "mlp"  # 28×28 grey: the MLP
    photos = _settled(photo_folder(tmp_path / "p"), warnings)
    assert (photos.channels, photos.image_size) == (3, [24, 32])
    assert (photos.likelihood, photos.binarize) == ("discretized_logistic", False)
    assert (photos.architecture, photos.hidden) == ("conv", [32, 64, 256])  # colour: conv
    assert warnings == []


def test_grey_images_larger_than_mnist_get_the_conv_net(tmp_path: Path) -> None:
    folder = tmp_path / "grey"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    textures = _settled(folder, [])
    assert (textures.channels, textures.architecture) == (1, "conv")
    assert textures.likelihood == "discretized_logistic"
    # An explicit choice stands.
    assert _settled(folder, [], architecture="mlp").architecture == "mlp"


def test_settings_that_contradict_the_data_are_refused_or_warned(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "p")
    warnings: list[str] = []
    with pytest.raises(ConfigError, match=r"--binarize would turn .* colour images black and"):
        _settled(folder, warnings, binarize=True)
    with pytest.raises(ConfigError, match="--binarize is for --likelihood bernoulli only"):
        _settled(MNIST, warnings, likelihood="discretized_logistic", binarize=True)
    grey = _settled(folder, warnings, channels=1)
    assert grey.channels == 1 and "holds colour images; training on their grey" in warnings[-1]
    bernoulli = _settled(FASHION, warnings, likelihood="bernoulli")
    assert bernoulli.binarize is False and "is not a density of them" in warnings[-1]
    with pytest.raises(data.DataError, match=r"--image-size 24 24 would distort .* 24×32 images"):
        _settled(folder, warnings, image_size=[24, 24])
    assert _settled(folder, warnings, image_size=[12, 16]).image_size == [12, 16]  # same aspect


def test_a_held_out_count_too_large_names_its_flag(tmp_path: Path) -> None:
    np.savez(tmp_path / "few.npz", x=read_mnist(900))
    dataset = data.load(tmp_path / "few.npz")
    with pytest.raises(data.DataError, match=r"cannot hold out 5000 of 810 images \(--validation"):
        data.splits(dataset, 5000, 0.1, seed=0)
    train, validation, test = data.splits(dataset, 0.1, 0.1, seed=0, cap=50)
    assert (len(train), len(validation), len(test)) == (800, 50, 50)  # 10%, capped at 50


def test_refusals_end_in_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = photo_folder(tmp_path / "p")
    argv = ["--data", str(folder), "--out", str(tmp_path / "s" / "m"), "--binarize"]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("vae-train: error: --binarize would turn")
    assert "Traceback" not in err and not (tmp_path / "s").exists()


def documented_train_commands() -> list[list[str]]:
    """Every vae-train (or torchrun -m trainer.train) command in the README and the
    documentation's pages, as argv."""
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    inline = r"`vae-train ([^`]*)`"
    text = re.sub(inline, lambda m: "\nvae-train " + m[1].replace("\n", " ") + "\n", text)
    commands = []
    for line in text.splitlines():
        match = re.search(r"(?:vae-train|-m trainer\.train)\s+(--data.*)$", line)
        if match:
            commands.append(shlex.split(match[1].split("#")[0]))
    return commands


def test_every_documented_training_command_parses() -> None:
    commands = documented_train_commands()
    assert len(commands) >= 5  # quick start, bundled, fashion-mnist, two torchrun
    for argv in commands:
        parse_args(argv)  # exits 2 on a flag the trainer no longer has
