"""Triton's own tools against vae-serve on 127.0.0.1: tritonclient (HTTP and gRPC) reads
the model configuration, the statistics and the repository index, and perf_analyzer
(bench/perf_analyzer.sh sets it up) measures with its default, random input data.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from app_support import ROOT, Served, free_port, npy, read_mnist, require, serve
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MAX_IMAGES = 16
TRANSPORTS = ["http", "grpc"]
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration", "statistics"]


@pytest.fixture(scope="module")
def served(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """mnist/1 served, beside a mnist/2 that the store holds but the server refuses."""
    root = tmp_path_factory.mktemp("triton")
    store = root / "model_store"
    shutil.copytree(model_store, store)
    broken = store / "mnist" / "2"
    broken.mkdir()
    (broken / "manifest.json").write_text("not json")
    port = free_port()
    settings = {
        "VAE_GRPC_PORT": str(port),
        "VAE_RELOAD_INTERVAL_S": "0",
        "VAE_INTRA_OP_THREADS": "1",
        "VAE_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
    }
    with serve(store, root, **settings) as server:
        yield Served(server, f"127.0.0.1:{port}")


def client(served: Served, transport: str) -> Any:
    if transport == "http":
        return thttp.InferenceServerClient(served.http)
    return tgrpc.InferenceServerClient(served.grpc)


def statistics(served: Served, transport: str, name: str = "", version: str = "") -> list[Any]:
    """model_stats as tritonclient reads them; gRPC's int64 and uint64 come as strings."""
    tc = client(served, transport)
    if transport == "http":
        found: list[Any] = tc.get_inference_statistics(name, version)["model_stats"]
        return found
    answer = tc.get_inference_statistics(name, version, as_json=True)
    return [_numbers(entry) for entry in answer.get("model_stats", [])]


def _numbers(value: Any) -> Any:
    """JSON of a proto message with its 64-bit integers as numbers again."""
    if isinstance(value, dict):
        return {k: v if k in {"name", "version"} else _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def one(served: Served, transport: str, name: str) -> dict[str, Any]:
    (found,) = statistics(served, transport, name, "1")
    assert (found["name"], found["version"]) == (name, "1")
    return dict(found)


def count(entry: dict[str, Any], what: str) -> int:
    found: int = entry.get("inference_stats", {}).get(what, {}).get("count", 0)
    return found


def ns(entry: dict[str, Any], what: str) -> int:
    found: int = entry.get("inference_stats", {}).get(what, {}).get("ns", 0)
    return found


def infer(served: Served, transport: str, model: str, x: np.ndarray) -> None:
    if transport == "http":
        given: Any = thttp.InferInput("x", list(x.shape), "UINT8")
        given.set_data_from_numpy(x)
        thttp.InferenceServerClient(served.http).infer(model, [given])
    else:
        given = tgrpc.InferInput("x", list(x.shape), "UINT8")
        given.set_data_from_numpy(x)
        tgrpc.InferenceServerClient(served.grpc).infer(model, [given])


# -- server metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_server_lists_the_extensions_it_serves(served: Served, transport: str) -> None:
    tc = client(served, transport)
    found = (
        tc.get_server_metadata(as_json=True) if transport == "grpc" else tc.get_server_metadata()
    )
    assert found["extensions"] == EXTENSIONS


# -- model configuration -----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_model_configuration_describes_each_protocol_model(
    served: Served, transport: str
) -> None:
    tc = client(served, transport)

    def config(name: str, version: str = "") -> dict[str, Any]:
        if transport == "http":
            found: dict[str, Any] = tc.get_model_config(name, version)
            return found
        return dict(_numbers(tc.get_model_config(name, version, as_json=True)["config"]))

    encoder = config("mnist-encoder")
    assert encoder["name"] == "mnist-encoder" and encoder["platform"] == "onnx_onnxv1"
    assert encoder["max_batch_size"] == MAX_IMAGES
    ((x,),) = [encoder["input"]]
    assert (x["name"], x["data_type"], x["dims"]) == ("x", "TYPE_UINT8", [1, 28, 28])
    assert [(o["name"], o["data_type"], o["dims"]) for o in encoder["output"]] == [
        ("mean", "TYPE_FP32", [8]),
        ("log_var", "TYPE_FP32", [8]),
        ("z", "TYPE_FP32", [8]),
    ]
    assert encoder["version_policy"] == {"all": {}}
    batching = {"preferred_batch_size": [256], "preserve_ordering": True}
    if transport == "http":  # gRPC's JSON leaves out what is 0
        batching["max_queue_delay_microseconds"] = 0
    assert encoder["dynamic_batching"] == batching
    assert encoder["instance_group"][0]["kind"] == "KIND_CPU"
    parameters = encoder["parameters"]
    assert set(parameters) == {"sample", "seed", "resize", "x.datatypes"}
    assert parameters["x.datatypes"] == {"string_value": "FP32,UINT8"}
    assert '"default": false' in parameters["sample"]["string_value"]

    decoder = config("mnist-decoder", "1")
    assert [(i["name"], i["data_type"], i["dims"]) for i in decoder["input"]] == [
        ("z", "TYPE_FP32", [8])
    ]
    assert set(decoder["parameters"]) == {"z.datatypes"}
    elbo = config("mnist-elbo")
    assert {o["name"]: o["data_type"] for o in elbo["output"]}["is_anomaly"] == "TYPE_BOOL"
    assert set(elbo["parameters"]) == {"k", "seed", "score", "fpr", "resize", "x.datatypes"}

    with pytest.raises(InferenceServerException) as raised:
        config("mnist-encoder", "2")
    assert "has no version 2 loaded" in raised.value.message()


