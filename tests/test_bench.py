"""The benchmark harness (bench/): its parsing and tables, and the naive peer's
model. Nothing here times anything; `bash bench/run.sh` does that."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a folder of the repository, not an installed package

from app_support import require  # noqa: E402

from app.batcher import BatchStats  # noqa: E402
from app.metrics import Metrics  # noqa: E402
from bench import openloop, report  # noqa: E402
from bench.loadgen import Body, Load, mean_batch, parse, wrk  # noqa: E402
from bench.naive_server import encoder_from_onnx  # noqa: E402
from bench.report import BARE, BENTO, NAIVE, SERVICE, UNBATCHED, Cell  # noqa: E402

WRK_OUTPUT = """\
Running 6s test @ http://127.0.0.1:8101/encode
  1 threads and 32 connections
Requests/sec:   2000.00
BENCH {"requests": 12000, "duration_us": 6000000, "bytes": 1, "connect_errors": 0, \
"read_errors": 0, "write_errors": 0, "status_errors": 3, "timeouts": 1, "mean_us": 15000.5, \
"p50_us": 14000, "p95_us": 25000, "p99_us": 31000, "max_us": 52000}
"""


def _load(rps: float, p99_ms: float) -> Load:
    return Load(int(rps * 5), 5.0, 0, "", 1.0, 1.0, 2.0, p99_ms)


def test_parse_reads_the_bench_line() -> None:
    load = parse(WRK_OUTPUT)
    assert load.rps == 2000.0
    assert (load.p50_ms, load.p95_ms, load.p99_ms) == (14.0, 25.0, 31.0)
    assert load.errors == 4
    assert load.error_kinds == "status 3, timeouts 1"


def test_parse_refuses_output_without_the_bench_line() -> None:
    with pytest.raises(ValueError, match="no BENCH line"):
        parse("Requests/sec: 12\n")


def test_mean_batch_comes_from_the_service_histogram() -> None:
    metrics = Metrics()
    observe = metrics.batch_observer("mnist", "1", "encoder")
    observe(BatchStats(size=2, queue_wait_s=[0.001], run_s=0.001))
    before = metrics.render().decode()
    for size in (8, 4):
        observe(BatchStats(size=size, queue_wait_s=[0.001], run_s=0.001))
    metrics.batch_observer("mnist", "1", "decoder")(
        BatchStats(size=64, queue_wait_s=[], run_s=0.01)
    )
    after = metrics.render().decode()
    assert mean_batch(before, after, "encoder") == 6.0
    assert mean_batch(before, after, "decoder") == 64.0
    assert mean_batch(after, after, "encoder") is None


def test_targets_compare_within_the_run() -> None:
    cells = [
        Cell(SERVICE, "healthz", 32, 1, _load(9000, 20), None),  # vae-serve's own: no target
        Cell(BARE, "healthz", 32, 1, _load(3000, 20), None),
        Cell(SERVICE, "encode-npy", 32, 1, _load(2000, 30), 9.5),
        Cell(SERVICE, "encode-bulk-npz", 2, 256, _load(50, 50), 64.0),
        Cell(UNBATCHED, "encode-npy", 32, 1, _load(1000, 60), 1.0),
        Cell(NAIVE, "encode-json", 32, 1, _load(500, 90), None),
        Cell(BENTO, "encode-json", 32, 1, _load(1500, 20), None),
    ]
    ceiling = {("encode", 256): 20_000.0}
    found = {t.goal.split(",")[0]: t for t in report.targets(cells, ceiling, 2, peak_rss_mb=260)}
    assert len(found) == 7
    http = found["single-image /encode (.npy) vs a bare FastAPI + uvicorn GET /healthz"]
    assert http.met and http.ratio == pytest.approx(2 / 3)
    bulk = next(t for goal, t in found.items() if goal.startswith("bulk"))
    assert not bulk.met and bulk.ratio == pytest.approx(50 * 256 / 20_000)
    assert found["single-image /encode vs the naive server"].met
    bento = found["single-image /encode vs BentoML"]
    assert not bento.met, "1.33× and a higher p99 miss ≥ 1.5× with a lower p99"
    assert found["mean batch size"].met
    assert found["batching on vs off (VAE_MAX_BATCH_SIZE=1)"].ratio == 2.0
    rss = found["peak RSS of the vae-serve process over the run (both bundled models loaded)"]
    assert rss.measured == "260 MB" and rss.met is False
    table = "\n".join(report.targets_table(list(found.values())))
    assert table.count("**missed**") == 3


def test_rounds_decide_the_targets_by_their_medians() -> None:
    def cell(server: str, case: str, rps: float, p99: float, images: int = 1) -> Cell:
        return Cell(server, case, 32, images, _load(rps, p99), 9.0)

    def round_(
        healthz: float, encode: float, in_process: float, bulk: float, naive: float
    ) -> report.Round:
        return report.Round(
            healthz=cell(BARE, "healthz", healthz, 20),
            encode=cell(SERVICE, "encode-npy", encode, 30),
            in_process=in_process,
            bulk=cell(SERVICE, "encode-bulk-npz", bulk, 50, images=256),
            naive=cell(NAIVE, "encode-json", naive, 90),
            bento=cell(BENTO, "encode-json", 1000, 25),  # faster p99 than ours: missed
            unbatched=cell(UNBATCHED, "encode-npy", 1000, 60),
        )

    rounds = [
        round_(3000, 2000, 20_000, 60, 500),  # ratios 0.67, 0.77, 4.0
        round_(4000, 2000, 20_000, 50, 800),  # 0.50, 0.64, 2.5
        round_(3000, 1500, 10_000, 30, 600),  # 0.50, 0.77, 2.5
    ]
    # The table's single cells alone would say the opposite on the first three targets.
    cells = [
        cell(SERVICE, "healthz", 1000, 20),
        cell(SERVICE, "encode-npy", 2000, 30),
        cell(SERVICE, "encode-bulk-npz", 10, 50, images=256),
        cell(NAIVE, "encode-json", 100, 90),
    ]
    found = report.targets(cells, {("encode", 256): 20_000.0}, 2, rounds)
    http, bulk, naive, bento, batch, off, rss = found
    assert http.ratio == pytest.approx(0.5) and not http.met
    assert "ratio per round 0.67, 0.50, 0.50" in http.measured
    assert bulk.ratio == pytest.approx(60 * 256 / 20_000) and bulk.met
    assert naive.ratio == pytest.approx(2.5) and not naive.met
    assert "p99 30.0 vs 90.0 ms" in naive.measured
    assert bento.ratio == pytest.approx(2.0) and not bento.met, "its median p99 is lower"
    assert batch.ratio == 9.0 and batch.met
    assert off.ratio == pytest.approx(2.0) and off.met
    assert rss.met is None  # not measured
    table = report.rounds_table(rounds)
    assert len(table) == 2 + 3
    assert table[-1] == (
        "| 3 | 3,000 (20.0) | 1,500 (30.0) | 1,000 (60.0) | 600 (90.0) | 1,000 (25.0) "
        "| 10,000 | 7,680 |"
    )


def test_a_missing_peer_is_not_measured_rather_than_missed() -> None:
    cells = [Cell(SERVICE, "encode-npy", 32, 1, _load(2000, 30), 9.5)]
    found = report.targets(cells, {}, 2)
    assert [t.met for t in found] == [None, None, None, None, True, None, None]
    peers = report.peers_table(cells, [32])
    assert peers[-1] == "| 32 | 2,000 (30.0) | - | - | - | - | - | - | - |"


def test_the_naive_peer_computes_the_encoder_that_onnx_runtime_runs(version_dir: Path) -> None:
    model = encoder_from_onnx(version_dir / "encoder.onnx")
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    session = ort.InferenceSession(str(version_dir / "encoder.onnx"))
    mean, log_var = session.run(["mean", "log_var"], {"x": x})
    with torch.no_grad():
        torch_mean, torch_log_var = model(torch.from_numpy(x))
    np.testing.assert_allclose(torch_mean.numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(torch_log_var.numpy(), log_var, atol=1e-5)


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = body == b"\x93NUMPY-body" and self.headers["Content-Type"] == "application/x-npy"
        ok = ok and self.headers["Accept"] == "application/x-npz"
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/encode"
    finally:
        server.shutdown()
        server.server_close()


def test_the_wrk_script_sends_the_body_and_reports(echo_server: str, tmp_path: Path) -> None:
    """bench.lua sends the file's bytes with its content type and the Accept header asked
    for; the echo server answers 400 otherwise, which wrk would count as an error."""
    require(shutil.which("wrk") is not None, "wrk is not installed (bench/run.sh installs it)")
    body = tmp_path / "one.npy"
    body.write_bytes(b"\x93NUMPY-body")
    sent = Body(body, "application/x-npy", accept="application/x-npz")
    load = wrk(echo_server, sent, connections=1, seconds=1)
    assert load.requests > 0
    assert load.errors == 0, load.error_kinds


def test_run_sh_runs_the_harness() -> None:
    script = (ROOT / "bench" / "run.sh").read_text()
    assert "exec .venv/bin/python -m bench.run" in script
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--store" in done.stdout


def test_the_bare_server_answers_healthz_and_rss_is_read_from_proc() -> None:
    from fastapi.testclient import TestClient

    from bench.bare_server import create_app
    from bench.run import peak_rss_mb

    with TestClient(create_app()) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
    rss = peak_rss_mb(os.getpid())
    assert rss is not None and rss > 1


class _Answers(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the open-loop client expects

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        busy = self.path == "/busy"
        self.send_response(503 if busy else 200)
        if busy and "retry" in self.headers.get("Content-Type", ""):
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_open_loop_client_sends_on_schedule_and_sorts_the_answers() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        streams = [
            openloop.Stream("ok", openloop.Request("POST", "/ok", b"x", "text/plain"), 40),
            openloop.Stream("busy", openloop.Request("POST", "/busy", b"x", "retry"), 20),
            openloop.Stream("bare", openloop.Request("POST", "/busy", b"x", "none"), 20),
        ]
        port = server.server_address[1]
        got = asyncio.run(openloop.run("127.0.0.1", port, streams, 0.5, max_connections=4))
    finally:
        server.shutdown()
        server.server_close()
    ok, busy, bare = got["ok"], got["busy"], got["bare"]
    assert (ok.sent, busy.sent, bare.sent) == (20, 10, 10)
    assert ok.statuses == {200: 20} and ok.failed == 0 and ok.percentile_ms(99) is not None
    assert busy.statuses == {503: 10} and busy.failed == 0  # 503 with Retry-After: not a failure
    assert bare.busy_without_retry_after == 10 and bare.failed == 10


def test_load_sh_runs_the_scenarios() -> None:
    script = (ROOT / "bench" / "load.sh").read_text()
    assert "exec .venv/bin/python -m bench.load" in script
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0
    assert all(name in done.stdout for name in ("interference", "overload", "soak"))


def test_the_soak_publishes_versions_as_the_trainer_does_and_keeps_two(
    version_dir: Path, tmp_path: Path
) -> None:
    from bench.load import _publish_next

    store = tmp_path / "store"
    shutil.copytree(version_dir, store / "mnist" / "1")
    assert [_publish_next(store, "mnist") for _ in range(3)] == [2, 3, 4]
    assert sorted(p.name for p in (store / "mnist").iterdir()) == ["3", "4"]
    assert json.loads((store / "mnist" / "4" / "manifest.json").read_text())["version"] == 4
