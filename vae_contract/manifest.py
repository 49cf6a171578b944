"""`manifest.json`, as docs/manifest.md defines it: the service's only view of a model,
and what the trainer validates before it publishes one."""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

# The store's folder names; also what a `model` query may be.
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
FORMAT_VERSION = 1
Likelihood = Literal["bernoulli", "continuous_bernoulli"]
Dim = int | str  # a static size, or the name of a dynamic axis ("batch")


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


class ScoreCalibration(_Strict):
    """Quantiles of one anomaly score (higher is more anomalous) at the calibration's levels."""

    k: PositiveInt  # importance samples the score was measured with
    quantiles: list[float]


class Calibration(_Strict):
    """Quantiles of the ELBO, and of the other anomaly scores, of held-out normal data,
    for anomaly thresholds. Manifests without `scores` calibrate the ELBO only."""

    split: str
    n: int
    k: PositiveInt
    seed: int
    statistic: Literal["elbo"]
    levels: list[float]
    elbo_quantiles: list[float]
    scores: dict[str, ScoreCalibration] = Field(default_factory=dict)

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

    @model_validator(mode="after")
    def _graphs_match_shapes(self) -> Self:
        """The declared graph I/O must agree with `input` and `latent_dim`."""
        c, h, w, latent = *self.input.shape, self.latent_dim
        expected = {
            "encoder": ({"x": [c, h, w]}, {"mean": [latent], "log_var": [latent]}),
            "decoder": ({"z": [latent]}, {"logits": [c, h, w]}),
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
                        f"but input and latent_dim imply (batch, ...) {wanted}"
                    )
        return self
