"""Image and array codecs (app/images.py, app/pixels.py): what is accepted, converted,
and refused. The conversion tables of docs/input.md are checked row by row in
test_input_table.py."""

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

SCALE = np.float32(255.0)

GREY = InputSpec(channels=1, height=28, width=28)
COLOUR = InputSpec(channels=3, height=28, width=28)
BIG = 10**9


def digit(seed: int = 0, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def decode(data: bytes, spec: InputSpec = GREY, resize: bool = False) -> np.ndarray:
    """One file -> x (C, H, W), float32 in [0, 1]."""
    return decode_image(data, spec, index=0, budget=PixelBudget(BIG), scale=255.0, resize=resize)


def as_x(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> the x the manifest's scale makes of them."""
    return pixels.astype(np.float32) / SCALE


def saved(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


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
    assert got.dtype == np.float32 and got.shape == (1, 28, 28)
    np.testing.assert_array_equal(got[0], as_x(pixels))


@pytest.mark.parametrize(("fmt", "mode"), [("BMP", "RGB"), ("PNG", "RGBA"), ("PNG", "P")])
def test_colour_files_are_converted_to_the_models_grey(fmt: str, mode: str) -> None:
    grey = np.repeat(np.arange(0, 28 * 9, 9, dtype=np.uint8)[None], 28, axis=0)
    got = decode(image_file(grey, fmt, mode))
    assert got.shape == (1, 28, 28)
    np.testing.assert_allclose(got[0], as_x(grey), atol=1e-6)  # grey in colour is the same grey


def test_a_jpeg_decodes_close_to_its_pixels() -> None:
    smooth = np.tile(np.linspace(0, 255, 28).astype(np.uint8), (28, 1))
    got = decode(image_file(smooth, "JPEG"))
    assert np.abs(got[0] - as_x(smooth)).mean() < 4 / 255  # lossy, but the same picture


def test_grey_files_fill_every_channel_of_a_colour_model() -> None:
    pixels = digit(1)
    got = decode(image_file(pixels), COLOUR)
    assert got.shape == (3, 28, 28)
    for channel in got:
        np.testing.assert_array_equal(channel, as_x(pixels))


def test_16_bit_grey_is_scaled_by_its_full_range() -> None:
    wide = np.random.default_rng(2).integers(0, 65536, (28, 28), dtype=np.uint16)
    got = decode(saved(Image.fromarray(wide), "PNG"))[0]
    np.testing.assert_allclose(got, wide / 65535, rtol=1e-6)
    assert got.max() > 254.5 / 255  # full scale reaches 1, not 255/256


def test_a_float_tiff_in_0_1_is_read_as_it_is_not_as_black() -> None:
    values = np.random.default_rng(3).random((28, 28), dtype=np.float32)
    np.testing.assert_array_equal(decode(saved(Image.fromarray(values), "TIFF"))[0], values)
    with pytest.raises(Unprocessable, match=r"must lie in \[0, 1\]; image 0 holds values in"):
        decode(saved(Image.fromarray(values * 255), "TIFF"))


def test_a_cielab_tiff_is_converted_not_a_server_error() -> None:
    lab = Image.frombytes("LAB", (28, 28), np.random.default_rng(4).bytes(28 * 28 * 3))
    grey = decode(saved(lab, "TIFF"))[0]
    rgb = np.asarray(lab.convert("RGB"), np.float64)
    np.testing.assert_allclose(grey, rgb @ [0.299, 0.587, 0.114] / 255, atol=1e-6)


def test_32_bit_integer_tiffs_are_refused_with_the_reason() -> None:
    wide = Image.fromarray(np.full((28, 28), 70_000, np.int32))
    with pytest.raises(UnsupportedMediaType, match="32-bit integer pixels"):
        decode(saved(wide, "TIFF"))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_before_the_size_check(orientation: int) -> None:
    """A phone photo: stored sideways, tagged with how to show it."""
    pixels = digit(5, (28, 20))  # stored 20 wide, 28 high
    image = Image.fromarray(pixels).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = orientation
    jpeg = saved(image, "JPEG", exif=exif, quality=100)
    shown = {3: np.rot90(pixels, 2), 6: np.rot90(pixels, -1), 8: np.rot90(pixels, 1)}[orientation]
    spec = InputSpec(channels=1, height=shown.shape[0], width=shown.shape[1])
    got = decode(jpeg, spec)[0]
    assert np.abs(got - as_x(shown)).mean() < 4 / 255
    if orientation != 3:  # sideways: the upright size is the one reported
        with pytest.raises(Unprocessable, match="image 0 is 20×28 pixels"):
            decode(jpeg, InputSpec(channels=1, height=28, width=20))


def test_alpha_is_composited_on_black() -> None:
    grey, alpha = digit(6), digit(7)
    rgba = np.dstack([grey, grey, grey, alpha])
    want = as_x(grey) * as_x(alpha)
    np.testing.assert_allclose(decode(saved(Image.fromarray(rgba), "PNG"))[0], want, atol=1e-6)
    la = Image.fromarray(np.dstack([grey, alpha]), "LA")
    np.testing.assert_allclose(decode(saved(la, "PNG"))[0], want, atol=1e-6)
    clear = np.dstack([grey, grey, grey, np.zeros_like(grey)])  # fully transparent
    assert (decode(saved(Image.fromarray(clear), "PNG"), COLOUR) == 0).all()


def test_a_gif_with_a_transparent_colour_is_black_there() -> None:
    pixels = digit(8) | 1  # no pixel uses palette index 0
    pixels[:5] = 0
    gif = saved(Image.fromarray(pixels).convert("P"), "GIF", transparency=0)
    got = decode(gif)[0]
    assert (got[:5] == 0).all() and (got[5:] > 0).all()


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "PNG", "WEBP"])
def test_files_of_several_frames_are_refused_naming_the_count(fmt: str) -> None:
    frames = [Image.fromarray(digit(i)) for i in range(4)]
    data = saved(frames[0], fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(Unprocessable, match="image 0 has 4 frames"):
        decode(data)
    one = saved(frames[0], fmt, save_all=True)
    assert decode(one).shape == (1, 28, 28)


def test_a_wrong_size_is_refused_naming_both_sizes() -> None:
    with pytest.raises(Unprocessable) as error:
        decode(image_file(digit(shape=(30, 32))))
    assert "30×32" in error.value.detail and "28×28" in error.value.detail
    assert "resize=true" in error.value.detail


def test_resize_true_resizes() -> None:
    got = decode(image_file(np.full((56, 56), 200, np.uint8)), resize=True)
    assert got.shape == (1, 28, 28)
    np.testing.assert_allclose(got, 200 / 255, atol=1e-6)


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
        decode_image(bomb, GREY, index=0, budget=PixelBudget(16 * 2**20), scale=255.0, resize=True)


def test_the_pixel_budget_counts_across_a_request() -> None:
    files = [image_file(digit(i)) for i in range(3)]
    assert decode_images(files, GREY, scale=255.0, max_pixels=3 * 784, resize=False).shape == (
        3,
        1,
        28,
        28,
    )
    with pytest.raises(PayloadTooLarge, match="image 2"):
        decode_images(files, GREY, scale=255.0, max_pixels=3 * 784 - 1, resize=False)


def test_npy_round_trips_and_never_unpickles() -> None:
    array = digit(shape=(2, 28, 28))
    np.testing.assert_array_equal(load_npy(npy(array)), array)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match="Python objects, which are never unpickled"):
        load_npy(pickled.getvalue())
    with pytest.raises(BadRequest, match=r"\.npy format version 32\.103 is not read here"):
        load_npy(b"\x93NUMPY garbage")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(784, dtype=np.uint8).reshape(1, 28, 28),
        np.linspace(0, 1, 2 * 784, dtype=np.float32).reshape(2, 1, 28, 28),
        np.arange(5.0),  # 1-d: shape "(5,)"
        np.array(0.5),  # 0-d: shape "()"
        np.zeros((0, 28, 28), np.uint8),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # np.lib.format's header from here on
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.zeros(3, dtype=[("a", "<f4")]),
    ],
    ids=["uint8", "float32", "1-d", "0-d", "empty", "fortran", "big-endian", "structured"],
)
def test_npy_reads_like_np_load(array: np.ndarray) -> None:
    loaded = load_npy(npy(array))
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)


