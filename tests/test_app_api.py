"""The HTTP API through TestClient, against a small model exported by the real trainer.

Results are checked against an independent reference (numpy + onnxruntime on
the same ONNX files, tests/app_support.py), not against app/ itself.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from anyio.from_thread import BlockingPortal
from app_support import Reference, copy_version, image_file, metric, npy
from conversion import documented_file_x
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from app.batcher import Batcher, BatchStats
from app.config import Settings
from app.loader import load_version
from app.main import create_app

NPY = {"content-type": "application/x-npy"}
LIMITS = {
    "max_images_per_request": 16,
    "max_body_bytes": 1 << 20,
    "max_pixels": 50_000,
    "max_samples": 8,
    "max_k": 16,
}


def settings_for(store: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"device": "cpu", "reload_interval_s": 0, "intra_op_threads": 1}
    return Settings(model_store=store, **(base | LIMITS | overrides))


def portal(client: TestClient) -> BlockingPortal:
    """The event loop the app runs on, while the client is open."""
    assert client.portal is not None
    return client.portal


@contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    with TestClient(app) as client:
        portal(client).call(app.state.registry.loaded_once.wait)  # the background load
        yield client


@pytest.fixture(scope="module")
def client(model_store: Path) -> Iterator[TestClient]:
    with serving(settings_for(model_store)) as client:
        yield client


@pytest.fixture(scope="module")
def ref(version_dir: Path) -> Reference:
    return Reference(version_dir)


def saved(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def results(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    payload: list[dict[str, Any]] = response.json()["results"]
    return payload


def as_arrays(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.asarray([row[key] for row in rows], dtype=np.float32)


# -- /encode -------------------------------------------------------------------------------


def encode_bodies(images: np.ndarray) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """The same images in every accepted request format, with the x each one means."""
    x = images[:, None].astype(np.float32) / np.float32(255)  # uint8 / scale, the manifest's x
    floats = images.astype(np.float32) / 255  # what a client sends as floats in [0, 1]
    json_floats = images.astype(np.float64) / 255
    pngs = [image_file(image) for image in images]
    files = [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    return {
        "npy uint8": ({"content": npy(images), "headers": NPY}, x),
        "npy float": ({"content": npy(floats), "headers": NPY}, floats[:, None]),
        "json pixels": (
            {"json": {"pixels": json_floats.tolist()}},
            json_floats[:, None].astype(np.float32),
        ),
        "json base64": ({"json": {"images": [base64.b64encode(p).decode() for p in pngs]}}, x),
        "multipart": ({"files": files}, x),
    }


@pytest.mark.parametrize("body", list(encode_bodies(np.zeros((1, 1, 1), np.uint8))))
def test_encode_equals_the_encoder_graph_in_every_format(
    client: TestClient, ref: Reference, mnist: np.ndarray, body: str
) -> None:
    request, x = encode_bodies(mnist[:4])[body]
    response = client.post("/encode", **request)
    rows = results(response)
    assert response.json()["model"] == "mnist" and response.json()["version"] == 1
    mean, log_var = ref.encode(x)
    np.testing.assert_array_equal(as_arrays(rows, "mean"), mean)
    np.testing.assert_array_equal(as_arrays(rows, "log_var"), log_var)
    assert all("z" not in row for row in rows)


def test_base64_may_be_wrapped_or_a_data_url(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    text = base64.encodebytes(image_file(mnist[0])).decode()  # wrapped at 76 columns
    assert "\n" in text
    images = [text, "data:image/png;base64," + text.replace("\n", "")]
    rows = results(client.post("/encode", json={"images": images}))
    mean = ref.encode(ref.x(mnist[:1]))[0]
    np.testing.assert_array_equal(as_arrays(rows, "mean"), np.concatenate([mean, mean]))


def test_encode_accepts_one_raw_image_body(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    response = client.post(
        "/encode", content=image_file(mnist[0]), headers={"content-type": "image/png"}
    )
    np.testing.assert_array_equal(
        as_arrays(results(response), "mean"), ref.encode(ref.x(mnist[:1]))[0]
    )


def phone_photo(digit: np.ndarray) -> bytes:
    """A JPEG stored sideways and tagged (EXIF orientation 6) to be shown upright."""
    image = Image.fromarray(np.rot90(digit, 1)).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6
    return saved(image, "JPEG", exif=exif, quality=95)


def other_inputs(digit: np.ndarray) -> dict[str, bytes]:
    """Image files that were once a 500 or a silently wrong answer."""
    alpha = np.where(np.arange(28) < 14, 255, 96).astype(np.uint8)[None].repeat(28, 0)
    rgb = np.dstack([digit, 255 - digit, digit // 2])
    return {
        "cielab tiff": saved(Image.fromarray(rgb).convert("LAB"), "TIFF"),
        "exif-rotated jpeg": phone_photo(digit),
        "float tiff": saved(Image.fromarray(digit.astype(np.float32) / 255), "TIFF"),
        "16-bit png": saved(Image.fromarray(digit.astype(np.uint16) * 257), "PNG"),
        "rgba png": saved(Image.fromarray(np.dstack([rgb, alpha])), "PNG"),
        "cmyk jpeg": saved(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
    }


@pytest.mark.parametrize("kind", list(other_inputs(np.zeros((28, 28), np.uint8))))
def test_every_image_kind_encodes_as_its_documented_pixels(
    client: TestClient, ref: Reference, mnist: np.ndarray, kind: str
) -> None:
    """The documented conversion (docs/input.md) of the upright, decoded picture, through
    the encoder graph."""
    data = other_inputs(mnist[0])[kind]
    rows = results(client.post("/encode", **files(data)))
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    x = documented_file_x(shown, 1)[None].astype(np.float32)
    if kind == "exif-rotated jpeg":  # upright: close to the digit itself, not to it sideways
        assert np.abs(x[0, 0] - mnist[0] / 255).mean() < 0.02
    np.testing.assert_allclose(as_arrays(rows, "mean"), ref.encode(x)[0], atol=1e-5)


def test_channels_last_npy_equals_channels_first(client: TestClient, mnist: np.ndarray) -> None:
    nchw = mnist[:3, None]
    first = results(client.post("/encode", content=npy(nchw), headers=NPY))
    last = results(client.post("/encode", content=npy(nchw.transpose(0, 2, 3, 1)), headers=NPY))
    assert first == last


def test_encode_sample_draws_a_reproducible_z(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    body = {"content": npy(mnist[:3]), "headers": NPY}
    rows = results(client.post("/encode?sample=true&seed=3", **body))
    mean, log_var = ref.encode(ref.x(mnist[:3]))
    eps = np.random.default_rng(3).standard_normal((1, ref.latent_dim), np.float32)
    np.testing.assert_array_equal(as_arrays(rows, "z"), mean + np.exp(0.5 * log_var) * eps)
    again = results(client.post("/encode?sample=true&seed=3", **body))
    assert again == rows
    unseeded = [results(client.post("/encode?sample=true", **body))[0]["z"] for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_encode_answers_npz_to_clients_that_ask(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    body = {"content": npy(mnist[:5]), "headers": NPY | {"accept": "application/x-npz"}}
    response = client.post("/encode?sample=true&seed=3", **body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-npz"
    assert response.headers["x-model"] == "mnist" and response.headers["x-model-version"] == "1"
    arrays = np.load(io.BytesIO(response.content))
    assert sorted(arrays.files) == ["log_var", "mean", "z"]
    as_json = results(
        client.post("/encode?sample=true&seed=3", content=npy(mnist[:5]), headers=NPY)
    )
    for key in ("mean", "log_var", "z"):  # the same float32 values as the JSON answer
        assert arrays[key].dtype == np.float32 and arrays[key].shape == (5, ref.latent_dim)
        np.testing.assert_array_equal(arrays[key], as_arrays(as_json, key))
    mean, _ = ref.encode(ref.x(mnist[:5]))
    np.testing.assert_array_equal(arrays["mean"], mean)
    plain = np.load(io.BytesIO(client.post("/encode", **body).content))
    assert sorted(plain.files) == ["log_var", "mean"]  # z only with sample=true


def test_resize_true_accepts_other_sizes(client: TestClient, mnist: np.ndarray) -> None:
    big = np.asarray(Image.fromarray(mnist[0]).resize((56, 56)))
    files = {"files": [("images", ("big.png", image_file(big), "image/png"))]}
    assert client.post("/encode", **files).status_code == 422
    assert len(results(client.post("/encode?resize=true", **files))) == 1


def test_resize_crop_centre_crops_as_the_trainer_and_says_so(
    client: TestClient, mnist: np.ndarray, ref: Reference
) -> None:
    """A digit on a wide canvas: resize=crop keeps its aspect ratio (crop, then resize),
    resize=true squashes it; X-Resize says which rule was applied."""
    wide = np.zeros((56, 112), np.uint8)
    wide[:, 28:84] = np.asarray(Image.fromarray(mnist[0]).resize((56, 56)))
    files = {"files": [("images", ("wide.png", image_file(wide), "image/png"))]}
    cropped = client.post("/encode?resize=crop", **files)
    squashed = client.post("/encode?resize=true", **files)
    plain = client.post("/encode", files=[("images", ("d.png", image_file(mnist[0]), "image/png"))])
    assert cropped.headers["X-Resize"] == "crop" and squashed.headers["X-Resize"] == "stretch"
    assert plain.headers["X-Resize"] == "none"
    mean_of = lambda r: np.asarray(results(r)[0]["mean"])  # noqa: E731
    digit = mean_of(plain)
    assert np.linalg.norm(mean_of(cropped) - digit) < np.linalg.norm(mean_of(squashed) - digit)
    refused = client.post("/encode", **files)
    assert refused.status_code == 422
    assert "56×112 pixels, the model expects 28×28 (height×width)" in refused.json()["detail"]
    assert "resize=crop" in refused.json()["detail"]


# -- /elbo ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (1, 5), (8, 0)])
def test_elbo_equals_an_independent_computation_from_the_onnx_files(
    client: TestClient, ref: Reference, mnist: np.ndarray, k: int, seed: int
) -> None:
    images = mnist[:6]
    query = f"k={k}&seed={seed}&score=elbo"
    response = client.post(f"/elbo?{query}", content=npy(images), headers=NPY)
    rows = results(response)
    want = ref.elbo(ref.x(images), k=k, seed=seed)
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose([row[key] for row in rows], want[key], rtol=1e-9, err_msg=key)
    d = 28 * 28
    for row in rows:
        assert row["anomaly_score"] == -row["elbo"]
        assert row["bits_per_dim"] == pytest.approx(-row["elbo"] / (d * np.log(2)))
        assert 0 <= row["percentile"] <= 100
    top = response.json()
    assert (top["k"], top["seed"], top["score"], top["fpr"]) == (k, seed, "elbo", 0.01)


def test_elbo_threshold_comes_from_the_manifest_calibration(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    calibration = ref.manifest["calibration"]
    noise = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    images = np.concatenate([mnist[:2], noise])
    for fpr in (0.01, 0.2):
        response = client.post(f"/elbo?fpr={fpr}&score=elbo", content=npy(images), headers=NPY)
        threshold = response.json()["threshold"]
        assert threshold == pytest.approx(
            np.interp(fpr, calibration["levels"], calibration["elbo_quantiles"])
        )
        rows = results(response)
        assert [row["is_anomaly"] for row in rows] == [row["elbo"] < threshold for row in rows]
        assert rows[2]["is_anomaly"] and rows[3]["is_anomaly"]  # noise is not a digit
        assert rows[2]["percentile"] == 0.0


def test_an_images_score_does_not_depend_on_its_batch_mates_or_on_repetition(
    client: TestClient, mnist: np.ndarray
) -> None:
    alone = results(client.post("/elbo", content=npy(mnist[5:6]), headers=NPY))[0]
    together = results(client.post("/elbo", content=npy(mnist[:8]), headers=NPY))[5]
    again = results(client.post("/elbo", content=npy(mnist[5:6]), headers=NPY))[0]
    assert alone == together == again


# -- /decode and /sample -------------------------------------------------------------------


def sigmoid(logits: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return result


def test_decode_json_gives_the_pixel_means_of_the_decoder(
    client: TestClient, ref: Reference
) -> None:
    z = np.random.default_rng(1).standard_normal((3, ref.latent_dim)).astype(np.float32)
    for body in ({"json": {"z": z.tolist()}}, {"content": npy(z), "headers": NPY}):
        response = client.post("/decode?format=json", **body)
        assert response.status_code == 200, response.text
        (logits,) = ref.decoder.run(["logits"], {"z": z})
        pixels = np.asarray(response.json()["pixels"])
        assert pixels.shape == (3, 1, 28, 28)
        np.testing.assert_allclose(pixels, sigmoid(logits), atol=1e-6)


def test_decode_gives_a_png_of_one_image_or_a_grid(client: TestClient, ref: Reference) -> None:
    one = client.post("/decode", json={"z": [0.0] * ref.latent_dim})
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(one.content)).size == (28, 28)
    four = client.post("/decode", json={"z": [[0.0] * ref.latent_dim] * 4})
    assert Image.open(io.BytesIO(four.content)).size == (2 * 28 + 3 * 2,) * 2


def test_sample_decodes_seeded_prior_draws(client: TestClient, ref: Reference) -> None:
    response = client.get("/sample?n=3&seed=5&temperature=0.5&format=json")
    assert response.status_code == 200, response.text
    body = response.json()
    z = np.random.default_rng(5).standard_normal((3, ref.latent_dim), np.float32) * np.float32(0.5)
    np.testing.assert_array_equal(np.asarray(body["z"], np.float32), z)
    (logits,) = ref.decoder.run(["logits"], {"z": z})
    np.testing.assert_allclose(np.asarray(body["pixels"]), sigmoid(logits), atol=1e-6)
    assert (body["seed"], body["temperature"]) == (5, 0.5)


def test_sample_png_reports_its_seed_so_it_can_be_repeated(client: TestClient) -> None:
    first = client.get("/sample?n=4")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    seed = first.headers["x-seed"]
    again = client.get(f"/sample?n=4&seed={seed}")
    assert again.content == first.content and again.headers["x-seed"] == seed


# -- models, health, metrics, docs ---------------------------------------------------------


def test_models_list_versions_and_the_provider(client: TestClient, ref: Reference) -> None:
    listing = client.get("/models").json()
    assert listing["default_model"] == "mnist"
    (model,) = listing["models"]
    assert model["name"] == "mnist" and model["latest_version"] == 1
    assert model["versions"][0]["provider"] == "CPUExecutionProvider"
    detail = client.get("/models/mnist").json()
    manifest = detail["versions"][0]["manifest"]
    assert manifest["graphs"] == ref.manifest["graphs"]
    assert manifest["calibration"] == ref.manifest["calibration"]
    assert detail["refused"] == []
    missing = client.get("/models/fashion")
    assert missing.status_code == 404 and "fashion" in missing.json()["detail"]


def test_health_checks(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "detail": None}


def test_not_ready_is_503_with_the_reason(tmp_path: Path) -> None:
    with serving(settings_for(tmp_path / "empty")) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "default model 'mnist' is not loaded" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200
        assert (
            client.post(
                "/encode", content=npy(np.zeros((1, 28, 28), np.uint8)), headers=NPY
            ).status_code
            == 404
        )


def test_metrics_count_requests_by_endpoint_and_status(
    client: TestClient, mnist: np.ndarray
) -> None:
    client.post("/encode", content=npy(mnist[:2]), headers=NPY)
    client.post("/encode", content=b"nope", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    assert metric(text, "vae_http_requests_total", endpoint="/encode", status="200") >= 1
    assert metric(text, "vae_http_errors_total", endpoint="/encode", status="415") >= 1
    assert metric(text, "vae_batch_size_count", model="mnist", graph="encoder") >= 1
    assert metric(text, "vae_batch_queue_wait_seconds_count", model="mnist", graph="encoder") >= 1
    assert metric(text, "vae_http_request_duration_seconds_count", endpoint="/encode") >= 1
    assert metric(text, "vae_model_versions_loaded") == 1


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/encode", "/decode", "/sample", "/elbo", "/elbo/map", "/models",
                 "/models/{name}", "/healthz", "/readyz", "/metrics", "/admin/reload"):  # fmt: skip
        assert path in paths, path
    encode = paths["/encode"]["post"]
    assert encode["summary"].startswith("Encode images")
    assert {"multipart/form-data", "application/json", "application/x-npy"} <= set(
        encode["requestBody"]["content"]
    )
    assert {p["name"] for p in encode["parameters"]} >= {"model", "version", "sample", "seed"}
    assert "examples" in spec["components"]["schemas"]["ElboResponse"]
    assert "image/png" in paths["/sample"]["get"]["responses"]["200"]["content"]
    assert "image/png" in paths["/elbo/map"]["post"]["responses"]["200"]["content"]
    elbo = {p["name"]: p for p in paths["/elbo"]["post"]["parameters"]}
    assert elbo["score"]["schema"]["enum"] == ["typicality", "elbo", "iwae", "complexity"]
    assert elbo["score"]["schema"]["default"] == "typicality"


# -- bad input: a clear 4xx with a detail, never a 500 -------------------------------------


def files(*payloads: bytes) -> dict[str, Any]:
    return {"files": [("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(payloads)]}


def raw(body: bytes, content_type: str = NPY["content-type"]) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": content_type}}


def pickled() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return out.getvalue()


ZEROS = np.zeros((1, 28, 28), np.uint8)
NOISE_PNG = image_file(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
PNG_32 = image_file(np.zeros((32, 32), np.uint8))
BIG_PNG = image_file(np.zeros((300, 300), np.uint8))


# A 140-byte .npy declaring 2^40 float64 values: 8 TiB, once a MemoryError and a 500.
HUGE_NPY = (
    b"\x93NUMPY\x01\x00\x76\x00"
    + b"{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }".ljust(117)
    + b"\n"
    + bytes(12)
)
ANIMATED_GIF = saved(
    Image.fromarray(ZEROS[0]),
    "GIF",
    save_all=True,
    append_images=[Image.fromarray(ZEROS[0] + i) for i in (90, 180)],
)
INT32_TIFF = saved(Image.fromarray(np.zeros((28, 28), np.int32)), "TIFF")
BAD_REQUESTS = [  # (method, url, request, status, a phrase of the detail)
    ("post", "/encode", files(b"hello"), 415, "not an image"),
    ("post", "/encode", files(NOISE_PNG[: len(NOISE_PNG) // 2]), 400, "corrupt or truncated"),
    ("post", "/elbo", raw(b"x", "text/csv"), 415, "'text/csv' is not supported"),
    ("post", "/encode", raw(b"{", "application/json"), 400, "not valid JSON"),
    ("post", "/encode", {"json": {"imgs": []}}, 422, "exactly one of"),
    ("post", "/encode", {"json": {"images": ["%%%"]}}, 400, "not valid base64"),
    ("post", "/encode", {"json": {"pixels": [[[0.1], [0.1, 0.2]]]}}, 422, "rectangular"),
    ("post", "/encode", files(PNG_32), 422, "32×32 pixels, the model expects 28×28"),
    ("post", "/elbo", raw(npy(np.zeros((1, 5, 28, 28), np.uint8))), 422, "5 channels as N×C×H×W"),
    ("post", "/elbo", raw(npy(np.full((1, 28, 28), np.nan, np.float32))), 422, "NaN"),
    ("post", "/encode", {"json": {"pixels": [[[2.0] * 28] * 28]}}, 422, "must lie in [0, 1]"),
    ("post", "/encode", raw(npy(np.zeros(1))[:20]), 400, ".npy"),
    ("post", "/encode", raw(pickled()), 400, "never unpickled"),
    ("post", "/encode", {"json": {"pixels": []}}, 422, "empty"),
    ("post", "/encode", {"json": {"images": []}}, 422, "empty"),
    ("post", "/decode", {"json": {"z": []}}, 422, "empty"),
    ("post", "/decode", {"json": {"z": [[0.0] * 3]}}, 422, "length 3, the model expects 8"),
    ("post", "/decode", raw(npy(np.full((1, 8), np.inf, np.float32))), 422, "infinity"),
    ("post", "/decode", raw(b"z", "text/plain"), 415, "'text/plain' is not supported"),
    ("post", "/encode", raw(npy(np.zeros((17, 28, 28), np.uint8))), 413, "17 images"),
    ("post", "/encode", raw(b"0" * ((1 << 20) + 1)), 413, "the limit is 1048576"),
    ("post", "/encode?resize=true", files(BIG_PNG), 413, "300×300"),
    ("get", "/sample?n=9", {}, 422, "n=9 is above the limit of 8"),
    ("post", "/elbo?k=17", raw(npy(ZEROS)), 422, "k=17 is above the limit of 16"),
    # score=iwae defaults to its calibrated k (64), which this service's limit refuses.
    ("post", "/elbo?score=iwae", raw(npy(ZEROS)), 422, "k=64 is above the limit of 16"),
    ("post", "/elbo/map", raw(b"x", "text/csv"), 415, "'text/csv' is not supported"),
    ("get", "/sample?model=fashion", {}, 404, "no model named 'fashion'"),
    ("get", "/sample?version=7", {}, 404, "no version 7"),
    ("get", "/sample?seed=-1", {}, 422, "greater than or equal to 0"),
    # Once 500s: empty inner lists, a CIELab TIFF (see test_a_cielab_tiff...), a huge .npy.
    ("post", "/encode", {"json": {"pixels": [[[]]]}}, 422, '\\"pixels\\" is empty'),
    ("post", "/encode", raw(HUGE_NPY), 400, "declares 1099511627776 values of float64"),
    # Once silent or misleading.
    ("post", "/encode", raw(image_file(ZEROS[0])), 400, "it looks like a PNG image"),
    ("post", "/encode", files(ANIMATED_GIF), 422, "image 0 has more than one frame"),
    ("post", "/encode", files(INT32_TIFF), 415, "32-bit integer pixels"),
    ("post", "/encode", raw(npy(np.zeros((1, 28, 28), np.int64))), 422, "got dtype int64"),
    ("post", "/encode", raw(npy(np.zeros((28, 28, 3), np.uint8))), 422, "send it as 1×28×28×3"),
    ("post", "/encode", {"json": {"pixels": [[["0.5"] * 28] * 28]}}, 422, "it holds a string"),
    ("post", "/encode", {"json": {"pixels": [[[True] * 28] * 28]}}, 422, "it holds true or false"),
    ("post", "/encode", {"json": {"pixels": [[[None] * 28] * 28]}}, 422, "it holds null"),
    ("post", "/encode", {"json": {"pixels": 0.5}}, 422, "must be nested lists, N×H×W"),
    ("post", "/encode", {"json": {"pixels": [[[[[0.5]]]]]}}, 422, "got 5 levels of lists"),
    ("post", "/decode", {"json": {"z": [["a"] * 8]}}, 422, "it holds a string"),
    ("post", "/decode", {"json": {"z": {"a": 1}}}, 422, "length L; got an object"),
    # Parameters and paths, in the same shape as every other error.
    ("get", "/sample?version=0", {}, 422, "query parameter version: input should be greater"),
    ("get", "/sample?model=../x", {}, 422, "query parameter model: string should match pattern"),
    ("get", "/sample?n=two&temperature=-1", {}, 422, "integer, got 'two'; query parameter temper"),
    ("get", "/models/..x", {}, 422, "path parameter name: string should match pattern"),
    ("get", "/nowhere", {}, 404, "there is no endpoint /nowhere"),
    ("delete", "/encode", {}, 405, "DELETE is not allowed on /encode; use POST"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url", "request_", "status", "detail"), BAD_REQUESTS)
def test_bad_input_is_a_clear_4xx(
    client: TestClient, method: str, url: str, request_: dict[str, Any], status: int, detail: str
) -> None:
    response = getattr(client, method)(url, **request_)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["detail"], str), body  # one shape for every error
    assert detail in json.dumps(body["detail"], ensure_ascii=False)
    assert client.get("/healthz").status_code == 200  # still up


def test_invalid_parameters_keep_the_per_field_list_beside_the_sentence(client: TestClient) -> None:
    body = client.get("/sample?version=0&n=0").json()
    assert [error["loc"] for error in body["errors"]] == [["query", "version"], ["query", "n"]]
    assert body["detail"].count("query parameter") == 2


def test_work_beyond_the_budget_is_503_and_more_than_it_ever_allows_is_413(
    model_store: Path, mnist: np.ndarray
) -> None:
    """VAE_MAX_QUEUE counts rows of model work: an image through the encoder, a
    latent through the decoder; /elbo with k costs N·(1 + k)."""
    with serving(settings_for(model_store, max_batch_size=8, max_queue=16)) as client:
        mv = client.app.state.registry.resolve(None, None)  # type: ignore[attr-defined]
        one = {"content": npy(mnist[:1]), "headers": NPY}
        response = client.post("/elbo?k=16", **one)  # 1 + 16 rows: never fits
        assert response.status_code == 413, response.text
        assert "needs 17 rows" in response.json()["detail"]
        assert "at most 16 (VAE_MAX_QUEUE)" in response.json()["detail"]
        with mv.admit(16):  # the budget is spent by requests in progress
            response = client.post("/encode", **one)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["detail"] == (
            "server busy: mnist/1 is computing 16 rows and this request needs 1 more, "
            "over the limit of 16 (VAE_MAX_QUEUE); retry shortly"
        )
        assert client.post("/elbo?k=15", **one).status_code == 200  # alone, it fits


async def test_heavy_requests_and_light_ones_are_all_admitted_together(
    model_store: Path, mnist: np.ndarray
) -> None:
    """Two score=iwae-sized requests (32 images, k=64: 2,080 rows each) and light ones
    at the same moment, under the default budget: every one is answered, none is
    refused because another's rows were queued."""
    app = create_app(settings_for(model_store, max_k=64, max_images_per_request=64))
    async with app.router.lifespan_context(app):
        await app.state.registry.loaded_once.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            heavy = [
                http.post("/elbo?k=64", content=npy(mnist[i : i + 32]), headers=NPY)
                for i in (0, 32)
            ]
            light = [
                http.post("/encode", content=npy(mnist[i : i + 1]), headers=NPY) for i in range(4)
            ]
            answers = await asyncio.gather(*heavy, *light)
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert [len(r.json()["results"]) for r in answers] == [32, 32, 1, 1, 1, 1]


