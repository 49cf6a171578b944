"""Each request, seen once: its id, its metrics, its access line (and its span, with tracing).

`ObserveMiddleware` is the outermost HTTP middleware (it sees the 401s and 503s of
the layers inside it too); `GrpcObserver` is the same for the gRPC service. A request
keeps the caller's X-Request-ID (gRPC: x-request-id metadata) when it is a sane one,
else gets a new id, and the answer carries it back, errors included. Both run on every
request, so they stay lean: no label lookups, one log call, nothing when tracing is off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import tracing
from app.context import accept_id, request_id, served
from app.logs import ACCESS
from app.metrics import Metrics

access = logging.getLogger(ACCESS)
HEADER = b"x-request-id"


class ObserveMiddleware:
    """Pure ASGI: request id, metrics by route template, access line, span.

    Labels use the route's path template (`/models/{name}`), never the raw path, so
    clients cannot blow up the label cardinality.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.http = metrics.http
        self.tracer = tracing.tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        http = self.http
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == HEADER:
                given = value
                break
        rid = accept_id(given)
        id_token, served_token = request_id.set(rid), served.set(None)
        header = (HEADER, rid.encode())
        status = 500  # what the client sees if the app raises before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new message: some are shared constants (app/overload.py's answers).
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        http.in_flight += 1
        try:
            if self.tracer is None:
                await self.app(scope, receive, send_observed)
            else:
                with tracing.http_span(self.tracer, scope, rid) as span:
                    await self.app(scope, receive, send_observed)
                    tracing.finish_http(span, scope, status)
        finally:
            http.in_flight -= 1
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            model = served.get()
            http.observe(endpoint, status, model, seconds)
            if access.isEnabledFor(logging.INFO):
                _access_line(scope, endpoint, status, model, seconds, rid)
            request_id.reset(id_token)
            served.reset(served_token)


def _access_line(
    scope: Scope,
    endpoint: str,
    status: int,
    model: tuple[str, str] | None,
    seconds: float,
    rid: str,
) -> None:
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    method, path = scope["method"], scope["path"]
    ms = round(seconds * 1000, 3)
    answered = f" {model[0]}/{model[1]}" if model else ""
    access.info(
        '%s - "%s %s HTTP/%s" %d %.1f ms%s %s',
        where,
        method,
        path,
        scope.get("http_version", "1.1"),
        status,
        ms,
        answered,
        rid,
        extra={
            "client": where,
            "method": method,
            "path": path,
            "route": endpoint,
            "status": status,
            "duration_ms": ms,
        },
    )


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
if TYPE_CHECKING:  # generic in grpc-stubs only
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class GrpcObserver(Interceptor):
    """The gRPC service's requests: an id in the response's trailing metadata, the
    vae_grpc_* metrics by method and status code, an access line, a span."""

    def __init__(self, metrics: Metrics) -> None:
        self.grpc = metrics.grpc
        self.tracer = tracing.tracer()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:  # the protocol's calls are unary
            return handler
        given = next(
            (value for key, value in details.invocation_metadata or () if key == "x-request-id"),
            None,
        )
        method = details.method.rpartition("/")[2]
        behavior = cast(Behavior, handler.unary_unary)  # async: this is grpc.aio's server
        observed = self._observed(behavior, method, given)
        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _observed(self, behavior: Behavior, method: str, given: Any) -> Behavior:
        stats, tracer = self.grpc, self.tracer

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            rid = accept_id(given)
            request_id.set(rid)  # the call's own task: nothing to reset
            # Trailing: sent with the status, failed calls' included, at no extra write.
            context.set_trailing_metadata((("x-request-id", rid),))
            code = grpc.StatusCode.OK
            stats.in_flight += 1
            try:
                if tracer is None:
                    return await behavior(request, context)
                with tracing.grpc_span(tracer, method, rid):
                    return await behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                stats.in_flight -= 1
                seconds = time.perf_counter() - started
                model = served.get()
                stats.observe(method, code.name, model, seconds)
                if access.isEnabledFor(logging.INFO):
                    ms = round(seconds * 1000, 3)
                    answered = f" {model[0]}/{model[1]}" if model else ""
                    access.info(
                        "gRPC %s %s %.1f ms%s %s",
                        method,
                        code.name,
                        ms,
                        answered,
                        rid,
                        extra={"method": method, "status": code.name, "duration_ms": ms},
                    )

        return observed
