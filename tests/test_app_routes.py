"""QueryRoute validates query parameters itself: it must agree with FastAPI's own solver."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.responses import Response

from app.deps import ModelName, Version
from app.routes import QueryRoute


async def probe(
    request: Request,
    model: ModelName = None,
    version: Version = None,
    k: Annotated[int | None, Query(ge=1, le=128)] = None,
    fpr: Annotated[float, Query(ge=0, le=1)] = 0.01,
    sample: bool = False,
    format: Literal["png", "json"] = "png",
) -> Response:
    values = {"model": model, "version": version, "k": k, "fpr": fpr, "sample": sample}
    return JSONResponse(values | {"format": format, "path": request.url.path})


def client(route_class: type[APIRoute]) -> TestClient:
    router = APIRouter(route_class=route_class)
    router.add_api_route("/probe", probe)
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "model=mnist&version=2&k=5&fpr=0.5&sample=true&format=json",
        "sample=yes&k=7&k=9",  # repeated: the last value wins, as in FastAPI
        "unknown=1",
        "k=0",
        "k=abc",
        "k=1.5",
        "fpr=2",
        "version=0",
        "model=Bad!",
        "format=gif",
        "sample=maybe",
        "k=0&fpr=-1&format=gif",  # every error is reported, not only the first
    ],
)
def test_query_route_answers_as_fastapi_does(query: str) -> None:
    ours, theirs = client(QueryRoute), client(APIRoute)
    mine, reference = ours.get(f"/probe?{query}"), theirs.get(f"/probe?{query}")
    assert mine.status_code == reference.status_code
    assert mine.json() == reference.json()


def test_query_route_refuses_endpoints_it_cannot_serve() -> None:
    async def no_request(k: int = 1) -> Response:
        return Response()

    async def with_dependency(request: Request, k: Annotated[int, Depends(lambda: 1)]) -> Response:
        return Response()

    async def required(request: Request, k: int) -> Response:
        return Response()

    for endpoint in (no_request, with_dependency, required):
        with pytest.raises(TypeError, match=endpoint.__name__):
            QueryRoute("/x", endpoint)
