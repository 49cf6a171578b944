"""How vae-serve behaves when many clients share it: interference, overload, soak.

    bash bench/load.sh interference   # light /encode p99 alone, then beside score=iwae
    bash bench/load.sh overload       # about 2x capacity for 60 s
    bash bench/load.sh soak           # 80 % of capacity for 10 min, a new version each minute

Each scenario starts its own vae-serve on 127.0.0.1 (a free port, a private copy
of the store), measures its capacity for one-image /encode with wrk (closed
loop, 32 connections), then offers open-loop traffic (bench/openloop.py) at
fractions of it, samples the server's resident memory every second, and reads
its log for tracebacks. It stops by itself; it prints a markdown report and
writes it to bench/load-<scenario>.md, each figure against its goal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import openloop
from bench.loadgen import Body, wrk
from bench.openloop import Outcome, Request, Stream
from bench.run import MNIST, ROOT, Server, _npy, digits, latest_version, running, service_env

NPY = "application/x-npy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Memory:
    """The server's resident memory (VmRSS), sampled every second in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now_mb(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6
        return float("nan")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._started, self.now_mb()))
            self._stop.wait(1.0)

    def after(self, seconds: float) -> list[float]:
        return [mb for t, mb in self.samples if t >= seconds]


@dataclass
class Report:
    title: str
    lines: list[str] = field(default_factory=list)
    goals: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def goal(self, what: str, measured: str, met: bool | None) -> None:
        self.goals.append((what, measured, met))

    def text(self) -> str:
        status = {True: "met", False: "**missed**", None: "not measured"}
        table = ["| goal | measured | status |", "| --- | --- | --- |"]
        table += [f"| {what} | {measured} | {status[met]} |" for what, measured, met in self.goals]
        return "\n".join([f"# {self.title}", "", *table, "", *self.lines, ""])


