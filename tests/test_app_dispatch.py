"""DirectRoutes: the hot routes reach their handlers past the router, the rest do not."""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.dispatch import DirectRoutes


class Fallback:
    """The app behind DirectRoutes: records the paths it was handed."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await Response("router", 404)(scope, receive, send)


async def plain(request: Request) -> Response:
    return JSONResponse({"route": "plain", "params": request.path_params})


async def templated(request: Request) -> Response:
    return JSONResponse({"route": "templated", "params": request.path_params})


def _client(fallback: Fallback) -> httpx.AsyncClient:
    routes = [
        Route("/encode", plain, methods=["POST"]),
        Route("/v2/models/{name}/infer", templated, methods=["POST"]),
    ]
    direct = DirectRoutes(fallback, routes)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = type("App", (), {"exception_handlers": {}})()
        await direct(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_exact_and_templated_routes_go_straight_to_their_handlers() -> None:
    fallback = Fallback()
    async with _client(fallback) as client:
        exact = await client.post("/encode")
        infer = await client.post("/v2/models/mnist-encoder/infer")
    assert exact.json() == {"route": "plain", "params": {}}
    assert infer.json() == {"route": "templated", "params": {"name": "mnist-encoder"}}
    assert fallback.paths == []


async def test_other_paths_and_methods_go_to_the_router() -> None:
    fallback = Fallback()
    async with _client(fallback) as client:
        for method, path in (
            ("GET", "/encode"),  # the router answers 405 for a wrong method
            ("GET", "/v2/models/mnist-encoder/infer"),
            ("POST", "/v2/models/a/b/infer"),  # {name} takes no slash
            ("POST", "/v2/models/mnist-encoder"),
        ):
            answer = await client.request(method, path)
            assert answer.text == "router", (method, path)
    assert fallback.paths == [
        "/encode",
        "/v2/models/mnist-encoder/infer",
        "/v2/models/a/b/infer",
        "/v2/models/mnist-encoder",
    ]
