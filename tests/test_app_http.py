"""The service over real HTTP on 127.0.0.1: schemathesis on every operation of its
OpenAPI document (the native API and the Open Inference Protocol's HTTP routes), and
the HTTP layer's own refusals (app/protocol.py).

Every answer must be documented, never a 5xx, and every 4xx must be JSON with a
string sentence. The search is small and deterministic (conftest.py's "ci" profile).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from app_support import Server, serve
from hypothesis import given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import positive_data_acceptance
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.config import Settings
from app.main import create_app
from app.protocol import MAX_HEAD_BYTES, HttpProtocol

LIMITS = {
    "VAE_RELOAD_INTERVAL_S": "0",
    "VAE_MAX_BODY_BYTES": str(1 << 20),
    "VAE_MAX_PIXELS": "200000",
    "VAE_MAX_SAMPLES": "8",
    "VAE_MAX_K": "8",
    "VAE_INTRA_OP_THREADS": "1",
}


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # serve() fails the test if the server logged a traceback: no error went unhandled.
    with serve(model_store, tmp_path_factory.mktemp("http"), **LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def _can_be_invalid(operation: dict[str, Any]) -> bool:
    """Whether a request can break the operation's schema: a parameter constrained beyond
    "a string", or a JSON object body. (The /v2 routes take any name and any body.)"""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if set(schema) - {"type", "title", "description"} or schema.get("type") != "string":
            return True
    content = operation.get("requestBody", {}).get("content", {}).values()
    return any(media.get("schema", {}).get("type") == "object" for media in content)


def operations() -> list[tuple[str, GenerationMode]]:
    """Every operation of the OpenAPI document, read from the app without serving it, with
    valid requests and, where a request can be invalid, invalid ones."""
    spec = create_app(Settings(model_store=Path("unused"))).openapi()
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            found.append((f"{method.upper()} {path}", GenerationMode.POSITIVE))
            if _can_be_invalid(operation):
                found.append((f"{method.upper()} {path}", GenerationMode.NEGATIVE))
    return found


def error_shape(ctx: Any, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx is JSON whose `detail` is a sentence (a non-empty string); the Open
    Inference Protocol's routes (/v2) say it in `error`, as that protocol does."""
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), (
            f"a {response.status_code} as {content_type}"
        )
        key = "error" if case.operation.path.startswith("/v2") else "detail"
        sentence = json.loads(response.content).get(key)
        assert isinstance(sentence, str) and sentence, f"{key} is {sentence!r}"
    return None


@pytest.mark.parametrize(("operation", "mode"), operations(), ids=lambda v: str(v))
def test_every_operation_answers_as_documented(
    api_schema: Any, operation: str, mode: GenerationMode
) -> None:
    """Valid and invalid requests alike: documented status, content and schema, no 5xx."""
    method, path = operation.split(" ")

    operation_ = api_schema[path][method]
    # Where the schema cannot say all that is refused, schema-valid requests may get a 4xx:
    # a body's bytes must be an image the model takes (not any PNG-typed bytes), and n's
    # limit is a setting (VAE_MAX_SAMPLES).
    excluded: list[Any] = [positive_data_acceptance] if operation_.body or path == "/sample" else []

    @given(case=operation_.as_strategy(generation_mode=mode))
    @settings(max_examples=max(5, settings().max_examples * 3 // 8))  # 15 in CI
    def check(case: Case[Any]) -> None:
        case.call_and_validate(additional_checks=[error_shape], excluded_checks=excluded)

    check()


# -- the HTTP layer ------------------------------------------------------------------------


def raw_request(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these) and read the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_", "status", "phrase"),
    [
        (b"GET /sample?x=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "the URL is"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n",
            431,
            "headers",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "not valid HTTP/1.1"),
    ],
    ids=["100 KB URL", "200 KB header", "garbage"],
)
def test_the_http_layer_refuses_in_the_same_shape(
    server: Server, request_: bytes, status: int, phrase: str
) -> None:
    code, headers, body = raw_request(server, request_)
    assert code == status and headers["content-type"] == "application/json", body[:200]
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and phrase in detail
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # as the app's errors carry
    if status != 400:
        assert str(MAX_HEAD_BYTES) in detail


def test_a_long_url_under_the_limit_reaches_the_app(server: Server) -> None:
    """A 60 KB query string is parsed by the app, whose answer names the parameter."""
    url = b"/sample?n=1&seed=" + b"9" * 60_000
    code, _, body = raw_request(
        server, b"GET " + url + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert code == 422 and "query parameter seed" in json.loads(body)["detail"]


async def test_a_chunk_that_ends_a_large_body_does_not_count_as_a_head() -> None:
    """One read can hold the end of a request's body: those bytes are body, however many.
    (They were once added to the next request's head, and a large upload whose last read
    was over MAX_HEAD_BYTES was refused with 431 after it had been parsed whole.)

    The real protocol on a real socket, fed the whole request as one read, since how the
    kernel splits a stream between reads cannot be chosen from outside."""
    config = Config(create_app(Settings(grpc_port=0)), http=HttpProtocol, lifespan="off")
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: protocol, ours)
    body = b"x" * (3 * MAX_HEAD_BYTES)
    head = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    protocol.data_received(head + body)
    answer = await loop.sock_recv(theirs, 65536)
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]  # the app's answer, not a 431
    protocol.transport.close()
    theirs.close()
