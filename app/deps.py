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
import time
from types import TracebackType
from typing import Annotated, Any

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


class Deadlines:
    """Ends requests that run past their deadline (VAE_REQUEST_TIMEOUT_S).

    One task watches every request, instead of a timer each: with uvloop a
    timer set and cancelled per request cost the event loop 10-30 µs, a few
    percent of a one-image /encode. Every request gets the same timeout, so
    deadlines come due in the order the requests started, and the watcher only
    ever looks at the oldest.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._due: dict[asyncio.Task[Any], float] = {}  # oldest first
        self._expired: set[asyncio.Task[Any]] = set()
        self._arrived = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any]) -> None:
        self._due[task] = time.monotonic() + self.timeout_s
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="deadlines")
        self._arrived.set()

    def release(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching `task`; True if its deadline passed (and it was cancelled)."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])

    async def _watch(self) -> None:
        while True:
            if not self._due:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            task, due = next(iter(self._due.items()))
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            del self._due[task]
            self._expired.add(task)
            task.cancel()


class Lease:
    """A request's hold on its model version, and its deadline: a hot reload cannot
    retire the version mid-request, and the request answers 504 once it has taken
    VAE_REQUEST_TIMEOUT_S from here (queue time included); cancelled, its batcher
    jobs drop the rows that had not run. Resolving and leasing are one step: no
    await between."""

    __slots__ = ("_deadlines", "_model", "_mv", "_registry", "_task", "_version")

    def __init__(
        self, registry: Registry, deadlines: Deadlines, model: str | None, version: int | None
    ) -> None:
        self._registry, self._deadlines = registry, deadlines
        self._model, self._version = model, version

    async def __aenter__(self) -> ModelVersion:
        mv = self._registry.resolve(self._model, self._version)
        mv.acquire()
        self._mv = mv
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._deadlines.watch(task)
        return mv

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._mv.release()
        if self._deadlines.release(self._task):
            self._task.uncancel()
            if kind is not None and issubclass(kind, asyncio.CancelledError):
                raise DeadlineExceeded(
                    f"the request took longer than {self._deadlines.timeout_s:g} s "
                    "(VAE_REQUEST_TIMEOUT_S) and was stopped; its work that had not started "
                    "was dropped"
                ) from None


def leased(request: Request, model: str | None, version: int | None) -> Lease:
    """The requested model version, leased for the request (`async with`)."""
    deadlines: Deadlines = request.app.state.deadlines
    return Lease(registry_of(request), deadlines, model, version)
