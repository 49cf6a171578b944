"""The protocol's models, and the one place where the protocol meets the rest of app/.

Each version of a store model is served as three protocol models, each answering one
question with plain tensors:

    {model}-encoder  x (N, C, H, W) -> mean, log_var (N, L); parameter sample=true (or
                     asking for the output z) adds z
    {model}-decoder  z (N, L) -> pixels (N, C, H, W), the likelihood's means
    {model}-elbo     x (N, C, H, W) -> elbo, reconstruction, kl, bits_per_dim,
                     anomaly_score, percentile, is_anomaly (N,)

Their versions are the store's. Requests take the native endpoints' path through
app.inputs (validation and limits), app.inference (the batchers) and vae_contract.scores,
so the same pixels give the same numbers by either API.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import inference
from app.config import Settings
from app.context import served
from app.errors import BadRequest, NotFound, Unprocessable
from app.inputs import check_latents, pixels_to_x
from app.oip.tensors import TensorSpec, check_datatype, check_shape, from_bytes, from_list
from app.registry import ModelVersion, Registry
from vae_contract.manifest import Manifest
from vae_contract.scores import Score

Role = Literal["encoder", "decoder", "elbo"]
ROLES: tuple[Role, ...] = ("encoder", "decoder", "elbo")
PLATFORM = "onnx_onnxv1"  # the protocol's name for ONNX models run by ONNX Runtime
# A parameter's value as both transports carry it.
Value = bool | int | float | str


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def signature(manifest: Manifest, role: Role) -> Signature:
    """The tensors of one protocol model; -1 is the batch (any size up to the request limit)."""
    # Images are declared as bytes, the form cameras and files give them (and random
    # bytes, perf_analyzer's default data, are valid images); floats in [0, 1] are
    # accepted too (the model configuration lists both).
    image = TensorSpec("x", "UINT8", (-1, *manifest.input.shape), accepts=("FP32", "UINT8"))
    latent = (-1, manifest.latent_dim)
    if role == "encoder":
        outputs = tuple(TensorSpec(name, "FP32", latent) for name in ("mean", "log_var", "z"))
        return Signature((image,), outputs)
    if role == "decoder":
        z = TensorSpec("z", "FP32", latent, accepts=("FP32",))
        return Signature((z,), (TensorSpec("pixels", "FP32", (-1, *manifest.input.shape)),))
    per_image = [
        TensorSpec(name, "FP32", (-1,))
        for name in ("elbo", "reconstruction", "kl", "bits_per_dim", "anomaly_score", "percentile")
    ]
    return Signature((image,), (*per_image, TensorSpec("is_anomaly", "BOOL", (-1,))))


@dataclass(frozen=True)
class Target:
    """A protocol model resolved to a loaded version of a store model."""

    mv: ModelVersion
    role: Role

    @property
    def name(self) -> str:
        return f"{self.mv.name}-{self.role}"

    @property
    def signature(self) -> Signature:
        # Built once per loaded version: it is on the path of every request.
        found = _SIGNATURES.setdefault(self.mv, {})
        if self.role not in found:
            found[self.role] = signature(self.mv.manifest, self.role)
        return found[self.role]


_SIGNATURES: weakref.WeakKeyDictionary[ModelVersion, dict[Role, Signature]] = (
    weakref.WeakKeyDictionary()
)


def _split(name: str) -> tuple[str, Role]:
    """ "fashion-mnist-elbo" -> ("fashion-mnist", "elbo")."""
    model, _, role = name.rpartition("-")
    for known in ROLES:
        if role == known and model:
            return model, known
    raise NotFound(
        f"no model named {name!r}: protocol models are named <model>-encoder, "
        "<model>-decoder or <model>-elbo"
    )


def _version(name: str, version: str) -> int | None:
    """The URL's or message's version string; empty means the newest."""
    if not version:
        return None
    if not version.isdigit() or str(int(version)) != version or version == "0":
        raise NotFound(f"model {name!r} has no version {version!r}: versions are 1, 2, ...")
    return int(version)


def resolve(registry: Registry, name: str, version: str = "") -> Target:
    """The protocol model a request names, or NotFound / Unavailable as for the native API."""
    model, role = _split(name)
    number = _version(name, version)
    try:
        return Target(registry.resolve(model, number), role)
    except NotFound as exc:  # the registry speaks of store models: say which protocol model
        raise NotFound(f"{name!r}: {exc.detail}") from None


@contextmanager
def leased(registry: Registry, name: str, version: str = "") -> Iterator[Target]:
    """As app.deps.leased: resolved and leased in one step, so a reload cannot retire it."""
    target = resolve(registry, name, version)
    # Metrics and log lines name the model as the client did (mnist-encoder).
    served.set((target.name, target.mv.labels[1]))
    with target.mv.lease():
        yield target


def metadata(registry: Registry, name: str, version: str = "") -> dict[str, Any]:
    """The protocol's model metadata: versions (all loaded ones), platform and tensors."""
    target = resolve(registry, name, version)
    versions = registry.models().get(target.mv.name, {})
    found = target.signature
    return {
        "name": name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": PLATFORM,
        "inputs": [spec.metadata() for spec in found.inputs],
        "outputs": [spec.metadata() for spec in found.outputs],
    }


