"""Export the encoder and decoder to ONNX, and refuse to ship graphs that do
not compute what torch computes."""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from trainer.model import VAE

OPSET = 18
# ONNX Runtime and torch sum in different orders, so float32 results differ by a few
# ulps of the values summed; the tolerance scales with the output's largest magnitude
# (logits grow as a model trains), and is absolute below 1.
PARITY_RTOL = 1e-4


class ExportError(Exception):
    """The exported graphs disagree with torch or do not have the contract's I/O."""


def _export(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # Without torchvision the exporter logs a warning per vision op it skips.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about internals
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes={next(iter(_forward_args(module))): {0: batch}},
            opset_version=OPSET,
            external_data=False,  # one self-contained file per graph
            dynamo=True,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def _forward_args(module: torch.nn.Module) -> list[str]:
    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


def _io(path: Path) -> dict[str, dict[str, list[int | str]]]:
    """Input and output names with shapes as declared in the graph."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: dims(v) for v in graph.input},
        "outputs": {v.name: dims(v) for v in graph.output},
    }


def export(
    model: VAE, folder: Path, examples: torch.Tensor
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Write encoder.onnx and decoder.onnx into folder; check them against torch on
    `examples` (real images, float in [0, 1]) at batch 1 and a ragged batch.

    Returns the graphs' I/O and what the check compared, for the manifest. Raises
    ExportError on any mismatch.
    """
    model = model.eval().cpu()
    encoder_path, decoder_path = folder / "encoder.onnx", folder / "decoder.onnx"
    with torch.no_grad():
        z_example = model.encode(examples[:2])[0]
    _export(model.encoder, examples[:2], encoder_path, "x", ["mean", "log_var"])
    _export(model.decoder, z_example, decoder_path, "z", ["logits"])

    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    compared: dict[str, dict[str, float]] = {}
    for n in (1, min(7, len(examples))):  # 7: a ragged batch, unlike the traced one
        x = examples[:n]
        with torch.no_grad():
            mean, log_var = model.encode(x)
            logits = model.decode(mean)
        got_mean, got_log_var = encoder.run(["mean", "log_var"], {"x": x.numpy()})
        (got_logits,) = decoder.run(["logits"], {"z": mean.numpy()})
        for name, want, got in (
            ("mean", mean, got_mean),
            ("log_var", log_var, got_log_var),
            ("logits", logits, got_logits),
        ):
            compared[f"{name} at batch {n}"] = parity(name, n, want.numpy(), got)
    io = {"encoder": _io(encoder_path), "decoder": _io(decoder_path)}
    return io, {
        "compared": "ONNX Runtime against torch, on real images: mean and log_var of the "
        "encoder, logits of the decoder at z = mean",
        "rule": f"max |onnx - torch| <= {PARITY_RTOL:g} * max(1, max |torch|)",
        "results": compared,
    }


def parity(name: str, n: int, want: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """The largest difference of an output and its tolerance; raises ExportError when
    the shapes differ or the difference exceeds the tolerance."""
    scale = float(np.abs(want).max(initial=0.0))
    tolerance = PARITY_RTOL * max(1.0, scale)
    diff = float(np.abs(want - got).max(initial=0.0)) if got.shape == want.shape else math.inf
    if got.shape != want.shape or not diff <= tolerance:
        raise ExportError(
            f"ONNX Runtime disagrees with torch on {name} at batch {n}: shape {got.shape} vs "
            f"{want.shape}, max abs diff {diff:.3g} over {want.size} values whose largest "
            f"magnitude is {scale:.3g} (tolerance {PARITY_RTOL:g} × max(1, {scale:.3g}) = "
            f"{tolerance:.3g})"
        )
    return {
        "max_abs_diff": float(f"{diff:.3g}"),
        "max_abs": round(scale, 4),
        "tolerance": float(f"{tolerance:.3g}"),
    }
