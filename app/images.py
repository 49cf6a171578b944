"""Image and array codecs: uploads in, validated (N, C, H, W) float32 out; PNGs back.

Everything here is synchronous and pure; the routes call it before anything is
queued, so a bad image is refused on its own and never fails a batch.
"""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from vae_contract.manifest import InputSpec

# The Pillow mode an image file is converted to, by the model's channel count.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Formats Pillow decodes by itself. Not EPS or PDF: Pillow hands those to Ghostscript.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _size(width: int, height: int) -> str:
    return f"{width}×{height}"


class PixelBudget:
    """How many pixels one request may still decode: the decompression-bomb guard.

    Checked against the header's declared size *before* any pixel is
    decompressed, so a tiny file that claims to be 50000×50000 costs nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, width: int, height: int, index: int) -> None:
        pixels = width * height
        if pixels > self.left:
            raise PayloadTooLarge(
                f"image {index} is {_size(width, height)} pixels, which takes the request "
                f"past its limit of {self.limit} decoded pixels"
            )
        self.left -= pixels


def decode_image(
    data: bytes, spec: InputSpec, *, index: int, budget: PixelBudget, resize: bool
) -> np.ndarray:
    """One image file (PNG, JPEG, BMP, ...) -> uint8 (C, H, W) in the model's channels."""
    if not data:
        raise BadRequest(f"image {index} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x raises) on huge images; our budget decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            budget.spend(image.width, image.height, index)
            image.load()
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"image {index} is not an image file we can read ({', '.join(FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        # Pillow refuses at open when the header claims over 2 × MAX_IMAGE_PIXELS.
        raise PayloadTooLarge(
            f"image {index} is a decompression bomb: its header claims over "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"image {index} is corrupt or truncated: {exc}") from None
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grey: Pillow's convert("L") clips instead of scaling.
        wide = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if image.mode == "P" or image.mode == "LA":
        image = image.convert("RGBA")
    image = image.convert(_MODES.get(spec.channels, "RGB"))
    if (image.width, image.height) != (spec.width, spec.height):
        if not resize:
            raise Unprocessable(
                f"image {index} is {_size(image.width, image.height)} pixels, the model "
                f"expects {_size(spec.width, spec.height)} (width×height); "
                "send resize=true to resize it"
            )
        image = image.resize((spec.width, spec.height), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    # (H, W) -> (1, H, W); (H, W, C) -> (C, H, W)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if pixels.shape[0] != spec.channels:
        raise Unprocessable(
            f"image {index} has {pixels.shape[0]} channels, the model expects {spec.channels}"
        )
    return pixels


def decode_images(
    files: list[bytes], spec: InputSpec, *, max_pixels: int, resize: bool
) -> np.ndarray:
    """Image files -> uint8 (N, C, H, W)."""
    budget = PixelBudget(max_pixels)
    return np.stack(
        [decode_image(f, spec, index=i, budget=budget, resize=resize) for i, f in enumerate(files)]
    )


# The header numpy writes for a C-ordered little-endian number array, format 1.0:
# magic, version, header length (uint16 LE), then a dict literal padded to 64 bytes.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<|][uif][1248])', 'fortran_order': False, "
    rb"'shape': \(((?:\d+, )*\d+|\d+,|)\), \} *\n"
)


def _load_npy_fast(body: bytes) -> np.ndarray | None:
    """The common .npy, read without `np.load`, whose `ast.literal_eval` of the header
    was a fifth of the loop's time per one-image request; None for anything else."""
    if body[:8] != b"\x93NUMPY\x01\x00" or len(body) < 10:
        return None
    offset = 10 + int.from_bytes(body[8:10], "little")
    match = _NPY_HEADER.fullmatch(body, 10, offset)
    if match is None:
        return None
    dtype = np.dtype(match[1].decode())
    shape = tuple(int(d) for d in match[2].split(b",") if d.strip())
    if len(body) - offset != math.prod(shape) * dtype.itemsize:
        return None  # truncated or padded: np.load words the error
    return np.frombuffer(body, dtype, offset=offset).reshape(shape)


def load_npy(body: bytes) -> np.ndarray:
    """A .npy file -> array; never unpickles. The array may be read-only."""
    fast = _load_npy_fast(body)
    if fast is not None:
        return fast
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as exc:
        raise BadRequest(f"body is not a readable .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise BadRequest(f"body is not a readable .npy file: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise BadRequest("body is not a single .npy array")
    return array


def _resize_float(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, C, h, w) float32 -> (N, C, H, W), channel by channel in Pillow's float mode."""
    out = np.empty((*images.shape[:2], height, width), dtype=np.float32)
    for n, c in np.ndindex(*images.shape[:2]):
        plane = Image.fromarray(np.ascontiguousarray(images[n, c]))  # float32 -> mode F
        out[n, c] = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)


def to_model_input(
    array: np.ndarray, spec: InputSpec, *, scale: float, max_images: int, resize: bool
) -> np.ndarray:
    """Validate a pixel array and scale it to the model's x: float32 (N, C, H, W) in [0, 1].

    Accepts uint8 0-255 (divided by `scale`) or floats already in [0, 1], as
    (N, H, W) or (N, C, H, W).
    """
    if array.ndim >= 1 and len(array) == 0:
        raise Unprocessable("the batch is empty: send at least one image")
    if array.ndim == 3:
        array = array[:, None]  # (N, H, W) -> (N, 1, H, W)
    if array.ndim != 4:
        raise Unprocessable(
            f"pixels must be N×H×W or N×C×H×W, got {array.ndim} dimensions {list(array.shape)}"
        )
    n, channels, height, width = array.shape
    if n > max_images:
        raise PayloadTooLarge(f"{n} images in one request; the limit is {max_images}")
    if channels != spec.channels:
        raise Unprocessable(f"images have {channels} channels, the model expects {spec.channels}")
    if array.dtype == np.uint8:
        x = array.astype(np.float32) / np.float32(scale)
    elif np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float32)
        if not np.isfinite(x).all():
            raise Unprocessable("pixels contain NaN or infinity")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise Unprocessable(
                f"float pixels must lie in [0, 1], got values in [{low:g}, {high:g}]"
            )
    else:
        raise Unprocessable(f"pixels must be uint8 0-255 or float 0-1, got dtype {array.dtype}")
    if (height, width) != (spec.height, spec.width):
        if not resize:
            raise Unprocessable(
                f"images are {_size(width, height)} pixels, the model expects "
                f"{_size(spec.width, spec.height)} (width×height); send resize=true to resize"
            )
        x = _resize_float(x, spec.height, spec.width)
    return np.ascontiguousarray(x)
