"""The peer a user would write first: FastAPI, a sync endpoint taking a JSON list
of floats, the PyTorch eager model, one image per model call, no batching.

The torch model is rebuilt from the same encoder.onnx the service runs, so all
peers compute the same encoder: the graph the trainer exports for an MLP is a
chain of Reshape -> (Gemm -> Elu)* -> Gemm -> Split, and each Gemm's weight
(out, in) is exactly an `nn.Linear`'s (trainer/model.py). Other graphs (the
conv architecture) are refused.

    BENCH_MODEL_DIR=model_store/mnist/1 uvicorn --factory bench.naive_server:create_app
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch
from fastapi import FastAPI
from onnx import numpy_helper
from torch import nn


class OnnxMLPEncoder(nn.Module):
    """x (B, C, H, W) -> mean, log_var (B, L), as the exported MLP encoder computes them."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.body(x.flatten(1)).chunk(2, dim=-1)
        return mean, log_var


def encoder_from_onnx(path: Path) -> OnnxMLPEncoder:
    """An eager torch module with the weights and layers of an exported MLP encoder."""
    graph = onnx.load(str(path)).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    layers: list[nn.Module] = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transB") != 1 or attrs.get("transA", 0) != 0:
                raise ValueError(f"{path}: Gemm {node.name} is not a Linear layer")
            weight, bias = weights[node.input[1]], weights[node.input[2]]
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            linear.weight.data.copy_(weight)
            linear.bias.data.copy_(bias)
            layers.append(linear)
        elif node.op_type == "Elu":
            layers.append(nn.ELU(alpha=float(attrs.get("alpha", 1.0))))
        elif node.op_type not in {"Reshape", "Flatten", "Split"}:
            raise ValueError(f"{path}: {node.op_type} is not part of an MLP encoder")
    return OnnxMLPEncoder(nn.Sequential(*layers)).eval()


def create_app(model_dir: Path | None = None) -> FastAPI:
    """The naive service; the model folder comes from BENCH_MODEL_DIR."""
    folder = model_dir or Path(os.environ["BENCH_MODEL_DIR"])
    model = encoder_from_onnx(folder / "encoder.onnx")
    app = FastAPI(title="naive VAE encoder")

    @app.post("/encode")
    def encode(pixels: list[float]) -> dict[str, list[float]]:
        """One image as a flat JSON list of C·H·W floats in [0, 1]."""
        x = torch.tensor(pixels, dtype=torch.float32).reshape(1, -1)
        with torch.no_grad():
            mean, log_var = model(x)
        return {"mean": mean[0].tolist(), "log_var": log_var[0].tolist()}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
