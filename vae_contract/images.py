"""File -> pixels: the one decode rule of the trainer's loaders and the service.

A model is fitted to the pixels this module makes of a file, and scored on the
pixels it makes of a request, so both sides call it and nothing else:

1. Orientation: EXIF orientation applied, as browsers and phone galleries show it.
2. Bit depth: 8-bit values are divided by 255, 16-bit by 65535 (a 16-bit value v
   means v / 65535 of full scale, wherever it sits), 32-bit floats are taken as
   [0, 1]. Palettes become RGB (RGBA when they hold transparency); CMYK, YCbCr,
   LAB and HSV go through Pillow's conversion to RGB (no ICC profile).
3. Alpha is composited on black (0), the background of MNIST-style data.
4. Size: an image of another size is centre-cropped to the model's aspect ratio
   first (fit "crop", the trainer's --center-crop) or not (fit "stretch"), then
   resized with Lanczos in float32 and clipped to [0, 1] (Lanczos overshoots).
5. Channels: grey is made RGB by repetition, colour grey by its BT.601 luma.

The result is float32 in [0, 1]. The trainer stores round(255·x) as uint8, so a
16-bit or float file is quantised to the 256 levels its likelihood is defined on;
the service feeds x itself to the model (docs/own-images.md).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

Fit = Literal["stretch", "crop"]
# Pillow modes -> the 8-bit mode whose channels are read (grey, grey and alpha, RGB, RGBA).
_EIGHT_BIT = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGB": "RGB", "RGBX": "RGB",
              "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBA": "RGBA",
              "RGBa": "RGBA"}  # fmt: skip
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
ORIENTATION = 0x0112  # the EXIF tag of how a picture is turned upright
# ITU-R BT.601 luma, the weights of Pillow's convert("L").
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class ImageError(ValueError):
    """A picture whose pixels this rule does not define; the message names what it has
    ("signed or 32-bit integer pixels, ..."), for the caller to say whose."""


def orient(image: Image.Image) -> bool:
    """Apply the EXIF orientation in place; False when the EXIF data is unreadable
    (the picture is then taken unrotated, as browsers show it)."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # Pillow's EXIF parser raises many kinds on corrupt tags
        return False
    return True


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(H, W) of a lazily opened picture once `orient` has turned it, from its header:
    EXIF orientations 5-8 turn it a quarter. A PNG's EXIF is read only when it comes
    before the pixels (Pillow would decode the whole file to look further)."""
    if image.format == "PNG" and "exif" not in image.info:
        return image.height, image.width
    turned = image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    return (image.width, image.height) if turned else (image.height, image.width)


def native_pixels(image: Image.Image) -> np.ndarray:
    """A decoded picture -> (H, W, C) in its own bit depth: uint8, uint16 or float32."""
    mode = image.mode
    if mode in ("P", "PA"):  # a palette: RGB, with alpha when the palette has transparency
        return np.asarray(image.convert("RGBA" if image.has_transparency_data else "RGB"))
    if mode in _EIGHT_BIT:
        pixels = np.asarray(image if mode == _EIGHT_BIT[mode] else image.convert(_EIGHT_BIT[mode]))
    elif mode in _SIXTEEN_BIT:
        pixels = np.asarray(image).astype(np.uint16)  # any byte order -> native
    elif mode == "I" and image.format == "PPM":
        pixels = np.asarray(image).astype(np.uint16)  # 16-bit PGM, scaled by Pillow to 0-65535
    elif mode == "F":
        pixels = np.asarray(image, dtype=np.float32)  # held to [0, 1], like float arrays
    elif mode == "I":
        raise ImageError(
            "signed or 32-bit integer pixels, which have no range to scale by; "
            "use 8- or 16-bit images, or 32-bit floats in [0, 1]"
        )
    else:
        raise ImageError(f"the pixel mode {mode!r}, which is not supported")
    return pixels[..., None] if pixels.ndim == 2 else pixels


def full_scale(dtype: np.dtype, scale: float = 255.0) -> float:
    """The value that means 1.0: uint8 by `scale`, uint16 by 257 times it (65535 for
    255), floats and booleans by 1. ImageError for other dtypes."""
    if dtype == np.uint8:
        return scale
    if dtype == np.uint16:
        return scale * 257
    if dtype.kind in "fb":
        return 1.0
    raise ImageError(f"dtype {dtype} has no full scale")


def centre_box(width: int, height: int, aspect: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred (left, top, right, bottom) box of a picture `width` wide and
    `height` high with the height:width ratio of `aspect` (H, W)."""
    ah, aw = aspect
    cw, ch = (
        (width, round(width * ah / aw))
        if width * ah <= height * aw
        else (round(height * aw / ah), height)
    )
    cw, ch = max(cw, 1), max(ch, 1)
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def _resize(plane: np.ndarray, size: tuple[int, int], fit: Fit) -> np.ndarray:
    """One float32 (h, w) plane -> `size` (H, W): cropped to its aspect ratio first when
    `fit` is "crop", then Lanczos in Pillow's float mode."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode F
    if fit == "crop":
        image = image.crop(centre_box(image.width, image.height, size))
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(image)


def to_unit(
    pixels: np.ndarray, channels: int, size: tuple[int, int], full: float, fit: Fit = "stretch"
) -> np.ndarray:
    """(N, C, h, w) in the dtype's own scale (C in 1-4: grey, grey+alpha, RGB, RGBA) ->
    float32 (N, `channels`, H, W) in [0, 1], `size` = (H, W): steps 3-5 of the rule.
    A `channels` of 2 or 4 keeps alpha (arrays for such models); 1 or 3 composite it."""
    n, c, height, width = pixels.shape
    alpha = c in (2, 4) and c != channels
    colours = c - 1 if alpha else c
    resized = (height, width) != size
    if not alpha and not resized:
        x = pixels.astype(np.float32)
        x /= np.float32(full)
    else:
        # Plane by plane, so a large image costs one float32 copy of one channel at a time.
        x = np.empty((n, colours, *size), np.float32)
        for i in range(n):
            opacity = pixels[i, -1].astype(np.float32) / np.float32(full) if alpha else None
            for k in range(colours):
                plane = pixels[i, k].astype(np.float32) / np.float32(full)
                if opacity is not None:
                    plane *= opacity
                x[i, k] = _resize(plane, size, fit) if resized else plane
        if resized:
            np.clip(x, 0.0, 1.0, out=x)  # Lanczos overshoots at sharp edges
    return _channels(x, channels)


def _channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> RGB by repeating it, RGB -> grey by its luma."""
    if x.shape[1] == channels or channels not in (1, 3):
        return x
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    luma: np.ndarray = np.einsum("nchw,c->nhw", x, LUMA)[:, None]
    return luma


def decode(
    image: Image.Image, channels: int, size: tuple[int, int], fit: Fit = "stretch"
) -> np.ndarray:
    """An opened picture -> float32 (channels, H, W) in [0, 1]: the whole rule."""
    orient(image)
    pixels = native_pixels(image)  # (h, w, c)
    if pixels.dtype.kind == "f" and not (
        np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
    ):
        raise ImageError("float pixels outside [0, 1]")
    nchw = pixels.transpose(2, 0, 1)[None]
    x: np.ndarray = to_unit(nchw, channels, size, full_scale(pixels.dtype), fit)[0]
    return x


def read(
    source: Path | bytes, channels: int, size: tuple[int, int], fit: Fit = "stretch"
) -> np.ndarray:
    """An image file (a path or its bytes) -> float32 (channels, H, W) in [0, 1]."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()
        return decode(image, channels, size, fit)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """x in [0, 1] -> uint8 round(255·x): how the trainer stores decoded pixels."""
    stored: np.ndarray = np.rint(np.asarray(x, np.float32) * np.float32(255)).astype(np.uint8)
    return stored
