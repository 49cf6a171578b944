"""The Open Inference Protocol with clients this project did not write: tritonclient's
HTTP and gRPC clients against `vae-serve` on 127.0.0.1, with real MNIST images.

Answers are checked against the ONNX files run directly (app_support.Reference) and
against the native API of the same server: the same pixels give the same numbers by
either route.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from app_support import ROOT, Reference, Served, free_port, npy, read_mnist, require, serve
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MAX_IMAGES = 16
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def served(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("oip")
    port = free_port()
    settings = {
        "VAE_GRPC_PORT": str(port),
        "VAE_RELOAD_INTERVAL_S": "0",
        "VAE_INTRA_OP_THREADS": "1",
        "VAE_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
        "VAE_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with serve(model_store, root, **settings) as server:
        yield Served(server, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def ref(version_dir: Path) -> Reference:
    return Reference(version_dir)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return read_mnist(24)[:, None]  # (24, 1, 28, 28) uint8


TRANSPORTS = ["http", "grpc"]


def client(served: Served, transport: str) -> Any:
    if transport == "http":
        return thttp.InferenceServerClient(served.http)
    return tgrpc.InferenceServerClient(served.grpc)


def tensor(transport: str, name: str, array: np.ndarray, *, binary: bool = True) -> Any:
    """An input as tritonclient sends it: binary (its default) or JSON over HTTP; gRPC
    always sends raw bytes."""
    datatype = {np.uint8: "UINT8", np.float32: "FP32", np.float64: "FP64"}[array.dtype.type]
    if transport == "http":
        found = thttp.InferInput(name, list(array.shape), datatype)
        found.set_data_from_numpy(array, binary_data=binary)
        return found
    found = tgrpc.InferInput(name, list(array.shape), datatype)
    found.set_data_from_numpy(array)
    return found


def wanted(transport: str, names: list[str], *, binary: bool = True) -> list[Any]:
    if transport == "http":
        return [thttp.InferRequestedOutput(name, binary_data=binary) for name in names]
    return [tgrpc.InferRequestedOutput(name) for name in names]


def response_of(result: Any, transport: str) -> dict[str, Any]:
    """The response's JSON (for gRPC, the message as JSON with the proto's field names)."""
    found: dict[str, Any] = (
        result.get_response(as_json=True) if transport == "grpc" else result.get_response()
    )
    return found


def parameters_of(result: Any, transport: str) -> dict[str, Any]:
    """The response's parameters as Python values."""
    answered = response_of(result, transport).get("parameters", {})
    if transport == "http":
        return dict(answered)
    # gRPC: InferParameter messages, {"int64_param": "4"} (int64 is a JSON string).
    return {
        name: int(value["int64_param"]) if "int64_param" in value else next(iter(value.values()))
        for name, value in answered.items()
    }


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), np.float32)


