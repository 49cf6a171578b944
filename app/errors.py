"""Domain errors and the one place where they become HTTP answers.

Modules below the routes raise these with a human `detail`; nothing else in
the service builds error responses, so every 4xx has the same JSON shape:
`{"detail": "..."}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app.batcher import BatcherClosed, QueueFull

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


RETRY_AFTER_S = "1"


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
    return None


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
    for known in (ServiceError, QueueFull, BatcherClosed):
        app.add_exception_handler(known, _known)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal)
