"""The attacks of issue 22, as functions that tests/test_attack.py (short settings, a few
seconds each) and `python -m bench.attacks` (the defaults, full size) run against a
real server on 127.0.0.1. Each is bounded in connections and time and stops by itself; each
returns what it saw, for the caller to judge.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
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


# The prober: its own process, so that the attacking client's work (building a message
# of 16 M values holds its GIL for seconds) never delays a probe, and only the server's
# delays count. It says "ready" after its first answer and prints what it saw when its
# stdin closes.
_PROBER = """
import json, sys, threading, time
import httpx
url, every = sys.argv[1], float(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies, failures, i = [], [], 0
with httpx.Client(base_url=url, timeout=10) as client:
    while not stop.is_set():
        path = ("/healthz", "/readyz")[i % 2]
        began = time.perf_counter()
        try:
            status = client.get(path).status_code
            if status != 200:
                failures.append(f"{path}: {status}")
        except httpx.HTTPError as exc:
            failures.append(f"{path}: {exc!r}")
        latencies.append(time.perf_counter() - began)
        if i == 0:
            print("ready", flush=True)
        i += 1
        stop.wait(every)
print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)
"""


@contextmanager
def probing(url: str, every_s: float = 0.05) -> Iterator[Probes]:
    """/healthz and /readyz asked in turn every `every_s`, from another process, for the
    body of the `with`; the Probes are filled in when it ends."""
    probes = Probes(url, every_s)
    prober = subprocess.Popen(
        [sys.executable, "-c", _PROBER, url, str(every_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert prober.stdout is not None and prober.stdin is not None
    try:
        assert prober.stdout.readline().strip() == b"ready", "the prober did not start"
        yield probes
    finally:
        out, _ = prober.communicate(timeout=60)
        if out.strip():
            seen = orjson.loads(out.splitlines()[-1])
            probes.latencies, probes.failures = seen["latencies"], seen["failures"]


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


# -- the attacks at the defaults: python -m bench.attacks ---------------------------------

MiB = 2**20


@dataclass
class Row:
    case: str
    outcomes: dict[str, int]
    peak_mib: float
    probes: Probes
    client_cpu_s: float
    seconds: float


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak(pid: int) -> None:
    """Start the kernel's high-water mark of the process's RSS afresh (proc(5) clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as out:
        out.write("5")


def _grpc_codes(target: str, request: Any, count: int) -> list[str]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    def call(_: int) -> str:
        with grpc.insecure_channel(target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ModelInfer(request, timeout=120)
            except grpc.RpcError as error:
                return str(error.code().name)  # type: ignore[attr-defined]
            return "OK"

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


def _uint8_request(shape: list[int], typed: bool) -> Any:
    import numpy as np
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="mnist-encoder")
    request.parameters["resize"].bool_param = True
    request.inputs.add(name="x", datatype="UINT8", shape=shape)
    zeros = np.zeros(math.prod(shape), np.uint8)
    if typed:
        request.inputs[0].contents.uint_contents.extend(zeros.astype(np.uint32).tolist())
    else:
        request.raw_input_contents.append(zeros.tobytes())
    return request


def _posts(url: str, jobs: list[tuple[str, bytes, dict[str, str]]]) -> list[str]:
    def post(job: tuple[str, bytes, dict[str, str]]) -> str:
        path, body, headers = job
        with httpx.Client(base_url=url, timeout=120) as client:
            return str(client.post(path, content=body, headers=headers).status_code)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(post, jobs))


