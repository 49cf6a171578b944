"""Response shapes, for OpenAPI. Hot routes build these as plain dicts and
serialise them with orjson (`NumpyJSON`); the models here document them."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

NPZ = "application/x-npz"


class NumpyJSON(Response):
    """JSON via orjson, which writes numpy arrays directly (float32 round-trips exactly)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def npz(arrays: dict[str, np.ndarray], headers: dict[str, str]) -> Response:
    """Named arrays as one uncompressed .npz (`np.load` opens it): for bulk clients,
    a tenth of the time orjson takes to write the same floats as text, a third the bytes."""
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **arrays)
    return Response(out.getvalue(), media_type=NPZ, headers=headers)


def npy(array: np.ndarray, headers: dict[str, str]) -> Response:
    """One array as a .npy body (`np.load(io.BytesIO(body))` opens it)."""
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return Response(out.getvalue(), media_type="application/x-npy", headers=headers)


def wants_npz(accept: str | None) -> bool:
    """Whether an Accept header names the .npz answer (JSON stays the default)."""
    return accept is not None and NPZ in accept.lower()


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class ErrorDetail(BaseModel):
    model_config = _examples({"detail": "image 0 is 32×32 pixels, the model expects 28×28"})
    detail: str = Field(description="What was wrong, in a sentence.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Invalid parameters only: each one's location and message (FastAPI's)."
    )


class Latent(BaseModel):
    mean: list[float] = Field(description="Mean of q(z|x), length L.")
    log_var: list[float] = Field(description="Log variance of q(z|x), length L.")
    z: list[float] | None = Field(None, description="One draw mean + exp(log_var/2)·eps.")


class EncodeResponse(BaseModel):
    model_config = _examples(
        {
            "model": "mnist",
            "version": 1,
            "results": [{"mean": [0.12, -1.3], "log_var": [-4.1, -3.9], "z": [0.1, -1.28]}],
        }
    )
    model: str
    version: int
    results: list[Latent] = Field(description="One per image, in request order.")


class PixelsResponse(BaseModel):
    model_config = _examples({"model": "mnist", "version": 1, "pixels": [[[[0.0, 0.02]]]]})
    model: str
    version: int
    pixels: list[list[list[list[float]]]] = Field(description="Pixel means in [0, 1], N×C×H×W.")


class SampleResponse(PixelsResponse):
    model_config = _examples(
        {
            "model": "mnist",
            "version": 1,
            "seed": 7,
            "temperature": 1.0,
            "z": [[0.3, -0.2]],
            "pixels": [[[[0.0, 0.02]]]],
        }
    )
    seed: int = Field(description="The seed used; send it back to get the same images.")
    temperature: float
    z: list[list[float]] = Field(description="The prior draws decoded, N×L.")


class ElboResult(BaseModel):
    elbo: float = Field(description="ELBO (k = 1) or importance-weighted bound (k > 1), nats.")
    reconstruction: float = Field(description="E_q log p(x|z), mean over the k samples, nats.")
    kl: float = Field(description="KL(q(z|x) || p(z)), closed form, nats.")
    bits_per_dim: float = Field(description="-elbo / (D ln 2).")
    anomaly_score: float = Field(
        description="Higher is more anomalous. typicality: the squared Mahalanobis distance "
        "of (elbo, kl, complexity_bits, pixel_entropy) from the calibration's Gaussian; "
        "elbo and iwae: -elbo; complexity: -elbo - ln 2 · complexity_bits."
    )
    complexity_bits: float | None = Field(
        None,
        description="L(x), the PNG code length of the image in bits "
        "(score=complexity or typicality).",
    )
    pixel_entropy: float | None = Field(
        None,
        description="Σ H(x_i), the binary entropy of the pixel values in nats (score=typicality).",
    )
    percentile: float | None = Field(
        description="Percentage of held-out normal images that score at least as anomalous, "
        "0-100 (low is unusual; for elbo, where the ELBO sits among theirs); null without "
        "a calibration of the score."
    )
    is_anomaly: bool | None = Field(
        description="anomaly_score > anomaly_threshold; null without a calibration of the score."
    )