@dataclass
class Service:
    server: Server
    pid: int
    log: Path
    store: Path

    @property
    def url(self) -> str:
        return self.server.url

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback")

    def alive(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/healthz") as r:
            return bool(r.status == 200)
        return False


@contextlib.contextmanager
def service(store: Path, model: str, logs: Path, **settings: str) -> Iterator[Service]:
    """vae-serve on a free port over a private copy of `store`, ready; stopped after."""
    with tempfile.TemporaryDirectory(prefix="vae-load-") as tmp:
        private = Path(tmp) / "model_store"
        shutil.copytree(store, private)
        port = free_port()
        env = {**service_env(private, model), **settings}
        command = [str(Path(sys.executable).parent / "vae-serve"), "--port", str(port)]
        server = Server("vae-serve-load", command, port, env)
        with running(server, logs) as process:
            yield Service(server, process.pid, server.log(logs), private)


def capacity(url: str, body: Body, seconds: int, connections: tuple[int, ...] = (32, 128)) -> float:
    """2xx answers/s that closed loops of so many connections get from `url`, the best
    of them (after 1 s of warm-up each): batches grow with concurrency."""
    best = 0.0
    for n in connections:
        wrk(url, body, connections=n, seconds=1)
        load = wrk(url, body, connections=n, seconds=seconds)
        best = max(best, (load.requests - load.errors) / load.seconds)
    return best


def one_image() -> Request:
    return Request("POST", "/encode", _npy(digits(MNIST, 1)), NPY)


def _body_file(folder: Path, name: str, data: bytes) -> Body:
    (folder / name).write_bytes(data)
    return Body(folder / name, NPY)


def _outcome_line(name: str, outcome: Outcome) -> str:
    return f"- {name}: {outcome.summary()}"


# -- the scenarios --------------------------------------------------------------------


def interference(args: argparse.Namespace, logs: Path) -> Report:
    """One-image /encode p99 alone, then beside a steady stream of score=iwae requests
    on 64 images (N·(1 + k) = 4,160 rows each at k = 64), at the same /encode rate."""
    report = Report("Light requests beside heavy ones (bench/load.py interference)")
    images = digits(MNIST, 64)
    encode = Request("POST", "/encode", _npy(images[:1]), NPY)
    iwae = Request("POST", "/elbo?score=iwae", _npy(images), NPY)
    with service(args.store, args.model, logs) as served, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        light = capacity(served.url + "/encode", _body_file(folder, "one", encode.body), 5)
        heavy = capacity(
            served.url + "/elbo?score=iwae", _body_file(folder, "iwae", iwae.body), 5, (2,)
        )
        encode_rate, iwae_rate = args.encode_share * light, args.iwae_share * heavy
        host, port = "127.0.0.1", served.server.port
        alone, beside, both = Outcome(), Outcome(), Outcome()
        client_cores: list[float] = []
        for _ in range(args.rounds):  # alternated, so both phases see the same machine
            encode_only = [Stream("encode", encode, encode_rate)]
            got, cores = openloop.drive(host, port, encode_only, args.seconds)
            _merge(alone, got["encode"])
            streams = [Stream("encode", encode, encode_rate), Stream("iwae", iwae, iwae_rate)]
            got, cores_beside = openloop.drive(host, port, streams, args.seconds)
            _merge(beside, got["encode"])
            _merge(both, got["iwae"])
            client_cores += [cores, cores_beside]
        tracebacks = served.tracebacks()
    p99_alone, p99_beside = alone.percentile_ms(99), beside.percentile_ms(99)
    ratio = None if not p99_alone or p99_beside is None else p99_beside / p99_alone
    report.lines += [
        f"Capacity (wrk, closed loop): one-image /encode {light:,.0f} req/s (best of 32 and "
        "128 connections); "
        f"/elbo?score=iwae on 64 images {heavy:,.1f} req/s at 2 connections.",
        f"Offered (open loop, {args.rounds} x {args.seconds} s per phase): /encode "
        f"{encode_rate:,.0f} req/s ({args.encode_share:.0%} of its capacity), score=iwae "
        f"{iwae_rate:,.1f} req/s ({args.iwae_share:.0%} of its capacity) in the second phase.",
        "",
        _outcome_line("/encode alone", alone),
        _outcome_line("/encode beside score=iwae", beside),
        _outcome_line("score=iwae", both),
        f"- tracebacks in the server log: {tracebacks}",
        _client_line(max(client_cores)),
    ]
    report.goal(
        "one-image /encode p99 beside score=iwae ≤ 2 × its p99 alone",
        "-" if ratio is None else f"{p99_beside:.1f} vs {p99_alone:.1f} ms: {ratio:.2f} ×",
        None if ratio is None else ratio <= 2,
    )
    non_2xx = sum(o.sent - o.ok for o in (alone, beside, both))
    report.goal("no answer but 2xx below capacity", f"{non_2xx} non-2xx", non_2xx == 0)
    report.goal("no traceback logged", str(tracebacks), tracebacks == 0)
    return report


def overload(args: argparse.Namespace, logs: Path) -> Report:
    """One-image /encode offered at `factor` x capacity for `seconds`."""
    report = Report("Overload (bench/load.py overload)")
    request = one_image()
    with service(args.store, args.model, logs) as served, tempfile.TemporaryDirectory() as tmp:
        light = capacity(served.url + "/encode", _body_file(Path(tmp), "one", request.body), 5)
        rate = args.factor * light
        with Memory(served.pid) as memory:
            before = memory.now_mb()
            outcomes, client = openloop.drive(
                "127.0.0.1",
                served.server.port,
                [Stream("encode", request, rate)],
                args.seconds,
                max_connections=args.connections,
            )
            got = outcomes["encode"]
            after = memory.now_mb()
        peak = max((mb for _, mb in memory.samples), default=after)
        alive, tracebacks = served.alive(), served.tracebacks()
    growth = (after - before) / before
    admitted_p99 = got.percentile_ms(99, server=True)
    report.lines += [
        f"Capacity (wrk, closed loop, best of 32 and 128 connections): {light:,.0f} req/s. "
        "Offered: "
        f"{rate:,.0f} req/s ({args.factor:g} ×) for {args.seconds} s, open loop, up to "
        f"{args.connections} connections.",
        "",
        _outcome_line("/encode", got),
        f"- resident memory: {before:.0f} MB before, {peak:.0f} MB at the peak, "
        f"{after:.0f} MB after",
        f"- server alive after the run: {alive}; tracebacks in its log: {tracebacks}",
        _client_line(client),
    ]
    only = set(got.statuses) <= {200, 503} and got.failed == 0
    report.goal(
        "only 200 and 503 with Retry-After, no transport errors",
        ", ".join(f"{s}: {n}" for s, n in sorted(got.statuses.items()))
        + (f"; errors {dict(got.errors)}" if got.errors else ""),
        only,
    )
    report.goal("no crash", "alive" if alive else "**dead**", alive)
    report.goal("no traceback logged", str(tracebacks), tracebacks == 0)
    report.goal("resident memory growth < 10 %", f"{growth:+.1%}", growth < 0.10)
    report.goal(
        "p99 of the admitted requests bounded (reported; from when each was sent)",
        "-" if admitted_p99 is None else f"{admitted_p99:.0f} ms",
        None if admitted_p99 is None else True,
    )
    return report


def _publish_next(store: Path, model: str) -> int:
    """Publish a copy of the newest version as the next one, as the trainer does
    (staged in a hidden folder, then renamed), and remove the one before the
    previous: two versions are in the store at any time."""
    newest = latest_version(store, model)
    version = int(newest.name) + 1
    staged = store / model / f".{version}.tmp-load"
    shutil.copytree(newest, staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest["version"] = version
    (staged / "manifest.json").write_text(json.dumps(manifest))
    staged.rename(store / model / str(version))
    for old in (store / model).iterdir():
        if old.name.isdigit() and int(old.name) < version - 1:
            shutil.rmtree(old)
    return version


def soak(args: argparse.Namespace, logs: Path) -> Report:
    """One-image /encode at `fraction` x capacity for `minutes`, a version published
    every `publish_every` seconds."""
    report = Report("Soak (bench/load.py soak)")
    request = one_image()
    settings = {"VAE_RELOAD_INTERVAL_S": str(args.reload_interval)}
    with (
        service(args.store, args.model, logs, **settings) as served,
        tempfile.TemporaryDirectory() as tmp,
    ):
        light = capacity(served.url + "/encode", _body_file(Path(tmp), "one", request.body), 5)
        rate = args.fraction * light
        seconds = args.minutes * 60
        published: list[tuple[float, int]] = []
        stop = threading.Event()

        def publisher() -> None:
            started = time.monotonic()
            while not stop.wait(args.publish_every):
                version = _publish_next(served.store, args.model)
                published.append((time.monotonic() - started, version))

        with Memory(served.pid) as memory:
            thread = threading.Thread(target=publisher, daemon=True)
            thread.start()
            try:
                outcomes, client = openloop.drive(
                    "127.0.0.1", served.server.port, [Stream("encode", request, rate)], seconds
                )
                got = outcomes["encode"]
            finally:
                stop.set()
                thread.join()
        with urllib.request.urlopen(served.url + "/models") as answer:
            served_versions = json.loads(answer.read())["models"]
        alive, tracebacks = served.alive(), served.tracebacks()
    warm = memory.after(args.warmup)
    spread = (max(warm) - min(warm)) / min(warm) if warm else None
    per_minute = [f"{mb:.0f}" for t, mb in memory.samples if int(t) % 60 == 0]
    report.lines += [
        f"Capacity (wrk, closed loop, best of 32 and 128 connections): {light:,.0f} req/s. "
        "Offered: "
        f"{rate:,.0f} req/s ({args.fraction:.0%}) for {args.minutes:g} min, open loop; "
        f"{len(published)} versions published (every {args.publish_every:g} s), the store "
        f"polled every {args.reload_interval:g} s.",
        "",
        _outcome_line("/encode", got),
        "- versions served at the end: "
        + "; ".join(
            f"{m['name']}: {[v['version'] for v in m['versions']]}" for m in served_versions
        ),
        f"- resident memory (MB) at each minute: {', '.join(per_minute)}; after "
        f"{args.warmup:g} s of warm-up between {min(warm):.0f} and {max(warm):.0f}"
        if warm
        else "- resident memory: no samples after the warm-up",
        f"- server alive after the run: {alive}; tracebacks in its log: {tracebacks}",
        _client_line(client),
    ]
    failed = got.sent - got.ok
    report.goal("0 failed requests", f"{failed} of {got.sent}", failed == 0)
    report.goal(
        "resident memory flat within 5 % after warm-up",
        "-" if spread is None else f"{spread:.1%} (max - min) / min",
        None if spread is None else spread <= 0.05,
    )
    report.goal("no traceback logged", str(tracebacks), tracebacks == 0)
    return report


def _merge(into: Outcome, other: Outcome) -> None:
    into.sent += other.sent
    into.statuses.update(other.statuses)
    into.errors.update(other.errors)
    into.busy_without_retry_after += other.busy_without_retry_after
    for status, values in other.latencies.items():
        into.latencies.setdefault(status, []).extend(values)
    for status, values in other.server_latencies.items():
        into.server_latencies.setdefault(status, []).extend(values)


def _client_line(cores: float) -> str:
    """The load generator shares the machine with the server: say how much it took."""
    return (
        f"- the load generator itself used {cores:.2f} of this machine's "
        f"{len(os.sched_getaffinity(0))} cores (at its busiest phase)"
    )


SCENARIOS = {"interference": interference, "overload": overload, "soak": soak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--logs", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, help="default: bench/load-<scenario>.md")
    sub = parser.add_subparsers(dest="scenario", required=True)
    one = sub.add_parser("interference", help=interference.__doc__)
    one.add_argument("--seconds", type=int, default=20, help="per phase and round")
    one.add_argument("--rounds", type=int, default=2)
    one.add_argument("--encode-share", type=float, default=0.5)
    one.add_argument("--iwae-share", type=float, default=0.3)
    two = sub.add_parser("overload", help=overload.__doc__)
    two.add_argument("--seconds", type=int, default=60)
    two.add_argument("--factor", type=float, default=2.0)
    two.add_argument("--connections", type=int, default=768, help="most open at once")
    three = sub.add_parser("soak", help=soak.__doc__)
    three.add_argument("--minutes", type=float, default=10)
    three.add_argument("--fraction", type=float, default=0.8)
    three.add_argument("--publish-every", type=float, default=60, help="seconds")
    three.add_argument("--reload-interval", type=float, default=2, help="VAE_RELOAD_INTERVAL_S")
    three.add_argument("--warmup", type=float, default=60, help="seconds before RSS counts")
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = SCENARIOS[args.scenario](args, args.logs)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report.lines.append(
        f"Made by `bash bench/load.sh {' '.join(argv or sys.argv[1:])}` on {when} in "
        f"{(time.monotonic() - started) / 60:.1f} minutes; load average "
        f"{os.getloadavg()[0]:.2f} at the end."
    )
    text = report.text()
    out = args.out or ROOT / "bench" / f"load-{args.scenario}.md"
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
