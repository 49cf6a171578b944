"""The attacks of issue 22, as functions both tests/test_attack.py (short settings, a few
seconds each) and bench/attack.py (the defaults, full size) run against a real server
on 127.0.0.1. Each is bounded in connections and time and stops by itself; each
returns what it saw, for the caller to judge.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from PIL import Image


def memory(pid: int) -> tuple[int, int]:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in bytes."""
    found = {}
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def open_sockets(pid: int) -> int:
    """Sockets the process holds (listening ones included)."""
    fds = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        with suppress(OSError):  # closed meanwhile
            count += os.readlink(f"{fds}/{fd}").startswith("socket:")
    return count


@dataclass
class Probes:
    """/healthz and /readyz asked in turn every `every_s` while an attack runs."""

    url: str
    every_s: float = 0.05
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst_s(self) -> float:
        return max(self.latencies, default=0.0)

    def p99_s(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


@contextmanager
def probing(url: str) -> Iterator[Probes]:
    probes = Probes(url)
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            paths = ("/healthz", "/readyz")
            i = 0
            while not stop.is_set():
                path = paths[i % 2]
                i += 1
                began = time.perf_counter()
                try:
                    status = client.get(path).status_code
                    if status != 200:
                        probes.failures.append(f"{path}: {status}")
                except httpx.HTTPError as exc:
                    probes.failures.append(f"{path}: {exc!r}")
                probes.latencies.append(time.perf_counter() - began)
                stop.wait(probes.every_s)

    thread = threading.Thread(target=ask, name="probes", daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        stop.set()
        thread.join(timeout=30)


def png(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A blank picture: a few KB that decode to width × height × channels bytes."""
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def pixel_bombs(url: str, bomb: bytes, count: int) -> list[int]:
    """`count` concurrent /encode?resize=true of one small file that decodes large."""

    def post(_: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as client:
            response = client.post(
                "/encode?resize=true", content=bomb, headers={"content-type": "image/png"}
            )
            return response.status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


async def _answer(reader: asyncio.StreamReader, within_s: float) -> str:
    """What the server did with a connection: its status code, "closed" without an
    answer, or "open" when it neither answered nor closed within `within_s`."""
    try:
        raw = await asyncio.wait_for(reader.read(), within_s)  # to the end of the stream
    except TimeoutError:
        return "open"
    except ConnectionError:
        return "closed"
    if raw.startswith(b"HTTP/1.1 "):
        return raw.split()[1].decode()
    return "closed"


async def slow_uploads(url: str, count: int, size: int, sent: int, within_s: float) -> list[str]:
    """`count` POSTs declaring `size` bytes that send `sent` of them and stall."""
    parts = urlsplit(url)

    async def one() -> str:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = (
            f"POST /encode HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/x-npy\r\nContent-Length: {size}\r\n\r\n"
        )
        try:
            writer.write(head.encode() + bytes(sent))
            await asyncio.wait_for(writer.drain(), within_s)
        except (ConnectionError, TimeoutError):
            pass  # refused before it was all sent
        try:
            return await _answer(reader, within_s)
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def unfinished_heads(url: str, count: int, head_bytes: int, within_s: float) -> list[str]:
    """`count` connections each sending `head_bytes` of a request head, never its end."""
    parts = urlsplit(url)

    async def one() -> str:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = f"POST /encode HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Pad: ".encode()
        writer.write(head + b"a" * (head_bytes - len(head)))
        try:
            await writer.drain()
            return await _answer(reader, within_s)
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


def empty_lists(count: int) -> bytes:
    """A v2 infer body whose data is `count` empty lists: seconds of GIL to parse."""
    data = b",".join([b"[]"] * count)
    return b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[' + data + b"]}]}"
