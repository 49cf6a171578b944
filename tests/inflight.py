"""Requests held in flight, for the drain tests (a process and a container).

A held request is a real POST whose headers and first half of body reach the
server; the server has started it (it counts in `vae_http_requests_in_flight`)
and waits for the rest, which the test sends when it chooses. So "slow requests"
need no sleeps on either side, and the test decides when they may finish.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from app_support import STARTUP_S, metric


@dataclass
class HeldRequest:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    rest: bytes

    @classmethod
    async def start(cls, url: str, path: str, body: bytes, content_type: str) -> HeldRequest:
        parts = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        half = len(body) // 2
        writer.write(head.encode() + body[:half])
        await writer.drain()
        return cls(reader, writer, body[half:])

    async def finish(self) -> tuple[int, Any]:
        """Send the rest of the body; the answer's status and JSON body."""
        self.writer.write(self.rest)
        await self.writer.drain()
        raw = await self.reader.read()  # to the end: the request said Connection: close
        self.writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), raw[:200]
        return int(head.split()[1]), json.loads(body)


async def wait_in_flight(url: str, count: int) -> None:
    """Until the server counts `count` requests in flight, besides the /metrics asking."""
    deadline = time.monotonic() + STARTUP_S
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            text = (await http.get("/metrics")).text
            if metric(text, "vae_http_requests_in_flight") == count + 1:
                return
            await asyncio.sleep(0.05)
    pytest.fail(f"the server never had {count} requests in flight")


async def wait_refused(url: str) -> None:
    """Until the server's socket refuses connections: it has stopped accepting."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except ConnectionRefusedError:
            return
        writer.close()
        await asyncio.sleep(0.05)
    pytest.fail(f"{url} still accepts connections after {STARTUP_S} s")
