"""Property-based tests of the input codecs: whatever a client sends, the answer is a 4xx
with a string detail, or pixels equal to the documented conversion (docs/input.md).

The reference (tests/conversion.py) is docs/input.md's tables, evaluated as written; the
search is deterministic and small in CI (the "ci" profile in conftest.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import orjson
import pytest
from app_support import image_file, npy, read_mnist
from conversion import documented_file_x, documented_x, mode_rows
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from app.errors import ServiceError
from app.images import decode_images, load_npy
from app.inputs import _json_images
from app.pixels import to_model_input
from vae_contract.manifest import InputSpec

H, W = 4, 3  # small, so that random shapes often fit the model
SPECS = {c: InputSpec(channels=c, height=H, width=W) for c in (1, 3)}
MAX_IMAGES = 8
# The documented full scale of each accepted dtype ("dtype" table); the rest are refused.
FULL_SCALE = {"uint8": 255.0, "uint16": 65535.0, "bool": 1.0}


def outcome(call: Callable[[], np.ndarray]) -> np.ndarray | ServiceError:
    """The codec's answer: x, or the client error it raised. Anything else fails the test,
    as it would be a 500."""
    try:
        return call()
    except ServiceError as error:
        assert 400 <= error.status_code < 500, error
        assert isinstance(error.detail, str) and error.detail, error
        return error


def documented_array_x(array: np.ndarray, channels: int) -> np.ndarray | None:
    """The documented x for a pixel array (None: refused), from its "Input conversion" words:
    N×H×W is grey; of N×C×H×W and N×H×W×C the model's own layout wins; 1-4 channels."""
    if array.dtype.kind == "f":
        if array.size and not (np.isfinite(array).all() and 0 <= array.min() <= array.max() <= 1):
            return None
        full = 1.0
    elif str(array.dtype) in FULL_SCALE:
        full = FULL_SCALE[str(array.dtype)]
    else:
        return None
    if array.ndim == 3 and array.shape[1:] == (H, W):
        images = array[:, None]
    elif array.ndim == 4 and array.shape[1] in (1, 2, 3, 4) and array.shape[2:] == (H, W):
        images = array
    elif array.ndim == 4 and array.shape[3] in (1, 2, 3, 4) and array.shape[1:3] == (H, W):
        images = array.transpose(0, 3, 1, 2)
    else:
        return None
    if not 0 < len(images) <= MAX_IMAGES:
        return None
    return np.stack([documented_x(image.astype(np.float64), full, channels) for image in images])


def check_array(array: np.ndarray, channels: int) -> None:
    got = outcome(
        lambda: to_model_input(
            array, SPECS[channels], scale=255.0, max_images=MAX_IMAGES, resize=False
        )
    )
    want = documented_array_x(array, channels)
    if want is None:
        assert isinstance(got, ServiceError), f"accepted {array.dtype} {array.shape}"
    else:
        assert not isinstance(got, ServiceError), f"refused {array.shape}: {got}"
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6)


ACCEPTED_DTYPES = ["uint8", "uint16", "bool", "float16", "float32", "float64"]
DTYPES = st.sampled_from([*ACCEPTED_DTYPES, "int8", "int64", "uint32", "complex64"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)


@st.composite
def valid_shapes(draw: st.DrawFn) -> tuple[int, ...]:
    """Shapes docs/input.md accepts: N×H×W, N×C×H×W or N×H×W×C, C of 1-4."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return draw(st.sampled_from([(n, H, W), (n, c, H, W), (n, H, W, c)]))


@given(
    array=DTYPES.flatmap(lambda d: hnp.arrays(d, st.one_of(SHAPES, valid_shapes()))),
    channels=st.sampled_from([1, 3]),
)
def test_any_array_is_refused_or_its_documented_conversion(
    array: np.ndarray, channels: int
) -> None:
    check_array(array, channels)


@given(
    array=hnp.arrays(
        st.sampled_from(["<f4", ">f8", "<u2", "|u1"]), valid_shapes(), elements={"min_value": 0}
    ).map(lambda a: np.clip(a, 0, 1) if a.dtype.kind == "f" else a),
    fortran=st.booleans(),
    channels=st.sampled_from([1, 3]),
)
def test_valid_npy_bodies_are_their_documented_conversion(
    array: np.ndarray, fortran: bool, channels: int
) -> None:
    """Any byte order and memory order: the body means the same pixels."""
    body = npy(np.asfortranarray(array) if fortran else array)
    check_array(load_npy(body), channels)
    assert documented_array_x(array, channels) is not None


def npy_header(header: str, data: bytes) -> bytes:
    text = header.encode("latin1", "replace")[:60000]
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


@given(
    descr=st.one_of(
        st.sampled_from(
            [
                "<f4",
                ">f8",
                "|u1",
                "<u2",
                "|b1",
                "<i8",
                "<c8",
                "|O",
                "<U3",
                "|V0",
                "<M8[ns]",
                "[('a', '<f4')]",
            ]
        ),
        st.text(max_size=12).map(repr),
    ),
    fortran=st.sampled_from(["True", "False", "1", "None"]),
    shape=st.lists(st.integers(-2, 2**45), max_size=6).map(tuple),
    extra=st.integers(-16, 16),
    channels=st.sampled_from([1, 3]),
)
def test_any_npy_header_is_refused_or_read_in_place(
    descr: str, fortran: str, shape: tuple[int, ...], extra: int, channels: int
) -> None:
    """Declared sizes up to 2^45 values: nothing is allocated beyond the body's bytes."""
    try:
        declared = math.prod(shape) * np.dtype(eval(descr)).itemsize if descr[0] in "'[" else 0
    except (TypeError, ValueError, SyntaxError):
        declared = 0
    data = bytes(max(0, min(declared, 4096) + extra))
    body = npy_header(
        f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}", data
    )
    array = outcome(lambda: load_npy(body))
    if isinstance(array, ServiceError):
        return
    assert array.nbytes == len(data) <= len(body)  # a view of the body, nothing more
    assert array.shape == shape
    check_array(array, channels)


