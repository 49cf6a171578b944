"""What routes share: the registry and settings, and the model a request names.

The model-bound routes are the hot path, so they take no dependencies: FastAPI
solves each one per request (its own parameters, its sub-dependencies, an exit
stack for `yield`), and on /encode that cost more event-loop time than the
batched model call (bench/profile.md). They declare `model` and `version` as
plain query parameters and hold the version with `leased(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Query, Request

from app.config import Settings
from app.context import served
from app.registry import ModelVersion, Registry
from vae_contract.manifest import MODEL_NAME


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


# Async although they never await: FastAPI runs a plain `def` dependency in its
# thread pool, a hop that costs more loop time than the attribute read itself.
async def get_registry(request: Request) -> Registry:
    return registry_of(request)


async def get_app_settings(request: Request) -> Settings:
    return settings_of(request)


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


ModelName = Annotated[
    str | None,
    Query(
        description="Model name; the configured default (VAE_DEFAULT_MODEL) when omitted.",
        pattern=f"^{MODEL_NAME.pattern}$",
        max_length=100,
        examples=["mnist"],
    ),
]
Version = Annotated[int | None, Query(ge=1, description="Model version; the newest when omitted.")]


@contextmanager
def leased(request: Request, model: str | None, version: int | None) -> Iterator[ModelVersion]:
    """The requested model version, leased for the request so a hot reload cannot
    retire it mid-request. Resolving and leasing are one step: no await between."""
    mv = registry_of(request).resolve(model, version)
    served.set(mv.labels)  # for the metrics and log lines of this request
    with mv.lease():
        yield mv
