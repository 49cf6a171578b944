"""Tensors of the Open Inference Protocol: datatypes, and values in and out as numpy.

Both transports meet here: HTTP sends values as JSON lists or as raw bytes after
the JSON header (the binary tensor data extension), gRPC as typed lists or raw
bytes. Raw bytes are little-endian, row-major, unpadded, exactly the shape's
element count times the element size: anything else is refused (400), so a
tensor is always made of its own request's bytes and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from app.errors import BadRequest

# The protocol's datatypes that vae-serve reads or writes, as little-endian numpy types.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# The JSON value types each datatype takes. JSON true is not the number 1 (numpy would
# read [true, 0] as integers), nor 1 the value true.
_JSON_TYPES: dict[str, frozenset[type]] = {
    "FP32": frozenset({int, float}),
    "UINT8": frozenset({int}),
    "BOOL": frozenset({bool}),
}
# Most elements a shape may declare, zero-length axes counted as one. numpy cannot even
# describe a shape whose element count overflows 64 bits ([2**62, 2**62, 0] holds no
# element, yet reshaping to it fails), and no request body comes near this many.
MAX_ELEMENTS = 2**40


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as model metadata describes it; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()  # inputs: every datatype a request may send

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A request's shape: a list of non-negative integers."""
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} declares more than {MAX_ELEMENTS} elements"
        )
    return tuple(shape)


def check_datatype(spec: TensorSpec, datatype: Any) -> np.dtype[Any]:
    """The numpy type of an input's datatype, or a 400 that names what is accepted."""
    if datatype not in spec.accepts:
        accepted = " or ".join(spec.accepts)
        raise BadRequest(f"input {spec.name!r} has datatype {datatype!r}; it accepts {accepted}")
    return DTYPES[datatype]


def from_bytes(name: str, raw: bytes, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian bytes -> an array of `shape` (read-only, a view of `raw`)."""
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r} has {len(raw)} bytes of data, but shape {list(shape)} of "
            f"{dtype.itemsize}-byte elements needs {expected}"
        )
    return np.frombuffer(raw, dtype).reshape(shape)


def _leaf_types(values: Any) -> set[type]:
    """The types of the values in nested lists, one level at a time (map and chain run
    in C: a million numbers take milliseconds, a walk item by item ten times more)."""
    level, types = [values], set()
    while level:
        found = set(map(type, level))
        types |= found - {list}
        if list not in found:
            break
        level = list(chain.from_iterable(item for item in level if type(item) is list))
    return types


def from_list(name: str, datatype: str, values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Values given as a (nested or flat) list -> an array of `shape`, checked element by
    element: values of the right JSON type, within the datatype's range, as many as the
    shape."""
    allowed = _JSON_TYPES[datatype]
    # gRPC's typed contents arrive as arrays of their protobuf type already.
    if not isinstance(values, np.ndarray) and not _leaf_types(values) <= allowed:
        what = "true/false values" if bool in allowed else "numbers"
        raise BadRequest(f"input {name!r}: data must be {what} for datatype {datatype}")
    try:
        array = np.asarray(values)
    except ValueError:  # ragged nesting
        raise BadRequest(f"input {name!r}: data must be a rectangular list of numbers") from None
    if array.dtype == object:  # ragged nesting that numpy reads as objects
        raise BadRequest(f"input {name!r}: data must be a rectangular list of numbers")
    count = math.prod(shape)
    if array.size != count:
        raise BadRequest(
            f"input {name!r} has {array.size} values of data, but shape {list(shape)} needs {count}"
        )
    dtype = DTYPES[datatype]
    if dtype.kind == "u" and array.size:
        low, high = int(array.min()), int(array.max())
        limit = np.iinfo(dtype).max
        if low < 0 or high > limit:
            raise BadRequest(
                f"input {name!r}: {datatype} values lie in [0, {limit}], got [{low}, {high}]"
            )
    return array.astype(dtype).reshape(shape)


def to_bytes(array: np.ndarray) -> bytes:
    """An output's values as the protocol's raw bytes."""
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for an output's numpy type."""
    for name, dtype in DTYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no protocol datatype for {array.dtype}")
