"""The optional API key (VAE_API_KEY): required everywhere but the health checks and the
page's static files."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_key
from app.routes import page

# Orchestrators probe these without credentials.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
# The page's static files hold no data, and the page must load to ask for the key.
_UNGUARDED = OPEN_PATHS | page.PATHS


def _presented_key(headers: Headers) -> str | None:
    key = headers.get("x-api-key")
    if key is not None:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class ApiKeyMiddleware:
    """Answers 401 unless the request carries the key as X-API-Key or a Bearer token.

    A middleware rather than a route dependency, so it also guards /docs,
    /openapi.json and unknown paths.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNGUARDED:
            await self.app(scope, receive, send)
            return
        presented = _presented_key(Headers(scope=scope))
        # compare_digest: the time taken must not tell how much of a guess was right.
        if presented is not None and hmac.compare_digest(presented.encode(), self.api_key):
            await self.app(scope, receive, send)
            return
        sentence = "missing or wrong API key: send it as X-API-Key or Authorization: Bearer"
        response = JSONResponse(
            {error_key(scope["path"]): sentence},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def document_api_key(app: FastAPI) -> None:
    """Declare the key in the OpenAPI schema, so /docs offers an Authorize button."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
            schema["security"] = [{"apiKey": []}, {"bearer": []}]
            for path in OPEN_PATHS:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
