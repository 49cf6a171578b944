"""Where a vae-serve request's time goes: py-spy samples the server under wrk load.

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile --case encode-npy --connections 32

It starts vae-serve as bench/run.py does, loads one case with wrk, samples
every thread with py-spy (non-blocking, so the server is not paused), and
prints a summary: how busy each thread was, what the event-loop thread spent
its time on (by package, by frame, and in the request path's own steps).
Extra VAE_* settings go after --env (--env VAE_MAX_DELAY_MS=0).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.loadgen import Body, Load, scrape, wrk
from bench.run import (
    BULK,
    MNIST,
    ROOT,
    Server,
    digits,
    latest_version,
    running,
    service_env,
    write_bodies,
)

CASES = {  # case -> (path, body file); as bench/run.py sends them
    "healthz": ("/healthz", None),
    "encode-npy": ("/encode", "one.npy"),
    "encode-png": ("/encode", "one.multipart"),
    "elbo-npy": ("/elbo?score=elbo", "one.npy"),
    "encode-bulk": ("/encode", "bulk.npy"),
    "encode-bulk-npz": ("/encode", "bulk.npy>npz"),
    "v2-binary": ("/v2/models/mnist-encoder/infer", "v2.bin"),  # the v2 protocol, 1 image
}
# Steps of the request path, as frames whose inclusive time the summary reports.
STEPS = {
    "sync dependencies sent to the thread pool": r"^run_in_threadpool ",
    "read_images (body -> x)": r"^read_images ",
    ".npy header parsed by ast.literal_eval": r"^literal_eval ",
    "asyncio.to_thread (hand-offs to worker threads)": r"^to_thread \(asyncio",
    "batcher submit and wake-ups": r"^Batcher\.",
    "response JSON (orjson)": r"^NumpyJSON\.render ",
    "logging a traceback (clients that left)": r"\(traceback\.py:",
}


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (all threads) or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarise(raw: str, seconds: float, rate: int) -> list[str]:
    """py-spy's raw (collapsed) stacks -> a markdown summary."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    steps: collections.Counter[str] = collections.Counter()
    onnx = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        n = int(count)
        name = re.sub(r"^thread \(\d+\): ", "", thread)
        threads[name] += n
        if any(f.startswith(("Session.run ", "Graph.run ")) for f in frames):
            onnx += n
        if name != "MainThread" or not frames:
            continue
        own[frames[-1]] += n
        where = re.search(r"\(([^()]*):\d+\)$", frames[-1])
        packages[where.group(1).split("/")[0] if where else frames[-1]] += n
        for step, pattern in STEPS.items():
            if any(re.search(pattern, f) for f in frames):
                steps[step] += n
    possible = seconds * rate
    main = threads["MainThread"] or 1
    lines = ["| thread | busy |", "| --- | --- |"]
    lines += [f"| {t} | {100 * n / possible:.0f}% |" for t, n in threads.most_common(8)]
    lines += ["", f"ONNX Runtime calls (any thread): {100 * onnx / possible:.0f}% of one core", ""]
    lines += ["| event loop: step of the request path | share of the loop's samples |"]
    lines += ["| --- | --- |"]
    lines += [f"| {s} | {100 * steps[s] / main:.1f}% |" for s in STEPS]
    lines += ["", "| event loop: own time by package | share |", "| --- | --- |"]
    lines += [f"| {p} | {100 * n / main:.1f}% |" for p, n in packages.most_common(12)]
    lines += ["", "| event loop: own time by frame | share |", "| --- | --- |"]
    lines += [f"| `{f}` | {100 * n / main:.1f}% |" for f, n in own.most_common(15)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--case", choices=sorted(CASES), default="encode-npy")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--env", nargs="*", default=[], help="extra VAE_*=value settings")
    parser.add_argument("--out", type=Path, help="also write the raw stacks here")
    args = parser.parse_args(argv)
    store = args.store.resolve()
    latest_version(store, args.model)  # fails early without a model
    env = service_env(store, args.model)
    env.update(item.split("=", 1) for item in args.env)
    bin_dir = Path(sys.executable).parent
    server = Server("vae-serve", [str(bin_dir / "vae-serve"), "--port", "8109"], 8109, env)
    path, body_name = CASES[args.case]
    logs = ROOT / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vae-profile-") as tmp:
        bodies = write_bodies(Path(tmp), digits(MNIST, BULK))
        body = Body(None) if body_name is None else bodies[body_name]
        raw_path = args.out or Path(tmp) / "stacks.raw"
        with running(server, logs) as process:
            url, pid = server.url + path, process.pid
            wrk(url, body, connections=args.connections, seconds=1)  # warm-up
            # First without py-spy: throughput and CPU per request, unperturbed.
            loop0, all0 = cpu_seconds(pid, pid), cpu_seconds(pid)
            clean = wrk(url, body, connections=args.connections, seconds=args.seconds)
            loop_us = 1e6 * (cpu_seconds(pid, pid) - loop0) / clean.requests
            all_us = 1e6 * (cpu_seconds(pid) - all0) / clean.requests
            drift = _drift_samples(scrape(server.url))  # VAE_DRIFT_SAMPLE_RATE's work, if on
            sampled: list[Load] = []
            load = threading.Thread(
                target=lambda: sampled.append(
                    wrk(url, body, connections=args.connections, seconds=args.seconds + 2)
                )
            )
            load.start()
            subprocess.run(
                [str(bin_dir / "py-spy"), "record", "--pid", str(pid), "--duration",
                 str(args.seconds), "--rate", str(args.rate), "--nonblocking", "--threads",
                 "--format", "raw", "--output", str(raw_path)],
                check=True, capture_output=True, timeout=args.seconds + 60,
            )  # fmt: skip
            load.join()
        raw = raw_path.read_text()
    title = f"## {args.case}, {args.connections} connections, {' '.join(args.env) or 'defaults'}"
    print(
        title,
        "",
        f"Without py-spy: {clean.rps:,.0f} req/s, p99 {clean.p99_ms:.1f} ms; CPU per request: "
        f"{loop_us:,.0f} µs on the event-loop thread, {all_us:,.0f} µs in the whole process.",
        *([f"Drift samples (images) so far: {drift}."] if drift else []),
        f"Under py-spy: {sampled[0].rps:,.0f} req/s.",
        "",
        *summarise(raw, args.seconds, args.rate),
        sep="\n",
    )
    return 0


def _drift_samples(metrics: str) -> str:
    """vae_drift_samples_total by outcome, as "scored 120, busy 3400"; empty when none."""
    found = re.findall(r'^vae_drift_samples_total\{outcome="(\w+)"\} (\S+)$', metrics, re.M)
    return ", ".join(f"{outcome} {float(n):,.0f}" for outcome, n in found if float(n))


if __name__ == "__main__":
    sys.exit(main())
