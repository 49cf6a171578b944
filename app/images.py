"""Body codecs: image files and .npy bodies -> arrays, refused before they cost memory.

Everything here is synchronous and pure; the routes call it before anything is
queued, so a bad image is refused on its own and never fails a batch. How a file
becomes pixels (orientation, bit depth) is vae_contract.images, the rule the trainer
reads its folders by; what the pixels then become is app/pixels.py's checks around it.
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceError,
    Unprocessable,
    UnsupportedMediaType,
)
from app.pixels import Resize, count, size, to_model_input
from vae_contract.images import ImageError, native_pixels, orient
from vae_contract.manifest import InputSpec

log = logging.getLogger(__name__)
__all__ = ["FORMATS", "PixelBudget", "decode_image", "decode_images", "load_npy", "to_model_input"]

# Formats Pillow decodes by itself. Not EPS or PDF: Pillow hands those to Ghostscript.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"RIFF": "a WebP image",
    b"{": "JSON",
    b"[": "JSON",
    b"PK": "a zip file (an .npz? send one .npy)",
}


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
                f"image {index} is {size(height, width)} pixels, which takes the request "
                f"past its limit of {self.limit} decoded pixels"
            )
        self.left -= pixels


def _open(data: bytes, index: int, budget: PixelBudget) -> Image.Image:
    """One decoded, upright picture: header checked against the budget, one frame, EXIF
    orientation applied as browsers and phone galleries show it."""
    if not data:
        raise BadRequest(f"image {index} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x raises) on huge images; our budget decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            budget.spend(image.width, image.height, index)
            # MPO is a JPEG with extra pictures (previews, depth maps): the first is the photo.
            frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
            if frames > 1:
                raise Unprocessable(
                    f"image {index} has {frames} frames (an animation or a multi-page file); "
                    "send each frame as its own image"
                )
            image.load()
    except ServiceError:
        raise
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
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's parsers raise many kinds on corrupt input, none ours
        raise BadRequest(f"image {index} is corrupt or truncated: {exc}") from None
    if not orient(image):
        log.info("image %d: unreadable EXIF data, orientation not applied", index)
    return image


def _pixels(image: Image.Image, index: int) -> np.ndarray:
    """A decoded picture -> (H, W, C) in its own bit depth (vae_contract.images's rule)."""
    try:
        return native_pixels(image)
    except ImageError as exc:
        raise UnsupportedMediaType(f"image {index} has {exc}") from None


def decode_image(
    data: bytes, spec: InputSpec, *, index: int, budget: PixelBudget, scale: float, resize: Resize
) -> np.ndarray:
    """One image file (PNG, JPEG, BMP, ...) -> float32 (C, H, W) in [0, 1], the model's x."""
    if spec.channels not in (1, 3):
        raise Unprocessable(
            f"the model takes {count(spec.channels, 'channel')}; image files can only be "
            "made grey (1) or RGB (3): send the pixels as an array"
        )
    pixels = _pixels(_open(data, index, budget), index)
    x = to_model_input(
        pixels[None],  # (1, H, W, C)
        spec,
        scale=scale,
        max_images=1,
        resize=resize,
        name=f"image {index}",
        layout="NHWC",
    )
    image: np.ndarray = x[0]
    return image


def decode_images(
    files: list[bytes], spec: InputSpec, *, scale: float, max_pixels: int, resize: Resize
) -> np.ndarray:
    """Image files -> the model's x, float32 (N, C, H, W) in [0, 1]."""
    budget = PixelBudget(max_pixels)
    return np.stack(
        [
            decode_image(f, spec, index=i, budget=budget, scale=scale, resize=resize)
            for i, f in enumerate(files)
        ]
    )


# The header numpy writes for a C-ordered little-endian number array, format 1.0:
# magic, version, header length (uint16 LE), then a dict literal padded to 64 bytes.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<|][uif][1248])', 'fortran_order': False, "
    rb"'shape': \(((?:\d+, )*\d+|\d+,|)\), \} *\n"
)
_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(body: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) of a .npy body, without allocating."""
    if body[:8] == _NPY_MAGIC + b"\x01\x00" and len(body) >= 10:
        # The common header, read without np.lib.format's `ast.literal_eval`, which was
        # a fifth of the event loop's time per one-image request.
        offset = 10 + int.from_bytes(body[8:10], "little")
        match = _NPY_HEADER.fullmatch(body, 10, offset)
        if match is not None:
            shape = tuple(int(d) for d in match[2].split(b",") if d.strip())
            return np.dtype(match[1].decode()), shape, False, offset
    if not body.startswith(_NPY_MAGIC):
        what = next((name for sig, name in _SIGNATURES.items() if body.startswith(sig)), None)
        raise BadRequest(
            "the body is not a .npy file (no \\x93NUMPY magic)"
            + (f"; it looks like {what}: send it with its own content type" if what else "")
        )
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise BadRequest(f"the .npy format version {version[0]}.{version[1]} is not read here")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise BadRequest(f"the .npy header is not readable: {exc}") from None
    if any(d < 0 for d in shape) or len(shape) > 32:
        raise BadRequest(f"the .npy header declares an impossible shape {shape}")
    return dtype, shape, fortran, stream.tell()


def load_npy(body: bytes) -> np.ndarray:
    """A .npy file -> a read-only view of its bytes; never unpickles, never allocates:
    the size the header declares must be the size of the data that follows it."""
    dtype, shape, fortran, offset = _npy_header(body)
    if dtype.itemsize == 0:
        raise BadRequest(f"the .npy array's dtype {dtype} holds no bytes per value")
    if dtype.hasobject:
        raise BadRequest(
            "the .npy array holds Python objects, which are never unpickled; send numbers"
        )
    declared, held = math.prod(shape) * dtype.itemsize, len(body) - offset
    if declared != held:
        raise BadRequest(
            f"the .npy header declares {math.prod(shape)} values of {dtype} ({declared} bytes, "
            f"shape {shape}) but {held} bytes follow it"
        )
    try:
        array = np.frombuffer(body, dtype, math.prod(shape), offset)
        return array.reshape(shape, order="F" if fortran else "C")
    except ValueError:  # no values, but axes whose product numpy cannot index: (2^40, 2^40, 0)
        raise BadRequest(f"the .npy header declares an impossible shape {shape}") from None
