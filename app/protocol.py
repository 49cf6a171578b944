"""The HTTP/1.1 layer: uvicorn's httptools protocol, bounded and answering in JSON.

uvicorn's own refusals of a request it cannot parse are text/plain, and httptools
buffers a request's head without limit (a 2 MB header line was read whole) while
it cannot parse a URL over 65,535 bytes at all. This protocol refuses a head
over MAX_HEAD_BYTES as soon as that many bytes arrived without it ending (414
when the URL is most of it, else 431), and words every refusal as the app does:
`{"detail": "<a sentence>"}`.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The request line and headers. Proxies stop at 8-64 KiB, and the longest URL
# httptools can parse is 65,535 bytes.
MAX_HEAD_BYTES = 64 * 1024
# How long a refused connection still reads (and drops) what the client sends: closed
# with unread bytes, TCP resets the connection and the client never sees the answer.
LINGER_S = 5.0


class HttpProtocol(HttpToolsProtocol):
    """`vae-serve` runs uvicorn with this protocol (uvicorn.run(..., http=HttpProtocol))."""

    _head: int | None = 0  # bytes of the current request's head so far; None past it
    _completed = 0  # requests parsed whole on this connection
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head = 0

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and drop
        in_head, completed = self._head is not None, self._completed
        super().data_received(data)
        # Only bytes that all went to one unfinished head count: a chunk that ends a
        # body (and a request with it) is body, however large, not the next head.
        head, ended = self._head, self._completed != completed
        if not in_head or ended or head is None or self._refused or self.transport.is_closing():
            return
        self._head = head + len(data)
        if self._head > MAX_HEAD_BYTES:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._completed += 1
        self._head = 0  # the next request on this connection starts its head

    def send_400_response(self, msg: str) -> None:
        if len(self.url) >= MAX_HEAD_BYTES:  # httptools cannot parse it
            self._refuse_head()
        else:
            self._refuse(400, "the request is not valid HTTP/1.1")

    def _refuse_head(self) -> None:
        limit = f"a request's line and headers may hold {MAX_HEAD_BYTES} bytes"
        if len(self.url) > MAX_HEAD_BYTES // 2:
            self._refuse(414, f"the URL is over {len(self.url)} bytes long; {limit}")
        else:
            self._refuse(431, f"the headers are too large; {limit}")

    def _refuse(self, status: int, detail: str) -> None:
        body = orjson.dumps({"detail": detail})
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is whole; the client may still be sending
        self.loop.call_later(LINGER_S, self.transport.close)