class ElboResponse(BaseModel):
    model_config = _examples(
        {
            "model": "mnist",
            "version": 1,
            "k": 1,
            "seed": 0,
            "score": "typicality",
            "fpr": 0.01,
            "threshold": None,
            "anomaly_threshold": 19.8,
            "calibration_problem": None,
            "results": [
                {
                    "elbo": -92.4,
                    "reconstruction": -67.1,
                    "kl": 25.3,
                    "bits_per_dim": 0.17,
                    "anomaly_score": 2.9,
                    "complexity_bits": 2232.0,
                    "pixel_entropy": 46.1,
                    "percentile": 58.2,
                    "is_anomaly": False,
                }
            ],
        }
    )
    model: str
    version: int
    k: int
    seed: int
    score: str = Field(description="typicality, elbo, iwae or complexity: the one used.")
    fpr: float
    threshold: float | None = Field(
        description="score=elbo only: the ELBO quantile of held-out normal images at level "
        "fpr (is_anomaly: elbo < threshold); null for other scores or without a calibration."
    )
    anomaly_threshold: float | None = Field(
        description="The anomaly score that held-out normal images exceed with probability "
        "fpr; null when the score's calibration does not hold (see calibration_problem)."
    )
    calibration_problem: str | None = Field(
        None,
        description="Why anomaly_threshold, percentile and is_anomaly are null: the manifest "
        "does not calibrate the score, or this service cannot reproduce what the "
        "calibration depends on (the PNG compressor); null when the calibration holds.",
    )
    results: list[ElboResult] = Field(description="One per image, in request order.")


class ScoreCalibrationInfo(BaseModel):
    k: int = Field(description="The k the score is computed at by default.")
    calibrated: bool = Field(description="Whether /elbo gives thresholds and percentiles.")
    problem: str | None = Field(description="Why not, when not.")
    min_fpr: float | None = Field(
        None,
        description="The smallest fpr whose threshold the score's held-out images back "
        "(n·fpr ≥ 10, docs/own-images.md); /elbo withholds thresholds below it.",
    )


class VersionInfo(BaseModel):
    version: int
    provider: str = Field(description="The ONNX Runtime execution provider running it.")
    loaded_at: datetime
    created: datetime
    input: dict[str, int]
    latent_dim: int
    likelihood: str
    default_score: str = Field(description="The score /elbo uses when none is asked for.")
    scores: dict[str, ScoreCalibrationInfo] = Field(
        description="Each anomaly score, and whether its calibration holds on this service."
    )
    refused_update: str | None = Field(
        None,
        description="Set when this version's files changed on disk after it was loaded and "
        "the new files were refused: why. The copy loaded before serves on from memory.",
    )


class ModelInfo(BaseModel):
    name: str
    latest_version: int
    versions: list[VersionInfo]


class ModelsResponse(BaseModel):
    model_config = _examples(
        {
            "default_model": "mnist",
            "models": [
                {
                    "name": "mnist",
                    "latest_version": 1,
                    "versions": [
                        {
                            "version": 1,
                            "provider": "CPUExecutionProvider",
                            "loaded_at": "2026-11-24T10:00:00Z",
                            "created": "2026-11-24T09:00:00Z",
                            "input": {"channels": 1, "height": 28, "width": 28},
                            "latent_dim": 50,
                            "likelihood": "bernoulli",
                            "default_score": "typicality",
                            "scores": {
                                "typicality": {"k": 1, "calibrated": True, "problem": None},
                                "elbo": {"k": 1, "calibrated": True, "problem": None},
                                "iwae": {"k": 64, "calibrated": True, "problem": None},
                                "complexity": {"k": 1, "calibrated": True, "problem": None},
                            },
                        }
                    ],
                }
            ],
        }
    )
    default_model: str
    models: list[ModelInfo]


class VersionDetail(VersionInfo):
    manifest: dict[str, Any] = Field(description="manifest.json as loaded.")


class Refused(BaseModel):
    version: int
    reason: str


class ModelDetail(BaseModel):
    name: str
    latest_version: int
    versions: list[VersionDetail]
    refused: list[Refused] = Field(
        description="Versions in the store that failed to load and are not served."
    )


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    model_config = _examples({"ready": True, "detail": None})
    ready: bool
    detail: str | None = Field(None, description="Why the service is not ready.")


class ReloadResponse(BaseModel):
    model_config = _examples({"loaded": ["mnist/2"], "refused": {}, "retired": []})
    loaded: list[str]
    refused: dict[str, str]
    retired: list[str]
