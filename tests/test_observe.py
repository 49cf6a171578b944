"""app.observe, app.logs, app.drift and app.tracing: request ids on every answer, the
anomaly metrics of the answers, JSON log lines, sampled drift scoring, and spans.

The bundled mnist model (calibrated) in-process; a real vae-serve process for the log
lines and the gRPC service."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from app_support import BUNDLED_STORE, bundled_version, free_port, metric, npy, serve
from fastapi.testclient import TestClient

from app import tracing
from app.config import Settings
from app.context import request_id
from app.logs import JsonFormatter, RequestContext, TextFormatter
from app.main import create_app

NPY = {"content-type": "application/x-npy"}
VERSION = str(bundled_version("mnist"))


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"device": "cpu", "reload_interval_s": 0, "intra_op_threads": 1}
    return Settings(model_store=BUNDLED_STORE, **(base | overrides))


@contextmanager
def serving(config: Settings) -> Iterator[TestClient]:
    app = create_app(config)
    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(app.state.registry.loaded_once.wait)
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with serving(settings(api_key="s3cret")) as client:
        client.headers["x-api-key"] = "s3cret"
        yield client


@pytest.fixture(scope="module")
def digits(mnist: np.ndarray) -> np.ndarray:
    return mnist[:8]


# -- request ids ----------------------------------------------------------------------------


def test_a_request_keeps_the_callers_id_or_gets_a_new_one(
    client: TestClient, digits: np.ndarray
) -> None:
    given = client.post(
        "/encode", content=npy(digits[:1]), headers={**NPY, "X-Request-ID": "abc-1"}
    )
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "abc-1"
    new = [client.get("/healthz").headers["x-request-id"] for _ in range(2)]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in new)
    assert new[0] != new[1]
    # An id that would corrupt a log line or a header is replaced, not echoed.
    for bad in ("two words", "x" * 129, 'quote"d'):
        answered = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert answered != bad and len(answered) == 32


def test_errors_carry_the_id_and_keep_their_shape(client: TestClient) -> None:
    for method, path, headers, status in [
        ("GET", "/no-such-endpoint", {}, 404),
        ("GET", "/sample?n=0", {}, 422),
        ("POST", "/encode", {"content-type": "text/plain"}, 415),
        ("GET", "/models", {"x-api-key": "wrong"}, 401),  # the auth layer's own answer
    ]:
        response = client.request(
            method, path, content=b"x", headers={**headers, "X-Request-ID": "e-1"}
        )
        assert response.status_code == status, path
        assert response.headers["x-request-id"] == "e-1", path
        assert isinstance(response.json()["detail"], str), path
    v2 = client.get("/v2/models/nope/ready", headers={"X-Request-ID": "e-2"})
    assert v2.status_code == 404 and set(v2.json()) == {"error"}
    assert v2.headers["x-request-id"] == "e-2"


def test_the_v2_protocols_id_keeps_its_meaning(client: TestClient, digits: np.ndarray) -> None:
    body = {
        "id": "protocol-42",
        "inputs": [
            {
                "name": "x",
                "datatype": "UINT8",
                "shape": [1, 1, 28, 28],
                "data": digits[0].ravel().tolist(),
            }
        ],
    }
    response = client.post(
        "/v2/models/mnist-encoder/infer", json=body, headers={"X-Request-ID": "http-7"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "protocol-42"
    assert response.headers["x-request-id"] == "http-7"


# -- metrics of the answers -------------------------------------------------------------------


def test_elbo_answers_are_counted_by_version_score_and_percentile(
    client: TestClient, mnist: np.ndarray
) -> None:
    labels = {"model": "mnist", "version": VERSION, "score": "iwae"}
    before = client.get("/metrics").text
    assert "vae_anomaly_percentile_bucket" in before  # declared at load, at 0
    images = mnist[:24]
    answer = client.post("/elbo?score=iwae&fpr=0.05", content=npy(images), headers=NPY).json()
    percentiles = np.array([r["percentile"] for r in answer["results"]])
    text = client.get("/metrics").text

    def grew(name: str, **more: str) -> float:
        return metric(text, name, **labels, **more) - metric(before, name, **labels, **more)

    assert grew("vae_images_scored_total") == 24
    assert grew("vae_anomaly_percentile_count") == 24
    assert grew("vae_anomaly_percentile_sum") == pytest.approx(percentiles.sum())
    # The fpr the client chose is no label; the buckets give every rate's flagged count.
    flagged_5pct = sum(r["is_anomaly"] for r in answer["results"])
    assert grew("vae_anomaly_percentile_bucket", le="5") == flagged_5pct
    assert "fpr" not in text
    route = {"endpoint": "/elbo", "status": "200", "model": "mnist", "version": VERSION}
    assert metric(text, "vae_http_requests_total", **route) >= 1


def test_v2_requests_are_counted_with_the_model_their_client_named(
    client: TestClient, digits: np.ndarray
) -> None:
    body = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2, 1, 28, 28],
                        "data": digits[:2].ravel().tolist()}]}  # fmt: skip
    labels = {"endpoint": "/v2/models/{name}/infer", "status": "200"}
    served = {"model": "mnist-elbo", "version": VERSION}
    before = metric(client.get("/metrics").text, "vae_http_requests_total", **labels, **served)
    assert client.post("/v2/models/mnist-elbo/infer", json=body).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "vae_http_requests_total", **labels, **served) == before + 1
    assert metric(text, "vae_batch_size_count", model="mnist", version=VERSION, graph="encoder") > 0


# -- drift sampling ----------------------------------------------------------------------------


def test_sampled_encode_traffic_feeds_the_drift_metrics(digits: np.ndarray) -> None:
    app_settings = settings(drift_sample_rate=1.0)
    with serving(app_settings) as client:
        for _ in range(3):
            response = client.post("/encode", content=npy(digits[:4]), headers=NPY)
            assert response.status_code == 200
            drift = client.app.state.registry.drift  # type: ignore[attr-defined]
            assert client.portal is not None
            client.portal.call(_settled, drift)  # scored after the answer, in the background
        text = client.get("/metrics").text
    scored = metric(text, "vae_drift_samples_total", outcome="scored")
    busy = metric(text, "vae_drift_samples_total", outcome="busy")
    assert (scored, busy) == (12, 0)
    typicality = {"model": "mnist", "version": VERSION, "score": "typicality"}
    assert metric(text, "vae_anomaly_percentile_count", **typicality) == 12


def test_one_sample_at_a_time_the_others_are_dropped(digits: np.ndarray) -> None:
    """Off the request's path and bounded: a sample offered while one is being scored
    is dropped (counted as busy), never queued."""
    with serving(settings(drift_sample_rate=1.0)) as client:
        registry = client.app.state.registry  # type: ignore[attr-defined]
        assert client.portal is not None
        client.portal.call(_offer_twice, registry, digits[:3].astype(np.float32) / 255)
        text = client.get("/metrics").text
    assert metric(text, "vae_drift_samples_total", outcome="scored") == 3
    assert metric(text, "vae_drift_samples_total", outcome="busy") == 3


async def _offer_twice(registry: Any, pixels: np.ndarray) -> None:
    mv = registry.resolve(None, None)
    x = pixels[:, None]  # (N, 1, 28, 28) in [0, 1]
    registry.drift.offer(mv, x)
    registry.drift.offer(mv, x)  # the first is still in flight: no await between
    await _settled(registry.drift)


async def _settled(drift: Any) -> None:
    import asyncio

    await asyncio.gather(*drift._tasks)


def test_without_the_setting_encode_traffic_is_not_scored(
    client: TestClient, digits: np.ndarray
) -> None:
    assert client.app.state.registry.drift is None  # type: ignore[attr-defined]
    before = client.get("/metrics").text
    assert client.post("/encode", content=npy(digits), headers=NPY).status_code == 200
    after = client.get("/metrics").text
    typicality = {"model": "mnist", "version": VERSION, "score": "typicality"}
    assert metric(after, "vae_images_scored_total", **typicality) == metric(
        before, "vae_images_scored_total", **typicality
    )


# -- log lines ---------------------------------------------------------------------------------


def _record(message: str, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("app.test", logging.ERROR, __file__, 1, message, None, exc_info)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_request_and_the_traceback_in_fields() -> None:
    token = request_id.set("r-9")
    try:
        record = _record("it broke", exc=True, route="/encode")
        RequestContext().filter(record)
    finally:
        request_id.reset(token)
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one error, one line
    entry = json.loads(line)
    assert entry["message"] == "it broke" and entry["level"] == "ERROR"
    assert entry["request_id"] == "r-9" and entry["route"] == "/encode"
    assert entry["traceback"].startswith("Traceback") and "ZeroDivisionError" in entry["traceback"]
    text = TextFormatter().format(record)
    assert text.splitlines()[0].endswith("it broke [request r-9]")


def test_the_process_logs_json_lines_for_http_and_grpc(tmp_path: Path, digits: np.ndarray) -> None:
    """A real vae-serve with VAE_LOG_FORMAT=json: every line it writes is one JSON
    object, uvicorn's own included; access lines say route, model, version, status,
    duration and request id; gRPC calls answer their id in the response metadata and
    are counted by method and status code."""
    import httpx
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    grpc_port = free_port()
    with serve(
        BUNDLED_STORE, tmp_path, VAE_LOG_FORMAT="json", VAE_GRPC_PORT=str(grpc_port),
        VAE_RELOAD_INTERVAL_S="0", VAE_INTRA_OP_THREADS="1",
    ) as server:  # fmt: skip
        answer = httpx.post(
            f"{server.url}/encode", content=npy(digits[:2]), headers={**NPY, "X-Request-ID": "j-1"}
        )
        assert answer.status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="mnist-encoder")
            request.inputs.add(name="x", datatype="UINT8", shape=[1, 1, 28, 28])
            request.raw_input_contents.append(digits[0].tobytes())
            _, call = stub.ModelInfer.with_call(request, metadata=(("x-request-id", "g-1"),))
            assert ("x-request-id", "g-1") in call.trailing_metadata()
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nope-encoder"))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            ids = dict(refused.value.trailing_metadata())
            assert len(ids["x-request-id"]) == 32
        text = httpx.get(f"{server.url}/metrics").text
    ok = {"method": "ModelInfer", "code": "OK", "model": "mnist-encoder", "version": VERSION}
    assert metric(text, "vae_grpc_requests_total", **ok) == 1
    assert metric(text, "vae_grpc_errors_total", method="ModelInfer", code="NOT_FOUND") == 1

    lines = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line: one JSON object
    assert any(e["logger"] == "uvicorn.error" and "startup" in e["message"] for e in entries)
    (access,) = [e for e in entries if e.get("request_id") == "j-1"]
    assert access["logger"] == "vae.access"
    assert (access["method"], access["route"], access["status"]) == ("POST", "/encode", 200)
    assert (access["model"], access["version"]) == ("mnist", VERSION)
    assert access["duration_ms"] > 0
    (called,) = [e for e in entries if e.get("request_id") == "g-1"]
    assert (called["method"], called["status"], called["model"]) == (
        "ModelInfer",
        "OK",
        "mnist-encoder",
    )


# -- traces ------------------------------------------------------------------------------------


def test_spans_cover_the_request_decode_queue_and_the_linked_onnx_call(
    monkeypatch: pytest.MonkeyPatch, digits: np.ndarray
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process's one provider, set once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # asks for traces; ours is set
    tracing.reset()
    try:
        with serving(settings()) as client:
            parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            response = client.post(
                "/encode", content=npy(digits[:3]), headers={**NPY, "traceparent": parent}
            )
            assert response.status_code == 200
    finally:
        tracing.reset()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == "POST /encode"]
    assert f"{server.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["vae.model"] == "mnist"
    assert server.attributes["vae.request_id"] == response.headers["x-request-id"]
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == server.context.span_id}
    assert {"decode images", f"queue mnist/{VERSION}/encoder"} <= set(children)
    (run,) = [s for s in spans if s.name == f"onnxruntime mnist/{VERSION}/encoder"]
    assert [link.context.span_id for link in run.links] == [server.context.span_id]
    assert run.attributes is not None and run.attributes["vae.batch_size"] == 3


def test_without_the_otel_variables_there_is_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing.reset()
    assert tracing.tracer() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    tracing.reset()
    assert tracing.tracer() is None
    tracing.reset()
