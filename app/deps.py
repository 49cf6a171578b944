"""Dependencies the routes declare; tests may swap them via `app.dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from app.config import MODEL_NAME, Settings
from app.registry import ModelVersion, Registry


# Async although they never await: FastAPI runs a plain `def` dependency in its
# thread pool, a hop that costs more loop time than the attribute read itself.
async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def model_version(
    request: Request,
    model: Annotated[
        str | None,
        Query(
            description="Model name; the configured default (VAE_DEFAULT_MODEL) when omitted.",
            pattern=f"^{MODEL_NAME.pattern}$",
            max_length=100,
            examples=["mnist"],
        ),
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, description="Model version; the newest when omitted.")
    ] = None,
) -> ModelVersion:
    """The requested model version. Endpoints hold `mv.lease()` while they use it, so
    a hot reload cannot retire it mid-request.

    Not a `yield` dependency holding the lease itself: FastAPI's exit-stack
    machinery for one cost more event-loop time per request than the whole
    batched model call (bench/profile.md). Nothing awaits between this and the
    endpoint's lease; if a reload retires the version anyway, the batcher
    answers 503 with Retry-After."""
    registry: Registry = request.app.state.registry
    return registry.resolve(model, version)


ModelDep = Annotated[ModelVersion, Depends(model_version)]
