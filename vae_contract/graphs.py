"""ONNX Runtime session options, the same for the service that serves the graphs
and the trainer that evaluates and calibrates them."""

from __future__ import annotations

from typing import Any

import onnxruntime as ort


def session_options(threads: int | None = None) -> Any:
    """Options for small CPU machines; `threads` intra-op threads (None: ORT's choice).

    Spinning threads busy-wait for work between ops; on 2 shared cores they
    starve each other and the batcher's own thread, and throughput collapses
    at large batches. One inter-op thread: these graphs are chains.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; ORT warns about unused initializers
    return options
