"""The hot routes, dispatched straight from their path.

Between the user middleware and a route, FastAPI runs an exception middleware,
an exit-stack middleware (for files of its own request handler, which these
routes do not use), and its router, which tries routes in order and records
telemetry: a fifth of the event loop's time on a one-image /encode
(bench/profile.md). `DirectRoutes` sits innermost among the user middleware and
hands a request for one of the given routes (exact path, no path parameters)
straight to the route's Starlette handler, with the exception handlers the
exception middleware would have given it; anything else goes the usual way.
Routes with path parameters (the v2 protocol's infer) are matched by their
own regex, after the exact paths: a few of them cost a match or two, where the
router tries every route of the app in turn.
Errors that no handler takes still reach Starlette's ServerErrorMiddleware.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send


class DirectRoutes:
    """Pure ASGI: the given routes to their handlers, the rest to `app`."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        plain = [route for route in routes if isinstance(route, Route)]
        self.routes = {route.path: route for route in plain if not route.param_convertors}
        self.templated = [route for route in plain if route.param_convertors]
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

    def _match(self, scope: Scope) -> tuple[Route, dict[str, Any]] | None:
        """The route for this request and its path parameters, if it is one of ours."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        route = self.routes.get(scope["path"])
        if route is not None:
            return (route, {}) if scope["method"] in (route.methods or ()) else None
        for route in self.templated:
            match, child = route.matches(scope)
            if match is Match.FULL:  # PARTIAL: the path fits, the method does not
                return route, child["path_params"]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, path_params = found
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = path_params
        scope["starlette.exception_handlers"] = self._exception_handlers(scope)
        await route.app(scope, receive, send)
