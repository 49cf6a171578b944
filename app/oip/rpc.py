"""The protocol over gRPC: `inference.GRPCInferenceService` on its own port.

grpcio's asyncio server runs on the app's event loop, started and stopped by the
app's lifespan, so it shares the registry and the batchers with the HTTP routes:
concurrent HTTP and gRPC requests batch together. The message classes and the
servicer base are generated from inference.proto (inference_pb2*.py); this module is
the typed boundary around them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc
import numpy as np

from app.config import Settings
from app.errors import known_failure
from app.observe import GrpcObserver
from app.oip import SERVER_METADATA, inference_pb2, models
from app.oip import inference_pb2_grpc as services
from app.oip.admission import AdmissionInterceptor, Guards
from app.oip.models import Answer, InputTensor, Target, Value
from app.oip.rpc_extensions import TritonExtensions
from app.oip.tensors import datatype_of, to_bytes
from app.registry import Registry

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

# The status code of a known failure, by the HTTP status the native API gives it.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Where typed (not raw) contents hold each datatype's values.
_CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents", "BOOL": "bool_contents"}
# The most typed values (fp32_contents, ...) one input may hold: converting them holds
# the GIL (4 M took 0.6 s, the event loop stalled as long), and each costs 8 bytes on
# the way where raw_input_contents costs its own bytes only. 256 MNIST images are
# 200,704 values; bulk and larger images go as raw_input_contents, as tritonclient
# sends them.
MAX_TYPED_VALUES = 2**18
# The numpy type each typed field converts to: protobuf's own, so nothing wraps or
# rounds before the datatype's range check (app.oip.tensors.from_list).
_TYPED_DTYPES = {"fp32_contents": np.float32, "uint_contents": np.uint32, "bool_contents": np.bool_}


def _value(parameter: inference_pb2.InferParameter) -> Value | None:
    choice = parameter.WhichOneof("parameter_choice")
    if choice is None:
        return None
    value: Value = getattr(parameter, choice)
    return value


def _parameters(given: Mapping[str, inference_pb2.InferParameter]) -> dict[str, Value]:
    found = {}
    for name, parameter in given.items():
        value = _value(parameter)
        if value is not None:  # an empty oneof: as if not sent
            found[name] = value
    return found


def _set(parameter: inference_pb2.InferParameter, value: Value) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value


def _inputs(request: inference_pb2.ModelInferRequest) -> list[InputTensor]:
    """Each input with its raw bytes, or with the typed contents its datatype uses."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs",
        )
    tensors = []
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raw:
            tensors.append(InputTensor(name, datatype, shape, raw=raw[i]))
            continue
        field = _CONTENTS.get(datatype)  # None: refused for its datatype before it is read
        values = np.empty(0)
        if field:
            typed = getattr(tensor.contents, field)
            if len(typed) > MAX_TYPED_VALUES:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"input {name!r} has {len(typed)} values in {field}; typed contents hold "
                    f"at most {MAX_TYPED_VALUES}: send larger tensors as raw_input_contents",
                )
            values = np.array(typed, dtype=_TYPED_DTYPES[field])
        tensors.append(InputTensor(name, datatype, shape, values=values))
    return tensors


def _response(
    target: Target, request: inference_pb2.ModelInferRequest, answer: Answer
) -> inference_pb2.ModelInferResponse:
    response = inference_pb2.ModelInferResponse(
        model_name=target.name, model_version=str(target.mv.version), id=request.id
    )
    for name, value in answer.parameters.items():
        _set(response.parameters[name], value)
    for name, array in answer.outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(to_bytes(array))
    return response


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, sentence: str) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence


class InferenceService(TritonExtensions, services.GRPCInferenceServiceServicer):
    """The six calls of the protocol, over the app's registry and batchers (and Triton's
    three of TritonExtensions)."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        key = settings.api_key
        self.api_key = None if key is None else key.get_secret_value().encode()

    async def _fail(self, context: Context, exc: Exception) -> NoReturn:
        if isinstance(exc, _Refused):
            await context.abort(exc.code, exc.sentence)
        found = known_failure(exc)
        if found is None:
            log.exception("unhandled error in a gRPC call", exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        status, sentence, _ = found
        await context.abort(_CODES.get(status, grpc.StatusCode.UNKNOWN), sentence)

    def _authorize(self, context: Context) -> None:
        """As app.auth for HTTP: the key as x-api-key or `authorization: Bearer <key>`."""
        if self.api_key is None:
            return
        metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
        presented = metadata.get("x-api-key")
        if presented is None:
            scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if presented is None or not hmac.compare_digest(str(presented).encode(), self.api_key):
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong API key: send it as x-api-key or authorization: Bearer",
            )

    # Liveness and readiness stay open, like /healthz and /readyz: orchestrators
    # probe them without credentials.

    async def ServerLive(
        self, request: inference_pb2.ServerLiveRequest, context: Context
    ) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: inference_pb2.ServerReadyRequest, context: Context
    ) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=self.registry.readiness() is None)

    async def ModelReady(
        self, request: inference_pb2.ModelReadyRequest, context: Context
    ) -> inference_pb2.ModelReadyResponse:
        try:
            self._authorize(context)
            models.resolve(self.registry, request.name, request.version)
        except _Refused as exc:
            await self._fail(context, exc)
        except Exception as exc:
            if known_failure(exc) is None:
                await self._fail(context, exc)
            return inference_pb2.ModelReadyResponse(ready=False)
        return inference_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self,
        request: inference_pb2.ServerMetadataRequest,
        context: Context,
    ) -> inference_pb2.ServerMetadataResponse:
        try:
            self._authorize(context)
        except Exception as exc:
            await self._fail(context, exc)
        return inference_pb2.ServerMetadataResponse(
            name=SERVER_METADATA.name,
            version=SERVER_METADATA.version,
            extensions=SERVER_METADATA.extensions,
        )

    async def ModelMetadata(
        self,
        request: inference_pb2.ModelMetadataRequest,
        context: Context,
    ) -> inference_pb2.ModelMetadataResponse:
        try:
            self._authorize(context)
            found = models.metadata(self.registry, request.name, request.version)
        except Exception as exc:
            await self._fail(context, exc)
        return inference_pb2.ModelMetadataResponse(**found)

    async def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: Context
    ) -> inference_pb2.ModelInferResponse:
        try:
            self._authorize(context)
            with models.leased(self.registry, request.model_name, request.model_version) as target:
                outputs = [output.name for output in request.outputs] or None
                answer = await models.infer(
                    target,
                    _inputs(request),
                    _parameters(request.parameters),
                    self.settings,
                    outputs,
                )
                return _response(target, request, answer)
        except Exception as exc:
            await self._fail(context, exc)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@asynccontextmanager
async def serving(settings: Settings, registry: Registry, guards: Guards) -> AsyncIterator[None]:
    """The gRPC service on VAE_HOST:VAE_GRPC_PORT for the body of the `with`; a port that
    cannot be bound stops the startup, as a taken HTTP port does.

    It stops when HTTP does: when `guards.stopping` is set (uvicorn stops accepting,
    after the drain), calls in flight get VAE_SHUTDOWN_GRACE_S alongside HTTP's, so the
    whole shutdown takes drain + grace, as the manifests' kill deadline allows."""
    server = grpc.aio.server(
        # Outermost first: every call gets its request id, metrics and access line, the
        # ones admission refuses too.
        interceptors=[GrpcObserver(registry.metrics), AdmissionInterceptor(guards)],
        # grpcio refuses calls past this with RESOURCE_EXHAUSTED before reading them:
        # the bound on messages its core holds whole (docs/limits.md).
        maximum_concurrent_rpcs=settings.grpc_max_concurrency,
        options=[
            # With maximum_concurrent_rpcs, the bound on what the core holds whole.
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            # Off: with it, a second server would share a taken port without a word.
            ("grpc.so_reuseport", 0),
        ],
    )
    service = InferenceService(registry, settings)
    services.add_GRPCInferenceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    address = _address(settings.host, settings.grpc_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot serve gRPC on {address}: {exc}") from None
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)

    async def stop_with_http() -> None:
        await guards.stopping.wait()
        await server.stop(settings.shutdown_grace_s)

    stopped = asyncio.create_task(stop_with_http(), name="grpc:stop")
    try:
        yield
    finally:
        guards.stopping.set()  # a lifespan that ends without uvicorn's shutdown (tests)
        await stopped