def npy_header(header: str, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    """A .npy file with a hand-written header dict, padded as numpy pads it."""
    text = header.encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + data


def test_a_huge_declared_size_is_refused_before_anything_is_allocated() -> None:
    """140 bytes that declare 2^40 float64 values (8 TiB): once a MemoryError, a 500."""
    body = npy_header("{'descr': '<f8', 'fortran_order': True, 'shape': (1099511627776,), }")
    body += b"\0" * (140 - len(body))
    assert len(body) == 140
    with pytest.raises(BadRequest, match=r"declares 1099511627776 values of float64 .* 12 bytes"):
        load_npy(body)
    no_values = "{'descr': '<f4', 'fortran_order': False, 'shape': (2**42, 2**42, 0), }"
    with pytest.raises(BadRequest, match="impossible shape"):  # numpy cannot index its axes
        load_npy(npy_header(no_values.replace("2**42", str(2**42))))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", "impossible shape"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", "16 bytes"),
        ("{'descr': 'x9', 'fortran_order': False, 'shape': (1,), }", "header is not readable"),
        ("{'descr': '<f4', 'shape': (1,), }", "header is not readable"),
        ("[1, 2]", "header is not readable"),
        ("{'descr': '<V0', 'fortran_order': False, 'shape': (4,), }", "no bytes per value"),
    ],
)
def test_bad_npy_headers_are_400_with_the_reason(header: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        load_npy(npy_header(header, b"\0" * 4))


def test_npy_with_missing_or_extra_bytes_is_refused() -> None:
    """A tail means the header does not describe the data: read, it would be wrong pixels."""
    body = npy(digit(shape=(1, 28, 28)))
    with pytest.raises(BadRequest, match=r"declares 784 values of uint8 .* but 783 bytes"):
        load_npy(body[:-1])
    with pytest.raises(BadRequest, match="but 785 bytes"):
        load_npy(body + b"\0")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (image_file(np.zeros((28, 28), np.uint8)), "a PNG image"),
        (image_file(np.zeros((28, 28), np.uint8), "JPEG"), "a JPEG image"),
        (b'{"pixels": [[[0.5]]]}', "JSON"),
        (b"plain text", None),
    ],
)
def test_a_body_that_is_no_npy_file_says_so(body: bytes, named: str | None) -> None:
    with pytest.raises(BadRequest, match=r"the body is not a \.npy file") as error:
        load_npy(body)
    assert "allow_pickle" not in error.value.detail
    if named is not None:
        assert f"it looks like {named}" in error.value.detail


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