# -- health and metadata -----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_and_metadata(served: Served, ref: Reference, transport: str) -> None:
    tc = client(served, transport)
    assert tc.is_server_live() and tc.is_server_ready()
    for role in ("encoder", "decoder", "elbo"):
        assert tc.is_model_ready(f"mnist-{role}")
        assert tc.is_model_ready(f"mnist-{role}", "1")
    assert not tc.is_model_ready("mnist-encoder", "2")
    assert not tc.is_model_ready("mnist-classifier")
    assert not tc.is_model_ready("nothing-encoder")

    server = (
        tc.get_server_metadata(as_json=True) if transport == "grpc" else tc.get_server_metadata()
    )
    assert server["name"] == "vae-serve"
    assert "binary_tensor_data" in server["extensions"]

    def metadata(name: str, version: str = "") -> dict[str, Any]:
        if transport == "grpc":
            found: dict[str, Any] = tc.get_model_metadata(name, version, as_json=True)
            for tensor in found["inputs"] + found["outputs"]:  # int64 travels as a JSON string
                tensor["shape"] = [int(d) for d in tensor["shape"]]
            return found
        found = tc.get_model_metadata(name, version)
        return found

    latent, image = ref.latent_dim, [1, 28, 28]
    encoder = metadata("mnist-encoder")
    assert encoder["versions"] == ["1"] and encoder["platform"] == "onnx_onnxv1"
    assert encoder["inputs"] == [{"name": "x", "datatype": "UINT8", "shape": [-1, *image]}]
    assert [(t["name"], t["shape"]) for t in encoder["outputs"]] == [
        ("mean", [-1, latent]),
        ("log_var", [-1, latent]),
        ("z", [-1, latent]),
    ]
    decoder = metadata("mnist-decoder", "1")
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, latent]}]
    assert decoder["outputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, *image]}]
    elbo = metadata("mnist-elbo")
    assert {t["name"]: (t["datatype"], t["shape"]) for t in elbo["outputs"]} == {
        "elbo": ("FP32", [-1]),
        "reconstruction": ("FP32", [-1]),
        "kl": ("FP32", [-1]),
        "bits_per_dim": ("FP32", [-1]),
        "anomaly_score": ("FP32", [-1]),
        "percentile": ("FP32", [-1]),
        "is_anomaly": ("BOOL", [-1]),
    }


# -- the three models, against the ONNX files and the native API --------------------------


@pytest.mark.parametrize(
    ("transport", "binary", "datatype"),
    [
        ("http", True, "UINT8"),
        ("http", False, "UINT8"),
        ("http", True, "FP32"),
        ("http", False, "FP32"),
        ("grpc", True, "UINT8"),
        ("grpc", True, "FP32"),
    ],
)
def test_the_encoder_is_the_onnx_encoder(
    served: Served, ref: Reference, digits: np.ndarray, transport: str, binary: bool, datatype: str
) -> None:
    images = digits[:5]
    x = images if datatype == "UINT8" else ref.x(images[:, 0])  # floats in [0, 1]
    tc = client(served, transport)
    outputs = wanted(transport, ["mean", "log_var"], binary=binary)
    result = tc.infer("mnist-encoder", [tensor(transport, "x", x, binary=binary)], outputs=outputs)
    mean, log_var = ref.encode(ref.x(images[:, 0]))
    np.testing.assert_array_equal(result.as_numpy("mean"), mean)
    np.testing.assert_array_equal(result.as_numpy("log_var"), log_var)
    assert result.as_numpy("z") is None
    assert response_of(result, transport)["model_version"] == "1"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_seeded_z_is_the_native_apis_z(
    served: Served, ref: Reference, digits: np.ndarray, transport: str
) -> None:
    images = digits[:3]
    tc = client(served, transport)
    inputs = [tensor(transport, "x", images)]
    result = tc.infer("mnist-encoder", inputs, parameters={"sample": True, "seed": 3})
    z = result.as_numpy("z")
    native = httpx.post(
        f"{served.server.url}/encode?sample=true&seed=3",
        content=npy(images[:, 0]),
        headers={"content-type": "application/x-npy"},
    ).json()["results"]
    np.testing.assert_array_equal(z, np.asarray([row["z"] for row in native], np.float32))
    mean, log_var = ref.encode(ref.x(images[:, 0]))
    eps = np.random.default_rng(3).standard_normal((1, ref.latent_dim), np.float32)
    np.testing.assert_array_equal(z, mean + np.exp(0.5 * log_var) * eps)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("resize", [True, "stretch", "crop"])
def test_resize_takes_the_native_apis_rules(
    served: Served, digits: np.ndarray, transport: str, resize: bool | str
) -> None:
    # 28×42: another aspect ratio, so a centre crop and a stretch give different pixels.
    wide = np.concatenate([digits[:2], digits[2:4, :, :, :14]], axis=3)
    tc = client(served, transport)
    inputs = [tensor(transport, "x", wide)]
    result = tc.infer("mnist-encoder", inputs, parameters={"resize": resize})
    native = httpx.post(
        f"{served.server.url}/encode?resize={str(resize).lower()}",
        content=npy(wide[:, 0]),
        headers={"content-type": "application/x-npy"},
    )
    assert native.headers["x-resize"] == ("crop" if resize == "crop" else "stretch")
    mean = np.asarray([row["mean"] for row in native.json()["results"]], np.float32)
    np.testing.assert_array_equal(result.as_numpy("mean"), mean)


@pytest.mark.parametrize(("transport", "binary"), [("http", True), ("http", False), ("grpc", True)])
def test_the_decoder_gives_the_likelihoods_means(
    served: Served, ref: Reference, transport: str, binary: bool
) -> None:
    z = np.random.default_rng(0).standard_normal((4, ref.latent_dim)).astype(np.float32)
    tc = client(served, transport)
    result = tc.infer(
        "mnist-decoder",
        [tensor(transport, "z", z, binary=binary)],
        outputs=wanted(transport, ["pixels"], binary=binary),
    )
    (logits,) = ref.decoder.run(["logits"], {"z": z})
    pixels = result.as_numpy("pixels")
    assert pixels.shape == (4, 1, 28, 28) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, sigmoid(logits), atol=1e-6)


