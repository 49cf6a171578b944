"""The service for real: `vae-serve` (uvicorn) on 127.0.0.1, driven over HTTP with
real MNIST test images, including concurrent requests that must be batched."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_support import Server, copy_version, image_file, metric, npy, read_mnist, serve
from PIL import Image

NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("served")
    store = root / "model_store"
    shutil.copytree(model_store, store)  # private: a test adds a version to it
    settings = {
        "VAE_MAX_BATCH_SIZE": "64",
        "VAE_MAX_DELAY_MS": "50",  # long enough that concurrent requests meet in a batch
        "VAE_RELOAD_INTERVAL_S": "0.2",
        "VAE_INTRA_OP_THREADS": "1",
        "VAE_ADMIN": "true",
    }
    with serve(store, root, **settings) as served:
        yield served


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return read_mnist(48)


def test_every_endpoint_answers_over_http(server: Server, digits: np.ndarray) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["ready"] is True
        assert http.get("/models").json()["models"][0]["name"] == "mnist"
        latent = http.get("/models/mnist").json()["versions"][0]["latent_dim"]

        pngs = [
            ("images", (f"{i}.png", image_file(d), "image/png")) for i, d in enumerate(digits[:3])
        ]
        encoded = http.post("/encode?sample=true&seed=1", files=pngs).json()["results"]
        assert len(encoded) == 3 and len(encoded[0]["z"]) == latent

        b64 = {"images": [base64.b64encode(image_file(digits[0])).decode()]}
        assert http.post("/encode", json=b64).json()["results"][0] == {
            k: encoded[0][k] for k in ("mean", "log_var")
        }

        z = {"z": [row["z"] for row in encoded]}
        grid = http.post("/decode", json=z)
        assert grid.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(grid.content)).size == (2 * 28 + 3 * 2,) * 2
        pixels = np.asarray(http.post("/decode?format=json", json=z).json()["pixels"])
        assert pixels.shape == (3, 1, 28, 28) and 0 <= pixels.min() <= pixels.max() <= 1

        one = http.get("/sample?seed=4")
        assert Image.open(io.BytesIO(one.content)).size == (28, 28)
        sampled = http.get("/sample?n=2&seed=4&temperature=0.8&format=json").json()
        assert len(sampled["z"]) == 2 and sampled["seed"] == 4

        scored = http.post("/elbo?k=4", content=npy(digits[:4]), headers=NPY).json()
        assert scored["k"] == 4 and len(scored["results"]) == 4
        assert all(r["elbo"] < 0 and r["kl"] > 0 for r in scored["results"])

        wrong = http.post(
            "/elbo", files=[("images", ("x.png", image_file(digits[0][:20]), "image/png"))]
        )
        assert wrong.status_code == 422 and "20×28" in wrong.json()["detail"]

        assert "vae_http_requests_total" in http.get("/metrics").text
        assert http.get("/docs").status_code == 200
        assert "/elbo" in http.get("/openapi.json").json()["paths"]
        assert http.post("/admin/reload").status_code == 200


async def _post_all(url: str, path: str, bodies: list[bytes]) -> list[httpx.Response]:
    """All .npy bodies at once, as concurrent clients would send them."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        return await asyncio.gather(*(http.post(path, content=b, headers=NPY) for b in bodies))


def _calls_larger_than(server: Server, graph: str, rows: str) -> float:
    """How many ONNX Runtime calls of `graph` so far held more than `rows` rows
    (a bucket bound of the batch-size histogram)."""
    text = httpx.get(f"{server.url}/metrics").text
    labels = {"model": "mnist", "graph": graph}
    calls = metric(text, "vae_batch_size_count", **labels)
    return calls - metric(text, "vae_batch_size_bucket", le=rows, **labels)


