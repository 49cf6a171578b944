"""Pixel arrays of any accepted layout and dtype -> the model's x, float32 (N, C, H, W) in [0, 1].

One rule for every input: arrays sent as JSON or .npy and the pixels decoded from
image files all pass through `to_model_input`, so grey is made RGB, RGB grey, alpha
is composited and 16-bit values are scaled the same way whatever carried them. The
"Input conversion" tables of docs/input.md state the rule; tests/test_input_table.py runs them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from app.errors import PayloadTooLarge, Unprocessable
from vae_contract.manifest import InputSpec

Layout = Literal["NCHW", "NHWC"]
# Channel counts converted to the model's: grey, grey and alpha, RGB, RGB and alpha.
COLOURS = (1, 2, 3, 4)
# ITU-R BT.601 luma, the weights of Pillow's convert("L").
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def size(width: int, height: int) -> str:
    return f"{width}×{height}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape)) if shape else "a single number"


def _says(name: str, singular: str, plural: str) -> str:
    """The subject of an error sentence and its verb: "image 3 is", "pixels are"."""
    return f"{name} {plural if name.endswith('s') else singular}"


def _convertible(channels: int, spec: InputSpec) -> bool:
    """Whether images with `channels` channels can be made the model's."""
    return channels == spec.channels or (spec.channels in (1, 3) and channels in COLOURS)


def _expected(spec: InputSpec) -> str:
    c, h, w = spec.shape
    grey = f"N×{h}×{w}, " if c == 1 else ""
    return f"{grey}N×{c}×{h}×{w} or N×{h}×{w}×{c}"


def _layout(shape: tuple[int, ...], spec: InputSpec, resize: bool) -> Layout:
    """Which axis of (N, a, b, c) holds the channels: the model's own layout when both
    fit, then channels-last; with resize=true, whichever axis can, if only one can."""
    _, a, b, c = shape
    hw = (spec.height, spec.width)
    if _convertible(a, spec) and (b, c) == hw:
        return "NCHW"
    if _convertible(c, spec) and (a, b) == hw:
        return "NHWC"
    first, last = _convertible(a, spec), _convertible(c, spec)
    if resize and first and last:
        raise Unprocessable(
            f"pixels of shape {_dims(shape)} could be N×C×H×W ({count(a, 'channel')} of "
            f"{size(c, b)}) or N×H×W×C ({count(c, 'channel')} of {size(b, a)}); the model "
            f"takes {_expected(spec)}: send one of those, or resize the images yourself"
        )
    if first or last:
        return "NCHW" if first else "NHWC"
    raise Unprocessable(
        f"pixels of shape {_dims(shape)} have {count(a, 'channel')} as N×C×H×W and "
        f"{count(c, 'channel')} as N×H×W×C; the model takes {_expected(spec)}"
    )


def _as_nchw(array: np.ndarray, spec: InputSpec, resize: bool, layout: Layout | None) -> np.ndarray:
    shape = array.shape
    if array.ndim == 3:
        n, h, w = shape
        hw = (spec.height, spec.width)
        if (n, h) == hw and w in COLOURS and (h, w) != hw:
            raise Unprocessable(
                f"pixels of shape {_dims(shape)} look like one H×W×C image: pixels hold a "
                f"batch, so send it as 1×{_dims(shape)} (N×H×W×C)"
            )
        return array[:, None]  # (N, H, W) -> (N, 1, H, W): grey
    if array.ndim != 4:
        hint = f": for one image, send 1×{_dims(shape)}" if array.ndim == 2 else ""
        raise Unprocessable(
            f"pixels must be N×H×W, N×C×H×W or N×H×W×C; got shape {_dims(shape)} "
            f"({count(array.ndim, 'dimension')}){hint}"
        )
    if (layout or _layout(shape, spec, resize)) == "NHWC":
        return array.transpose(0, 3, 1, 2)
    return array


