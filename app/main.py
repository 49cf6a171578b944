"""The service: `create_app(settings)` builds it, `main()` (the `vae-serve` script) runs it.

Nothing happens at import; models are loaded in the lifespan.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from app.auth import ApiKeyMiddleware, document_api_key
from app.budget import BodyBudget, ByteBudget, give_back_memory
from app.config import Settings, get_settings
from app.dispatch import DirectRoutes
from app.drain import DrainingServer
from app.drift import DriftSampler
from app.errors import install_error_handlers
from app.logs import configure as configure_logging
from app.metrics import Metrics
from app.observe import ObserveMiddleware
from app.oip import grpc_service
from app.oip import http as oip_http
from app.oip.admission import Guards
from app.overload import Admission, Deadlines, LoopLag, OverloadMiddleware
from app.protocol import bounded
from app.registry import Registry
from app.routes import models, ops, vae
from app.routes.page import add_page

DESCRIPTION = """\
Serves variational autoencoders exported to ONNX by the vae-serve trainer:
encode images to q(z|x), decode latents, sample the prior, and score images
by their ELBO for anomaly detection. Requests are batched dynamically.

Every model-bound endpoint takes `model` (default: the configured default
model) and `version` (default: the newest)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A configured app; its lifespan loads the model store and stops the batchers."""
    settings = settings or get_settings()
    metrics = Metrics()
    drift = None
    if settings.drift_sample_rate > 0:
        drift = DriftSampler(settings.drift_sample_rate, metrics, settings.max_k)
    registry = Registry(settings, metrics, drift)
    metrics.watch_readiness(registry.readiness)
    deadlines = Deadlines(settings.request_timeout_s)
    lag = LoopLag()
    # One admission and one memory budget for every door, HTTP and gRPC (docs/limits.md).
    guards = Guards(
        admission=Admission(settings.max_concurrency, settings.max_lag_ms / 1000, lag),
        budget=ByteBudget(settings.memory_budget_bytes),
        metrics=metrics,
        timeout_s=settings.request_timeout_s,
        stopping=asyncio.Event(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading runs in the background: /healthz answers at once, /readyz says when.
        registry.start()
        lag.start()
        trimmer = asyncio.create_task(give_back_memory(guards.budget), name="malloc-trim")
        try:
            async with grpc_service(settings, registry, guards):
                yield
        finally:
            trimmer.cancel()
            await registry.stop()
            await deadlines.stop()
            await lag.stop()

    app = FastAPI(title="vae-serve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.guards = guards
    install_error_handlers(app)
    # The model-bound routes and the probes are the hot path: DirectRoutes hands
    # them their requests past FastAPI's router (bench/profile.md). They join the
    # app's own router too, for the OpenAPI schema and the requests DirectRoutes
    # leaves to it (a wrong method, a root path).
    hot = [*vae.router.routes, *ops.probes.routes]
    app.router.routes.extend(hot)
    app.router.routes.extend(oip_http.router.routes)  # first too, for the v2 protocol's infer
    hot += oip_http.infer_routes
    for router in (models.router, ops.router):
        app.include_router(router)
    if settings.page:
        add_page(app)
    app.add_middleware(DirectRoutes, routes=hot)  # innermost
    # Inside the key check: a body counts once its sender is known to be let in.
    app.add_middleware(BodyBudget, budget=guards.budget, max_body_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value())
        document_api_key(app)
    app.add_middleware(
        OverloadMiddleware,
        metrics=metrics,
        max_in_flight=settings.max_concurrency,
        max_lag_s=settings.max_lag_ms / 1000,
        lag=lag,
        deadlines=deadlines,
        admission=guards.admission,
    )
    # Outermost: request ids, metrics and access lines for the 401s and 503s too.
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    return app


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """Run the service with uvicorn: one worker, host and port from VAE_HOST/VAE_PORT."""
    parser = argparse.ArgumentParser(prog="vae-serve", description=main.__doc__)
    parser.add_argument("--host", help="overrides VAE_HOST")
    parser.add_argument("--port", type=int, help="overrides VAE_PORT")
    args = parser.parse_args(argv)
    settings = get_settings()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was
    # there before; this one ends the process with status 0: stopped as asked, not killed.
    signal.signal(signal.SIGTERM, _stopped)
    app = create_app(settings)
    # One worker: each would load every model and batch alone; scale with replicas instead.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # app.logs configured every logger, uvicorn's too
        access_log=False,  # app.observe writes the access lines, with route, model and id
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        # Bounds the request head's size and time and a body's stalls; its refusals are
        # JSON like the app's.
        http=bounded(settings),
    )
    server = DrainingServer(
        config,
        drain_s=settings.drain_s,
        on_drain=app.state.registry.drain,
        on_shutdown=app.state.guards.stopping.set,  # gRPC stops accepting with HTTP
    )
    # What uvicorn.run does around Server.run, which takes no server class of ours:
    # Ctrl-C comes back as KeyboardInterrupt once the shutdown is done.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