@pytest.mark.parametrize(
    ("path", "graph", "rows"),
    [
        ("/encode", "encoder", "1.0"),  # one image per request
        ("/elbo?k=3", "decoder", "4.0"),  # 3 latents per request: more than 4 means merged
    ],
)
def test_concurrent_requests_are_batched_and_answer_as_unbatched_ones(
    server: Server, digits: np.ndarray, path: str, graph: str, rows: str
) -> None:
    bodies = [npy(digit[None]) for digit in digits[:32]]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # One at a time: no batch-mates.
        alone = [http.post(path, content=body, headers=NPY) for body in bodies]
    merged_before = _calls_larger_than(server, graph, rows)

    bad = npy(digits[:1, :, :20])  # the wrong size: refused, and alone
    together = asyncio.run(_post_all(server.url, path, [*bodies[:16], bad, *bodies[16:]]))

    refused = together.pop(16)
    assert refused.status_code == 422, refused.text
    assert [r.status_code for r in together] == [200] * 32
    for single, merged in zip(alone, together, strict=True):
        assert merged.json()["results"] == single.json()["results"]  # exactly, not nearly
    assert _calls_larger_than(server, graph, rows) > merged_before, server.log_tail()


def test_a_version_added_to_the_store_is_served_without_a_restart(
    server: Server, digits: np.ndarray
) -> None:
    copy_version(server.store / "mnist" / "1", server.store, 2)
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while http.get("/models").json()["models"][0]["latest_version"] != 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)  # the server polls the store every 0.2 s
        body = npy(digits[:1])
        assert http.post("/encode", content=body, headers=NPY).json()["version"] == 2
        assert http.post("/encode?version=1", content=body, headers=NPY).json()["version"] == 1


def _v2_body(x: np.ndarray) -> bytes:
    tensor = {"name": "x", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize("api", ["native", "v2"])
def test_a_slow_upload_holds_no_version_through_a_reload(
    model_store: Path, tmp_path: Path, digits: np.ndarray, api: str
) -> None:
    """A request reads its body before it leases a version: a reload retires the
    version at once (its batchers stop, its memory can go) while a slow upload is
    still arriving, and the upload, once complete, is served by the new version.
    The same through the Open Inference Protocol's infer."""
    store = tmp_path / "model_store"
    shutil.copytree(model_store, store)
    with (
        serve(store, tmp_path, VAE_RELOAD_INTERVAL_S="0", VAE_ADMIN="true") as served,
        httpx.Client(base_url=served.url, timeout=30) as http,
    ):
        if api == "native":
            path, kind, body = "/elbo", "application/x-npy", npy(digits[:2])
        else:
            path, kind, body = (
                "/v2/models/mnist-encoder/infer",
                "application/json",
                _v2_body(digits[:2]),
            )
        host, port = served.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as upload:
            upload.sendall(
                f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {kind}\r\n".encode()
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body[:200]
            )
            deadline = time.monotonic() + 30
            while metric(http.get("/metrics").text, "vae_http_requests_in_flight") < 2:
                assert time.monotonic() < deadline, "the upload never reached the app"
                time.sleep(0.05)  # 2: the upload, and this /metrics request

            copy_version(store / "mnist" / "1", store, 2)
            shutil.rmtree(store / "mnist" / "1")
            report = http.post("/admin/reload").json()
            assert report["loaded"] == ["mnist/2"] and report["retired"] == ["mnist/1"]
            while "retired mnist version 1" not in served.log.read_text():
                assert time.monotonic() < deadline, (
                    f"version 1 was not retired:\n{served.log_tail()}"
                )
                time.sleep(0.05)  # bounded polling of the server's log

            upload.sendall(body[200:])
            answer = b""
            while chunk := upload.recv(65536):
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:500]
        found = json.loads(payload)
        if api == "native":
            assert found["version"] == 2 and len(found["results"]) == 2
        else:
            assert found["model_version"] == "2"
            assert [o["shape"][0] for o in found["outputs"]] == [2, 2]  # mean, log_var
