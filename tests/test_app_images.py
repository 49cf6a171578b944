"""Image and array codecs (app/images.py): what is accepted, converted, and refused."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from app_support import image_file, npy
from PIL import Image

from app.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from app.images import (
    PixelBudget,
    decode_image,
    decode_images,
    load_npy,
    to_model_input,
)
from vae_contract.manifest import InputSpec

GREY = InputSpec(channels=1, height=28, width=28)
COLOUR = InputSpec(channels=3, height=28, width=28)
BIG = 10**9


def digit(seed: int = 0, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def decode(data: bytes, spec: InputSpec = GREY, resize: bool = False) -> np.ndarray:
    return decode_image(data, spec, index=0, budget=PixelBudget(BIG), resize=resize)


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width×height 8-bit grey pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_grey_png_decodes_to_its_exact_pixels() -> None:
    pixels = digit()
    got = decode(image_file(pixels))
    assert got.dtype == np.uint8 and got.shape == (1, 28, 28)
    np.testing.assert_array_equal(got[0], pixels)


@pytest.mark.parametrize(("fmt", "mode"), [("BMP", "RGB"), ("PNG", "RGBA"), ("PNG", "P")])
def test_colour_files_are_converted_to_the_models_grey(fmt: str, mode: str) -> None:
    grey = np.repeat(np.arange(0, 28 * 9, 9, dtype=np.uint8)[None], 28, axis=0)
    got = decode(image_file(grey, fmt, mode))
    assert got.shape == (1, 28, 28)
    np.testing.assert_allclose(got[0], grey, atol=1)  # grey in colour is still the same grey


def test_a_jpeg_decodes_close_to_its_pixels() -> None:
    smooth = np.tile(np.linspace(0, 255, 28).astype(np.uint8), (28, 1))
    got = decode(image_file(smooth, "JPEG"))
    assert np.abs(got[0].astype(int) - smooth).mean() < 4  # lossy, but the same picture


def test_grey_files_fill_every_channel_of_a_colour_model() -> None:
    pixels = digit(1)
    got = decode(image_file(pixels), COLOUR)
    assert got.shape == (3, 28, 28)
    for channel in got:
        np.testing.assert_array_equal(channel, pixels)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    wide = (digit(2).astype(np.uint16) << 8) | 0xFF
    out = io.BytesIO()
    Image.fromarray(wide).save(out, format="PNG")
    np.testing.assert_array_equal(decode(out.getvalue())[0], digit(2))


def test_a_wrong_size_is_refused_naming_both_sizes() -> None:
    with pytest.raises(Unprocessable) as error:
        decode(image_file(digit(shape=(30, 32))))
    assert "32×30" in error.value.detail and "28×28" in error.value.detail
    assert "resize=true" in error.value.detail


def test_resize_true_resizes() -> None:
    got = decode(image_file(np.full((56, 56), 200, np.uint8)), resize=True)
    assert got.shape == (1, 28, 28) and (got == 200).all()


def test_not_an_image_is_415_and_a_truncated_one_400() -> None:
    with pytest.raises(UnsupportedMediaType, match="image 0 is not an image"):
        decode(b"this is plain text, not a picture")
    whole = image_file(digit())
    with pytest.raises(BadRequest, match="corrupt or truncated"):
        decode(whole[: len(whole) // 2])
    with pytest.raises(BadRequest, match="empty"):
        decode(b"")


def test_formats_pillow_would_hand_to_ghostscript_are_refused() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n"
    with pytest.raises(UnsupportedMediaType, match="PNG, JPEG"):
        decode(eps)


@pytest.mark.parametrize(
    ("side", "message"),
    [(5_000, "5000×5000 pixels"), (50_000, "decompression bomb")],  # 25 M; 2.5 G pixels
)
def test_a_decompression_bomb_is_refused_before_decoding(side: int, message: str) -> None:
    bomb = png_claiming(side, side)
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLarge, match=message):
        decode_image(bomb, GREY, index=0, budget=PixelBudget(16 * 2**20), resize=True)


def test_the_pixel_budget_counts_across_a_request() -> None:
    files = [image_file(digit(i)) for i in range(3)]
    assert decode_images(files, GREY, max_pixels=3 * 784, resize=False).shape == (3, 1, 28, 28)
    with pytest.raises(PayloadTooLarge, match="image 2"):
        decode_images(files, GREY, max_pixels=3 * 784 - 1, resize=False)


def test_npy_round_trips_and_never_unpickles() -> None:
    array = digit(shape=(2, 28, 28))
    np.testing.assert_array_equal(load_npy(npy(array)), array)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match=r"\.npy"):
        load_npy(pickled.getvalue())
    with pytest.raises(BadRequest):
        load_npy(b"\x93NUMPY garbage")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(784, dtype=np.uint8).reshape(1, 28, 28),
        np.linspace(0, 1, 2 * 784, dtype=np.float32).reshape(2, 1, 28, 28),
        np.arange(5.0),  # 1-d: shape "(5,)"
        np.array(0.5),  # 0-d: shape "()"
        np.zeros((0, 28, 28), np.uint8),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # np.load's path from here on
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.zeros(3, dtype=[("a", "<f4")]),
    ],
    ids=["uint8", "float32", "1-d", "0-d", "empty", "fortran", "big-endian", "structured"],
)
def test_npy_reads_like_np_load(array: np.ndarray) -> None:
    loaded = load_npy(npy(array))
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)


def test_npy_with_missing_or_extra_bytes_is_refused() -> None:
    body = npy(digit(shape=(1, 28, 28)))
    with pytest.raises(BadRequest, match=r"\.npy"):
        load_npy(body[:-1])
    assert load_npy(body + b"\0").shape == (1, 28, 28)  # np.load ignores a tail, as before


def model_input(array: np.ndarray, spec: InputSpec = GREY, **kwargs: bool) -> np.ndarray:
    return to_model_input(
        array, spec, scale=255.0, max_images=4, resize=kwargs.get("resize", False)
    )


def test_uint8_pixels_are_divided_by_the_scale() -> None:
    array = digit(shape=(2, 28, 28))
    x = model_input(array)
    assert x.dtype == np.float32 and x.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(x[:, 0], array.astype(np.float32) / np.float32(255.0))


def test_float_pixels_pass_through() -> None:
    array = np.random.default_rng(0).random((1, 3, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(model_input(array, COLOUR), array)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((1, 28, 28), np.nan, np.float32), "NaN or infinity"),
        (np.full((1, 28, 28), np.inf, np.float32), "NaN or infinity"),
        (np.full((1, 28, 28), 1.5, np.float32), r"\[0, 1\].*1\.5"),
        (np.full((1, 28, 28), -0.1, np.float32), r"\[0, 1\]"),
        (np.zeros((1, 3, 28, 28), np.float32), "3 channels, the model expects 1"),
        (np.zeros((28, 28), np.float32), "N×H×W or N×C×H×W"),
        (np.zeros((0, 28, 28), np.float32), "empty"),
        (np.zeros((1, 28, 28), np.int16), "dtype int16"),
        (np.zeros((1, 27, 28), np.uint8), "28×27 pixels, the model expects 28×28"),
    ],
)
def test_bad_pixel_arrays_are_refused_with_the_reason(array: np.ndarray, message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        model_input(array)


def test_too_many_images_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match="5 images"):
        model_input(np.zeros((5, 28, 28), np.uint8))


def test_float_arrays_resize_when_asked() -> None:
    x = model_input(np.full((1, 1, 14, 14), 0.25, np.float32), resize=True)
    assert x.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(x, 0.25, atol=1e-6)