def test_channels_last_arrays_are_read_like_channels_first() -> None:
    """N×H×W×C is what NumPy and PIL users have (np.asarray(image) is H×W×C)."""
    nchw = digit(9, (3, 3, 28, 28))
    np.testing.assert_array_equal(
        model_input(nchw.transpose(0, 2, 3, 1), COLOUR), model_input(nchw, COLOUR)
    )
    grey = digit(10, (2, 1, 28, 28))
    np.testing.assert_array_equal(model_input(grey.transpose(0, 2, 3, 1)), model_input(grey))


def test_arrays_and_files_follow_one_rule_for_channels() -> None:
    """A grey array to an RGB model is made RGB as a grey file is; RGB to grey the same."""
    grey = digit(11)
    np.testing.assert_array_equal(
        model_input(grey[None], COLOUR)[0], decode(image_file(grey), COLOUR)
    )
    rgb = digit(12, (28, 28, 3))
    np.testing.assert_array_equal(model_input(rgb[None])[0], decode(image_file(rgb)))
    rgba = digit(13, (28, 28, 4))
    np.testing.assert_array_equal(
        model_input(rgba[None], COLOUR)[0], decode(image_file(rgba), COLOUR)
    )


def test_uint16_and_bool_arrays_are_scaled_like_16_bit_and_1_bit_files() -> None:
    wide = np.random.default_rng(14).integers(0, 65536, (1, 28, 28), dtype=np.uint16)
    np.testing.assert_allclose(model_input(wide)[:, 0], wide / 65535, rtol=1e-6)
    np.testing.assert_array_equal(
        model_input(wide)[0], decode(saved(Image.fromarray(wide[0]), "PNG"))
    )
    mask = np.random.default_rng(15).random((1, 28, 28)) > 0.5
    np.testing.assert_array_equal(model_input(mask)[:, 0], mask.astype(np.float32))
    np.testing.assert_array_equal(
        model_input(mask)[0], decode(saved(Image.fromarray(mask[0]), "PNG"))
    )


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((1, 28, 28), np.nan, np.float32), "NaN or infinity"),
        (np.full((1, 28, 28), np.inf, np.float32), "NaN or infinity"),
        (np.full((1, 28, 28), 1.5, np.float32), r"\[0, 1\].*1\.5"),
        (np.full((1, 28, 28), -0.1, np.float32), r"\[0, 1\]"),
        (np.zeros((1, 5, 28, 28), np.float32), "5 channels as N×C×H×W and 28 channels as"),
        (np.zeros((28, 28), np.float32), "got shape 28×28 .*: for one image, send 1×28×28"),
        (np.zeros((28, 28, 3), np.uint8), "look like one H×W×C image.* send it as 1×28×28×3"),
        (np.zeros(784, np.uint8), "N×H×W, N×C×H×W or N×H×W×C; got shape 784"),
        (np.zeros((0, 28, 28), np.float32), "empty"),
        (np.zeros((1, 28, 28), np.int16), "got dtype int16 .*astype"),
        (np.zeros((1, 27, 28), np.uint8), "27×28 pixels, the model expects 28×28"),
        (np.zeros((1, 1, 28, 0), np.uint8), "pixels are 28×0: no pixels at all"),
    ],
)
def test_bad_pixel_arrays_are_refused_with_the_reason(array: np.ndarray, message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        model_input(array)


def test_channel_counts_are_worded_in_good_english() -> None:
    model = InputSpec(channels=2, height=28, width=28)
    with pytest.raises(Unprocessable) as error:
        model_input(np.zeros((1, 1, 28, 28), np.uint8), model)
    assert "have 1 channel as N×C×H×W and 28 channels as N×H×W×C" in error.value.detail
    assert "1 channels" not in error.value.detail


def test_an_ambiguous_layout_is_refused_when_resizing_not_guessed() -> None:
    with pytest.raises(Unprocessable, match=r"could be N×C×H×W .* or N×H×W×C"):
        model_input(np.zeros((1, 3, 64, 3), np.uint8), COLOUR, resize=True)
    x = model_input(np.zeros((1, 64, 64, 3), np.uint8), COLOUR, resize=True)
    assert x.shape == (1, 3, 28, 28)


def test_too_many_images_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match="5 images"):
        model_input(np.zeros((5, 28, 28), np.uint8))


def test_float_arrays_resize_when_asked() -> None:
    x = model_input(np.full((1, 1, 14, 14), 0.25, np.float32), resize=True)
    assert x.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(x, 0.25, atol=1e-6)


def test_resizing_files_and_arrays_is_one_rule() -> None:
    big = digit(16, (56, 48))
    np.testing.assert_array_equal(
        model_input(big[None], resize=True)[0], decode(image_file(big), resize=True)
    )