ELBO_OUTPUTS = [
    "elbo",
    "reconstruction",
    "kl",
    "bits_per_dim",
    "anomaly_score",
    "percentile",
    "is_anomaly",
]


@pytest.mark.parametrize(("transport", "binary"), [("http", True), ("http", False), ("grpc", True)])
def test_elbo_gives_the_native_apis_numbers(
    served: Served, ref: Reference, digits: np.ndarray, transport: str, binary: bool
) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    images = np.concatenate([digits[:4], noise])
    parameters = {"k": 4, "seed": 2, "fpr": 0.2}
    tc = client(served, transport)
    result = tc.infer(
        "mnist-elbo",
        [tensor(transport, "x", images, binary=binary)],
        outputs=wanted(transport, ELBO_OUTPUTS, binary=binary),
        parameters=parameters,
    )
    native = httpx.post(
        f"{served.server.url}/elbo?k=4&seed=2&fpr=0.2",
        content=npy(images[:, 0]),
        headers={"content-type": "application/x-npy"},
    ).json()
    for name in ELBO_OUTPUTS:
        got = result.as_numpy(name)
        want = np.asarray([row[name] for row in native["results"]])
        assert got.shape == (6,), name
        if name == "is_anomaly":
            np.testing.assert_array_equal(got, want)
        else:  # float32 on the wire, float64 in the native JSON
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4, err_msg=name)
    assert result.as_numpy("is_anomaly")[4:].all(), "noise is no digit"
    reference = ref.elbo(ref.x(images[:, 0]), k=4, seed=2)
    for name in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(result.as_numpy(name), reference[name], rtol=1e-6, err_msg=name)
    values = parameters_of(result, transport)
    assert values["k"] == 4 and values["seed"] == 2 and values["fpr"] == 0.2
    assert values["score"] == native["score"] == "typicality"  # the native default
    assert values["anomaly_threshold"] == pytest.approx(native["anomaly_threshold"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_elbo_takes_the_native_scores_and_defaults(
    served: Served, digits: np.ndarray, transport: str
) -> None:
    tc = client(served, transport)
    for score in ("elbo", "iwae", "complexity"):
        result = tc.infer(
            "mnist-elbo", [tensor(transport, "x", digits[:2])], parameters={"score": score}
        )
        native = httpx.post(
            f"{served.server.url}/elbo?score={score}",
            content=npy(digits[:2, 0]),
            headers={"content-type": "application/x-npy"},
        ).json()
        want = [row["anomaly_score"] for row in native["results"]]
        np.testing.assert_allclose(result.as_numpy("anomaly_score"), want, rtol=1e-6)
        assert parameters_of(result, transport)["k"] == native["k"]


def test_outputs_come_binary_or_json_one_by_one(served: Served, digits: np.ndarray) -> None:
    tc = client(served, "http")
    outputs = [
        thttp.InferRequestedOutput("log_var", binary_data=False),
        thttp.InferRequestedOutput("mean", binary_data=True),
    ]
    result = tc.infer("mnist-encoder", [tensor("http", "x", digits[:2])], outputs=outputs)
    header = result.get_response()
    assert [o["name"] for o in header["outputs"]] == ["log_var", "mean"]
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 2 * 4 * len(
        result.as_numpy("mean")[0]
    )
    np.testing.assert_array_equal(result.as_numpy("mean").shape, result.as_numpy("log_var").shape)


def test_typed_grpc_contents_work_as_raw_bytes(
    served: Served, ref: Reference, digits: np.ndarray
) -> None:
    """InferTensorContents instead of raw_input_contents, with tritonclient's own
    generated messages and stub (its client always sends raw bytes)."""
    images = digits[:2]
    request = service_pb2.ModelInferRequest(model_name="mnist-encoder", id="typed")
    x = request.inputs.add(name="x", datatype="UINT8", shape=list(images.shape))
    x.contents.uint_contents.extend(images.ravel().tolist())
    with grpc.insecure_channel(served.grpc) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert answer.id == "typed" and answer.model_name == "mnist-encoder"
    names = [output.name for output in answer.outputs]
    mean = np.frombuffer(answer.raw_output_contents[names.index("mean")], "<f4")
    np.testing.assert_array_equal(mean.reshape(2, -1), ref.encode(ref.x(images[:, 0]))[0])


# -- errors reach the client as its own exception, with the server's sentence -------------


def _nan_image() -> np.ndarray:
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 3, 4] = np.nan
    return x


BAD_REQUESTS = [
    # (model, input, array, parameters, outputs, HTTP status, gRPC code, the sentence)
    ("mnist-encoder", "x", np.zeros((1, 1, 28, 28)), {}, None, 400, "INVALID_ARGUMENT",
     "input 'x' has datatype 'FP64'; it accepts FP32 or UINT8"),
    ("mnist-encoder", "x", np.zeros((1, 1, 20, 28), np.uint8), {}, None, 422, "INVALID_ARGUMENT",
     "the model expects 28×28"),
    ("mnist-encoder", "x", np.zeros((1, 5, 28, 28), np.uint8), {}, None, 422, "INVALID_ARGUMENT",
     "5 channels as N×C×H×W"),
    ("mnist-elbo", "x", _nan_image(), {}, None, 422, "INVALID_ARGUMENT",
     "pixels contain NaN or infinity"),
    ("mnist-elbo", "x", np.full((1, 1, 28, 28), 2.0, np.float32), {}, None, 422,
     "INVALID_ARGUMENT", "float pixels must lie in [0, 1]"),
    ("mnist-encoder", "image", np.zeros((1, 1, 28, 28), np.uint8), {}, None, 400,
     "INVALID_ARGUMENT", "mnist-encoder has no input 'image'; its input is 'x'"),
    ("mnist-encoder", "x", np.zeros((1, 1, 28, 28), np.uint8), {"seeds": 1}, None, 400,
     "INVALID_ARGUMENT", "mnist-encoder has no parameter 'seeds'"),
    ("mnist-elbo", "x", np.zeros((1, 1, 28, 28), np.uint8), {"k": 0}, None, 422,
     "INVALID_ARGUMENT", "parameter 'k': Input should be greater than or equal to 1"),
    ("mnist-elbo", "x", np.zeros((1, 1, 28, 28), np.uint8), {"k": 1000}, None, 422,
     "INVALID_ARGUMENT", "k=1000 is above the limit of 128"),
    ("mnist-elbo", "x", np.zeros((1, 1, 28, 28), np.uint8), {"score": "psnr"}, None, 422,
     "INVALID_ARGUMENT",
     "parameter 'score': Input should be 'typicality', 'elbo', 'iwae' or 'complexity'"),
    ("mnist-encoder", "x", np.zeros((1, 1, 28, 28), np.uint8), {"sample": False}, ["z"], 422,
     "INVALID_ARGUMENT", "output 'z' is a draw: it is not given with the parameter sample=false"),
    ("mnist-encoder", "x", np.zeros((1, 1, 28, 28), np.uint8), {}, ["pixels"], 400,
     "INVALID_ARGUMENT", "mnist-encoder has no output 'pixels'"),
    ("mnist-decoder", "z", np.zeros((1, 3), np.float32), {}, None, 422, "INVALID_ARGUMENT",
     "latents have length 3, the model expects 8"),
    ("mnist-encoder", "x", np.zeros((MAX_IMAGES + 1, 1, 28, 28), np.uint8), {}, None, 413,
     "RESOURCE_EXHAUSTED", f"{MAX_IMAGES + 1} images in one request; the limit is {MAX_IMAGES}"),
    ("mnist-encoder", "x", np.zeros((0, 1, 28, 28), np.uint8), {}, None, 422,
     "INVALID_ARGUMENT", "the batch is empty"),
    ("fashion-encoder", "x", np.zeros((1, 1, 28, 28), np.uint8), {}, None, 404, "NOT_FOUND",
     "'fashion-encoder': no model named 'fashion' is loaded"),
    ("mnist-classifier", "x", np.zeros((1, 1, 28, 28), np.uint8), {}, None, 404, "NOT_FOUND",
     "protocol models are named <model>-encoder, <model>-decoder or <model>-elbo"),
]  # fmt: skip


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("model", "name", "array", "parameters", "outputs", "status", "code", "sentence"),
    BAD_REQUESTS,
    ids=[case[-1][:40] for case in BAD_REQUESTS],
)
def test_bad_requests_fail_in_the_clients_own_exception(
    served: Served,
    transport: str,
    model: str,
    name: str,
    array: np.ndarray,
    parameters: dict[str, Any],
    outputs: list[str] | None,
    status: int,
    code: str,
    sentence: str,
) -> None:
    tc = client(served, transport)
    with pytest.raises(InferenceServerException) as raised:
        tc.infer(
            model,
            [tensor(transport, name, array)],
            parameters=parameters or None,
            outputs=wanted(transport, outputs) if outputs else None,
        )
    assert raised.value.status() == (str(status) if transport == "http" else f"StatusCode.{code}")
    assert sentence in raised.value.message()