# -- statistics --------------------------------------------------------------------------


@pytest.mark.parametrize("reader", TRANSPORTS)
def test_statistics_count_the_requests_just_sent_through_every_door(
    served: Served, reader: str
) -> None:
    images = read_mnist(4)[:, None]  # (4, 1, 28, 28) uint8
    before = {role: one(served, reader, f"mnist-{role}") for role in ("encoder", "decoder", "elbo")}
    for _ in range(3):
        infer(served, "http", "mnist-encoder", images[:2])
    for _ in range(2):
        infer(served, "grpc", "mnist-encoder", images[:1])
    native = httpx.post(
        f"{served.server.url}/encode",
        content=npy(images[:1, 0]),
        headers={"content-type": "application/x-npy"},
    )
    assert native.status_code == 200, native.text
    infer(served, "grpc", "mnist-elbo", images[:3])
    after = {role: one(served, reader, f"mnist-{role}") for role in ("encoder", "decoder", "elbo")}

    encoder, elbo = after["encoder"], after["elbo"]
    requests = 3 + 2 + 1
    assert count(encoder, "success") - count(before["encoder"], "success") == requests
    assert encoder["inference_count"] - before["encoder"]["inference_count"] == 3 * 2 + 2 + 1
    executions = encoder["execution_count"] - before["encoder"]["execution_count"]
    assert 1 <= executions <= requests
    for what in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert count(encoder, what) == count(encoder, "success")
    assert ns(encoder, "compute_infer") > ns(before["encoder"], "compute_infer")
    # The parts of a request's time add up to the whole, to rounding.
    parts = sum(
        ns(encoder, w) for w in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert abs(ns(encoder, "success") - parts) <= 4 * count(encoder, "success")
    assert count(encoder, "fail") == count(before["encoder"], "fail")
    assert encoder["last_inference"] > 0
    # The batch statistics hold every execution, by the size of its call.
    assert (
        sum(b["compute_infer"]["count"] for b in encoder["batch_stats"])
        == (encoder["execution_count"])
    )

    # One request, one model: the elbo's decoder calls count under mnist-elbo.
    assert count(elbo, "success") - count(before["elbo"], "success") == 1
    assert elbo["inference_count"] - before["elbo"]["inference_count"] == 3
    assert elbo["execution_count"] - before["elbo"]["execution_count"] >= 2  # encoder, decoder
    assert after["decoder"] == before["decoder"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_statistics_by_model_and_for_every_model(served: Served, transport: str) -> None:
    everything = statistics(served, transport)
    assert [(s["name"], s["version"]) for s in everything] == [
        ("mnist-encoder", "1"),
        ("mnist-decoder", "1"),
        ("mnist-elbo", "1"),
    ]
    assert [s["name"] for s in statistics(served, transport, "mnist-elbo")] == ["mnist-elbo"]
    for name, version in (("mnist-classifier", ""), ("mnist-encoder", "2"), ("fashion-elbo", "")):
        with pytest.raises(InferenceServerException) as raised:
            statistics(served, transport, name, version)
        assert raised.value.status() in {"404", "StatusCode.NOT_FOUND"}


# -- repository index --------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_repository_index_lists_the_store_and_why_a_version_is_refused(
    served: Served, transport: str
) -> None:
    tc = client(served, transport)

    def index(ready: bool = False) -> list[dict[str, Any]]:
        if transport == "http":
            if ready:  # tritonclient's HTTP client sends no body
                url = f"{served.server.url}/v2/repository/index"
                answer: list[dict[str, Any]] = httpx.post(url, json={"ready": True}).json()
                return answer
            found: list[dict[str, Any]] = tc.get_model_repository_index()
            return found
        if ready:  # nor its gRPC client a `ready`: its generated stub does
            with grpc.insecure_channel(served.grpc) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                message = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
            models = json_format.MessageToDict(message, preserving_proto_field_name=True)
        else:
            models = tc.get_model_repository_index(as_json=True)
        return [{"reason": "", **m} for m in models["models"]]

    found = {(m["name"], m["version"]): (m["state"], m["reason"]) for m in index()}
    for role in ("encoder", "decoder", "elbo"):
        assert found[f"mnist-{role}", "1"] == ("READY", "")
        state, reason = found[f"mnist-{role}", "2"]
        assert state == "UNAVAILABLE" and "manifest" in reason
    assert {m["version"] for m in index(ready=True)} == {"1"}


def test_the_repository_index_refuses_a_bad_body(served: Served) -> None:
    answer = httpx.post(f"{served.server.url}/v2/repository/index", content=b"{")
    assert answer.status_code == 400 and "must be JSON" in answer.json()["error"]
    answer = httpx.post(f"{served.server.url}/v2/repository/index", json={"ready": "yes"})
    assert answer.status_code == 400 and '"ready"' in answer.json()["error"]


# -- perf_analyzer -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    """bench/perf_analyzer.sh's tool folder, set up (downloads two wheels the first time)."""
    script = ROOT / "bench" / "perf_analyzer.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    require(done.returncode == 0, f"perf_analyzer could not be set up: {done.stderr[-500:]}")
    return script


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_perf_analyzer_measures_with_its_default_data(
    served: Served, perf_analyzer: Path, transport: str, tmp_path: Path
) -> None:
    url = served.http if transport == "http" else served.grpc
    report = tmp_path / "report.csv"
    before = one(served, "http", "mnist-encoder")
    done = subprocess.run(
        [
            "bash", str(perf_analyzer), "-m", "mnist-encoder", "-u", url, "-i", transport,
            "--concurrency-range", "4", "--measurement-mode", "count_windows",
            "--measurement-request-count", "40", "--stability-percentage", "1000",
            "--max-trials", "3", "-f", str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error" not in done.stdout.lower(), done.stdout[-2000:]
    ((row,),) = [list(csv.DictReader(report.open()))]
    assert float(row["Inferences/Second"]) > 0
    # What it read from the server's statistics: every request it sent succeeded.
    after = one(served, "http", "mnist-encoder")
    assert count(after, "fail") == count(before, "fail")
    assert count(after, "success") - count(before, "success") >= 40
    assert float(row["Server Queue"]) >= 0 and float(row["Server Compute Infer"]) > 0


# -- the benchmark's report --------------------------------------------------------------


def test_the_benchmark_reports_ratios_goals_and_stopped_cells() -> None:
    from bench.triton import Cell, goals, table

    cells = [
        Cell("vae-serve", "http", 16, 1, 900.0, 10.0, 40.0, 1.0, 2.0, 3.0),
        Cell("pytriton", "http", 16, 1, 500.0, 20.0, 60.0, 4.0, 5.0, 6.0),
        Cell("vae-serve", "grpc", 16, 1, error="Thread [0] had error: busy"),
        Cell("pytriton", "grpc", 16, 1, 700.0, 20.0, 60.0, 4.0, 5.0, 6.0),
    ]
    rows = table(cells)
    assert rows[2].startswith("| http | 16 | 1 | 900 | 10.0 | 40.0 | 1.0 / 2.0 / 3.0 | 500 |")
    assert rows[2].endswith("| 1.80× |")
    assert "stopped: Thread [0] had error: busy" in rows[3]
    assert goals(cells) == [
        "- http, concurrency 16: 1.80× PyTriton's throughput (goal ≥ 1.5×), "
        "p99 40.0 ms vs 60.0 ms: met",
        "- grpc: not measured (Thread [0] had error: busy)",
    ]