def _cases(url: str, grpc_target: str) -> list[tuple[str, Callable[[], list[str]]]]:
    json_type = {"content-type": "application/json"}
    huge = [2**62, 2**62, 0]
    shape_json = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "UINT8", "shape": huge, "data": []}]}
    )
    lists = b",".join([b"[]"] * 5_000_000)
    v2_lists = empty_lists(5_000_000)
    native_lists = b'{"pixels":[' + lists + b"]}"
    # Built before the attacks: 16 M values take the client seconds.
    typed = _uint8_request([1, 1, 4000, 4000], typed=True)
    # As many calls as gRPC admits at once (VAE_GRPC_MAX_CONCURRENCY), each as large as
    # a message may be (VAE_GRPC_MAX_MESSAGE_BYTES): what the core holds outside the budget.
    raw = _uint8_request([1, 1, 2000, 2000], typed=False)
    return [
        ("1. pixel bombs: 6 × 4096² RGBA PNG, resize", lambda: [
            str(s) for s in pixel_bombs(url, png(4096, 4096), 6)
        ]),
        ("2. gRPC typed: 4 × 16 M uint_contents, resize", lambda: _grpc_codes(
            grpc_target, typed, 4
        )),
        ("2b. gRPC raw: 64 × 4 MB UINT8, resize", lambda: _grpc_codes(grpc_target, raw, 64)),
        ("4. slow uploads: 70 × 14 of 15 MiB", lambda: asyncio.run(
            slow_uploads(url, count=70, size=15 * MiB, sent=14 * MiB, within_s=60)
        )),
        ("5. unfinished heads: 1000 × 60 KB", lambda: asyncio.run(
            unfinished_heads(url, count=1000, head_bytes=60_000, within_s=45)
        )),
        ("6. JSON: 15 MB of empty lists, v2 and /encode", lambda: _posts(url, [
            ("/v2/models/mnist-encoder/infer", v2_lists, json_type),
            ("/encode", native_lists, json_type),
        ])),
        ("7. declared shape 2^62 × 2^62 × 0", lambda: _posts(url, [
            ("/v2/models/mnist-encoder/infer", shape_json, json_type),
        ])),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the attacks of issue 22 against `vae-serve` at its defaults, one at a time,
    and print, per attack: what the clients got, the server's peak RSS, the probes'
    latencies and the CPU the attacking client itself used."""
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=main.__doc__)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--store", type=Path, default=root / "model_store")
    args = parser.parse_args(argv)
    port, grpc_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")} | {
        "VAE_MODEL_STORE": str(args.store),
        "VAE_PORT": str(port),
        "VAE_GRPC_PORT": str(grpc_port),
        "VAE_DEVICE": "cpu",
        "VAE_LOG_LEVEL": "warning",
    }
    url = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).parent / "vae-serve"
    process = subprocess.Popen([script], env=env, start_new_session=True)
    try:
        _wait_ready(url)
        digit = png(28, 28, "L")
        httpx.post(f"{url}/encode", content=digit, headers={"content-type": "image/png"})
        idle, _ = memory(process.pid)
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {os.getloadavg()}")
        print(f"idle RSS {idle / MiB:.0f} MiB (defaults, bundled store)\n")
        print("| attack | answers | peak RSS MiB | probe p99 / max ms | client CPU s | s |")
        print("|---|---|---|---|---|---|")
        for case, run in _cases(url, f"127.0.0.1:{grpc_port}"):
            _reset_peak(process.pid)
            cpu, began = _cpu_s(), time.monotonic()
            with probing(url) as probes:
                outcomes = run()
            took = time.monotonic() - began
            _, peak = memory(process.pid)
            answers = ", ".join(f"{n}× {k}" for k, n in sorted(Counter(outcomes).items()))
            if probes.failures:
                answers += f"; PROBES FAILED {len(probes.failures)}×"
            print(
                f"| {case} | {answers} | {peak / MiB:.0f} | {probes.p99_s() * 1000:.0f} / "
                f"{probes.worst_s * 1000:.0f} | {_cpu_s() - cpu:.1f} | {took:.1f} |",
                flush=True,
            )
        time.sleep(10)
        rss, _ = memory(process.pid)
        print(f"\nRSS 10 s after the last: {rss / MiB:.0f} MiB (idle {idle / MiB:.0f} MiB)")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after 120 s")


if __name__ == "__main__":
    sys.exit(main())