# -- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputTensor:
    """One input as a transport received it: raw little-endian bytes, or a list of values."""

    name: str
    datatype: Any
    shape: Any
    raw: bytes | None = None
    values: Any = None


def read_inputs(target: Target, tensors: Sequence[InputTensor]) -> dict[str, np.ndarray]:
    """The request's tensors as arrays, each checked against the model's signature:
    known name, once only, an accepted datatype, and exactly as much data as its shape."""
    specs = {spec.name: spec for spec in target.signature.inputs}
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        spec = specs.get(tensor.name)
        if spec is None:
            wanted = ", ".join(repr(n) for n in specs)
            raise BadRequest(f"{target.name} has no input {tensor.name!r}; its input is {wanted}")
        if tensor.name in arrays:
            raise BadRequest(f"input {tensor.name!r} is given twice")
        dtype = check_datatype(spec, tensor.datatype)
        shape = check_shape(tensor.name, tensor.shape)
        if tensor.raw is not None:
            arrays[tensor.name] = from_bytes(tensor.name, tensor.raw, dtype, shape)
        elif tensor.values is not None:
            arrays[tensor.name] = from_list(tensor.name, tensor.datatype, tensor.values, shape)
        else:
            raise BadRequest(f"input {tensor.name!r} has no data")
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise BadRequest(f"{target.name} needs the input {missing[0]!r}")
    return arrays


# -- parameters ---------------------------------------------------------------------------

Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Parameters(BaseModel):
    # strict: JSON true is not the seed 1, nor "3" the k 3.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


P = TypeVar("P", bound=_Parameters)


# The native endpoints' query parameters: the same names, meanings and defaults.
# resize: true or "stretch" (to the model's height×width), "crop" (the trainer's centre crop).
OipResize = bool | Literal["stretch", "crop"]


class EncoderParameters(_Parameters):
    sample: bool = False
    seed: Seed | None = None
    resize: OipResize = False


class ElboParameters(_Parameters):
    k: Annotated[int, Field(ge=1)] | None = None
    seed: Seed = 0
    score: Score | None = None  # the version's default: typicality, or elbo before it
    fpr: Annotated[float, Field(ge=0, le=1)] = 0.01
    resize: OipResize = False


_KNOWN = {
    "encoder": list(EncoderParameters.model_fields),
    "decoder": [],
    "elbo": list(ElboParameters.model_fields),
}


def read_parameters(model: type[P], target: Target, given: Mapping[str, Value]) -> P:
    """The request's parameters for this model, validated as the native query parameters
    are (422 for a bad value); an unknown name is a 400 that lists the known ones."""
    if not given:
        return model()
    known = _KNOWN[target.role]
    unknown = sorted(set(given) - set(known))
    if unknown:
        listed = ", ".join(known) or "none"
        raise BadRequest(f"{target.name} has no parameter {unknown[0]!r}; its parameters: {listed}")
    try:
        return model.model_validate(dict(given))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise Unprocessable(f"parameter {where!r}: {error['msg']}") from None


# -- inference ----------------------------------------------------------------------------


Outputs = dict[str, np.ndarray | None]  # None: not computed for this request
_EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"


@dataclass(frozen=True)
class Answer:
    outputs: dict[str, np.ndarray]  # in the order they are returned
    parameters: dict[str, Value]


def _check_outputs(target: Target, requested: Sequence[str] | None) -> None:
    """Refuse an output the model does not have before any work is done."""
    if requested is None:
        return
    known = [spec.name for spec in target.signature.outputs]
    for i, name in enumerate(requested):
        if name not in known:
            raise BadRequest(
                f"{target.name} has no output {name!r}; its outputs: {', '.join(known)}"
            )
        if name in requested[:i]:
            raise BadRequest(f"output {name!r} is asked for twice")