def test_a_request_past_its_deadline_is_504_and_its_queued_work_is_dropped(
    model_store: Path, mnist: np.ndarray
) -> None:
    with serving(settings_for(model_store, request_timeout_s=0.2)) as client:
        mv = client.app.state.registry.resolve(None, None)  # type: ignore[attr-defined]
        held, running = threading.Event(), threading.Event()
        calls: list[int] = []

        def blocked(x: np.ndarray) -> list[np.ndarray]:
            calls.append(len(x))
            running.set()
            held.wait(30)
            return [x[:, 0, 0, :8], x[:, 0, 0, :8]]

        original = mv.encoder
        mv.encoder = Batcher(blocked, max_batch_size=256, max_delay_s=0)
        portal(client).call(mv.encoder.start)
        x = np.zeros((1, 1, 28, 28), np.float32)
        in_call = portal(client).start_task_soon(mv.encoder.submit, x)  # holds the graph
        assert running.wait(30)
        response = client.post("/encode", content=npy(mnist[:3]), headers=NPY)
        assert response.status_code == 504, response.text
        assert "longer than 0.2 s (VAE_REQUEST_TIMEOUT_S)" in response.json()["detail"]
        held.set()
        in_call.result(30)
        portal(client).call(mv.encoder.stop)  # drains the queue
        assert calls == [1]  # the 3 images of the late request never ran
        mv.encoder = original


