"""`manifest.json`, as docs/manifest.md defines it: the service's only view of a model,
and what the trainer validates before it publishes one."""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

# The store's folder names; also what a `model` query may be.
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
FORMAT_VERSION = 1
Likelihood = Literal["bernoulli", "continuous_bernoulli", "discretized_logistic"]
Dim = int | str  # a static size, or the name of a dynamic axis ("batch")


def parameters_per_value(likelihood: Likelihood) -> int:
    """How many decoder outputs each of the D values takes: a Bernoulli's logit, or a
    discretised logistic's location and log-scale (the decoder's 2C channels)."""
    return 2 if likelihood == "discretized_logistic" else 1


class _Strict(BaseModel):
    # Unknown fields are kept (and shown by /models) so a newer trainer can add some.
    model_config = ConfigDict(extra="allow", frozen=True)


class InputSpec(_Strict):
    channels: PositiveInt
    height: PositiveInt
    width: PositiveInt

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def size(self) -> int:
        """D, the number of values in one image."""
        return self.channels * self.height * self.width


class Preprocessing(_Strict):
    scale: float = Field(255.0, gt=0)


class GraphSpec(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: dict[str, list[Dim]]
    outputs: dict[str, list[Dim]]

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        # The file must live in the version folder: no paths, no escaping it.
        if not value or "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError(f"graph file {value!r} is not a plain file name")
        return value


class Graphs(_Strict):
    encoder: GraphSpec
    decoder: GraphSpec


class Compressor(_Strict):
    """What made the PNG code lengths a score was calibrated with (docs/manifest.md)."""

    format: Literal["png"]
    library: str  # e.g. "Pillow 12.0.0": for people; `probe` is what the service checks
    zlib: str
    compress_level: int = Field(ge=0, le=9)
    probe: list[float] | None = None  # bits of the probe images (scores.probe_images)


class Gaussian(_Strict):
    """The typicality score's detector: a Gaussian over per-image statistics, fitted on
    held-out normal images (their sample mean and covariance)."""

    statistics: list[str]  # names of the statistics, in the order of mean and covariance
    images: str  # which held-out images it was fitted on, e.g. "validation[0::2]"
    n: PositiveInt
    mean: list[float]
    covariance: list[list[float]]

    @model_validator(mode="after")
    def _positive_definite(self) -> Self:
        d = len(self.statistics)
        if d == 0 or len(set(self.statistics)) != d:
            raise ValueError("statistics must be distinct and at least one")
        if len(self.mean) != d or len(self.covariance) != d:
            raise ValueError("mean and covariance need one entry per statistic")
        if any(len(row) != d for row in self.covariance):
            raise ValueError("covariance must be square")
        mean, cov = np.array(self.mean), np.array(self.covariance)
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise ValueError("mean and covariance must be finite")
        if not np.allclose(cov, cov.T, rtol=1e-9, atol=0.0):
            raise ValueError("covariance must be symmetric")
        try:
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError("covariance must be positive definite") from None
        return self


class ScoreCalibration(_Strict):
    """Quantiles of one anomaly score (higher is more anomalous) at the calibration's levels."""

    k: PositiveInt  # importance samples the score was measured with
    quantiles: list[float]
    # Held-out images the quantiles come from, when not all of the calibration's.
    images: str | None = None
    n: PositiveInt | None = None
    compressor: Compressor | None = None  # scores that use the PNG code length
    gaussian: Gaussian | None = None  # the typicality score's fitted detector


class Calibration(_Strict):
    """Quantiles of the ELBO, and of the other anomaly scores, of held-out normal data,
    for anomaly thresholds. Manifests without `scores` calibrate the ELBO only."""

    split: str  # "validation" (the trainer's), or "normal" (vae-calibrate --normal)
    n: int
    k: PositiveInt
    seed: int
    statistic: Literal["elbo"]
    levels: list[float]
    elbo_quantiles: list[float]
    scores: dict[str, ScoreCalibration] = Field(default_factory=dict)
    # The rule thresholds are held to (vae_contract.calibration): a threshold at fpr f
    # needs n·f ≥ min_tail held-out images beyond it. Absent from older manifests.
    min_tail: PositiveInt | None = None
    source: str | None = None  # the folder of normal images, for split "normal"
    # Score -> why it could not be calibrated, or why its thresholds fall short of the
    # rule at the default fpr (0.01).
    problems: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monotone(self) -> Self:
        levels = self.levels
        named = {"elbo_quantiles": self.elbo_quantiles}
        named |= {f"scores.{name}.quantiles": s.quantiles for name, s in self.scores.items()}
        if len(levels) < 2:
            raise ValueError("levels needs at least 2 values")
        if not all(math.isfinite(v) for v in levels):
            raise ValueError("levels must be finite")
        if levels[0] < 0 or levels[-1] > 1:
            raise ValueError("levels must lie in [0, 1]")
        if any(b <= a for a, b in itertools.pairwise(levels)):
            raise ValueError("levels must be strictly increasing")
        for field, quantiles in named.items():
            if len(quantiles) != len(levels):
                raise ValueError(f"levels and {field} need the same length")
            if not all(math.isfinite(v) for v in quantiles):
                raise ValueError(f"{field} must be finite")
            if any(b < a for a, b in itertools.pairwise(quantiles)):
                raise ValueError(f"{field} must be non-decreasing")
        return self


class Manifest(_Strict):
    format_version: Literal[1]  # FORMAT_VERSION
    name: str = Field(pattern=f"^{MODEL_NAME.pattern}$")
    version: PositiveInt
    created: datetime
    input: InputSpec
    preprocessing: Preprocessing
    latent_dim: PositiveInt
    likelihood: Likelihood
    opset: int
    graphs: Graphs
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None

    @property
    def logits_shape(self) -> tuple[int, int, int]:
        """The decoder's output per latent: (P·C, H, W), P the likelihood's parameters per value."""
        c, h, w = self.input.shape
        return (c * parameters_per_value(self.likelihood), h, w)

    @model_validator(mode="after")
    def _graphs_match_shapes(self) -> Self:
        """The declared graph I/O must agree with `input` and `latent_dim`."""
        c, h, w, latent = *self.input.shape, self.latent_dim
        expected = {
            "encoder": ({"x": [c, h, w]}, {"mean": [latent], "log_var": [latent]}),
            "decoder": ({"z": [latent]}, {"logits": list(self.logits_shape)}),
        }
        for graph_name, (inputs, outputs) in expected.items():
            graph: GraphSpec = getattr(self.graphs, graph_name)
            for role, declared, wanted in (
                ("inputs", graph.inputs, inputs),
                ("outputs", graph.outputs, outputs),
            ):
                got = {name: dims[1:] for name, dims in declared.items()}
                if got != wanted:
                    raise ValueError(
                        f"{graph_name} {role} are declared as {declared}, "
                        f"but input, latent_dim and likelihood imply (batch, ...) {wanted}"
                    )
        return self
