"""Request bodies -> validated arrays, before anything is queued.

/encode and /elbo read images as multipart files, JSON (base64 files or
pixel arrays), a raw .npy body or a single raw image body; /decode reads
latents as JSON or .npy. Every limit is enforced here, and every failure is a
domain error with a human detail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.config import Settings
from app.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from app.images import decode_images, load_npy, to_model_input
from vae_contract.manifest import Manifest

NPY = "application/x-npy"
IMAGE_TYPES = f"multipart/form-data, application/json, {NPY} or image/*"
LATENT_TYPES = f"application/json or {NPY}"
# Arrays up to this size are checked and scaled on the event loop; a worker
# thread costs the loop more (a hand-off and a wake-up) than the work itself.
_INLINE_BYTES = 64 * 1024


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:  # chunked uploads have no Content-Length to check up front
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Unprocessable("the JSON body must be an object")
    return payload


def _numbers(value: Any, field: str) -> np.ndarray:
    """A JSON nested list of numbers -> a float array, refusing ragged or non-numeric."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        raise Unprocessable(f'"{field}" must be a rectangular array of numbers') from None
    if array.dtype.kind not in "iuf":
        raise Unprocessable(f'"{field}" must be a rectangular array of numbers')
    return array.astype(np.float32)


async def _multipart_files(headers: Headers, body: bytes, max_files: int) -> list[bytes]:
    async def stream() -> AsyncGenerator[bytes]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        error = PayloadTooLarge if exc.message.startswith("Too many") else BadRequest
        raise error(f"multipart body: {exc.message}") from None
    try:
        uploads = form.getlist("images")
        if not uploads:
            raise Unprocessable('the multipart body has no files in the field "images"')
        files = []
        for upload in uploads:
            if not isinstance(upload, UploadFile):
                raise Unprocessable('the field "images" must hold files, not text')
            files.append(await upload.read())
        return files
    finally:
        await form.close()


def _base64_files(images: Any) -> list[bytes]:
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise Unprocessable('"images" must be a list of base64 strings')
    files = []
    for index, text in enumerate(images):
        if text.startswith("data:"):  # a data URL, as browsers make them
            text = text.partition(",")[2]
        try:
            # Line breaks are fine (`base64` wraps at 76 columns); other stray bytes are not.
            files.append(base64.b64decode("".join(text.split()), validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"images[{index}] is not valid base64") from None
    return files


async def read_images(
    request: Request, manifest: Manifest, settings: Settings, *, resize: bool
) -> np.ndarray:
    """Any accepted image body -> x, float32 (N, C, H, W) in [0, 1], validated."""
    media = media_type(request)
    known = media in {"multipart/form-data", "application/json", NPY} or media.startswith("image/")
    if not known:
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not supported; send {IMAGE_TYPES}"
        )
    limit = settings.max_images_per_request
    body = await read_body(request, settings.max_body_bytes)
    files: list[bytes] | None = None
    array: np.ndarray | None = None
    if media == "multipart/form-data":
        files = await _multipart_files(request.headers, body, limit)
    elif media.startswith("image/"):
        files = [body]
    elif media == NPY:
        array = load_npy(body)
    else:
        payload = _json(body)
        if ("images" in payload) == ("pixels" in payload):
            raise Unprocessable('send exactly one of "images" (base64 image files) or "pixels"')
        if "images" in payload:
            files = _base64_files(payload["images"])
        else:
            array = _numbers(payload["pixels"], "pixels")
    if files is not None:
        if len(files) > limit:
            raise PayloadTooLarge(f"{len(files)} images in one request; the limit is {limit}")
        if not files:
            raise Unprocessable("the batch is empty: send at least one image")
    if array is not None:
        return await pixels_to_x(array, manifest, settings, resize=resize)
    # Decoding is CPU work: off the event loop, like the model calls. Image files
    # always go: a small file can still declare millions of pixels.
    return await asyncio.to_thread(_to_x, files, array, manifest, settings, resize)


async def pixels_to_x(
    array: np.ndarray, manifest: Manifest, settings: Settings, *, resize: bool = False
) -> np.ndarray:
    """A pixel array (uint8 0-255 or floats 0-1) -> x, float32 (N, C, H, W), validated."""
    if array.nbytes <= _INLINE_BYTES and not resize:
        # Checking and scaling a few images takes microseconds, less than the hop.
        return _to_x(None, array, manifest, settings, resize)
    return await asyncio.to_thread(_to_x, None, array, manifest, settings, resize)


def _to_x(
    files: list[bytes] | None,
    array: np.ndarray | None,
    manifest: Manifest,
    settings: Settings,
    resize: bool,
) -> np.ndarray:
    if files is not None:
        array = decode_images(files, manifest.input, max_pixels=settings.max_pixels, resize=resize)
    assert array is not None
    return to_model_input(
        array,
        manifest.input,
        scale=manifest.preprocessing.scale,
        max_images=settings.max_images_per_request,
        resize=resize,
    )


async def read_latents(request: Request, latent_dim: int, settings: Settings) -> np.ndarray:
    """{"z": [[...], ...]} or a .npy body -> z, float32 (N, L), validated."""
    media = media_type(request)
    if media not in {"application/json", NPY}:
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not supported; send {LATENT_TYPES}"
        )
    body = await read_body(request, settings.max_body_bytes)
    if media == NPY:
        z = load_npy(body)
        if z.dtype.kind not in "iuf":
            raise Unprocessable(f"latents must be numbers, got dtype {z.dtype}")
    else:
        payload = _json(body)
        if "z" not in payload:
            raise Unprocessable('the JSON body needs "z": a list of latent vectors')
        z = _numbers(payload["z"], "z")
    return check_latents(z, latent_dim, settings)


def check_latents(z: np.ndarray, latent_dim: int, settings: Settings) -> np.ndarray:
    """Latents of any number type -> z, float32 (N, L), validated."""
    z = z.astype(np.float32)
    if z.size == 0:
        raise Unprocessable("the batch is empty: send at least one latent vector")
    if z.ndim == 1:
        z = z[None]  # one latent vector
    if z.ndim != 2:
        raise Unprocessable(f"z must be N×L or one vector of length L, got shape {list(z.shape)}")
    limit = settings.max_images_per_request
    if len(z) > limit:
        raise PayloadTooLarge(f"{len(z)} latents in one request; the limit is {limit}")
    if z.shape[1] != latent_dim:
        raise Unprocessable(f"latents have length {z.shape[1]}, the model expects {latent_dim}")
    if not np.isfinite(z).all():
        raise Unprocessable("z contains NaN or infinity")
    return np.ascontiguousarray(z)