def full_scale(dtype: np.dtype, scale: float) -> float:
    """The value that means 1.0: uint8 by the manifest's scale, uint16 by 257 times it
    (65535 for 255), floats and booleans by 1."""
    if dtype == np.uint8:
        return scale
    if dtype == np.uint16:
        return scale * 257
    if dtype.kind in "fb":
        return 1.0
    raise Unprocessable(
        f"pixels must be uint8 (0-255), uint16 (0-65535), bool or floats in [0, 1]; got dtype "
        f"{dtype}" + (" (convert with .astype(np.uint8))" if dtype.kind in "iu" else "")
    )


def _check_range(array: np.ndarray, name: str) -> None:
    if array.dtype.kind != "f":
        return
    if not np.isfinite(array).all():
        raise Unprocessable(f"{_says(name, 'contains', 'contain')} NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise Unprocessable(
            f"float pixels must lie in [0, 1]; {_says(name, 'holds', 'hold')} values in "
            f"[{low:g}, {high:g}]"
        )


def _resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """One float32 (h, w) plane -> (H, W), Lanczos in Pillow's float mode."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode F
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def _values(pixels: np.ndarray, spec: InputSpec, full: float, resize: bool) -> np.ndarray:
    """(N, C, h, w) in the dtype's own scale -> float32 (N, C', H, W) in [0, 1], where C'
    drops the alpha channel, composited on black (0), the background of MNIST-style data."""
    n, channels, height, width = pixels.shape
    alpha = channels in (2, 4) and channels != spec.channels
    colours = channels - 1 if alpha else channels
    resized = (height, width) != (spec.height, spec.width)
    if not alpha and not resized:
        x = pixels.astype(np.float32)
        x /= np.float32(full)
        return x
    # Plane by plane, so a large image costs one float32 copy of one channel at a time.
    x = np.empty((n, colours, spec.height, spec.width), np.float32)
    for i in range(n):
        opacity = pixels[i, -1].astype(np.float32) / np.float32(full) if alpha else None
        for k in range(colours):
            plane = pixels[i, k].astype(np.float32) / np.float32(full)
            if opacity is not None:
                plane *= opacity
            x[i, k] = _resize(plane, spec.height, spec.width) if resized else plane
    if resized:
        np.clip(x, 0.0, 1.0, out=x)  # Lanczos overshoots at sharp edges
    return x


def _channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> RGB by repeating it, RGB -> grey by its luma."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    luma: np.ndarray = np.einsum("nchw,c->nhw", x, LUMA)[:, None]
    return luma


def to_model_input(
    array: np.ndarray,
    spec: InputSpec,
    *,
    scale: float,
    max_images: int,
    resize: bool,
    name: str = "pixels",
    layout: Layout | None = None,
) -> np.ndarray:
    """Validate a pixel array and make it the model's x: float32 (N, C, H, W) in [0, 1].

    Layouts: N×H×W (grey), N×C×H×W, N×H×W×C (channels-last; `layout` fixes which when
    the caller knows). Dtypes: uint8 (/ scale), uint16 (/ 257·scale), bool, floats in
    [0, 1]. 1-4 channels (grey, grey+alpha, RGB, RGBA) are converted to the model's
    channels; another size is refused unless `resize`. `name` words the errors.
    """
    if array.ndim >= 1 and len(array) == 0:
        raise Unprocessable("the batch is empty: send at least one image")
    x = _as_nchw(array, spec, resize, layout)
    n, channels, height, width = x.shape
    if n > max_images:
        raise PayloadTooLarge(f"{n} images in one request; the limit is {max_images}")
    if not _convertible(channels, spec):
        converted = " (1 to 4 are converted)" if spec.channels in (1, 3) else ""
        raise Unprocessable(
            f"{_says(name, 'has', 'have')} {count(channels, 'channel')}, the model expects "
            f"{spec.channels}{converted}"
        )
    if height == 0 or width == 0:
        raise Unprocessable(f"{_says(name, 'is', 'are')} {size(width, height)}: no pixels at all")
    if (height, width) != (spec.height, spec.width) and not resize:
        raise Unprocessable(
            f"{_says(name, 'is', 'are')} {size(width, height)} pixels, the model expects "
            f"{size(spec.width, spec.height)} (width×height); send resize=true to resize"
        )
    full = full_scale(x.dtype, scale)
    _check_range(x, name)
    return np.ascontiguousarray(_channels(_values(x, spec, full, resize), spec.channels))
