"""Domain errors and the one place where they become HTTP answers.

Modules below the routes raise these with a human `detail`; nothing else in
the service builds error responses, so every 4xx has the same JSON shape:
`{"detail": "<a sentence>"}`. Invalid parameters keep FastAPI's list of
per-field errors under `errors`; the HTTP layer's own refusals (app/protocol.py)
use the same shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.batcher import BatcherClosed, BatcherFailed, QueueFull

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error whose `detail` is safe and useful to show the client."""

    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(ServiceError):
    """Malformed body: invalid JSON, a corrupt image, an unreadable .npy."""

    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401


class NotFound(ServiceError):
    """Unknown model or version."""

    status_code = 404


class PayloadTooLarge(ServiceError):
    """Too large a body, too many images or pixels, a decompression bomb."""

    status_code = 413


class UnsupportedMediaType(ServiceError):
    """A content type we do not read, or a file that is not an image."""

    status_code = 415


class Unprocessable(ServiceError):
    """Well-formed but wrong: size, channels, range, NaN, latent length, limits."""

    status_code = 422


class Unavailable(ServiceError):
    """Not ready, shutting down, or overloaded; the client should retry."""

    status_code = 503


class Forbidden(ServiceError):
    """An endpoint that is turned off (the admin endpoints without a key or VAE_ADMIN)."""

    status_code = 403


RETRY_AFTER_S = "1"


def error_key(path: str) -> str:
    """The key of an error's sentence in a JSON answer to `path`: the v2 protocol's
    clients (tritonclient, KServe's) read "error", the native API's read "detail"."""
    return "error" if path.startswith("/v2") else "detail"


def known_failure(exc: Exception) -> tuple[int, str, dict[str, str] | None] | None:
    """The status, sentence and headers to answer a known failure with; None for a bug.
    Both the native API ({"detail": ...}) and the v2 protocol ({"error": ...}) use it."""
    if isinstance(exc, ServiceError):
        return exc.status_code, exc.detail, exc.headers
    retry = {"Retry-After": RETRY_AFTER_S}
    if isinstance(exc, QueueFull):
        return 503, f"server busy: {exc}; retry shortly", retry
    if isinstance(exc, BatcherClosed):
        return 503, "the model version is being unloaded; retry", retry
    if isinstance(exc, BatcherFailed):
        return 503, f"{exc}; retry: the next request restarts it", retry
    return None


def clip(text: str, limit: int = 80) -> str:
    """A client's text quoted in an error sentence, cut to a readable length."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _field_error(error: dict[str, Any]) -> str:
    """One pydantic error as a clause: "query parameter version: input should be ..."."""
    where, *names = [str(part) for part in error.get("loc", ())] or ["request"]
    if where in ("query", "path", "header", "cookie") and names:
        where = f"{where} parameter {'.'.join(names)}"
    message = str(error.get("msg", "is invalid"))
    clause = f"{where}: {message[:1].lower()}{message[1:]}"
    value = error.get("input")
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        clause += f", got {clip(repr(value))}"
    return clause


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    detail = "; ".join(_field_error(error) for error in errors) or "the request is invalid"
    return JSONResponse({"detail": detail, "errors": jsonable_encoder(errors)}, 422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such path, wrong method), worded as sentences."""
    assert isinstance(exc, HTTPException)
    path = clip(request.url.path)
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"there is no endpoint {path}; /docs lists them"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {path}; use {allowed or 'another method'}"
    return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)


async def _known(request: Request, exc: Exception) -> JSONResponse:
    found = known_failure(exc)
    assert found is not None
    status, detail, headers = found
    return JSONResponse({"detail": detail}, status, headers=headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before its body arrived: no one reads an answer, and it is no
    server fault, so no traceback and no 500 (499 is nginx's "client closed request")."""
    return Response(status_code=499)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; see the server log"}, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to HTTP; anything unexpected is a logged, opaque 500."""
    for known in (ServiceError, QueueFull, BatcherClosed, BatcherFailed):
        app.add_exception_handler(known, _known)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal)
