"""Three of Triton's extensions to the protocol, as plain JSON-shaped dicts that both
transports serve (HTTP as they are, gRPC parsed into the generated messages):

- model configuration: how a protocol model is served, in the shape of Triton's
  model_config.proto;
- statistics: app.statistics' figures per protocol model and version;
- the repository index: every version the store holds, and whether it serves.

Triton's load and unload are not served: the store decides what is served (a version
is a folder), and POST /admin/reload rescans it.
"""

from __future__ import annotations

import json
from typing import Any

from app import statistics
from app.config import Settings
from app.oip.models import (
    PLATFORM,
    ROLES,
    ElboParameters,
    EncoderParameters,
    Role,
    Target,
    resolve,
)
from app.oip.tensors import TensorSpec
from app.registry import Registry

BACKEND = "onnxruntime"
_REQUEST_PARAMETERS = {"encoder": EncoderParameters, "decoder": None, "elbo": ElboParameters}


def _input(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "data_type": f"TYPE_{spec.datatype}",
        "format": "FORMAT_NONE",
        "dims": list(spec.shape[1:]),  # without the batch dimension
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }


def _output(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "data_type": f"TYPE_{spec.datatype}",
        "dims": list(spec.shape[1:]),
        "label_filename": "",
        "is_shape_tensor": False,
    }


def _parameters(target: Target) -> dict[str, dict[str, str]]:
    """The request parameters the model takes, each as its JSON schema (type, range,
    default), and every datatype each input accepts."""
    found = {}
    model = _REQUEST_PARAMETERS[target.role]
    if model is not None:
        for name, schema in model.model_json_schema()["properties"].items():
            schema.pop("title", None)
            found[name] = {"string_value": json.dumps(schema, sort_keys=True)}
    for spec in target.signature.inputs:
        found[f"{spec.name}.datatypes"] = {"string_value": ",".join(spec.accepts)}
    return found


def model_config(
    registry: Registry, settings: Settings, name: str, version: str = ""
) -> dict[str, Any]:
    """The model configuration extension's answer (HTTP), and ModelConfigResponse.config."""
    target = resolve(registry, name, version)
    mv = target.mv
    kind = "KIND_CPU" if mv.provider == "CPUExecutionProvider" else "KIND_GPU"
    signature = target.signature
    return {
        "name": target.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": {"all": {}},  # every loaded version; the newest when none is named
        "max_batch_size": settings.max_images_per_request,
        "input": [_input(spec) for spec in signature.inputs],
        "output": [_output(spec) for spec in signature.outputs],
        # One call runs as soon as max_batch_size rows wait (VAE_MAX_BATCH_SIZE), or
        # when the first has waited VAE_MAX_DELAY_MS.
        "dynamic_batching": {
            "preferred_batch_size": [settings.max_batch_size],
            "max_queue_delay_microseconds": round(settings.max_delay_ms * 1000),
            "preserve_ordering": True,
        },
        # One batcher per graph runs one call at a time.
        "instance_group": [{"name": f"{mv.label}", "kind": kind, "count": 1}],
        "default_model_filename": "",
        "parameters": _parameters(target),
        "model_transaction_policy": {"decoupled": False},
    }


def _versions(registry: Registry, name: str, version: str) -> list[Target]:
    if version:
        return [resolve(registry, name, version)]
    newest = resolve(registry, name)  # NotFound for an unknown model
    versions = registry.models().get(newest.mv.name, {})
    return [Target(versions[v], newest.role) for v in sorted(versions)]


def model_statistics(registry: Registry, name: str = "", version: str = "") -> dict[str, Any]:
    """The statistics extension's answer: every model, one model's versions, or one version."""
    if name:
        targets = _versions(registry, name, version)
    else:
        targets = [
            Target(mv, role)
            for _, versions in sorted(registry.models().items())
            for role in ROLES
            for _, mv in sorted(versions.items())
        ]
    return {
        "model_stats": [
            statistics.report(t.name, t.mv.version, statistics.of(t.mv, t.role)) for t in targets
        ]
    }


def repository_index(registry: Registry, ready: bool = False) -> list[dict[str, str]]:
    """Every protocol model of every version the store held at the last scan: READY when
    served, else UNAVAILABLE with the reason it was refused."""
    found = []
    for (model, version), reason in sorted(registry.index().items()):
        if ready and reason is not None:
            continue
        role: Role
        for role in ROLES:
            found.append(
                {
                    "name": f"{model}-{role}",
                    "version": str(version),
                    "state": "READY" if reason is None else "UNAVAILABLE",
                    "reason": reason or "",
                }
            )
    return found
