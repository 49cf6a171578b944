"""Request bodies -> validated arrays, before anything is queued.

/encode and /elbo read images as multipart files, JSON (base64 files or
pixel arrays), a raw .npy body or a single raw image body; /decode reads
latents as JSON or .npy. Reading a body needs no model (`read_image_body`);
making it the model's x does (`to_x`, with app/images.py and app/pixels.py).
Every limit is enforced on the way, and every failure is a domain error with a
human detail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app import budget as memory
from app import tracing
from app.config import Settings
from app.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from app.images import decode_images, load_npy, to_model_input
from app.json_scan import check_json_cost
from app.pixels import Resize, count
from vae_contract.manifest import Manifest

T = TypeVar("T")

NPY = "application/x-npy"
IMAGE_TYPES = f"multipart/form-data, application/json, {NPY} or image/*"
PIXEL_LAYOUTS = "N×H×W, N×C×H×W or N×H×W×C"
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
    check_json_cost(body, bulk=f"a .npy body ({NPY})")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Unprocessable("the JSON body must be an object")
    return payload


_JSON_TYPES = {str: "a string", bool: "true or false", type(None): "null", dict: "an object"}


def _leaf_types(value: Any) -> set[type]:
    """The types of everything in nested lists that is not a list."""
    types, stack = set(), [value]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(item)
        else:
            types.add(type(item))
    return types


def _numbers(
    value: Any, field: str, layouts: str, levels: tuple[int, int], max_rows: int
) -> np.ndarray:
    """A JSON nested list of numbers -> float64 array, or a clear refusal. `levels`: the
    least and most nesting; at the most (and for pixels always) the first axis is N.

    The nesting along the first elements is checked before numpy sees the lists: numpy
    walks every list to find a shape, and a 16 MB body of `[[],[],…]` costs it seconds.
    """
    shape: list[int] = []
    probe = value
    while isinstance(probe, list) and len(shape) <= levels[1]:
        shape.append(len(probe))
        probe = probe[0] if probe else None
    if shape[:1] == [0] or (shape and 0 in shape and len(shape) >= levels[0]):
        raise Unprocessable(f'"{field}" is empty: send at least one value per axis')
    if not levels[0] <= len(shape) <= levels[1]:
        got = f"{len(shape)} levels of lists" if shape else _JSON_TYPES.get(type(value), "a number")
        raise Unprocessable(f'"{field}" must be nested lists, {layouts}; got {got}')
    if (len(shape) == levels[1] or field == "pixels") and shape[0] > max_rows:
        raise PayloadTooLarge(f'"{field}" holds {shape[0]} items; the limit is {max_rows}')
    kinds = _leaf_types(value) - {int, float}
    if kinds:  # numpy would read "1", true and null as numbers
        found = _JSON_TYPES.get(kinds.pop(), "a list")
        raise Unprocessable(f'"{field}" must hold numbers only; it holds {found}')
    try:
        array = np.array(value, dtype=np.float64)
    except ValueError:  # ragged
        raise Unprocessable(f'"{field}" must be a rectangular array of numbers') from None
    return array


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


@dataclass(frozen=True)
class ImageBody:
    """An image request's body, parsed without the model: image files or one pixel array."""

    files: list[bytes] | None = None
    array: np.ndarray | None = None


def _json_images(body: bytes, max_images: int) -> ImageBody:
    payload = _json(body)
    if ("images" in payload) == ("pixels" in payload):
        raise Unprocessable('send exactly one of "images" (base64 image files) or "pixels"')
    if "images" in payload:
        return ImageBody(files=_base64_files(payload["images"]))
    return ImageBody(array=_numbers(payload["pixels"], "pixels", PIXEL_LAYOUTS, (3, 4), max_images))


async def _parsed(body: bytes, parse: Callable[[bytes, int], T], limit: int) -> T:
    """Parse a body on the event loop when small, else in a worker thread, where checking
    and converting the lists shares the GIL with the loop (orjson's parse itself holds it:
    16 MB of JSON delays other requests for as long, which docs/api.md warns of)."""
    if len(body) <= _INLINE_BYTES:
        return parse(body, limit)
    return await asyncio.to_thread(parse, body, limit)


async def read_image_body(
    request: Request, settings: Settings, body: bytes | None = None
) -> ImageBody:
    """Any accepted image body -> files or an array, with the request's limits applied.
    `body`: the body, when the caller has read it already (with `read_body`)."""
    media = media_type(request)
    known = media in {"multipart/form-data", "application/json", NPY} or media.startswith("image/")
    if not known:
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not supported; send {IMAGE_TYPES}"
        )
    limit = settings.max_images_per_request
    if body is None:
        body = await read_body(request, settings.max_body_bytes)
    if media == "multipart/form-data":
        parsed = ImageBody(files=await _multipart_files(request.headers, body, limit))
    elif media.startswith("image/"):
        parsed = ImageBody(files=[body])
    elif media == NPY:
        parsed = ImageBody(array=load_npy(body))
    else:
        parsed = await _parsed(body, _json_images, limit)
    if parsed.files is not None:
        n = len(parsed.files)
        if n > limit:
            raise PayloadTooLarge(f"{n} images in one request; the limit is {limit}")
        if not parsed.files:
            raise Unprocessable("the batch is empty: send at least one image")
    return parsed


