"""Dependencies the routes declare; tests may swap them via `app.dependency_overrides`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request

from app.config import MODEL_NAME, Settings
from app.registry import ModelVersion, Registry


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def leased_version(
    registry: RegistryDep,
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
) -> AsyncIterator[ModelVersion]:
    """The requested model version, leased for the request so a hot reload
    cannot retire it mid-request. Async so it runs on the event loop, which
    owns the lease counts."""
    mv = registry.resolve(model, version)
    with mv.lease():
        yield mv


ModelDep = Annotated[ModelVersion, Depends(leased_version)]
