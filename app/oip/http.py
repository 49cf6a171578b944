"""The protocol over HTTP: health, server and model metadata, and infer, under /v2, and
Triton's model configuration, statistics and repository index (app.oip.extensions).

Failures answer `{"error": "<a sentence>"}` with the native API's status codes (what
tritonclient and KServe's client read), never FastAPI's `{"detail": ...}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import request_response

from app.deps import registry_of, settings_of
from app.errors import BadRequest, NotFound, UnsupportedMediaType, known_failure
from app.inputs import read_body
from app.oip import SERVER_METADATA, extensions, models
from app.oip.body import HEADER_LENGTH, parse, render
from app.routes import SummaryRoute

log = logging.getLogger(__name__)
_INDEX_BODY_BYTES = 4096  # the index request holds at most a name and a flag


def error(status: int, sentence: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": sentence}, status, headers=headers)


class ProtocolRoute(SummaryRoute):
    """A /v2 route: the endpoint takes the request and its path parameters (no dependency
    solving, as app.routes.QueryRoute), and every failure becomes the protocol's error."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            try:
                response: Response = await endpoint(request, **request.path_params)
                return response
            except ClientDisconnect:
                raise  # the app answers 499: no one is listening
            except Exception as exc:
                found = known_failure(exc)
                if found is None:
                    log.exception("unhandled error on %s %s", request.method, request.url.path)
                    return error(500, "internal error; see the server log")
                return error(*found)

        return handle


router = APIRouter(tags=["Open Inference Protocol (v2)"], route_class=ProtocolRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {"application/json": {"example": {"error": "a sentence saying what"}}},
    }
    for status, text in {
        400: "Malformed request: JSON, datatypes, sizes, unknown inputs or parameters.",
        404: "Unknown model or version.",
        413: "Body too large, or too many images.",
        422: "Wrong image size or channels, pixel range, NaN, latent length, parameter value.",
        503: "Not ready, or busy; retry after Retry-After.",
    }.items()
}


@router.get("/v2/health/live")
async def live(request: Request) -> Response:
    """Liveness: the process is up and answering."""
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", responses={503: {"description": "Not ready; `error` says why."}})
async def ready(request: Request) -> Response:
    """Readiness: 200 once the default model is loaded, else 503 with the reason."""
    reason = registry_of(request).readiness()
    if reason is None:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": reason}, 503, headers={"Retry-After": "1"})


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    """Server metadata: name, version and the protocol extensions it implements."""
    return JSONResponse(asdict(SERVER_METADATA))


# Before /v2/models/{name}, which would take "stats" for a model's name.
@router.get("/v2/models/stats")
async def all_statistics(request: Request) -> Response:
    """Statistics of every protocol model and version (Triton's statistics extension)."""
    return JSONResponse(extensions.model_statistics(registry_of(request)))


@router.get("/v2/models/{name}", responses=_ERRORS)
async def model_metadata(request: Request, name: str) -> Response:
    """Model metadata, newest version: its versions, inputs and outputs (-1: the batch)."""
    return JSONResponse(models.metadata(registry_of(request), name))


@router.get("/v2/models/{name}/versions/{version}", responses=_ERRORS)
async def version_metadata(request: Request, name: str, version: str) -> Response:
    """Model metadata of one version."""
    return JSONResponse(models.metadata(registry_of(request), name, version))


@router.get("/v2/models/{name}/stats", responses=_ERRORS)
async def model_statistics(request: Request, name: str) -> Response:
    """Statistics of every loaded version of one model: counts, and queue and compute times."""
    return JSONResponse(extensions.model_statistics(registry_of(request), name))


@router.get("/v2/models/{name}/versions/{version}/stats", responses=_ERRORS)
async def version_statistics(request: Request, name: str, version: str) -> Response:
    """Statistics of one model version."""
    return JSONResponse(extensions.model_statistics(registry_of(request), name, version))


@router.get("/v2/models/{name}/config", responses=_ERRORS)
async def model_config(request: Request, name: str) -> Response:
    """Model configuration, newest version (Triton's model configuration extension)."""
    found = extensions.model_config(registry_of(request), settings_of(request), name)
    return JSONResponse(found)


@router.get("/v2/models/{name}/versions/{version}/config", responses=_ERRORS)
async def version_config(request: Request, name: str, version: str) -> Response:
    """Model configuration of one version."""
    found = extensions.model_config(registry_of(request), settings_of(request), name, version)
    return JSONResponse(found)


@router.post("/v2/repository/index", responses=_ERRORS)
async def repository_index(request: Request) -> Response:
    """Every model version the store holds and its state; {"ready": true}: only those
    that serve."""
    body = await read_body(request, _INDEX_BODY_BYTES)
    ready = False
    if body.strip():
        try:
            given = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest('the body must be JSON, such as {"ready": true}') from None
        if not isinstance(given, dict) or not isinstance(given.get("ready", False), bool):
            raise BadRequest('the body must be a JSON object whose "ready" is true or false')
        ready = given.get("ready", False)
    return JSONResponse(extensions.repository_index(registry_of(request), ready))


async def _model_ready(request: Request, name: str, version: str) -> Response:
    with models.leased(registry_of(request), name, version) as target:
        return JSONResponse({"name": target.name, "ready": True})


@router.get("/v2/models/{name}/ready", responses=_ERRORS)
async def model_ready(request: Request, name: str) -> Response:
    """Model readiness: 200 when loaded, 404 for a model that is not, 503 while loading."""
    return await _model_ready(request, name, "")


@router.get("/v2/models/{name}/versions/{version}/ready", responses=_ERRORS)
async def version_ready(request: Request, name: str, version: str) -> Response:
    """Readiness of one model version."""
    return await _model_ready(request, name, version)


_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The protocol's inference request: JSON, or (with the "
        f"{HEADER_LENGTH} header) JSON followed by binary tensor data.",
        "content": {
            "application/json": {
                "example": {
                    "inputs": [
                        {"name": "x", "datatype": "UINT8", "shape": [1, 1, 2, 2], "data": [0] * 4}
                    ],
                    "parameters": {"sample": True, "seed": 0},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def _infer(request: Request, name: str, version: str) -> Response:
    settings = settings_of(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
        )
    # The body first: a slow upload holds no version (as the native routes).
    body = await read_body(request, settings.max_body_bytes)
    parsed = parse(body, request.headers.get(HEADER_LENGTH))
    with models.leased(registry_of(request), name, version) as target:
        answer = await models.infer(
            target, parsed.inputs, parsed.parameters, settings, parsed.outputs
        )
        content, headers = render(target, parsed, answer)
        return Response(content, headers=headers)


@router.post("/v2/models/{name}/infer", responses=_ERRORS, openapi_extra=_INFER_BODY)
async def infer(request: Request, name: str) -> Response:
    """Inference on the newest version: tensors in, tensors out (JSON or binary)."""
    return await _infer(request, name, "")


@router.post(
    "/v2/models/{name}/versions/{version}/infer", responses=_ERRORS, openapi_extra=_INFER_BODY
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    """Inference on one version."""
    return await _infer(request, name, version)


# The hot path: app.dispatch.DirectRoutes hands these their requests past the router.
infer_routes = [
    route for route in router.routes if getattr(route, "endpoint", None) in (infer, infer_version)
]


@router.api_route(
    "/v2/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False
)
async def unknown(request: Request, rest: str) -> Response:
    """Anything else under /v2 is the protocol's 404, not FastAPI's."""
    raise NotFound(f"the protocol has no endpoint {request.method} /v2/{rest}")
