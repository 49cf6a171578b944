"""What routes share: the registry and settings, and the model a request names.

The model-bound routes are the hot path, so they take no dependencies: FastAPI
solves each one per request (its own parameters, its sub-dependencies, an exit
stack for `yield`), and on /encode that cost more event-loop time than the
batched model call (bench/profile.md). They declare `model` and `version` as
plain query parameters and hold the version with `async with leased(...)`,
which also bounds the request's time (VAE_REQUEST_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Annotated

from fastapi import Depends, Query, Request

from app.config import Settings
from app.errors import DeadlineExceeded
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


class Lease:
    """A request's hold on its model version, and its deadline: a hot reload cannot
    retire the version mid-request, and the request answers 504 once it has taken
    `timeout_s` from here (queue time included); its batcher jobs are cancelled,
    so the rows that had not run are dropped. Resolving and leasing are one step:
    no await between."""

    __slots__ = ("_deadline", "_model", "_mv", "_registry", "_timeout_s", "_version")

    def __init__(
        self, registry: Registry, model: str | None, version: int | None, timeout_s: float
    ) -> None:
        self._registry, self._model, self._version = registry, model, version
        self._timeout_s = timeout_s

    async def __aenter__(self) -> ModelVersion:
        mv = self._registry.resolve(self._model, self._version)
        mv.acquire()
        self._mv = mv
        self._deadline = asyncio.timeout(self._timeout_s)
        await self._deadline.__aenter__()
        return mv

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._deadline.__aexit__(kind, error, traceback)
        except TimeoutError:
            if not self._deadline.expired():
                raise
            raise DeadlineExceeded(
                f"the request took longer than {self._timeout_s:g} s (VAE_REQUEST_TIMEOUT_S) "
                "and was stopped; its work that had not started was dropped"
            ) from None
        finally:
            self._mv.release()


def leased(request: Request, model: str | None, version: int | None) -> Lease:
    """The requested model version, leased for the request (`async with`)."""
    timeout_s = settings_of(request).request_timeout_s
    return Lease(registry_of(request), model, version, timeout_s)
