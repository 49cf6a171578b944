"""The hot routes, dispatched straight from their path.

Between the user middleware and a route, FastAPI runs an exception middleware,
an exit-stack middleware (for files of its own request handler, which these
routes do not use), and its router, which tries routes in order and records
telemetry: a fifth of the event loop's time on a one-image /encode
(bench/profile.md). `DirectRoutes` sits innermost among the user middleware and
hands a request for one of the given routes (exact path, no path parameters)
straight to the route's Starlette handler, with the exception handlers the
exception middleware would have given it; anything else goes the usual way.
Errors that no handler takes still reach Starlette's ServerErrorMiddleware.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send


class DirectRoutes:
    """Pure ASGI: exact-path routes to their handlers, the rest to `app`."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.routes = {
            route.path: route
            for route in routes
            if isinstance(route, Route) and not route.param_convertors
        }
        self._handlers: tuple[dict[Any, Any], dict[int, Any]] | None = None

    def _exception_handlers(self, scope: Scope) -> tuple[dict[Any, Any], dict[int, Any]]:
        """The app's handlers, split as Starlette's ExceptionMiddleware splits them (500
        and Exception belong to ServerErrorMiddleware); read once, at the first request."""
        if self._handlers is None:
            registered = scope["app"].exception_handlers.items()
            by_type = {k: v for k, v in registered if isinstance(k, type) and k is not Exception}
            by_status = {k: v for k, v in registered if isinstance(k, int) and k != 500}
            self._handlers = (by_type, by_status)
        return self._handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] not in (route.methods or ()) or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        scope["starlette.exception_handlers"] = self._exception_handlers(scope)
        await route.app(scope, receive, send)
