"""The HTTP infer body, both ways: a JSON object, then, with the binary tensor data
extension, the raw bytes of the tensors sent as binary, in the order the JSON names them.

`Inference-Header-Content-Length` says where the JSON ends. Each binary input says
its size (`binary_data_size`); the sizes must add up to exactly the rest of the body,
so no tensor can take bytes that are not its own. An output comes back as binary when
its `binary_data` parameter says so, else when the request's `binary_data_output`
does; tritonclient asks for binary by default, curl users get JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.errors import BadRequest
from app.json_scan import check_json_cost
from app.oip.models import Answer, InputTensor, Target, Value
from app.oip.tensors import datatype_of, to_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Value]
    inputs: list[InputTensor]
    outputs: list[str] | None  # names asked for; None: all
    binary: dict[str, bool]  # per output asked for, when it says
    binary_default: bool  # binary_data_output


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, what: str) -> dict[str, Value]:
    found = _object(value, what)
    for name, item in found.items():
        if not isinstance(item, bool | int | float | str):
            raise BadRequest(f"{what}: {name!r} must be a string, number or boolean")
    return found


def _header_length(declared: str | None, body: bytes) -> int:
    if declared is None:
        return len(body)
    if not declared.strip().isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count, got {declared!r}")
    length = int(declared)
    if length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length}, but the body has only {len(body)} bytes")
    return length


def parse(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body -> its JSON fields and each input's data, refusing every
    inconsistency with a 400 that says which."""
    end = _header_length(header_length, body)
    check_json_cost(body, end, bulk="binary tensor data (parameter binary_data_size)")
    try:
        header = orjson.loads(body[:end])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from None
    header = _object(header, "the inference request")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    parameters = _parameters(header.get("parameters"), '"parameters"')
    binary_default = parameters.pop("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest('"binary_data_output" must be true or false')
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest('"inputs" must be a non-empty list of tensors')
    offset, inputs = end, []
    for i, item in enumerate(raw_inputs):
        tensor = _object(item, f"inputs[{i}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest(f'inputs[{i}] needs a "name"')
        own = _parameters(tensor.get("parameters"), f"input {name!r}: parameters")
        size = own.get("binary_data_size")
        raw = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a byte count")
            if offset + size > len(body):
                raise BadRequest(
                    f"input {name!r} declares {size} bytes of binary data, but only "
                    f"{len(body) - offset} bytes are left in the body"
                )
            raw, offset = body[offset : offset + size], offset + size
        elif "data" not in tensor:
            raise BadRequest(f'input {name!r} has neither "data" nor binary_data_size')
        values = tensor.get("data")
        inputs.append(InputTensor(name, tensor.get("datatype"), tensor.get("shape"), raw, values))
    if offset != len(body):
        raise BadRequest(
            f"the body has {len(body) - offset} bytes after the inputs' binary data; "
            f"check {HEADER_LENGTH} and each binary_data_size"
        )
    outputs, binary = _outputs(header.get("outputs"))
    return InferRequest(request_id, parameters, inputs, outputs, binary, binary_default)


def _outputs(value: Any) -> tuple[list[str] | None, dict[str, bool]]:
    if value is None:
        return None, {}
    if not isinstance(value, list):
        raise BadRequest('"outputs" must be a list')
    names, binary = [], {}
    for i, item in enumerate(value):
        output = _object(item, f"outputs[{i}]")
        name = output.get("name")
        if not isinstance(name, str):
            raise BadRequest(f'outputs[{i}] needs a "name"')
        names.append(name)
        wanted = _parameters(output.get("parameters"), f"output {name!r}: parameters")
        if "binary_data" in wanted:
            if not isinstance(wanted["binary_data"], bool):
                raise BadRequest(f"output {name!r}: binary_data must be true or false")
            binary[name] = wanted["binary_data"]
    return names, binary


def render(target: Target, request: InferRequest, answer: Answer) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: the JSON object, then any binary outputs."""
    outputs, tail = [], []
    for name, array in answer.outputs.items():
        output: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if request.binary.get(name, request.binary_default):
            data = to_bytes(array)
            output["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        else:
            output["data"] = np.ascontiguousarray(array).ravel()
        outputs.append(output)
    response: dict[str, Any] = {"model_name": target.name, "model_version": str(target.mv.version)}
    if request.id is not None:
        response["id"] = request.id
    if answer.parameters:
        response["parameters"] = answer.parameters
    response["outputs"] = outputs
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return header, {"content-type": "application/json"}
    headers = {"content-type": BINARY, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *tail]), headers
