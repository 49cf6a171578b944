"""The "Input conversion" tables (docs/input.md), checked row by row against app/.

Each row is parsed from docs/input.md (tests/conversion.py) and its claim is made true
or false by the service's codecs: the formulas are evaluated as written, every
format a mode is listed under is written by Pillow and decoded by the service.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from conversion import (
    CHANNELS,
    READ_AS,
    code,
    documented_file_x,
    documented_x,
    mode_rows,
    read_as,
    table,
)
from PIL import Image

from app.errors import ServiceError
from app.images import FORMATS, decode_images
from app.pixels import to_model_input
from vae_contract.manifest import InputSpec

H, W = 6, 5  # a small model: every row is checked on a few pixels
SPECS = {c: InputSpec(channels=c, height=H, width=W) for c in (1, 3)}
RNG = np.random.default_rng(0)
SECTION = "Input conversion"


def decode(data: bytes, channels: int) -> np.ndarray:
    """One file -> x (C, H, W) for a model of `channels` channels."""
    x: np.ndarray = decode_images(
        [data], SPECS[channels], scale=255.0, max_pixels=10**6, resize=False
    )
    return np.asarray(x[0])


def refusal(call: Any) -> ServiceError:
    with pytest.raises(ServiceError) as error:
        call()
    refused: ServiceError = error.value
    return refused


def random_image(mode: str, size: tuple[int, int] = (W, H)) -> Image.Image:
    """A random picture in a Pillow mode, with transparency when the mode can have it."""
    width, height = size
    if mode == "1":
        return Image.fromarray(RNG.random((height, width)) > 0.5)
    if mode in ("I;16", "I"):  # "I" arrives as a 16-bit PGM: written from 16-bit values
        return Image.fromarray(RNG.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(RNG.random((height, width), dtype=np.float32))
    bands = len(Image.getmodebands(mode) * "x")
    image = Image.frombytes(mode, size, RNG.bytes(width * height * bands))
    if mode in ("P", "PA"):
        image.putpalette(RNG.bytes(768))
        if mode == "P":
            image.info["transparency"] = int(np.asarray(image)[0, 0])
    return image


def saved(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def formats(cell: str) -> list[str]:
    return re.findall(r"\b(?:PNG|JPEG|BMP|GIF|TIFF|WEBP|PPM)\b", cell)


# -- the conversion formulas and the modes -------------------------------------------------


def test_the_tables_cover_every_mode_the_issue_names_and_every_format() -> None:
    modes = set(mode_rows())
    assert modes == {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV",
                     "I", "I;16", "F"}  # fmt: skip
    listed = {fmt for row in mode_rows().values() for fmt in formats(row["files"])}
    assert listed == set(FORMATS)
    assert {row["format"] for row in table(SECTION, "format")} == set(FORMATS)


@pytest.mark.parametrize("mode", list(mode_rows()))
def test_each_mode_is_read_as_its_row_says_in_every_format_listed(mode: str) -> None:
    row = mode_rows()[mode]
    listed = formats(row["files"])
    if not listed:  # "(none stores it)": no format the service reads keeps the mode
        for fmt in FORMATS:
            try:
                data = saved(random_image(mode), fmt)
            except (OSError, ValueError, KeyError):
                continue
            assert Image.open(io.BytesIO(data)).mode != mode, fmt
        return
    for fmt in listed:
        data = saved(random_image(mode), fmt)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.mode == mode, f"{mode} written as {fmt} reads back as {decoded.mode}"
        for channels in (1, 3):
            np.testing.assert_allclose(
                decode(data, channels),
                documented_file_x(decoded, channels),
                atol=1e-6,
                err_msg=f"{mode} as {fmt}, model of {channels} channels",
            )


def test_cmyk_is_the_formula_the_row_quotes() -> None:
    assert "R = (255 − C)·(255 − K)/255" in mode_rows()["CMYK"]["read as"]
    cmyk = random_image("CMYK")
    c, _, _, k = np.asarray(cmyk).transpose(2, 0, 1).astype(np.float64)
    red = np.asarray(cmyk.convert("RGB"))[..., 0]
    np.testing.assert_allclose(red, (255 - c) * (255 - k) / 255, atol=1)


def test_the_refusals_in_the_mode_rows() -> None:
    assert "32-bit or signed integer TIFFs are refused (415)" in mode_rows()["I"]["read as"]
    wide = Image.fromarray(RNG.integers(0, 2**20, (H, W), dtype=np.int32))
    error = refusal(lambda: decode(saved(wide, "TIFF"), 1))
    assert error.status_code == 415 and "32-bit" in error.detail
    assert "must lie in [0, 1] (else 422)" in mode_rows()["F"]["read as"]
    bright = Image.fromarray(np.linspace(0, 2.5, H * W, dtype=np.float32).reshape(H, W))
    error = refusal(lambda: decode(saved(bright, "TIFF"), 1))
    assert error.status_code == 422 and "[0, 2.5]" in error.detail


# -- arrays --------------------------------------------------------------------------------


def array_rows() -> dict[str, str]:
    return {row["array"]: read_as(row["read as"]) for row in table(SECTION, "array")}


def dtype_rows() -> dict[str, str]:
    return {row["dtype"]: row["S"] for row in table(SECTION, "dtype")}


def model_input(array: np.ndarray, channels: int, **kwargs: Any) -> np.ndarray:
    x: np.ndarray = to_model_input(
        array, SPECS[channels], scale=255.0, max_images=8, resize=kwargs.get("resize", False)
    )
    return x


def test_the_array_rows_name_every_channel_count() -> None:
    assert array_rows() == {"N×H×W": "L", **{f"C = {c}": READ_AS[c] for c in (1, 2, 3, 4)}}


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["N×C×H×W", "N×H×W×C"])
def test_arrays_of_each_row_are_read_as_it_says(channels: int, layout: str) -> None:
    assert CHANNELS[array_rows()[f"C = {channels}"]] == channels
    pixels = RNG.integers(0, 256, (2, channels, H, W), dtype=np.uint8)
    array = pixels if layout == "N×C×H×W" else pixels.transpose(0, 2, 3, 1)
    for model in (1, 3):
        expected = [documented_x(image, 255, model) for image in pixels]
        np.testing.assert_allclose(model_input(array, model), expected, atol=1e-6)


def test_n_h_w_arrays_are_grey() -> None:
    pixels = RNG.integers(0, 256, (2, H, W), dtype=np.uint8)
    for model in (1, 3):
        expected = [documented_x(image[None], 255, model) for image in pixels]
        np.testing.assert_allclose(model_input(pixels, model), expected, atol=1e-6)


def test_each_dtype_row_has_its_full_scale() -> None:
    rows = dtype_rows()
    full = {"uint8": 255, "uint16": 65535, "bool": 1}
    for dtype, scale in full.items():
        assert rows[dtype].startswith(str(scale)), dtype
        top = np.iinfo(dtype).max if dtype != "bool" else True
        array = np.full((1, H, W), top, dtype)
        np.testing.assert_array_equal(model_input(array, 1), 1.0)
    floats = next(key for key in rows if key.startswith("float16"))
    assert rows[floats].startswith("1,") and "(else 422)" in rows[floats]
    for dtype in ("float16", "float32", "float64"):
        assert dtype in floats
        values = RNG.random((1, H, W)).astype(dtype)
        np.testing.assert_array_equal(model_input(values, 1)[:, 0], values.astype(np.float32))
        error = refusal(lambda d=dtype: model_input(np.full((1, H, W), 1.5, d), 1))
        assert error.status_code == 422 and "[0, 1]" in error.detail


def test_the_refused_dtypes_are_refused_naming_the_dtype() -> None:
    refused = next(key for key, scale in dtype_rows().items() if scale.startswith("refused"))
    assert dtype_rows()[refused] == "refused (422), naming the dtype"
    for dtype in ("int8", "int16", "int32", "int64", "uint32", "uint64", "complex64", "<U1"):
        error = refusal(lambda d=dtype: model_input(np.zeros((1, H, W), d), 1))
        assert error.status_code == 422 and str(np.dtype(dtype)) in error.detail, dtype


# -- orientation and frames, by format -----------------------------------------------------


def format_rows() -> dict[str, dict[str, str]]:
    return {row["format"]: row for row in table(SECTION, "format")}


def upright() -> np.ndarray:
    """A picture that is not symmetric under any rotation or flip: H×H."""
    return RNG.integers(0, 256, (H, H), dtype=np.uint8)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exif_orientation_is_applied_where_the_row_says(fmt: str) -> None:
    applied = format_rows()[fmt]["EXIF orientation"]
    assert applied in ("applied", "none")
    pixels = upright()
    image = Image.fromarray(pixels).convert("RGB" if fmt == "JPEG" else "L")
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    params: dict[str, Any] = {"exif": exif, "lossless": True, "quality": 100}
    x = decode_images(
        [saved(image, fmt, **params)],
        InputSpec(channels=1, height=H, width=H),
        scale=255.0,
        max_pixels=10**6,
        resize=False,
    )[0, 0]
    shown, other = np.rot90(pixels, -1), pixels
    if applied == "none":
        shown, other = other, shown
    tolerance = 12 / 255 if fmt == "JPEG" else 1e-6  # JPEG is lossy even at quality 100
    np.testing.assert_allclose(x, shown / 255.0, atol=tolerance)
    assert np.abs(x - other / 255.0).max() > 0.1


def test_orientation_comes_before_the_size_check() -> None:
    portrait = Image.fromarray(RNG.integers(0, 256, (W, H), dtype=np.uint8))  # H×W stored W×H
    exif = portrait.getexif()
    exif[0x0112] = 6
    x = decode(saved(portrait, "PNG", exif=exif), 1)
    assert x.shape == (1, H, W)
    error = refusal(lambda: decode(saved(portrait, "PNG"), 1))  # unrotated it is the wrong size
    assert f"{W}×{H} pixels, the model expects {H}×{W}" in error.detail


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_frames_are_what_the_row_says(fmt: str) -> None:
    frames = format_rows()[fmt]["several frames"]
    pictures = [Image.fromarray(upright()[:, :W]).convert("RGB") for _ in range(3)]
    if frames == "one frame only":
        with pytest.raises((OSError, ValueError, KeyError)):
            Image.open(io.BytesIO(saved(pictures[0], fmt, save_all=True,
                                         append_images=pictures[1:]))).seek(1)  # fmt: skip
        return
    if frames.startswith("the first picture"):
        data = saved(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
        assert Image.open(io.BytesIO(data)).format == "MPO"
        first = Image.open(io.BytesIO(data))
        np.testing.assert_allclose(decode(data, 3), documented_file_x(first, 3), atol=1e-6)
        return
    assert frames == "refused (422)"
    data = saved(pictures[0], fmt, save_all=True, append_images=pictures[1:])
    error = refusal(lambda: decode(data, 3))
    assert error.status_code == 422 and "3 frames" in error.detail


def test_the_formula_cells_are_code() -> None:
    for row in table(SECTION, "read as"):
        assert row["read as"] in CHANNELS
        for column in ("grey model (C = 1)", "RGB model (C = 3)"):
            assert code(row[column])
