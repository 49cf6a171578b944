"""The one typed training config, and the command line derived from it.

Each field carries its own flag help (and choices) in its metadata, so `vae-train
--help` lists every field with its default and there is no second list of
defaults to keep in step. A field whose default is None is decided from the
data (trainer/defaults.py) unless given; the manifest stores the decided values,
so a model names exactly how it was made.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from trainer.likelihood import Likelihood

Architecture = Literal["mlp", "conv"]
Objective = Literal["elbo", "iwae"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]

STREAM_ABOVE = 1 << 30  # decoded bytes; larger image folders stream by default
# Widths when --hidden is not given; the conv widths are C1 C2 FC.
HIDDEN: dict[str, list[int]] = {"mlp": [512, 256], "conv": [32, 64, 256]}


def _opt(help: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata: the flag's help and any argparse keywords (nargs, metavar)."""
    return {"help": help, "argparse": argparse_kwargs}


@dataclass
class TrainConfig:
    data: str = field(metadata=_opt("IDX folder or file, image folder, or .npy/.npz"))
    out: str = field(metadata=_opt("the model's store folder: model_store/mnist"))
    version: int | None = field(default=None, metadata=_opt("default: the next free integer"))
    # Model.
    architecture: Architecture | None = field(
        default=None,
        metadata=_opt(
            "encoder and decoder type (default: mlp for grey images of at most 28×28 "
            "pixels, such as MNIST; conv for colour or larger images)"
        ),
    )
    hidden: list[int] | None = field(
        default=None,
        metadata=_opt(
            "mlp: layer widths; conv: C1 C2 FC (default: "
            + ", ".join(f"{name} {' '.join(map(str, w))}" for name, w in HIDDEN.items())
            + ")"
        ),
    )
    latent_dim: int = field(default=50, metadata=_opt("latent dimensions L"))
    likelihood: Likelihood | None = field(
        default=None,
        metadata=_opt(
            "p(x|z) (default: bernoulli for near-binary grey images such as MNIST, "
            "else discretized_logistic: a probability for each 8-bit value)"
        ),
    )
    binarize: bool | None = field(
        default=None,
        metadata=_opt(
            "dynamic binarisation, the MNIST log-likelihood protocol (default: with a "
            "bernoulli likelihood on near-binary images only)"
        ),
    )
    # Data.
    channels: int | None = field(
        default=None, metadata=_opt("1 grey, 3 RGB (default: what the data holds)", choices=(1, 3))
    )
    image_size: list[int] | None = field(
        default=None,
        metadata=_opt(
            "resize image-folder images (default: their size, when all agree)",
            nargs=2,
            metavar=("H", "W"),
        ),
    )
    center_crop: bool = field(
        default=False,
        metadata=_opt("crop each image to the aspect ratio of --image-size before resizing"),
    )
    flip: bool = field(
        default=False,
        metadata=_opt("augment: mirror each training image left-right with probability 1/2"),
    )
    classes: list[int] | None = field(
        default=None, metadata=_opt("train on these labels only (IDX label files)")
    )
    validation: float = field(
        default=0.1, metadata=_opt("held out from training: a fraction if < 1, else a count")
    )
    test_fraction: float = field(
        default=0.1, metadata=_opt("held out for testing when the source has no test split")
    )
    held_out_max: int | None = field(
        default=5000,
        metadata=_opt("at most this many images for a fractional --validation or --test-fraction"),
    )
    stream: bool | None = field(
        default=None,
        metadata=_opt(
            "image folders: decode the files in worker processes each epoch instead of holding "
            f"them in memory (default: when the decoded images exceed {STREAM_ABOVE >> 30} GiB)"
        ),
    )
    workers: int | None = field(
        default=None, metadata=_opt("data loader processes (default: CPUs, at most 8)")
    )
    # Optimisation.
    objective: Objective = field(
        default="elbo", metadata=_opt("elbo, or iwae: the importance-weighted bound")
    )
    iw_k: int = field(default=5, metadata=_opt("samples per example for --objective iwae"))
    epochs: int = field(default=50, metadata=_opt("passes over the training images"))
    max_steps: int | None = field(
        default=None, metadata=_opt("stop after this many optimiser steps (smoke runs)")
    )
    batch_size: int = field(
        default=128, metadata=_opt("images per optimiser step, over all processes")
    )
    lr: float = field(default=1e-3, metadata=_opt("Adam's learning rate at the start"))
    lr_min: float = field(
        default=1e-4, metadata=_opt("where the cosine schedule ends (CosineAnnealingLR eta_min)")
    )
    warmup_epochs: float = field(
        default=0.0, metadata=_opt("KL warm-up: its weight rises from 0 to 1 over these epochs")
    )
    seed: int = field(default=0, metadata=_opt("seeds the split, the weights and the noise"))
    # Evaluation.
    eval_k: int = field(
        default=100,
        metadata=_opt(
            "importance samples for the test log-likelihood (the literature's figure "
            "is k=5000: pass it, or run vae-eval --k 5000 later)"
        ),
    )
    eval_limit: int | None = field(
        default=None, metadata=_opt("evaluate on the first N test images only (smoke runs)")
    )
    # Machine.
    device: Device = field(default="auto", metadata=_opt("auto: CUDA when torch sees it"))
    precision: Precision = field(
        default="auto", metadata=_opt("auto: bf16 autocast on CUDA, fp32 on the CPU")
    )
    threads: int | None = field(
        default=None, metadata=_opt("torch intra-op threads (default: torch's choice)")
    )
    checkpoint_dir: str | None = field(
        default=None, metadata=_opt("default: runs/<name>/<n>, a new n for each run")
    )
    resume: str | None = field(default=None, metadata=_opt("a checkpoint (last.pt) to continue"))
    report: bool = field(
        default=True, metadata=_opt("write PNGs of reconstructions, samples and curves")
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flag_type(hint: Any) -> tuple[Any, tuple[Any, ...] | None, bool]:
    """(element type, choices, is a list) of a field's type, None stripped."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
        args = list(typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return type(args[0]), tuple(args), False
    if origin is list:
        return args[0], None, True
    return hint, None, False


def _help(text: str, f: dataclasses.Field[Any]) -> str:
    """The field's help with its default, unless the text already says it in words."""
    if f.default is dataclasses.MISSING:
        return f"{text} (required)"
    if "default" in text:
        return text
    shown = "none" if f.default is None else f.default
    return f"{text} (default: {shown})"


def parser(prog: str = "vae-train", description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per TrainConfig field."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind, choices, many = _flag_type(hints[f.name])
        meta = dict(f.metadata)
        kwargs: dict[str, Any] = {"help": _help(meta["help"], f), **meta["argparse"]}
        if f.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if choices:
                kwargs["choices"] = choices
            if many:
                kwargs.setdefault("nargs", "+")
        p.add_argument(flag, **kwargs)
    return p


def from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**vars(args))
