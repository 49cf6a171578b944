"""The memory budget: bytes that requests may hold at once, whichever door they came in by.

Rows (VAE_MAX_QUEUE) and pixels (VAE_MAX_PIXELS) bound the work of one request, not
the memory of many: seventy slow uploads of 15 MiB each, or six 65 KB PNGs that
decode to 4096×4096 and are resized, each stayed within every per-request limit and
together took the process past a 1 GiB container limit. So each request takes
what it will hold from one budget before it holds it, and gives it back when it
ends:

- an HTTP body, as it arrives (its declared Content-Length at once),
- image files' pixels, from the header's size and mode before any is decoded, at
  the bytes per pixel the decode and resize hold (`pixel_bytes`),
- pixel arrays that go to the model's x, and gRPC messages with their conversion.

A request that could never fit is refused 413; one that fits only when others are
done is refused 503 with Retry-After, before it costs anything. docs/limits.md states
the rule that ties the budget to the container's memory limit.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RETRY_AFTER_S, PayloadTooLarge, Unavailable, Unprocessable

# Bytes held per decoded pixel and channel (3: Pillow's image, its bytes and the array
# made of them), and per pixel when resized (float32 planes: the scaled one, the alpha,
# Pillow's mode F copy). Measured peaks (4096×4096, one thread): RGBA 8 bytes per pixel,
# 12 resized; L 2 and 9; a palette PNG 10 (it becomes RGBA). docs/limits.md has the table.
_PER_SAMPLE = 3
_PER_RESIZED_PIXEL = 8
# Modes whose samples are wider than a byte, and those decoded as four channels.
_SAMPLE_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
_AS_RGBA = frozenset({"P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
# A progressive JPEG is decoded once per scan: ten make a photo, thousands within the pixel
# limit make a CPU bomb (libjpeg-turbo's djpeg has -maxscans for this; Pillow has none).
# 0xFFDA starts a scan and cannot occur inside entropy-coded data (0xFF is stuffed there).
MAX_JPEG_SCANS = 64
_JPEG_SOS = b"\xff\xda"
# Returned to the system when held memory falls to nothing after at least this much:
# glibc keeps freed arenas otherwise, and a burst would leave the process at its peak.
_TRIM_AFTER_BYTES = 32 * 2**20
# The budget of the request being served: set for each request by its door (BodyBudget
# for HTTP, app.oip.admission for gRPC), read where pixels are decoded (app.inputs).
# Worker threads see it too: asyncio.to_thread copies the context.
CURRENT: ContextVar[ByteBudget | None] = ContextVar("byte_budget", default=None)


def pixel_bytes(pixels: int, channels: int, sample_bytes: int = 1, *, resize: bool) -> int:
    """Bytes that decoding (and resizing) `pixels` pixels of `channels` channels holds."""
    held = pixels * channels * sample_bytes * _PER_SAMPLE
    return held + (pixels * _PER_RESIZED_PIXEL if resize else 0)


def files_bytes(files: Sequence[bytes], *, max_pixels: int, resize: bool) -> int:
    """What decoding these image files will hold, read from their headers alone (Pillow
    opens lazily); pixels past `max_pixels` are not counted, since the decode refuses them
    (413) before it holds them. CPU bombs within the pixel limit are refused here: a JPEG
    of more than MAX_JPEG_SCANS scans, a file of more than one frame."""
    total, pixels_left = 0, max_pixels
    for index, data in enumerate(files):
        if data[:2] == b"\xff\xd8":
            scans = data.count(_JPEG_SOS)
            if scans > MAX_JPEG_SCANS:
                raise PayloadTooLarge(
                    f"image {index} is a JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are "
                    "decoded (a progressive photo has about ten)"
                )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    pixels, mode, bands = image.width * image.height, image.mode, image.getbands()
                    # is_animated looks for a second frame; n_frames (what the decode
                    # reports) walks them all: 20,000 GIF frames in 16 MB took 5 s.
                    animated = image.format != "MPO" and getattr(image, "is_animated", False)
        except Exception:  # not an image, or a bomb: the decode refuses it with the reason
            continue
        if animated:
            raise Unprocessable(
                f"image {index} has more than one frame (an animation or a multi-page "
                "file); send each frame as its own image"
            )
        pixels = min(pixels, pixels_left)
        pixels_left -= pixels
        channels = 4 if mode in _AS_RGBA else len(bands)
        total += pixel_bytes(pixels, channels, _SAMPLE_BYTES.get(mode, 1), resize=resize)
    return total


def array_bytes(size: int) -> int:
    """What making the model's x of `size` pixel values holds: float32 copies, two at
    once (the scaled values and the channel conversion, or a plane and its resize)."""
    return size * 8


@contextmanager
def holding(n: int, what: str) -> Iterator[None]:
    """Hold `n` bytes of the current request's budget for the body of the `with`; without
    a budget (a function called outside a request), nothing is counted."""
    budget = CURRENT.get()
    if budget is None or n == 0:
        yield
        return
    with budget.holding(n, what):
        yield


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):  # not Linux: nothing to watch
        return 0


async def give_back_memory(budget: ByteBudget, every_s: float = 2.0) -> None:
    """Return freed memory to the system after a burst: glibc keeps what threads freed in
    their arenas, and a process that peaked at 700 MB stayed at 400 MB with nothing in
    flight. Every `every_s`, when the resident set grew by _TRIM_AFTER_BYTES since the
    last trim and the budget holds nothing, trim (in a thread: it walks every arena)."""
    trimmed = _rss()
    while True:
        await asyncio.sleep(every_s)
        if budget.held == 0 and _rss() > trimmed + _TRIM_AFTER_BYTES:
            await asyncio.to_thread(_malloc_trim)
            trimmed = _rss()


class ByteBudget:
    """Bytes requests hold now, against a limit. Safe from worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._peak = 0  # since memory was last given back to the system
        self._lock = threading.Lock()

    def take(self, n: int, what: str) -> None:
        """Hold `n` more bytes for `what` ("a 15 MiB body"), or refuse: 413 when it could
        never fit, 503 when it fits once the requests in progress are done."""
        if n > self.limit:
            raise PayloadTooLarge(
                f"{what} would hold {n} bytes of memory; the service holds at most "
                f"{self.limit} for all requests together (VAE_MEMORY_BUDGET_BYTES)"
            )
        with self._lock:
            if self.held + n > self.limit:
                busy = True
            else:
                busy = False
                self.held += n
                self._peak = max(self._peak, self.held)
        if busy:
            raise Unavailable(
                f"server busy: {what} would hold {n} bytes of memory, and the requests in "
                "progress hold most of the budget (VAE_MEMORY_BUDGET_BYTES); retry shortly",
                headers={"Retry-After": RETRY_AFTER_S},
            )

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n
            trim = self.held == 0 and self._peak >= _TRIM_AFTER_BYTES
            if trim:
                self._peak = 0
        if trim:
            _malloc_trim()

    @contextmanager
    def holding(self, n: int, what: str) -> Iterator[None]:
        self.take(n, what)
        try:
            yield
        finally:
            self.give(n)


class BodyBudget:
    """Pure ASGI: a request's body counts against the budget as it arrives (its declared
    Content-Length at the first read), until the request ends. A body that does not fit
    ends its read with a 503 (app.errors.Unavailable), so it never arrives whole."""

    def __init__(self, app: ASGIApp, budget: ByteBudget, max_body_bytes: int) -> None:
        self.app = app
        self.budget = budget
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget, held, declared = self.budget, 0, 0
        CURRENT.set(budget)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                # More than the body limit is refused (413) before any is read.
                declared = min(int(value), self.max_body_bytes)

        async def counted() -> Message:
            nonlocal held
            if declared > held:  # the first read: the whole body, before any arrives
                budget.take(declared - held, f"a body of {declared} bytes")
                held = declared
            message = await receive()
            if message["type"] == "http.request" and not declared:
                size = len(message.get("body", b""))
                budget.take(size, "a chunked body")
                held += size
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            if held:
                budget.give(held)
