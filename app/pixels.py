"""Pixel arrays of any accepted layout and dtype -> the model's x, float32 (N, C, H, W) in [0, 1].

One rule for every input: arrays sent as JSON or .npy and the pixels decoded from
image files all pass through `to_model_input`, so grey is made RGB, RGB grey, alpha
is composited and 16-bit values are scaled the same way whatever carried them. This
module checks what a request sent; the conversion itself is vae_contract.images, the
rule the trainer's loaders use too. The "Input conversion" tables of docs/input.md state
the rule; tests/test_input_table.py runs them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from app.errors import PayloadTooLarge, Unprocessable
from vae_contract import images
from vae_contract.manifest import InputSpec

Layout = Literal["NCHW", "NHWC"]
# What a request asks of an image of another size than the model's: a refusal (False),
# a resize to the model's size (True, "stretch"), or the trainer's aspect-preserving
# centre crop first ("crop").
Resize = bool | images.Fit
# Channel counts converted to the model's: grey, grey and alpha, RGB, RGB and alpha.
COLOURS = (1, 2, 3, 4)


def size(height: int, width: int) -> str:
    """A picture's size as the trainer, the manifest and numpy write it: height×width."""
    return f"{height}×{width}"


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


def _layout(shape: tuple[int, ...], spec: InputSpec, resize: Resize) -> Layout:
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
            f"{size(b, c)}) or N×H×W×C ({count(c, 'channel')} of {size(a, b)}); the model "
            f"takes {_expected(spec)}: send one of those, or resize the images yourself"
        )
    if first or last:
        return "NCHW" if first else "NHWC"
    raise Unprocessable(
        f"pixels of shape {_dims(shape)} have {count(a, 'channel')} as N×C×H×W and "
        f"{count(c, 'channel')} as N×H×W×C; the model takes {_expected(spec)}"
    )


def _as_nchw(
    array: np.ndarray, spec: InputSpec, resize: Resize, layout: Layout | None
) -> np.ndarray:
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
    """The value that means 1.0 (vae_contract.images.full_scale), or a refusal that says
    which dtypes are taken."""
    try:
        return images.full_scale(dtype, scale)
    except images.ImageError:
        raise Unprocessable(
            f"pixels must be uint8 (0-255), uint16 (0-65535), bool or floats in [0, 1]; got "
            f"dtype {dtype}" + (" (convert with .astype(np.uint8))" if dtype.kind in "iu" else "")
        ) from None


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


def to_model_input(
    array: np.ndarray,
    spec: InputSpec,
    *,
    scale: float,
    max_images: int,
    resize: Resize,
    name: str = "pixels",
    layout: Layout | None = None,
) -> np.ndarray:
    """Validate a pixel array and make it the model's x: float32 (N, C, H, W) in [0, 1].

    Layouts: N×H×W (grey), N×C×H×W, N×H×W×C (channels-last; `layout` fixes which when
    the caller knows). Dtypes: uint8 (/ scale), uint16 (/ 257·scale), bool, floats in
    [0, 1]. 1-4 channels (grey, grey+alpha, RGB, RGBA) are converted to the model's
    channels; another size is refused unless `resize` (True or "stretch": resized to the
    model's size; "crop": centre-cropped to its aspect ratio first, as the trainer's
    --center-crop). `name` words the errors.
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
        raise Unprocessable(f"{_says(name, 'is', 'are')} {size(height, width)}: no pixels at all")
    if (height, width) != (spec.height, spec.width) and not resize:
        raise Unprocessable(
            f"{_says(name, 'is', 'are')} {size(height, width)} pixels, the model expects "
            f"{size(spec.height, spec.width)} (height×width); send resize=crop to centre-crop "
            "to its aspect ratio and resize, or resize=true to resize"
        )
    full = full_scale(x.dtype, scale)
    _check_range(x, name)
    fit: images.Fit = "crop" if resize == "crop" else "stretch"
    shape = (spec.height, spec.width)
    return np.ascontiguousarray(images.to_unit(x, spec.channels, shape, full, fit))
