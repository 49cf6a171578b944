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
from typing import Any

import numpy as np

from app.errors import BadRequest

# The protocol's datatypes that vae-serve reads or writes, as little-endian numpy types.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# The JSON number kinds each datatype takes (numpy's kind codes: b bool, i/u int, f float).
_JSON_KINDS = {"FP32": "iuf", "UINT8": "iu", "BOOL": "b"}


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


def from_list(name: str, datatype: str, values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Values given as a (nested or flat) list -> an array of `shape`, checked element by
    element: numbers of the right kind, within the datatype's range, as many as the shape."""
    try:
        array = np.asarray(values)
    except ValueError:  # ragged nesting
        raise BadRequest(f"input {name!r}: data must be a rectangular list of numbers") from None
    kinds = _JSON_KINDS[datatype]
    if array.size and array.dtype.kind not in kinds:
        what = "true/false values" if kinds == "b" else "numbers"
        raise BadRequest(f"input {name!r}: data must be {what} for datatype {datatype}")
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
