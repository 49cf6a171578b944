"""A real Prometheus (Debian's `prometheus` binary) scraping vae-serve, for tests and pictures.

Started with a temporary data folder, on 127.0.0.1 only, with short scrape and
evaluation intervals and deploy/monitoring/rules.yml loaded; stopped (and its data
dropped) when the `with` ends. tests/test_monitoring.py checks the rules against it;
bench/dashboard.py draws the dashboard's series from it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "rules.yml"
BINARY = "prometheus"
STARTUP_S = 60  # a bound for a loaded 2-core machine, not a performance claim


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Prometheus:
    url: str
    log: Path

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        params = {"query": expr, **({"time": str(at)} if at is not None else {})}
        answer = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        if answer["status"] != "success":
            raise ValueError(f"{expr}: {answer.get('error')}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        answer = httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=30).json()
        if answer["status"] != "success":
            raise ValueError(f"{expr}: {answer.get('error')}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that gives one series, None when it gives none."""
        found = self.query(expr)
        if not found:
            return None
        if len(found) > 1:
            raise ValueError(f"{expr}: {len(found)} series")
        return float(found[0]["value"][1])

    def wait_for(
        self, expr: str, want: float, timeout_s: float = 30, tolerance: float = 0.0
    ) -> float:
        """Poll `expr` until it gives `want` (within `tolerance`); its last value."""
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and abs(last - want) <= tolerance:
                return last
            time.sleep(0.25)
        raise TimeoutError(f"{expr} is {last}, not {want}, after {timeout_s} s")


def available() -> bool:
    return shutil.which(BINARY) is not None


@contextlib.contextmanager
def scraping(target: str, workdir: Path, interval_s: float = 1.0) -> Iterator[Prometheus]:
    """Prometheus scraping http://`target`/metrics as job vae-serve, with the rules."""
    port = _free_port()
    interval = f"{int(interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "vae-serve", "static_configs": [{"targets": [target]}]}],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus stopped:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {STARTUP_S} s")
            time.sleep(0.2)
        yield Prometheus(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
