"""Load from wrk, and what the service's /metrics says about its batches.

One cell is one wrk run: a URL, one request body sent over and over, a number
of connections, a few seconds. wrk runs one thread (on 2 cores it shares them
with whichever server it loads, the same way for every peer), and
bench/wrk/bench.lua prints its summary as one "BENCH {json}" line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("wrk") / "bench.lua"


@dataclass(frozen=True)
class Body:
    """A request body on disk, and how to send it."""

    path: Path | None  # None: a GET without a body
    content_type: str = ""
    images: int = 1  # images (or samples) one request carries
    accept: str = ""  # the Accept header, when the answer's format is asked for
    headers: tuple[tuple[str, str], ...] = ()  # any others

    @property
    def method(self) -> str:
        return "GET" if self.path is None else "POST"


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    requests: int
    seconds: float
    errors: int  # connect, read, write, timeouts and non-2xx answers
    error_kinds: str  # e.g. "status 3, timeouts 1"; empty without errors
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_ERROR_KINDS = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")


def parse(output: str) -> Load:
    """wrk's output -> Load, from the BENCH line that bench.lua's done() prints."""
    match = re.search(r"^BENCH (\{.*\})$", output, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk printed no BENCH line:\n{output}")
    raw = json.loads(match.group(1))
    kinds = {key: raw[key] for key in _ERROR_KINDS if raw[key]}
    return Load(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=sum(kinds.values()),
        error_kinds=", ".join(f"{key.replace('_errors', '')} {n}" for key, n in kinds.items()),
        mean_ms=raw["mean_us"] / 1e3,
        p50_ms=raw["p50_us"] / 1e3,
        p95_ms=raw["p95_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
    )


def wrk(url: str, body: Body, *, connections: int, seconds: int) -> Load:
    """Run wrk against `url` for `seconds` with `connections` open connections."""
    env = {
        "BENCH_METHOD": body.method,
        "BENCH_BODY": str(body.path or ""),
        "BENCH_CONTENT_TYPE": body.content_type,
        "BENCH_ACCEPT": body.accept,
        "BENCH_HEADERS": "\n".join(f"{name}: {value}" for name, value in body.headers),
    }
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout)


def grpc_load(target: str, body: Body, *, connections: int, seconds: int) -> Load:
    """bench/grpcload.py against a gRPC `target` (host:port): what wrk is for HTTP."""
    command = [
        sys.executable,
        "-m",
        "bench.grpcload",
        target,
        str(body.path),
        f"--concurrency={connections}",
        f"--seconds={seconds}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"grpcload failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout)


_SERIES = re.compile(r"^vae_batch_size_(sum|count)\{([^}]*)\} (\S+)$")


def batch_totals(metrics_text: str, graph: str) -> tuple[float, float]:
    """(rows, calls) so far for one graph, from the vae_batch_size histogram."""
    totals = {"sum": 0.0, "count": 0.0}
    for line in metrics_text.splitlines():
        match = _SERIES.match(line)
        if match and f'graph="{graph}"' in match.group(2).split(","):
            totals[match.group(1)] += float(match.group(3))
    return totals["sum"], totals["count"]


def scrape(base_url: str) -> str:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    return text


def mean_batch(before: str, after: str, graph: str) -> float | None:
    """Mean rows per ONNX Runtime call between two scrapes of /metrics."""
    rows0, calls0 = batch_totals(before, graph)
    rows1, calls1 = batch_totals(after, graph)
    calls = calls1 - calls0
    return (rows1 - rows0) / calls if calls else None
