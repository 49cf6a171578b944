"""gRPC's door into the service's admission: the same limits as HTTP, in gRPC's words.

Over HTTP, app.overload sheds and times out requests, app.budget counts their bodies
and app.protocol bounds their time on the wire. A gRPC call goes past all of that
(grpcio's server reads the socket itself), so this interceptor puts each call that
does work through the same checks, before its handler runs:

- the shared limit of requests in progress (app.overload.Admission): past it,
  RESOURCE_EXHAUSTED, as grpcio's own `maximum_concurrent_rpcs` answers; an event
  loop too far behind, UNAVAILABLE (retry);
- the memory budget, for the message and what converting its typed contents holds:
  UNAVAILABLE while others hold it, RESOURCE_EXHAUSTED when it could never fit;
- the deadline: VAE_REQUEST_TIMEOUT_S, or the client's own when sooner, then
  DEADLINE_EXCEEDED.

Liveness and readiness stay open, as /healthz and /readyz do: orchestrators must
see a busy service. grpcio's core holds each message whole before any of this runs,
so `maximum_concurrent_rpcs` (VAE_GRPC_MAX_CONCURRENCY) and the receive limit bound
that memory (docs/limits.md).

Before a message is even parsed, its bytes are walked (`wire_cost`): protobuf builds
every typed value (`fp32_contents`, ...) and every repeated entry as it parses, on the
event loop, with the GIL held: 16 M `uint_contents` zeros (a 16 MB message) took
seconds and hundreds of MB that way. The walk reads only the lengths of the
top-level fields and of each input's fields, so a message of typed contents over
MAX_TYPED_BYTES, or of more fields than any request has, is refused unparsed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from app import budget as memory
from app.budget import ByteBudget
from app.errors import PayloadTooLarge, ServiceError
from app.metrics import Metrics
from app.overload import TOO_MANY, Admission

EXHAUSTED, UNAVAILABLE = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE
# The calls that answer probes: never shed, never counted.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
# Bytes per typed value while it is converted: protobuf's 4-byte value, and ours.
_TYPED_VALUE_BYTES = 8
# Most bytes of typed contents one message may carry: 256 MNIST images as fp32_contents
# are 802,816. Larger tensors go as raw_input_contents, which cost their bytes only.
MAX_TYPED_BYTES = 2**20
# Most fields at one level of a message: a request has a handful (inputs, outputs,
# parameters, raw contents); millions of empty `outputs` would each become an object.
MAX_FIELDS = 4096
# ModelInferRequest's field numbers (inference.proto): inputs, and an input's contents.
_INPUTS, _CONTENTS = 5, 5


class Unparsed:
    """A message refused from its bytes: what the handler answers instead of parsing it."""

    def __init__(self, sentence: str) -> None:
        self.sentence = sentence


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in data[start:end]; the
    other wire types are skipped. At most MAX_FIELDS fields, else ValueError."""
    at, count = start, 0
    while at < end:
        count += 1
        if count > MAX_FIELDS:
            raise OverflowError(f"over {MAX_FIELDS} fields")
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            _, at = _varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, at = _varint(data, at)
            yield key >> 3, at, at + length
            at += length
        else:
            raise ValueError(f"wire type {wire}")


def wire_cost(data: bytes) -> str | None:
    """Why a serialized infer request is refused before it is parsed, or None."""
    typed = 0
    try:
        for field, start, end in _fields(data, 0, len(data)):
            if field == _INPUTS:
                typed += sum(e - s for f, s, e in _fields(data, start, end) if f == _CONTENTS)
    except OverflowError:
        return f"the message holds over {MAX_FIELDS} fields at one level"
    except ValueError:
        return None  # not protobuf as we read it: the parser says what is wrong
    if typed > MAX_TYPED_BYTES:
        return (
            f"the message holds {typed} bytes of typed contents; at most {MAX_TYPED_BYTES} "
            "are parsed: send larger tensors as raw_input_contents"
        )
    return None


@dataclass(frozen=True)
class Guards:
    """What HTTP and gRPC share: admission, the memory budget, the deadline, and the
    event that starts the shutdown (set when uvicorn stops accepting, after the drain)."""

    admission: Admission
    budget: ByteBudget
    metrics: Metrics
    timeout_s: float
    stopping: asyncio.Event


def message_bytes(request: Any) -> int:
    """What an infer request holds while it is served: its raw tensors (numpy reads them
    in place) and its typed values with their conversion; other messages are small."""
    held = sum(len(raw) for raw in getattr(request, "raw_input_contents", ()))
    for tensor in getattr(request, "inputs", ()):
        contents = tensor.contents
        typed = len(contents.fp32_contents) + len(contents.uint_contents)
        typed += len(contents.bool_contents)
        held += typed * _TYPED_VALUE_BYTES
    return held


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


if TYPE_CHECKING:  # generic in the type stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class AdmissionInterceptor(_Interceptor):
    """See the module's docstring."""

    def __init__(self, guards: Guards) -> None:
        self.guards = guards

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method).rpartition("/")[2]
        if handler is None or handler.unary_unary is None or method in OPEN_METHODS:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            refused = wire_cost(data) if method == "ModelInfer" else None
            return Unparsed(refused) if refused else (parse(data) if parse else data)

        return grpc.unary_unary_rpc_method_handler(
            self._admitted(handler.unary_unary),  # type: ignore[arg-type]  # async on aio
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )

    def _admitted(self, handle: Handler) -> Handler:
        guards = self.guards

        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Unparsed):
                await context.abort(EXHAUSTED, request.sentence)
            refusal = guards.admission.refusal()
            if refusal is not None:
                guards.metrics.shed.inc()
                await context.abort(EXHAUSTED if refusal == TOO_MANY else UNAVAILABLE, refusal)
            held = message_bytes(request)
            try:
                guards.budget.take(held, f"a gRPC message of {held} bytes")
            except ServiceError as exc:
                too_large = isinstance(exc, PayloadTooLarge)
                await context.abort(EXHAUSTED if too_large else UNAVAILABLE, exc.detail)
            memory.CURRENT.set(guards.budget)  # the pixels it decodes count too
            guards.admission.in_flight += 1
            timeout = guards.timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, remaining)
            try:
                async with asyncio.timeout(timeout):
                    return await handle(request, context)
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the call took longer than {timeout:g} s (VAE_REQUEST_TIMEOUT_S or the "
                    "call's deadline) and was stopped; its work that had not started was dropped",
                )
            finally:
                guards.admission.in_flight -= 1
                guards.budget.give(held)

        return admitted
