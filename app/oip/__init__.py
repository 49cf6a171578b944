"""The Open Inference Protocol (KServe's "v2" protocol, Triton's HTTP/gRPC API) beside
the native API, so Triton and KServe clients and gateways work unchanged.

`models` maps the store onto the protocol's models (the one module that calls the
native inference path: app.inputs, app.inference), `tensors` and `body` are the wire
formats, `extensions` Triton's model configuration, statistics and repository index,
`http` the /v2 routes, `rpc` the gRPC service on its own port (VAE_GRPC_PORT), with stubs
generated from inference.proto and model_config.proto (`rpc_extensions` serves
Triton's three calls).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings
    from app.oip.admission import Guards
    from app.registry import Registry

try:
    _VERSION = version("vae-serve")
except PackageNotFoundError:  # run from a source tree that was never installed
    _VERSION = "0"


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


SERVER_METADATA = ServerMetadata(
    "vae-serve",
    _VERSION,
    # binary_tensor_data: tensors as raw bytes after the JSON (tritonclient's default);
    # parameters: request and response parameters (sample, seed, k, score, fpr);
    # model_configuration and statistics: Triton's, over HTTP and gRPC (app.oip.extensions).
    # Not model_repository: its index is served, but not load and unload.
    ["binary_tensor_data", "parameters", "model_configuration", "statistics"],
)


@asynccontextmanager
async def grpc_service(
    settings: Settings, registry: Registry, guards: Guards
) -> AsyncIterator[None]:
    """The gRPC service for the body of the `with`, when VAE_GRPC_PORT is not 0."""
    if not settings.grpc_port:
        yield
        return
    # Imported only when served: the generated messages enter protobuf's one
    # descriptor pool as the `inference` package, which a process can hold once; a
    # process that only builds apps without gRPC (tests beside tritonclient's own
    # generated `inference` stubs) never loads ours.
    from app.oip import rpc

    async with rpc.serving(settings, registry, guards):
        yield