@given(body=st.binary(max_size=512))
def test_arbitrary_bytes_are_a_4xx_or_an_array(body: bytes) -> None:
    for call in (lambda: load_npy(body), lambda: _json_images(body, MAX_IMAGES).array):
        result = outcome(call)  # type: ignore[arg-type]
        assert result is None or isinstance(result, ServiceError | np.ndarray)
    outcome(lambda: decode_images([body], SPECS[1], scale=255.0, max_pixels=10**5, resize=False))


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(0, 1) | st.integers(-2, 300) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=60,
)


def documented_json_x(value: Any, channels: int) -> np.ndarray | None:
    """JSON numbers are floats; anything else in the lists, or a ragged list, is refused."""

    def numbers(item: Any) -> bool:
        if isinstance(item, list):
            return all(numbers(i) for i in item)
        return type(item) in (int, float)

    if not numbers(value):
        return None
    try:
        array = np.array(value, dtype=np.float64)
    except ValueError:
        return None
    return documented_array_x(array, channels)


@given(
    value=st.one_of(
        JSON,
        hnp.arrays("float64", valid_shapes(), elements=st.floats(0, 1)).map(np.ndarray.tolist),
    ),
    channels=st.sampled_from([1, 3]),
)
def test_any_json_pixels_are_refused_or_their_documented_conversion(
    value: Any, channels: int
) -> None:
    body = orjson.dumps({"pixels": value})
    got = outcome(
        lambda: to_model_input(
            _json_images(body, MAX_IMAGES).array,  # type: ignore[arg-type]
            SPECS[channels],
            scale=255.0,
            max_images=MAX_IMAGES,
            resize=False,
        )
    )
    want = documented_json_x(value, channels)
    if want is None:
        assert isinstance(got, ServiceError), f"accepted {value!r}"
    else:
        assert not isinstance(got, ServiceError), f"refused {value!r}: {got}"
        np.testing.assert_allclose(got, want, atol=1e-6)


# -- image files ---------------------------------------------------------------------------

DIGITS = read_mnist(4)
REAL_FILES = [
    image_file(digit, fmt, mode)
    for digit in DIGITS
    for fmt, mode in [("PNG", None), ("JPEG", None), ("GIF", None), ("TIFF", None),
                      ("WEBP", "RGB"), ("BMP", None), ("PPM", None), ("PNG", "RGBA")]
]  # fmt: skip
MNIST = InputSpec(channels=1, height=28, width=28)


def check_file(data: bytes, spec: InputSpec) -> None:
    """A 4xx, or the documented conversion of the upright picture Pillow decodes."""
    got = outcome(lambda: decode_images([data], spec, scale=255.0, max_pixels=10**6, resize=False))
    if isinstance(got, ServiceError):
        return
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    np.testing.assert_allclose(got[0], documented_file_x(shown, spec.channels), atol=1e-6)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(REAL_FILES)))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])  # truncated
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data)


@given(data=mutated())
@settings(suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt files
def test_truncated_and_mutated_real_images_are_a_4xx_or_their_documented_pixels(
    data: bytes,
) -> None:
    check_file(data, MNIST)


MODE_FORMATS = [
    (mode, fmt)
    for mode, row in mode_rows().items()
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
    if fmt in row["files"]
]


@st.composite
def any_mode_file(draw: st.DrawFn) -> tuple[bytes, int, int]:
    mode, fmt = draw(st.sampled_from(MODE_FORMATS))
    width, height = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if mode in ("I", "I;16"):
        values = hnp.arrays(np.uint16, (height, width))
        image = Image.fromarray(draw(values))
    elif mode == "F":
        floats = (
            st.floats(-0.5, 1.5, width=32) if draw(st.booleans()) else st.floats(0, 1, width=32)
        )
        image = Image.fromarray(draw(hnp.arrays(np.float32, (height, width), elements=floats)))
    elif mode == "1":
        image = Image.fromarray(draw(hnp.arrays(np.bool_, (height, width))))
    else:
        bands = len(Image.getmodebands(mode) * "x")
        size = width * height * bands
        image = Image.frombytes(
            mode, (width, height), draw(st.binary(min_size=size, max_size=size))
        )
        if mode in ("P", "PA"):
            image.putpalette(draw(st.binary(min_size=768, max_size=768)))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue(), width, height


@given(file=any_mode_file(), channels=st.sampled_from([1, 3]))
def test_every_pillow_mode_is_a_4xx_or_its_documented_conversion(
    file: tuple[bytes, int, int], channels: int
) -> None:
    data, width, height = file
    assume(Image.open(io.BytesIO(data)).mode in mode_rows())
    check_file(data, InputSpec(channels=channels, height=height, width=width))


@pytest.mark.parametrize("mode", ["HSV"])
def test_modes_no_format_stores_are_still_converted_as_documented(mode: str) -> None:
    """HSV reaches no request; its row still holds for the picture itself."""
    assert mode_rows()[mode]["files"] == "(none stores it)"
    image = Image.frombytes(mode, (W, H), bytes(range(W * H * 3)))
    rgb = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_allclose(documented_file_x(image, 1), documented_x(rgb, 255, 1))