# -- the bad-input battery over plain HTTP: always a 4xx with {"error": ...} -------------


def _x_header(size: int, shape: list[int], datatype: str = "UINT8") -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "x",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    }


def _binary(header: dict[str, Any] | bytes, data: bytes, length: int | None = None) -> Any:
    text = header if isinstance(header, bytes) else httpx.Request("POST", "/", json=header).content
    declared = len(text) if length is None else length
    return {"content": text + data, "headers": {"Inference-Header-Content-Length": str(declared)}}


IMAGE = bytes(784)
BATTERY: dict[str, tuple[dict[str, Any], str]] = {
    "header length larger than the body": (
        _binary(_x_header(784, [1, 1, 28, 28]), IMAGE, length=10**6),
        "Inference-Header-Content-Length is 1000000, but the body has only",
    ),
    "header length not a number": (
        _binary(_x_header(784, [1, 1, 28, 28]), IMAGE, length=-5),
        "Inference-Header-Content-Length must be a byte count",
    ),
    "binary_data_size past the end": (
        _binary(_x_header(2 * 784, [2, 1, 28, 28]), IMAGE),
        "input 'x' declares 1568 bytes of binary data, but only 784 bytes are left",
    ),
    "bytes not matching the shape": (
        _binary(_x_header(784, [2, 1, 28, 28]), IMAGE),
        "input 'x' has 784 bytes of data, but shape [2, 1, 28, 28] of 1-byte elements needs 1568",
    ),
    "FP32 bytes for a UINT8 size": (
        _binary(_x_header(784, [1, 1, 28, 28], "FP32"), IMAGE),
        "needs 3136",
    ),
    "bytes after the last tensor": (
        _binary(_x_header(784, [1, 1, 28, 28]), IMAGE + b"tail"),
        "the body has 4 bytes after the inputs' binary data",
    ),
    "header cut inside the JSON": (
        _binary(_x_header(784, [1, 1, 28, 28]), IMAGE, length=20),
        "the inference request is not valid JSON",
    ),
    "JSON data of the wrong count": (
        {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                              "data": [0] * 700}]}},
        "input 'x' has 700 values of data, but shape [1, 1, 28, 28] needs 784",
    ),
    "JSON data ragged": (
        {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                              "data": [[0.0, 1.0], [0.5]]}]}},
        "input 'x': data must be a rectangular list of numbers",
    ),
    "JSON data as text": (
        {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["0.5"]}]}},
        "input 'x': data must be numbers for datatype FP32",
    ),
    "UINT8 above 255": (
        {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                              "data": [300] * 784}]}},
        "UINT8 values lie in [0, 255], got [300, 300]",
    ),
    "no data at all": (
        {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 1, 28, 28]}]}},
        "input 'x' has neither \"data\" nor binary_data_size",
    ),
    "negative shape": (
        {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [-1, 1, 28, 28],
                              "data": [0] * 784}]}},
        "input 'x': shape must be a list of non-negative integers",
    ),
    "no inputs": ({"json": {"inputs": []}}, '"inputs" must be a non-empty list of tensors'),
    "input twice": (
        {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                              "data": [0] * 784}] * 2}},
        "input 'x' is given twice",
    ),
    "not JSON": ({"content": b"\x89PNG\r\n"}, "the inference request is not valid JSON"),
    "a JSON list": ({"json": [1, 2]}, "the inference request must be a JSON object"),
    "compressed": (
        {"content": b"\x1f\x8b", "headers": {"Content-Encoding": "gzip"}},
        "Content-Encoding 'gzip' is not supported",
    ),
    "too large": ({"content": bytes(MAX_BODY + 1)}, f"the limit is {MAX_BODY}"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BATTERY))
