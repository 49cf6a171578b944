"""Service settings, read once from `VAE_*` environment variables."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vae_contract.manifest import MODEL_NAME


class Settings(BaseSettings):
    """Everything an operator can tune; each field is `VAE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore", frozen=True)

    model_store: Path = Field(
        default=Path("model_store"), description="Folder of <name>/<version>/."
    )
    default_model: str = Field(
        default="mnist", description="Model served when a request names none."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto takes CUDA when onnxruntime-gpu sees a GPU, else CPU."
    )
    # 256 = max_images_per_request: a bulk request is one call, not four (bench/profile.md).
    max_batch_size: int = Field(
        default=256, ge=1, le=4096, description="Most images in one ONNX call."
    )
    # No wait by default: requests arriving during a call batch up anyway, and a
    # 2 ms wait doubled the latency of a lone request (bench/profile.md).
    max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="How long the first request of a batch waits for batch-mates.",
    )
    # Rows: one image through the encoder, or one latent through the decoder, is
    # one row; /elbo on N images with k samples costs N·(1 + k). The default holds
    # two of the largest requests the limits allow (256 images at k = 128).
    max_queue: int = Field(
        default=65_536,
        ge=1,
        description="Most rows of model work admitted per model version before 503.",
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        description="Most requests handled at once (health checks and /metrics aside) before 503.",
    )
    # An event loop this far behind is saturated: every request waits at least as
    # long before it is read. Bursts a few times the loop's turn do not reach it.
    max_lag_ms: float = Field(
        default=100.0,
        gt=0,
        description="Event-loop delay beyond which new requests are answered 503 at once.",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest a request may take from its arrival, upload and queue included (504).",
    )
    max_images_per_request: int = Field(
        default=256, ge=1, description="Most images in one request."
    )
    max_body_bytes: int = Field(default=16 * 2**20, ge=1024, description="Largest request body.")
    max_pixels: int = Field(
        default=16 * 2**20, ge=1, description="Most pixels one request may decode from image files."
    )
    # docs/limits.md: the container's memory limit must hold this, the models, the gRPC
    # messages in flight (grpc_max_concurrency × grpc_max_message_bytes) and the process itself.
    memory_budget_bytes: int = Field(
        default=384 * 2**20,
        ge=2**20,
        description="Most bytes all requests together may hold: bodies as they arrive, "
        "decoded and resized pixels, gRPC messages (503 past it, 413 beyond it alone).",
    )
    # Time limits at the edge (app/protocol.py), before any app work or key check.
    head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Most seconds a request's line and headers may take to arrive (408).",
    )
    body_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Most seconds a request body may go without a byte arriving (closed).",
    )
    # gRPC's core holds each message whole before the service sees it: this many calls at
    # grpc_max_message_bytes each is memory outside the budget (docs/limits.md). Calls are
    # counted, not bytes, so the count is sized for polite clients (perf_analyzer's
    # concurrency sweeps reach 64) and the message size keeps their product bounded.
    grpc_max_concurrency: int = Field(
        default=64,
        ge=1,
        description="Most gRPC calls in progress at once; more get RESOURCE_EXHAUSTED.",
    )
    grpc_max_message_bytes: int = Field(
        default=4 * 2**20,
        ge=1024,
        description="Largest gRPC request message (gRPC's own default); larger batches go over "
        "HTTP, up to VAE_MAX_BODY_BYTES.",
    )
    max_samples: int = Field(default=64, ge=1, description="Largest n for /sample.")
    max_k: int = Field(default=128, ge=1, description="Largest k (importance samples) for /elbo.")
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime threads per session; 0 = the CPUs this process may use.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every endpoint but /healthz and /readyz requires it."
    )
    # /admin/* changes what is served, so it is off unless a key guards it or an
    # operator opens it on purpose (the container binds 0.0.0.0).
    admin: bool = Field(
        default=False, description="Open /admin/* without an API key (with a key it needs the key)."
    )
    page: bool = Field(
        default=True, description="Serve the page to try the models in a browser at /."
    )
    reload_interval_s: float = Field(
        default=10.0, ge=0, description="Seconds between store scans for new versions; 0 disables."
    )
    # SIGTERM -> drain_s of serving while /readyz says "draining" -> close the socket ->
    # at most shutdown_grace_s for requests in flight -> exit 0 (app/drain.py). An
    # orchestrator's kill deadline (Kubernetes' terminationGracePeriodSeconds, default
    # 30 s; `docker stop -t`, default 10 s) must leave room for both.
    drain_s: int = Field(
        default=5,
        ge=0,
        le=3600,
        description="Seconds after SIGTERM that /readyz answers 503 while requests are served.",
    )
    shutdown_grace_s: int = Field(
        default=20,
        ge=0,
        le=3600,
        description="Most seconds requests in flight get once the socket is closed.",
    )
    host: str = Field(default="127.0.0.1", description="Address uvicorn binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port uvicorn binds.")
    # Triton's default gRPC port, beside its 8000 for HTTP.
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Port of the gRPC Open Inference Protocol service (same host); 0: off.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Least severe log records written, by vae-serve and uvicorn."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: readable lines; json: one JSON object per line (docs/operations.md).",
    )
    # The drift signal (vae_anomaly_percentile) for clients that never call /elbo.
    drift_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Fraction of /encode requests (and the v2 encoder's) whose images are "
        "also scored, in the background, for the drift metrics; 0: off.",
    )

    @field_validator("default_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not MODEL_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a model name ([a-z0-9][a-z0-9._-]*)")
        return value

    @field_validator("api_key")
    @classmethod
    def _no_blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        # VAE_API_KEY= (empty) in a compose file means "no key", not "the empty key".
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Self:
        if self.max_queue < self.max_batch_size:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be at least max_batch_size "
                f"({self.max_batch_size}), or no batch could ever fill"
            )
        return self

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Self:
        if self.memory_budget_bytes < self.max_body_bytes:
            raise ValueError(
                f"memory_budget_bytes ({self.memory_budget_bytes}) must be at least "
                f"max_body_bytes ({self.max_body_bytes}), or the largest body could never fit"
            )
        return self

    @property
    def threads(self) -> int:
        """Intra-op threads for one session: the setting, or the CPUs we may use."""
        return self.intra_op_threads or available_cpus()

    @property
    def admin_enabled(self) -> bool:
        return self.admin or self.api_key is not None


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 cpu.max, else v1
    cpu.cfs_quota_us / cpu.cfs_period_us), None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota.

    A container limited to 2 CPUs (docker --cpus 2) still sees every core of the
    host in its affinity; threads sized by that would fight over the quota.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = _cgroup_cpu_limit(cgroup)
    if limit is not None:
        cpus = min(cpus or 1, max(1, math.ceil(limit)))
    return max(1, cpus or 1)


@lru_cache
def get_settings() -> Settings:
    """The process's settings; cached so the environment is read once."""
    return Settings()
