"""Hostile bodies that one request sends, refused cheaply and never with a 500: shapes
numpy cannot describe, booleans sent as numbers, JSON built to stall the event loop,
images that would hold more memory than the budget. tests/test_attack.py runs the
attacks of many requests against a real server process."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import GifImagePlugin, Image
from pydantic import ValidationError

from app.budget import MAX_JPEG_SCANS, ByteBudget, files_bytes
from app.config import Settings
from app.errors import PayloadTooLarge, Unavailable, Unprocessable
from app.json_scan import MAX_JSON_CONTAINERS, MAX_JSON_VALUES
from app.main import create_app

INFER = "/v2/models/mnist-encoder/infer"
# The shape of the review: 2**62 × 2**62 × 0 holds no element, so no data matches it.
HUGE = [4611686018427387904, 4611686018427387904, 0]


@pytest.fixture(scope="module")
def client(model_store: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_store=model_store,
        device="cpu",
        reload_interval_s=0,
        max_body_bytes=4 * 2**20,
        memory_budget_bytes=8 * 2**20,
    )
    app = create_app(settings)
    with TestClient(app) as served:
        assert served.portal is not None
        served.portal.call(app.state.registry.loaded_once.wait)  # the background load
        yield served


def _png(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def test_a_shape_numpy_cannot_describe_is_a_400_not_a_500(client: TestClient) -> None:
    as_json = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": HUGE, "data": []}]}
    header = {
        "inputs": [
            {"name": "x", "datatype": "UINT8", "shape": HUGE, "parameters": {"binary_data_size": 0}}
        ]
    }
    body = orjson.dumps(header)
    as_binary = {
        "content": body,
        "headers": {
            "Inference-Header-Content-Length": str(len(body)),
            "Content-Type": "application/octet-stream",
        },
    }
    for request in ({"json": as_json}, as_binary):
        response = client.post(INFER, **request)
        assert response.status_code == 400, response.text
        assert "declares more than" in response.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("FP32", [True] + [0] * 783), ("FP32", [0.5] * 783 + [False]), ("UINT8", [1] * 783 + [True])],
)
def test_json_true_is_not_a_number(client: TestClient, datatype: str, data: list[Any]) -> None:
    """As the native API: numpy would read [true, 0, ...] as the integers 1, 0, ..."""
    tensor = {"name": "x", "datatype": datatype, "shape": [1, 1, 28, 28], "data": data}
    response = client.post(INFER, json={"inputs": [tensor]})
    assert response.status_code == 400, response.text
    assert f"data must be numbers for datatype {datatype}" in response.json()["error"]


def test_json_built_to_stall_the_loop_is_refused_before_it_is_parsed(client: TestClient) -> None:
    """Millions of empty lists or values cost seconds of GIL to parse; their bytes say so."""
    lists = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":['
        + b",".join([b"[]"] * (MAX_JSON_CONTAINERS + 1))
        + b"]}]}"
    )
    response = client.post(INFER, content=lists, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "lists and objects" in response.json()["error"]
    assert "binary tensor data" in response.json()["error"]

    pixels = b'{"pixels":[' + b",".join([b"[]"] * (MAX_JSON_CONTAINERS + 1)) + b"]}"
    response = client.post("/encode", content=pixels, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "application/x-npy" in response.json()["detail"]

    zeros = b'{"z":[' + b",".join([b"0"] * (MAX_JSON_VALUES + 1)) + b"]}"
    response = client.post("/decode", content=zeros, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert f"over {MAX_JSON_VALUES} values" in response.json()["detail"]


def test_images_that_would_hold_more_than_the_budget_are_refused_from_their_headers(
    client: TestClient,
) -> None:
    """A 14 KB PNG of 2000×2000 RGBA holds ~80 MB decoded and resized: over the 8 MiB
    budget, a 413 before any pixel is decoded; without resize, the same file is too
    large for the budget too (16 MB decoded)."""
    bomb = _png(2000, 2000)
    assert len(bomb) < 64 * 1024
    for resize in ("true", "false"):
        response = client.post(
            f"/encode?resize={resize}", content=bomb, headers={"content-type": "image/png"}
        )
        assert response.status_code == 413, response.text
        assert "VAE_MEMORY_BUDGET_BYTES" in response.json()["detail"]
    # A small image is as welcome as ever, resized or not.
    small = _png(56, 56, "L")
    response = client.post(
        "/encode?resize=true", content=small, headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text


def test_a_jpeg_of_thousands_of_scans_is_refused_before_it_is_decoded() -> None:
    out = io.BytesIO()
    Image.new("L", (64, 64), 128).save(out, "JPEG", progressive=True)
    photo = out.getvalue()
    assert files_bytes([photo], max_pixels=2**24, resize=False) > 0  # a few scans: fine
    # Scans repeated up to the end-of-image marker: each is decoded again.
    first = photo.index(b"\xff\xda")
    bomb = photo[:first] + photo[first:-2] * (MAX_JPEG_SCANS + 1) + photo[-2:]
    with pytest.raises(PayloadTooLarge, match="scans"):
        files_bytes([bomb], max_pixels=2**24, resize=False)


def test_the_budget_refuses_what_never_fits_413_and_what_fits_later_503() -> None:
    budget = ByteBudget(100)
    with budget.holding(60, "a body"):
        with pytest.raises(Unavailable, match="retry shortly"):
            budget.take(50, "another body")
        budget.take(40, "a third")
        budget.give(40)
    assert budget.held == 0
    with pytest.raises(PayloadTooLarge, match="at most 100"):
        budget.take(101, "a body")
    budget.take(100, "all of it")  # whole once the others are done


def test_an_animation_is_refused_without_walking_its_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counting a GIF's frames reads every one (20,000 in 16 MB took seconds); finding a
    second one is enough to refuse it."""
    frames = [Image.new("L", (8, 8), i) for i in range(50)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])

    def walked(self: object) -> int:
        raise AssertionError("n_frames walks every frame")

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(walked))
    with pytest.raises(Unprocessable, match="more than one frame"):
        files_bytes([out.getvalue()], max_pixels=2**24, resize=False)


def test_the_budget_must_hold_the_largest_body() -> None:
    with pytest.raises(ValidationError, match="memory_budget_bytes"):
        Settings(memory_budget_bytes=2**20, max_body_bytes=2 * 2**20)