def test_a_dead_batcher_makes_readyz_503_until_the_next_request_restarts_it(
    model_store: Path, mnist: np.ndarray
) -> None:
    with serving(settings_for(model_store)) as client:
        mv = client.app.state.registry.resolve(None, None)  # type: ignore[attr-defined]
        broken = [True]

        def on_batch(stats: BatchStats) -> None:
            if broken:
                broken.pop()
                raise RuntimeError("a bug in a callback")

        graphs = load_version(mv.path, "mnist", 1, device="cpu", threads=1)
        original = mv.encoder
        mv.encoder = Batcher(
            graphs.encoder.run,
            max_batch_size=8,
            max_delay_s=0,
            on_batch=on_batch,
            name="mnist/1/encoder",
        )
        portal(client).call(mv.encoder.start)
        body = {"content": npy(mnist[:1]), "headers": NPY}
        assert client.post("/encode", **body).status_code == 200  # answered, then the bug
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert ready.json()["detail"] == (
            "mnist/1/encoder: the batching task died (RuntimeError: a bug in a callback); "
            "the next request restarts it"
        )
        assert client.post("/encode", **body).status_code == 200
        assert client.get("/readyz").json() == {"ready": True, "detail": None}
        portal(client).call(mv.encoder.stop)
        mv.encoder = original


