"""Triton's perf_analyzer against vae-serve and PyTriton serving the same encoder.onnx,
side by side in one run: over HTTP (binary tensors) and gRPC, a concurrency sweep at
batch 1 and a batch size sweep, with perf_analyzer's default (random UINT8) data.

    .venv/bin/python -m bench.triton [--out bench/triton-results.md]

Needs bench/.venv-pytriton (bench/run.sh makes it); perf_analyzer is set up by
bench/perf_analyzer.sh. Both servers run at once, idle but for the one being measured,
and every cell measures vae-serve and PyTriton back to back, so a ratio is taken under
the same load. The server-side split (queue, compute) is what each server's statistics
extension reported to perf_analyzer. A cell where perf_analyzer stopped at an error
(vae-serve sheds load with 503 when its event loop falls behind) says so.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.run import ROOT, latest_version, make_servers, running

PERF_ANALYZER = ROOT / "bench" / "perf_analyzer.sh"
SERVERS = ("vae-serve", "pytriton")
CONCURRENCY = (1, 4, 16, 64)  # at batch 1
BATCHES = (1, 8, 64)  # at concurrency 4
GOAL_CONCURRENCY, GOAL_RATIO = 16, 1.5


@dataclass(frozen=True)
class Cell:
    server: str
    protocol: str
    concurrency: int
    batch: int
    throughput: float = 0.0  # inferences (images) per second
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    # Server side, per request, from its statistics: queue, the model's compute
    # (compute_infer), and the rest of compute (compute_input and compute_output).
    queue_ms: float = 0.0
    infer_ms: float = 0.0
    other_ms: float = 0.0
    error: str = ""


def measure(
    server: str, url: str, protocol: str, concurrency: int, batch: int, window_ms: int
) -> Cell:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.csv"
        done = subprocess.run(
            [
                "bash", str(PERF_ANALYZER), "-m", "mnist-encoder", "-u", url, "-i", protocol,
                "-b", str(batch), "--concurrency-range", str(concurrency),
                "--measurement-interval", str(window_ms),
                # The machine is shared and noisy: three windows, not a stability hunt.
                "--stability-percentage", "1000", "--max-trials", "3", "-f", str(report),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        if done.returncode != 0 or not report.exists():
            said = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
            errors = [line for line in said if "error" in line.lower()]
            why = (errors or [line for line in said if line] or ["no report"])[-1]
            return Cell(server, protocol, concurrency, batch, error=why)
        (row,) = list(csv.DictReader(report.open()))
    us = 1e-3
    return Cell(
        server,
        protocol,
        concurrency,
        batch,
        throughput=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) * us,
        p99_ms=float(row["p99 latency"]) * us,
        queue_ms=float(row["Server Queue"]) * us,
        infer_ms=float(row["Server Compute Infer"]) * us,
        other_ms=(float(row["Server Compute Input"]) + float(row["Server Compute Output"])) * us,
    )


def _cell(cell: Cell) -> list[str]:
    if cell.error:
        return [f"stopped: {cell.error}", "", "", ""]
    return [
        f"{cell.throughput:.0f}",
        f"{cell.p50_ms:.1f}",
        f"{cell.p99_ms:.1f}",
        f"{cell.queue_ms:.1f} / {cell.infer_ms:.1f} / {cell.other_ms:.1f}",
    ]


def table(cells: list[Cell]) -> list[str]:
    header = ["protocol", "concurrency", "batch"]
    for server in SERVERS:
        header += [f"{server} infer/s", "p50 ms", "p99 ms", "queue / infer / other ms"]
    header += ["throughput ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = sorted({(c.protocol, c.concurrency, c.batch) for c in cells}, key=_order)
    for key in keys:
        pair = {c.server: c for c in cells if (c.protocol, c.concurrency, c.batch) == key}
        row = [key[0], str(key[1]), str(key[2])]
        for server in SERVERS:
            row += _cell(pair[server])
        ours, theirs = pair["vae-serve"], pair["pytriton"]
        ok = not ours.error and not theirs.error and theirs.throughput
        row.append(f"{ours.throughput / theirs.throughput:.2f}×" if ok else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _order(key: tuple[str, int, int]) -> tuple[int, int, int]:
    return (0 if key[0] == "http" else 1, key[2], key[1])


def goals(cells: list[Cell]) -> list[str]:
    lines = []
    for protocol in ("http", "grpc"):
        pair = {
            c.server: c
            for c in cells
            if (c.protocol, c.concurrency, c.batch) == (protocol, GOAL_CONCURRENCY, 1)
        }
        ours, theirs = pair["vae-serve"], pair["pytriton"]
        if ours.error or theirs.error or not theirs.throughput:
            lines.append(f"- {protocol}: not measured ({ours.error or theirs.error})")
            continue
        ratio = ours.throughput / theirs.throughput
        met = ratio >= GOAL_RATIO and ours.p99_ms < theirs.p99_ms
        lines.append(
            f"- {protocol}, concurrency {GOAL_CONCURRENCY}: {ratio:.2f}× PyTriton's throughput "
            f"(goal ≥ {GOAL_RATIO}×), p99 {ours.p99_ms:.1f} ms vs {theirs.p99_ms:.1f} ms: "
            f"{'met' if met else 'not met'}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer's window")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "triton-results.md")
    args = parser.parse_args(argv)
    subprocess.run(["bash", str(PERF_ANALYZER)], check=True)  # set up, once
    version_dir = latest_version(args.store, args.model)
    servers = make_servers(args.store.resolve(), args.model, version_dir.resolve())
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    cells: list[Cell] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    sweep = [(c, 1) for c in CONCURRENCY] + [(4, b) for b in BATCHES if b != 1]
    with running(servers["vae-serve"], logs), running(servers["pytriton"], logs):
        for protocol in ("http", "grpc"):
            for concurrency, batch in sweep:
                for key in SERVERS:
                    server = servers[key]
                    port = server.port if protocol == "http" else server.grpc_port
                    cell = measure(
                        key, f"127.0.0.1:{port}", protocol, concurrency, batch, args.window_ms
                    )
                    print(cell, flush=True)
                    cells.append(cell)
    load_after = os.getloadavg()
    text = [
        f"perf_analyzer 2.41.0, mnist-encoder ({version_dir}), {started:%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after.",
        "",
        *table(cells),
        "",
        *goals(cells),
        "",
    ]
    args.out.write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