def to_x(body: ImageBody, manifest: Manifest, settings: Settings, *, resize: Resize) -> np.ndarray:
    """A parsed body -> the model's x, float32 (N, C, H, W) in [0, 1]. Blocking."""
    scale = manifest.preprocessing.scale
    if body.files is not None:
        return decode_images(
            body.files, manifest.input, scale=scale, max_pixels=settings.max_pixels, resize=resize
        )
    assert body.array is not None
    return to_model_input(
        body.array,
        manifest.input,
        scale=scale,
        max_images=settings.max_images_per_request,
        resize=resize,
    )


async def read_images(
    request: Request,
    manifest: Manifest,
    settings: Settings,
    *,
    resize: Resize,
    body: bytes | None = None,
) -> np.ndarray:
    """Any accepted image body -> x, float32 (N, C, H, W) in [0, 1], validated.
    `body`: the body, when the caller has read it already (with `read_body`)."""
    with tracing.step("decode images"):
        parsed = await read_image_body(request, settings, body)
        if parsed.array is not None:
            return await _pixels_to_x(parsed.array, manifest, settings, resize=resize)
        # Decoding is CPU work: off the event loop, like the model calls. Image files
        # always go: a small file can still declare millions of pixels, and what they will
        # hold decoded is taken from the memory budget, read from their headers, first.
        assert parsed.files is not None
        held = memory.files_bytes(parsed.files, max_pixels=settings.max_pixels, resize=bool(resize))
        with memory.holding(held, f"decoding {count(len(parsed.files), 'image')}"):
            return await asyncio.to_thread(to_x, parsed, manifest, settings, resize=resize)


async def pixels_to_x(
    array: np.ndarray, manifest: Manifest, settings: Settings, *, resize: Resize = False
) -> np.ndarray:
    """A pixel array of any accepted layout and dtype -> x, float32 (N, C, H, W), validated
    (app/pixels.py's rule, as for every image input)."""
    with tracing.step("decode images"):
        return await _pixels_to_x(array, manifest, settings, resize=resize)


async def _pixels_to_x(
    array: np.ndarray, manifest: Manifest, settings: Settings, *, resize: Resize
) -> np.ndarray:
    body = ImageBody(array=array)
    if array.nbytes <= _INLINE_BYTES and not resize:
        # Checking and scaling a few images takes microseconds, less than the hop.
        return to_x(body, manifest, settings, resize=resize)
    with memory.holding(memory.array_bytes(array.size), f"pixels of shape {list(array.shape)}"):
        return await asyncio.to_thread(to_x, body, manifest, settings, resize=resize)


def _json_latents(body: bytes, max_rows: int) -> np.ndarray:
    payload = _json(body)
    if "z" not in payload:
        raise Unprocessable('the JSON body needs "z": a list of latent vectors')
    return _numbers(payload["z"], "z", "N×L or one vector of length L", (1, 2), max_rows)


async def read_latents(
    request: Request, latent_dim: int, settings: Settings, *, body: bytes | None = None
) -> np.ndarray:
    """{"z": [[...], ...]} or a .npy body -> z, float32 (N, L), validated."""
    media = media_type(request)
    if media not in {"application/json", NPY}:
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not supported; send {LATENT_TYPES}"
        )
    if body is None:
        body = await read_body(request, settings.max_body_bytes)
    if media == NPY:
        z = load_npy(body)
        if z.dtype.kind not in "iuf":
            raise Unprocessable(f"latents must be numbers, got dtype {z.dtype}")
    else:
        z = await _parsed(body, _json_latents, settings.max_images_per_request)
    return check_latents(z, latent_dim, settings)


def check_latents(z: np.ndarray, latent_dim: int, settings: Settings) -> np.ndarray:
    """Latents of any number type -> z, float32 (N, L), validated."""
    limit = settings.max_images_per_request
    if z.size == 0:
        raise Unprocessable("the batch is empty: send at least one latent vector")
    if z.ndim == 1:
        z = z[None]  # one latent vector
    if z.ndim != 2:
        raise Unprocessable(f"z must be N×L or one vector of length L, got shape {list(z.shape)}")
    if len(z) > limit:
        raise PayloadTooLarge(f"{len(z)} latents in one request; the limit is {limit}")
    if z.shape[1] != latent_dim:
        raise Unprocessable(f"latents have length {z.shape[1]}, the model expects {latent_dim}")
    z = z.astype(np.float32)
    if not np.isfinite(z).all():
        raise Unprocessable("z contains NaN or infinity (or values beyond float32)")
    return z