def test_past_max_concurrency_requests_are_503_at_once_but_probes_answer(
    model_store: Path, mnist: np.ndarray
) -> None:
    with serving(settings_for(model_store, max_concurrency=1)) as client:
        arrived, go = threading.Event(), asyncio.Event()
        body = npy(mnist[:1])

        async def receive() -> dict[str, Any]:  # a client that has not sent its body yet
            arrived.set()
            await go.wait()
            return {"type": "http.request", "body": body, "more_body": False}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/encode", "raw_path": b"/encode",
            "query_string": b"", "root_path": "", "headers": [
                (b"content-type", b"application/x-npy"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        slow = portal(client).start_task_soon(client.app, scope, receive, send)  # type: ignore[arg-type]
        try:
            assert arrived.wait(30)
            response = client.post("/encode", content=body, headers=NPY)
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "VAE_MAX_CONCURRENCY" in response.json()["detail"]
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            metrics = client.get("/metrics").text
            assert metric(metrics, "vae_http_requests_shed_total") == 1
            assert metric(metrics, "vae_http_requests_in_flight") == 2  # with /metrics itself
        finally:
            portal(client).call(go.set)
        slow.result(30)
        assert sent[0]["status"] == 200
        assert client.post("/encode", content=body, headers=NPY).status_code == 200


def test_a_version_corrupted_after_loading_is_shown_once_in_models(
    store_copy: Path, mnist: np.ndarray
) -> None:
    with serving(settings_for(store_copy, admin=True)) as client:
        decoder = store_copy / "mnist" / "1" / "decoder.onnx"
        decoder.write_bytes(decoder.read_bytes()[:-1] + b"\0")
        report = client.post("/admin/reload").json()
        assert list(report["refused"]) == ["mnist/1"] and report["retired"] == []
        detail = client.get("/models/mnist").json()
        assert detail["refused"] == []
        (served,) = detail["versions"]
        assert served["version"] == 1 and "sha256" in served["refused_update"]
        assert client.post("/encode", content=npy(mnist[:1]), headers=NPY).status_code == 200


def test_admin_endpoints_are_off_without_a_key_or_vae_admin(model_store: Path) -> None:
    with serving(settings_for(model_store)) as client:
        response = client.post("/admin/reload")
        assert response.status_code == 403
        assert (
            "VAE_API_KEY" in response.json()["detail"] and "VAE_ADMIN" in response.json()["detail"]
        )
    with serving(settings_for(model_store, api_key="s3cret")) as client:
        assert client.post("/admin/reload").status_code == 401
        reloaded = client.post("/admin/reload", headers={"X-API-Key": "s3cret"})
        assert reloaded.status_code == 200, reloaded.text


def test_admin_reload_serves_a_new_version_beside_the_old(
    store_copy: Path, mnist: np.ndarray
) -> None:
    with serving(settings_for(store_copy, admin=True)) as client:
        copy_version(store_copy / "mnist" / "1", store_copy, 2)
        report = client.post("/admin/reload").json()
        assert report == {"loaded": ["mnist/2"], "refused": {}, "retired": []}
        body = {"content": npy(mnist[:1]), "headers": NPY}
        assert client.post("/encode", **body).json()["version"] == 2
        assert client.post("/encode?version=1", **body).json()["version"] == 1
        assert [v["version"] for v in client.get("/models/mnist").json()["versions"]] == [1, 2]


def test_an_api_key_guards_everything_but_the_health_checks(model_store: Path) -> None:
    with serving(settings_for(model_store, api_key="s3cret")) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        for path in ("/models", "/metrics", "/docs", "/openapi.json", "/sample"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "API key" in response.json()["detail"]
        assert client.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        spec = client.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()
        assert "apiKey" in spec["components"]["securitySchemes"]
        assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_a_client_that_hangs_up_mid_upload_is_no_server_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette raises ClientDisconnect when the body is read after the client left."""
    app = client.app
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/encode", "raw_path": b"/encode", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/x-npy"),
                                     (b"content-length", b"1000")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    with caplog.at_level(logging.ERROR):
        portal(client).call(app, scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
