"""The HTTP/1.1 layer: uvicorn's httptools protocol, bounded and answering in JSON.

uvicorn's own refusals of a request it cannot parse are text/plain, and httptools
buffers a request's head without limit (a 2 MB header line was read whole) while
it cannot parse a URL over 65,535 bytes at all. This protocol refuses a head
over MAX_HEAD_BYTES as soon as that many bytes arrived without it ending (414
when the URL is most of it, else 431), and words every refusal as the app does:
`{"detail": "<a sentence>"}`.

It bounds time too, before any app work and before the API key is looked at: a
request's head must arrive whole within `head_timeout_s` of its first byte (or of
the connection's start), else 408 and the connection is closed; a body may go
`body_timeout_s` without a byte arriving, else the connection is closed (the app
sees the client gone). A thousand connections that each sent most of a head and
then nothing stayed open for good without this.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.context import new_id

if TYPE_CHECKING:
    from app.config import Settings

# The request line and headers. Proxies stop at 8-64 KiB, and the longest URL
# httptools can parse is 65,535 bytes.
MAX_HEAD_BYTES = 64 * 1024
# How long a refused connection still reads (and drops) what the client sends: closed
# with unread bytes, TCP resets the connection and the client never sees the answer.
LINGER_S = 5.0

log = logging.getLogger(__name__)


class HttpProtocol(HttpToolsProtocol):
    """`vae-serve` runs uvicorn with this protocol (uvicorn.run(..., http=HttpProtocol)),
    made by `bounded` with the settings' time limits."""

    head_timeout_s = 10.0
    body_timeout_s = 15.0
    _head: int | None = 0  # bytes of the current request's head so far; None past it
    _completed = 0  # requests parsed whole on this connection
    _refused = False
    # The time limits: one timer per connection that looks at the clock a few times
    # per limit, not a timer per request (a timer set and cancelled per request cost
    # the event loop 10-30 µs, app/overload.py's Deadlines says).
    _head_since: float | None = None  # loop time the head being read began
    _body_due: float | None = None  # loop time by which the body's next bytes must come
    _tick: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head = 0
        self._head_since = self.loop.time()  # a connection that sends nothing is timed too
        self._tick = self.loop.call_later(self._tick_s, self._check_time)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tick is not None:
            self._tick.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and drop
        in_head, completed = self._head is not None, self._completed
        if self._head == 0 and self._head_since is None:  # the first byte of the next head
            self._head_since = self.loop.time()
        elif self._body_due is not None:  # body bytes: the stall clock starts again
            self._body_due = self.loop.time() + self.body_timeout_s
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
        self._head_since = None
        self._body_due = self.loop.time() + self.body_timeout_s
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._completed += 1
        self._head = 0  # the next request on this connection starts its head
        self._body_due = None

    @property
    def _tick_s(self) -> float:
        return min(self.head_timeout_s, self.body_timeout_s, 4.0) / 4

    def _check_time(self) -> None:
        self._tick = None
        if self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._head_since is not None and now - self._head_since > self.head_timeout_s:
            self._head_timed_out()
            return
        # Not while we stopped reading (the app has not taken the bytes yet): not a stall.
        stalled = self._body_due is not None and now > self._body_due
        if stalled and not self.flow.read_paused:
            log.info(
                "closed a connection whose request body stalled for %g s (VAE_BODY_TIMEOUT_S)",
                self.body_timeout_s,
            )
            self.transport.close()
            return
        self._tick = self.loop.call_later(self._tick_s, self._check_time)

    def _head_timed_out(self) -> None:
        if not self._head:  # not a byte of a request: an idle connection, closed quietly
            self.transport.close()
            return
        self._refuse(
            408,
            f"the request's line and headers did not arrive within {self.head_timeout_s:g} s "
            "(VAE_HEAD_TIMEOUT_S)",
        )

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
        # A refused head is never read whole, so the caller's X-Request-ID is not known:
        # a new id, in the answer and in the log line, as the app gives its errors.
        rid = new_id()
        log.info("refused %s before the app: %s (request id %s)", status, detail, rid)
        body = orjson.dumps({"detail": detail})
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"x-request-id: %s\r\n" % rid.encode(),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is whole; the client may still be sending
        self.loop.call_later(LINGER_S, self.transport.close)


def bounded(settings: Settings) -> type[HttpProtocol]:
    """The protocol with the settings' time limits (uvicorn makes one per connection)."""
    return type(
        "HttpProtocol",
        (HttpProtocol,),
        {"head_timeout_s": settings.head_timeout_s, "body_timeout_s": settings.body_timeout_s},
    )