def test_every_bad_body_is_a_4xx_with_an_error_sentence(served: Served, case: str) -> None:
    request, sentence = BATTERY[case]
    answer = httpx.post(f"{served.server.url}/v2/models/mnist-encoder/infer", **request)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert list(answer.json()) == ["error"] and sentence in answer.json()["error"], answer.text


def test_unknown_paths_under_v2_answer_the_protocols_error(served: Served) -> None:
    for method, path in (("GET", "/v2/repository/index"), ("POST", "/v2/models/mnist-elbo")):
        answer = httpx.request(method, f"{served.server.url}{path}")
        assert answer.status_code == 404 and "error" in answer.json()
    answer = httpx.get(f"{served.server.url}/v2/models/mnist-elbo/versions/one")
    assert answer.status_code == 404
    assert answer.json()["error"].endswith("has no version 'one': versions are 1, 2, ...")


def test_grpc_raw_contents_must_match_the_inputs(served: Served) -> None:
    def infer(raw: list[bytes], shape: list[int]) -> grpc.RpcError:
        request = service_pb2.ModelInferRequest(model_name="mnist-encoder", raw_input_contents=raw)
        request.inputs.add(name="x", datatype="UINT8", shape=shape)
        with (
            grpc.insecure_channel(served.grpc) as channel,
            pytest.raises(grpc.RpcError) as raised,
        ):
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        return raised.value

    error = infer([IMAGE, IMAGE], [1, 1, 28, 28])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "raw_input_contents has 2 entries for 1 inputs"
    error = infer([IMAGE], [3, 1, 28, 28])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has 784 bytes of data, but shape [3, 1, 28, 28]" in error.details()


