"""OpenTelemetry traces: on when the SDK is installed and the standard OTEL_* variables ask.

    pip install 'vae-serve[tracing]'   # opentelemetry-sdk, and the OTLP exporter
    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=vae-serve vae-serve

Traces are on when OTEL_TRACES_EXPORTER names exporters (otlp, console, ...) or an
OTLP endpoint is set, unless OTEL_SDK_DISABLED=true. A request gets a server span
(continuing the caller's `traceparent`), with children for the image decode and for
its wait in each batcher queue; each ONNX Runtime call is a span of its own, linked
to the spans of every request it served (a batch has several parents, which a link
says and a parent cannot). Without the SDK or the variables `tracer()` is None and
the hot path pays one `is None` test per request and per batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from app.context import served

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from app.batcher import BatchStats

log = logging.getLogger(__name__)
_tracer: Tracer | None = None  # set by tracer(): spans are made only when it is
_looked = False


def wanted() -> bool:
    """Whether the OTEL_* variables ask for traces."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return any(
        env.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracer() -> Tracer | None:
    """The service's tracer, or None when traces are off (looked up once per process)."""
    global _tracer, _looked
    if _looked:
        return _tracer
    _looked = True
    if not wanted():
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("OTEL_* asks for traces but opentelemetry-sdk is not installed: no traces")
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # none yet (opentelemetry-instrument sets one)
        provider = _provider()
        trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("vae-serve")
    return _tracer


def _provider() -> Any:
    """A provider exporting to OTEL_TRACES_EXPORTER (default otlp), found by the entry
    points the exporter packages register, as opentelemetry-instrument finds them."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the name.
    provider = TracerProvider(resource=Resource.create({"service.name": "vae-serve"}))
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
    for name in (n.strip() for n in names if n.strip()):
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            log.warning("no trace exporter %r is installed (OTEL_TRACES_EXPORTER)", name)
            continue
        exporter = next(iter(found)).load()()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def reset() -> None:
    """Look again at the next tracer() call (tests that turn tracing on and off)."""
    global _tracer, _looked
    _tracer, _looked = None, False


# -- spans --------------------------------------------------------------------------------


@contextlib.contextmanager
def http_span(tracer: Tracer, scope: Scope, rid: str) -> Iterator[Span]:
    """The server span of one HTTP request, continuing the caller's trace if it sent one."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    method = scope["method"]
    with tracer.start_as_current_span(
        method,
        context=propagate.extract(headers),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "url.path": scope["path"],
            "vae.request_id": rid,
        },
    ) as span:
        yield span


def finish_http(span: Span, scope: Scope, status: int) -> None:
    """Name the span by its route, as the semantic conventions ask, and say how it ended."""
    from opentelemetry.trace import StatusCode

    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    _model(span)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def grpc_span(tracer: Tracer, method: str, rid: str) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind

    attributes = {"rpc.system": "grpc", "rpc.method": method, "vae.request_id": rid}
    with tracer.start_as_current_span(
        f"inference.GRPCInferenceService/{method}", kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span
        _model(span)


def _model(span: Span) -> None:
    model = served.get()
    if model is not None:
        span.set_attribute("vae.model", model[0])
        span.set_attribute("vae.version", model[1])


_OFF = contextlib.nullcontext()


def step(name: str) -> contextlib.AbstractContextManager[object]:
    """A child span of the current one (the image decode) when tracing is on; else a
    shared no-op, which costs less than making a generator-based context manager."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name)


def capture() -> object:
    """The current span's context, which a batcher job keeps to link its batch to it."""
    from opentelemetry import trace

    return trace.get_current_span().get_span_context()


def batch_observer(name: str) -> Callable[[BatchStats], None]:
    """Spans for each call of one batcher: the ONNX Runtime call, linked to every
    request it served, and each request's wait in the queue, as a child of its span."""
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan

    assert _tracer is not None
    tracer = _tracer

    def observe(stats: BatchStats) -> None:
        # Batcher times are monotonic; spans want the wall clock, in ns.
        to_wall = time.time_ns() - int(time.monotonic() * 1e9)
        started = int(stats.started * 1e9) + to_wall
        links = [Link(ctx) for ctx, _ in stats.traced if ctx is not None]  # type: ignore[arg-type]
        run = tracer.start_span(
            f"onnxruntime {name}",
            start_time=started,
            links=links,
            attributes={"vae.batch_size": stats.size},
        )
        run.end(end_time=started + int(stats.run_s * 1e9))
        for ctx, wait in stats.traced:
            if ctx is None or wait is None:
                continue
            parent = trace.set_span_in_context(NonRecordingSpan(ctx))  # type: ignore[arg-type]
            queued = tracer.start_span(
                f"queue {name}", context=parent, start_time=started - int(wait * 1e9)
            )
            queued.end(end_time=started)

    return observe