def _pick(
    target: Target, available: Outputs, requested: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """The outputs asked for, or all that exist when none are named."""
    if requested is None:
        return {name: array for name, array in available.items() if array is not None}
    picked = {}
    for name in requested:
        array = available[name]
        if array is None:
            raise Unprocessable(_ABSENT[target.role, name])
        picked[name] = array
    return picked


_ABSENT = {
    ("encoder", "z"): "output 'z' is a draw: it is not given with the parameter sample=false",
    ("elbo", "percentile"): "this model version has no calibration of the score asked for "
    "that holds here (GET /models says why), so no percentile (send another score, or "
    "calibrate it with vae-calibrate)",
    ("elbo", "is_anomaly"): "this model version has no calibration of the score asked for "
    "that holds here (GET /models says why), so no is_anomaly (send another score, or "
    "calibrate it with vae-calibrate)",
}


async def infer(
    target: Target,
    tensors: Sequence[InputTensor],
    given: Mapping[str, Value],
    settings: Settings,
    requested: Sequence[str] | None = None,
) -> Answer:
    """Run one inference request: parameters and inputs checked before anything is
    queued, then the batched model, then the outputs asked for."""
    _check_outputs(target, requested)
    # Set by Triton's own gRPC clients (perf_analyzer) on every request: it asks a
    # decoupled model for an empty last response; ours answer once, so it changes nothing.
    if _EMPTY_FINAL_RESPONSE in given:
        given = {name: value for name, value in given.items() if name != _EMPTY_FINAL_RESPONSE}
    if target.role == "encoder" and requested is not None and "z" in requested:
        # Asking for z is asking for a draw (perf_analyzer asks for every output there is).
        given = {"sample": True, **given}
    run = {"encoder": _encode, "decoder": _decode, "elbo": _elbo}[target.role]
    outputs, parameters = await run(target, tensors, given, settings)
    return Answer(_pick(target, outputs, requested), parameters)


async def _encode(
    target: Target, tensors: Sequence[InputTensor], given: Mapping[str, Value], settings: Settings
) -> tuple[Outputs, dict[str, Value]]:
    mv = target.mv
    parameters = read_parameters(EncoderParameters, target, given)
    x = read_inputs(target, tensors)["x"]
    x = await pixels_to_x(x, mv.manifest, settings, resize=parameters.resize)
    encoded = await inference.encode(mv, x, sample=parameters.sample, seed=parameters.seed)
    return {"mean": encoded.mean, "log_var": encoded.log_var, "z": encoded.z}, {}


async def _decode(
    target: Target, tensors: Sequence[InputTensor], given: Mapping[str, Value], settings: Settings
) -> tuple[Outputs, dict[str, Value]]:
    mv = target.mv
    read_parameters(_Parameters, target, given)  # it takes none: refuse any
    z = check_latents(read_inputs(target, tensors)["z"], mv.manifest.latent_dim, settings)
    pixels = await inference.decode(mv, z)
    return {"pixels": pixels.astype(np.float32, copy=False)}, {}


async def _elbo(
    target: Target, tensors: Sequence[InputTensor], given: Mapping[str, Value], settings: Settings
) -> tuple[Outputs, dict[str, Value]]:
    mv = target.mv
    parameters = read_parameters(ElboParameters, target, given)
    score = inference.choose_score(mv, parameters.score)
    k = inference.importance_samples(mv, score, parameters.k, settings.max_k)
    x = read_inputs(target, tensors)["x"]
    x = await pixels_to_x(x, mv.manifest, settings, resize=parameters.resize)
    found = await inference.assess(
        mv, x, k=k, seed=parameters.seed, score=score, fpr=parameters.fpr
    )
    bounds = found.bounds
    per_image = {
        "elbo": bounds.elbo,
        "reconstruction": bounds.reconstruction,
        "kl": bounds.kl,
        "bits_per_dim": bounds.bits_per_dim,
        "anomaly_score": found.anomaly_score,
        "percentile": found.percentile,
    }
    outputs: Outputs = {  # FP32 on the wire; the native JSON keeps float64
        name: None if values is None else values.astype(np.float32)
        for name, values in per_image.items()
    }
    outputs["is_anomaly"] = found.is_anomaly
    answered: dict[str, Value] = {
        "k": k,
        "seed": parameters.seed,
        "score": score,
        "fpr": parameters.fpr,
    }
    if found.threshold is not None:
        answered["anomaly_threshold"] = found.threshold
    if found.problem is not None:
        answered["calibration_problem"] = found.problem
    return outputs, answered