# -- no request reads another's data (triton #7171) --------------------------------------


def test_concurrent_requests_each_get_their_own_answer(
    served: Served, ref: Reference, digits: np.ndarray
) -> None:
    """Requests over both transports, binary and JSON, with malformed ones among them
    that claim more bytes than they carry: each good one gets exactly its own image's
    numbers, each bad one a 400 and nothing else."""
    want_mean, _ = ref.encode(ref.x(digits[:, 0]))

    def good(i: int) -> np.ndarray:
        transport = TRANSPORTS[i % 2]
        image = digits[i : i + 1]
        tc = client(served, transport)
        result = tc.infer("mnist-encoder", [tensor(transport, "x", image, binary=i % 3 != 0)])
        mean: np.ndarray = result.as_numpy("mean")
        return mean

    def bad(i: int) -> httpx.Response:
        # Claims two images, carries one: the second must not come from anyone else.
        request = _binary(_x_header(784 * 2, [2, 1, 28, 28]), digits[i].tobytes())
        return httpx.post(f"{served.server.url}/v2/models/mnist-encoder/infer", **request)

    with ThreadPoolExecutor(max_workers=8) as pool:
        goods = [pool.submit(good, i) for i in range(len(digits))]
        bads = [pool.submit(bad, i) for i in range(8)]
        for i, future in enumerate(goods):
            np.testing.assert_allclose(future.result(), want_mean[i : i + 1], atol=1e-5)
        for future in bads:
            answer = future.result()
            assert answer.status_code == 400 and "only 784 bytes are left" in answer.text


# -- the API key, the port setting -------------------------------------------------------


