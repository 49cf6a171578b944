"""The BentoML peer: the same encoder.onnx under ONNX Runtime, behind BentoML's
adaptive batching (`batchable=True`), in its own virtual environment
(bench/.venv-bento; bench/run.sh makes it).

Its sessions get the service's CPU options (vae_contract/graphs.py: no spinning
threads, one inter-op thread, all cores intra-op), so the two differ only in
how they serve. The body is BentoML's own encoding of an ndarray: JSON,
{"x": [[[[...]]]]} shaped (N, C, H, W); the answer is (N, 2, L), mean then
log_var.

    BENCH_MODEL_DIR=model_store/mnist/1 bentoml serve bench.bento_service:VaeEncoder
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class VaeEncoder:
    def __init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        path = os.path.join(os.environ["BENCH_MODEL_DIR"], "encoder.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=64)
    def encode(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) floats in [0, 1] -> (N, 2, L): mean and log_var."""
        mean, log_var = self.session.run(["mean", "log_var"], {"x": x.astype(np.float32)})
        return np.stack([mean, log_var], axis=1)
