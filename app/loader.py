"""Load one model version with ONNX Runtime, and refuse it unless it keeps the contract.

`load_version` blocks (it hashes files and builds sessions); callers run it in
a thread. It either returns two verified, warmed-up graphs or raises
`LoadError` with the reason, which the registry logs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from vae_contract.graphs import session_options
from vae_contract.manifest import GraphSpec, Manifest

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]


class LoadError(Exception):
    """A version that must not be served; the message says why."""


@dataclass(frozen=True)
class Graph:
    """One ONNX Runtime session and the names it is called with."""

    session: Any  # onnxruntime.InferenceSession (untyped)
    input_name: str
    output_names: list[str]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self.session.run(self.output_names, {self.input_name: x})
        return outputs


@dataclass(frozen=True)
class LoadedGraphs:
    manifest: Manifest
    encoder: Graph  # x (N, C, H, W) -> mean, log_var (N, L)
    decoder: Graph  # z (N, L) -> logits (N, C, H, W)
    provider: str  # the execution provider that runs the graphs


def providers(device: Device) -> list[str]:
    """Execution providers to ask for; CUDA only where onnxruntime-gpu offers it."""
    has_cuda = CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise LoadError(
            "VAE_DEVICE=cuda, but onnxruntime has no CUDA execution provider "
            "(install onnxruntime-gpu)"
        )
    if device == "cpu" or not has_cuda:
        return [CPU]
    return [CUDA, CPU]


def read_manifest(folder: Path) -> Manifest:
    try:
        raw = json.loads((folder / "manifest.json").read_bytes())
        return Manifest.model_validate(raw)
    except FileNotFoundError:
        raise LoadError("manifest.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"manifest.json is not JSON: {exc}") from None
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()
        )
        raise LoadError(f"manifest.json does not follow docs/manifest.md: {errors}") from None


def _read_verified(folder: Path, spec: GraphSpec) -> bytes:
    """The graph file's bytes, if they hash to the manifest's sha256.

    The session is built from these same bytes, so what was checked is what runs.
    """
    try:
        data = (folder / spec.file).read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read {spec.file}: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise LoadError(f"{spec.file} has sha256 {digest}, the manifest says {spec.sha256}")
    return data


def _check_io(session: Any, spec: GraphSpec) -> None:
    """The graph's inputs and outputs must be the manifest's, float32, batch dynamic."""
    for role, declared, actual in (
        ("inputs", spec.inputs, session.get_inputs()),
        ("outputs", spec.outputs, session.get_outputs()),
    ):
        found = {arg.name: arg for arg in actual}
        if set(found) != set(declared):
            raise LoadError(
                f"{spec.file} has {role} {sorted(found)}, the manifest declares {sorted(declared)}"
            )
        for name, dims in declared.items():
            arg = found[name]
            shape = list(arg.shape)
            if arg.type != "tensor(float)":
                raise LoadError(f"{spec.file}: {name} is {arg.type}, not tensor(float)")
            # Static sizes must agree; a symbolic size in the graph is checked by the warm-up.
            static_mismatch = len(shape) != len(dims) or any(
                isinstance(want, int) and isinstance(got, int) and want != got
                for want, got in zip(dims, shape, strict=False)
            )
            if static_mismatch or isinstance(shape[0], int):
                raise LoadError(
                    f"{spec.file}: {name} has shape {shape}, the manifest declares {dims} "
                    "(with a dynamic batch axis)"
                )


def _warm_up(manifest: Manifest, encoder: Graph, decoder: Graph) -> None:
    """Run both graphs once at batch 2: catches graphs that load but cannot run,
    or whose real output shapes differ from the declared ones."""
    n, latent, image = 2, manifest.latent_dim, manifest.input.shape
    try:
        mean, log_var = encoder.run(np.zeros((n, *image), np.float32))
        (logits,) = decoder.run(np.zeros((n, latent), np.float32))
    except Exception as exc:  # ORT raises its own unexported exception types
        raise LoadError(f"a test run of the graphs failed: {exc}") from None
    for name, got, want in (
        ("mean", mean.shape, (n, latent)),
        ("log_var", log_var.shape, (n, latent)),
        ("logits", logits.shape, (n, *manifest.logits_shape)),
    ):
        if tuple(got) != want:
            raise LoadError(f"a test run gave {name} of shape {tuple(got)}, expected {want}")


def _session(data: bytes, spec: GraphSpec, asked: list[str], threads: int) -> Any:
    try:
        return ort.InferenceSession(data, sess_options=session_options(threads), providers=asked)
    except Exception as exc:  # ORT raises its own unexported exception types
        raise LoadError(f"ONNX Runtime cannot load {spec.file}: {exc}") from None


def load_version(
    folder: Path, name: str, version: int, *, device: Device, threads: int
) -> LoadedGraphs:
    """Read, verify and load `<store>/<name>/<version>`; raises LoadError."""
    manifest = read_manifest(folder)
    if (manifest.name, manifest.version) != (name, version):
        raise LoadError(
            f"manifest.json describes {manifest.name} version {manifest.version}, "
            f"but lies in {name}/{version}"
        )
    asked = providers(device)
    graphs = []
    for role, spec, output_names in (
        ("encoder", manifest.graphs.encoder, ["mean", "log_var"]),
        ("decoder", manifest.graphs.decoder, ["logits"]),
    ):
        session = _session(_read_verified(folder, spec), spec, asked, threads)
        _check_io(session, spec)
        input_name = "x" if role == "encoder" else "z"
        graphs.append(Graph(session, input_name, output_names))
    encoder, decoder = graphs
    used = encoder.session.get_providers()[0]
    if device == "cuda" and used != CUDA:
        raise LoadError(f"VAE_DEVICE=cuda, but ONNX Runtime fell back to {used} (no usable GPU)")
    _warm_up(manifest, encoder, decoder)
    return LoadedGraphs(manifest, encoder, decoder, used)