def test_the_api_key_guards_both_transports_but_not_health(
    model_store: Path, tmp_path: Path, digits: np.ndarray
) -> None:
    port, key = free_port(), "s3cret"
    settings = {"VAE_GRPC_PORT": str(port), "VAE_API_KEY": key, "VAE_RELOAD_INTERVAL_S": "0"}
    with serve(model_store, tmp_path, **settings) as server:
        clients = {
            "http": thttp.InferenceServerClient(server.url.removeprefix("http://")),
            "grpc": tgrpc.InferenceServerClient(f"127.0.0.1:{port}"),
        }
        for transport, tc in clients.items():
            assert tc.is_server_live() and tc.is_server_ready()
            inputs = [tensor(transport, "x", digits[:1])]
            with pytest.raises(InferenceServerException) as raised:
                tc.infer("mnist-encoder", inputs)
            assert "missing or wrong API key" in raised.value.message()
            assert raised.value.status() in {"401", "StatusCode.UNAUTHENTICATED"}
            for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"}):
                result = tc.infer("mnist-encoder", inputs, headers=headers)
                assert result.as_numpy("mean").shape == (1, 8)


def test_a_taken_grpc_port_stops_the_startup(model_store: Path, tmp_path: Path) -> None:
    """As a taken HTTP port does: no server half up, the reason in the log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")} | {
            "VAE_MODEL_STORE": str(model_store),
            "VAE_PORT": str(free_port()),
            "VAE_GRPC_PORT": str(port),
        }
        done = subprocess.run(
            [Path(sys.executable).parent / "vae-serve"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
    assert done.returncode != 0
    assert f"cannot serve gRPC on 127.0.0.1:{port}" in done.stdout + done.stderr


# -- the documented tritonclient example runs as written ---------------------------------


def documented_python_example() -> str:
    """The ```python block of docs/protocol.md, the Open Inference Protocol's page."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "the page has one Python example"
    return str(blocks[0])


@pytest.mark.slow
def test_the_documented_tritonclient_example_works(tmp_path: Path) -> None:
    port = free_port()
    bundled = ROOT / "model_store"
    with serve(bundled, tmp_path, VAE_GRPC_PORT=str(port), VAE_RELOAD_INTERVAL_S="0") as server:
        script = documented_python_example()
        assert "127.0.0.1:8000" in script and "127.0.0.1:8001" in script
        script = script.replace("127.0.0.1:8000", server.url.removeprefix("http://"))
        script = script.replace("127.0.0.1:8001", f"127.0.0.1:{port}")
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
    printed = done.stdout.splitlines()
    assert printed[0] == "(1, 50)", done.stdout
    assert re.fullmatch(r"\[-[\d.]+\] \[(True|False)\]", printed[1]), done.stdout


# -- the benchmark's v2 cells send requests the server answers ----------------------------


def test_the_benchmarks_v2_requests_are_answered(served: Served, tmp_path: Path) -> None:
    """bench/run.py's v2 bodies through wrk (HTTP, binary tensors) and bench/grpcload.py
    (gRPC), briefly: every request answered with a 200 / OK. No timing is asserted."""
    require(shutil.which("wrk") is not None, "wrk is not installed (bench/run.sh installs it)")
    if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not a package
        sys.path.insert(0, str(ROOT))
    from bench.loadgen import Body, grpc_load, wrk

    # In a process of its own: the bodies are made with our generated messages, which
    # cannot share this process with tritonclient's.
    script = (
        "import sys; from pathlib import Path; from bench.run import MNIST, digits, write_bodies;"
        "write_bodies(Path(sys.argv[1]), digits(MNIST, 256))"
    )
    made = subprocess.run([sys.executable, "-c", script, tmp_path], cwd=ROOT, capture_output=True)
    assert made.returncode == 0, made.stderr.decode()
    raw = (tmp_path / "v2.bin").read_bytes()
    header = len(raw) - 784  # one UINT8 image after the JSON
    assert json.loads(raw[:header])["inputs"][0]["parameters"]["binary_data_size"] == 784
    body = Body(tmp_path / "v2.bin", headers=(("Inference-Header-Content-Length", str(header)),))
    http = wrk(f"{served.server.url}/v2/models/mnist-encoder/infer", body, connections=4, seconds=1)
    assert http.requests > 0 and http.errors == 0, http.error_kinds
    rpc = grpc_load(served.grpc, Body(tmp_path / "v2.grpc"), connections=4, seconds=1)
    assert rpc.requests > 0 and rpc.errors == 0, rpc.error_kinds
