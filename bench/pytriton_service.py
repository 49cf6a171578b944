"""The protocol's reference implementation as a peer: PyTriton (Triton Inference Server
in front of a Python callable) serving the same encoder.onnx under ONNX Runtime as
`mnist-encoder`, x UINT8 (N, 1, 28, 28) -> mean, log_var, behind Triton's dynamic
batcher; it scales the pixels to [0, 1] as vae-serve does. It runs in its own virtual
environment (bench/.venv-pytriton: nvidia-pytriton, onnxruntime, numpy < 2;
bench/run.sh makes it); from the repository root:

    BENCH_MODEL_DIR=model_store/mnist/1 bench/.venv-pytriton/bin/python \\
        -m bench.pytriton_service --http-port 8105 --grpc-port 8106 --metrics-port 8107

The session gets the service's options (vae_contract.graphs: no spinning threads, one
inter-op thread, all cores intra-op), so the two differ only in how they serve.
"""

from __future__ import annotations

import argparse
import os
import sysconfig
from pathlib import Path
from typing import Any


def _find_libpython() -> None:
    """Triton's Python backend stub links libpython: the interpreter's LIBDIR must be on
    LD_LIBRARY_PATH of the server that PyTriton starts (it inherits this environment)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])


def serve(model_dir: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from vae_contract.graphs import session_options

    options = session_options(len(os.sched_getaffinity(0)))
    session = ort.InferenceSession(
        str(model_dir / "encoder.onnx"), options, providers=["CPUExecutionProvider"]
    )
    shape = tuple(session.get_inputs()[0].shape[1:])  # (C, H, W)
    latent = session.get_outputs()[0].shape[1]

    @batch
    def encode(x: Any) -> dict[str, Any]:
        pixels = x.astype(np.float32) / np.float32(255.0)
        mean, log_var = session.run(["mean", "log_var"], {"x": pixels})
        return {"mean": mean, "log_var": log_var}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_verbose=0,
    )
    # PyTriton guards Triton's statistics and model repository (configuration) APIs with
    # a token of its own by default; perf_analyzer reads both, and nothing is guarded
    # on vae-serve's side of the benchmark either.
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name="mnist-encoder",
            infer_func=encode,
            inputs=[Tensor(name="x", dtype=np.uint8, shape=shape)],
            outputs=[
                Tensor(name="mean", dtype=np.float32, shape=(latent,)),
                Tensor(name="log_var", dtype=np.float32, shape=(latent,)),
            ],
            # Triton's batcher as vae-serve's: up to 256 rows, no waiting for batch-mates.
            config=ModelConfig(
                max_batch_size=256, batcher=DynamicBatcher(max_queue_delay_microseconds=0)
            ),
            strict=True,
        )
        triton.serve()


def main() -> None:
    parser = argparse.ArgumentParser(prog="pytriton_service", description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8105)
    parser.add_argument("--grpc-port", type=int, default=8106)
    parser.add_argument("--metrics-port", type=int, default=8107)
    args = parser.parse_args()
    _find_libpython()
    model_dir = Path(os.environ["BENCH_MODEL_DIR"])
    serve(model_dir, args.http_port, args.grpc_port, args.metrics_port)


if __name__ == "__main__":
    main()
