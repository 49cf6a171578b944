"""The gRPC stubs: generated from app/oip/inference.proto and model_config.proto, and
wire-compatible with the protocol as Triton's own client speaks it.

No test here imports our generated modules: protobuf's descriptor pool holds the
`inference` package once per process, and tritonclient's stubs (imported here and by
tests/test_oip.py) claim it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from app_support import ROOT
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

PROTOS = ["app/oip/inference.proto", "app/oip/model_config.proto"]
GENERATED = [
    f"{stem}{suffix}"
    for stem in ("inference", "model_config")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]
# Each of ours, and the file of Triton's that it must match on the wire.
TRITONS = {"app/oip/inference.proto": service_pb2, "app/oip/model_config.proto": model_config_pb2}


def protoc(*arguments: str) -> None:
    """grpcio-tools' protoc, run as the proto file's header says, from the repository root."""
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", *arguments, *PROTOS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_committed_stubs_are_what_grpcio_tools_generates(tmp_path: Path) -> None:
    out = str(tmp_path)
    protoc(f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}")
    for name in GENERATED:
        generated = (tmp_path / "app" / "oip" / name).read_text()
        committed = (ROOT / "app" / "oip" / name).read_text()
        assert committed == generated, f"app/oip/{name} differs from a fresh generation"


def _ours(tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protoc(f"--descriptor_set_out={tmp_path / 'ours.pb'}")
    found = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "ours.pb").read_bytes())
    return {file.name: file for file in found.file}


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[int, tuple[str, int, int, str]]:
    return {f.number: (f.name, f.type, f.label, f.type_name) for f in message.field}


def _same_wire(
    ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto, path: str
) -> None:
    """Every field of ours has the same number, name, type and label in theirs; nested
    messages (map entries included) alike; oneofs group the same fields."""
    mine, their = _fields(ours), _fields(theirs)
    for number, field in mine.items():
        assert their.get(number) == field, f"{path} field {number}: {field} vs {their.get(number)}"
    nested = {m.name: m for m in theirs.nested_type}
    for message in ours.nested_type:
        assert message.name in nested, f"{path}.{message.name} is not in Triton's proto"
        _same_wire(message, nested[message.name], f"{path}.{message.name}")
    assert [o.name for o in ours.oneof_decl] == [o.name for o in theirs.oneof_decl], path


def _same_enums(ours: Any, theirs: Any, path: str) -> None:
    """Every enum of ours has its values under the same names and numbers in theirs."""
    enums = {e.name: {v.name: v.number for v in e.value} for e in theirs.enum_type}
    for enum in ours.enum_type:
        values = {v.name: v.number for v in enum.value}
        assert values.items() <= enums.get(enum.name, {}).items(), f"{path}.{enum.name}"


def test_the_protos_are_tritons_on_the_wire(tmp_path: Path) -> None:
    ours = _ours(tmp_path)
    assert sorted(ours) == sorted(TRITONS)
    for name, module in TRITONS.items():
        theirs = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        mine = ours[name]
        assert mine.package == theirs.package == "inference"
        _same_enums(mine, theirs, name)
        messages = {m.name: m for m in theirs.message_type}
        for message in mine.message_type:
            assert message.name in messages, f"{message.name} is not in Triton's {theirs.name}"
            _same_wire(message, messages[message.name], message.name)
            _same_enums(message, messages[message.name], message.name)
            for nested in message.nested_type:
                (their_nested,) = [
                    n for n in messages[message.name].nested_type if n.name == nested.name
                ]
                _same_enums(nested, their_nested, f"{message.name}.{nested.name}")


def test_the_service_is_tritons_calls(tmp_path: Path) -> None:
    (service,) = _ours(tmp_path)["app/oip/inference.proto"].service
    theirs = descriptor_pb2.FileDescriptorProto.FromString(service_pb2.DESCRIPTOR.serialized_pb)
    (triton,) = [s for s in theirs.service if s.name == service.name == "GRPCInferenceService"]
    methods = {m.name: (m.input_type, m.output_type) for m in triton.method}
    names = [m.name for m in service.method]
    assert names == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    ]
    for method in service.method:
        assert methods[method.name] == (method.input_type, method.output_type), method.name
