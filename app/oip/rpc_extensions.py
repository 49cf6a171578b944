"""Triton's extensions over gRPC: ModelConfig, ModelStatistics and RepositoryIndex.

A mixin of app.oip.rpc.InferenceService, which brings the registry, the settings, the
authorisation and the failure handling; the answers are app.oip.extensions' dicts,
parsed into the generated messages (so HTTP and gRPC say the same, field for field).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from app.config import Settings
from app.oip import extensions, inference_pb2
from app.registry import Registry

Context = grpc.aio.ServicerContext[Any, Any]


class TritonExtensions:
    registry: Registry
    settings: Settings

    def _authorize(self, context: Context) -> None:
        raise NotImplementedError

    async def _fail(self, context: Context, exc: Exception) -> NoReturn:
        raise NotImplementedError

    async def ModelConfig(
        self, request: inference_pb2.ModelConfigRequest, context: Context
    ) -> inference_pb2.ModelConfigResponse:
        try:
            self._authorize(context)
            found = extensions.model_config(
                self.registry, self.settings, request.name, request.version
            )
        except Exception as exc:
            await self._fail(context, exc)
        return json_format.ParseDict({"config": found}, inference_pb2.ModelConfigResponse())

    async def ModelStatistics(
        self, request: inference_pb2.ModelStatisticsRequest, context: Context
    ) -> inference_pb2.ModelStatisticsResponse:
        try:
            self._authorize(context)
            found = extensions.model_statistics(self.registry, request.name, request.version)
        except Exception as exc:
            await self._fail(context, exc)
        return json_format.ParseDict(found, inference_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(
        self, request: inference_pb2.RepositoryIndexRequest, context: Context
    ) -> inference_pb2.RepositoryIndexResponse:
        try:
            self._authorize(context)
            found = extensions.repository_index(self.registry, request.ready)
        except Exception as exc:
            await self._fail(context, exc)
        return json_format.ParseDict({"models": found}, inference_pb2.RepositoryIndexResponse())
