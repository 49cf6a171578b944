"""The benchmark, end to end: `bash bench/run.sh` installs what it needs and runs this.

In one run, on one machine: the in-process ONNX Runtime ceiling, then each
server in turn on 127.0.0.1 (vae-serve, vae-serve with batching off, the naive
FastAPI + torch server, BentoML, PyTriton for the v2 protocol), loaded by wrk (and
bench/grpcload.py for gRPC) for a few seconds per cell.
Only one server runs at a time. The tables go to stdout and to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gzip
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from app.config import available_cpus
from bench import report
from bench.ceiling import ceiling
from bench.loadgen import Body, Load, grpc_load, mean_batch, scrape, wrk
from bench.report import BARE, BENTO, NAIVE, PYTRITON, SERVICE, UNBATCHED, Cell

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
BENTO_PYTHON = ROOT / "bench" / ".venv-bento" / "bin" / "python"
PYTRITON_PYTHON = ROOT / "bench" / ".venv-pytriton" / "bin" / "python"
BULK = 256  # images per bulk request
BOUNDARY = "vaebenchboundary"
SERVER_KEYS = ["vae-serve", "unbatched", "naive", "bentoml", "pytriton", "bare"]
V2_INFER = "/v2/models/mnist-encoder/infer"


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    ready: str = "/readyz"
    grpc_port: int | None = None  # the v2 protocol's gRPC service, if it has one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, folder: Path) -> Path:
        """Where `running` writes the server's output."""
        return folder / f"{self.name.split(',')[0].replace(' ', '-')}-{self.port}.log"


def digits(path: Path, n: int) -> np.ndarray:
    """n MNIST test images, uint8 (n, 28, 28); seeded noise strokes if the file is missing."""
    if path.is_file():
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return np.frombuffer(raw, np.uint8, n * 784, offset=16).reshape(n, 28, 28)
    images = np.zeros((n, 28, 28), np.uint8)
    rng = np.random.default_rng(0)
    images[:, 6:22, 10:18] = rng.integers(0, 256, (n, 16, 8), dtype=np.uint8)
    return images


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def v2_bodies(one: np.ndarray) -> dict[str, tuple[bytes, str, tuple[tuple[str, str], ...]]]:
    """One image as the v2 protocol's infer request, as tritonclient sends it: over HTTP
    a JSON header and the tensor as binary data, all outputs asked for as binary; over
    gRPC a ModelInferRequest with raw_input_contents. The pixels are UINT8, the bytes
    of the .npy /encode body."""
    x = np.ascontiguousarray(one[:, None])  # (1, 1, 28, 28) uint8
    tensor = {"name": "x", "datatype": "UINT8", "shape": list(x.shape)}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    length = (("Inference-Header-Content-Length", str(len(header))),)
    # Imported here: the generated messages take the `inference` protobuf package of
    # the process, which tests that import bench modules beside tritonclient need free.
    from app.oip import inference_pb2

    request = inference_pb2.ModelInferRequest(model_name="mnist-encoder")
    request.inputs.add(**tensor)
    request.raw_input_contents.append(x.tobytes())
    return {
        "v2.bin": (header + x.tobytes(), "application/octet-stream", length),
        "v2.grpc": (request.SerializeToString(), "application/grpc", ()),
    }


def write_bodies(folder: Path, images: np.ndarray) -> dict[str, Body]:
    """The request bodies of every case, written once into `folder`."""
    one = images[:1]  # (1, 28, 28) uint8
    pixels = (one.astype(np.float32) / 255.0).astype(float)
    multipart = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="digit.png"'
            "\r\nContent-Type: image/png\r\n\r\n"
        ).encode()
        + _png(one[0])
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    contents: dict[str, tuple[bytes, str, int]] = {
        "one.npy": (_npy(one), "application/x-npy", 1),
        "one.multipart": (multipart, f"multipart/form-data; boundary={BOUNDARY}", 1),
        "bulk.npy": (_npy(images[:BULK]), "application/x-npy", BULK),
        "naive.json": (json.dumps(pixels.ravel().tolist()).encode(), "application/json", 1),
        "pixels.json": (json.dumps({"pixels": pixels.tolist()}).encode(), "application/json", 1),
        "bento.json": (json.dumps({"x": pixels[:, None].tolist()}).encode(), "application/json", 1),
    }
    bodies = {}
    for name, (data, content_type, count) in contents.items():
        (folder / name).write_bytes(data)
        bodies[name] = Body(folder / name, content_type, count)
    for name, (data, content_type, headers) in v2_bodies(one).items():
        (folder / name).write_bytes(data)
        bodies[name] = Body(folder / name, content_type, headers=headers)
    # The same 256 images, the answer asked for as one .npz instead of JSON.
    bodies["bulk.npy>npz"] = dataclasses.replace(bodies["bulk.npy"], accept="application/x-npz")
    return bodies


def _wait_ready(server: Server, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({process.returncode}); see {log}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(server.url + server.ready, timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{server.name} was not ready within 180 s; see {log}")


@contextlib.contextmanager
def running(server: Server, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `server` in its own process group, wait until it is ready, stop it after."""
    log = server.log(logs)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **server.env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            server.command,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(server, process, log)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@dataclass
class Bench:
    seconds: int
    warmup: int
    cells: list[Cell] = field(default_factory=list)

    def measure(
        self,
        server: Server,
        case: str,
        path: str,
        body: Body,
        connections: int,
        graph: str = "",
        *,
        seconds: int | None = None,
        warmup: int | None = None,
        grpc: bool = False,
    ) -> Cell:
        """Warm up, then measure one cell; the batch size comes from /metrics when asked.
        With `grpc`, the server's gRPC port is loaded instead of `path`."""

        def run(seconds: int) -> Load:
            if grpc:
                target = f"127.0.0.1:{server.grpc_port}"
                return grpc_load(target, body, connections=connections, seconds=seconds)
            return wrk(server.url + path, body, connections=connections, seconds=seconds)

        warmup = self.warmup if warmup is None else warmup
        if warmup:
            run(warmup)
        before = scrape(server.url) if graph else ""
        load = run(seconds or self.seconds)
        batch = mean_batch(before, scrape(server.url), graph) if graph else None
        return Cell(server.name, case, connections, body.images, load, batch)

    def cell(
        self,
        server: Server,
        case: str,
        path: str,
        body: Body,
        connections: int,
        graph: str = "",
        *,
        grpc: bool = False,
    ) -> None:
        """Measure one cell of the results table, and print its row."""
        cell = self.measure(server, case, path, body, connections, graph, grpc=grpc)
        self.cells.append(cell)
        print(report.http_table([cell])[-1], flush=True)


def _machine(load: float) -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0))
    return f"{model}, {cores} cores, {memory:.0f} GiB; load average {load:.2f} at the start"


def _versions() -> str:
    import onnxruntime
    import torch

    found = [
        f"Python {platform.python_version()}",
        f"onnxruntime {onnxruntime.__version__}",
        f"torch {torch.__version__}",
    ]
    if BENTO_PYTHON.exists():
        with contextlib.suppress(subprocess.SubprocessError):
            bento = subprocess.run(
                [str(BENTO_PYTHON), "-c", "import bentoml; print(bentoml.__version__)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            found.append(f"bentoml {bento}")
    if PYTRITON_PYTHON.exists():
        with contextlib.suppress(subprocess.SubprocessError):
            pytriton = subprocess.run(
                [str(PYTRITON_PYTHON), "-m", "pip", "show", "nvidia-pytriton"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            found += [
                f"nvidia-pytriton {line.split()[-1]}"
                for line in pytriton.splitlines()
                if line.startswith("Version:")
            ]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    found.append(wrk_version.split("[")[0].strip() or "wrk")
    return ", ".join(found)


def _describe(version_dir: Path) -> str:
    """The model as the results name it: its folder and its shape."""
    where = version_dir.relative_to(ROOT) if version_dir.is_relative_to(ROOT) else version_dir
    try:
        training = json.loads((version_dir / "manifest.json").read_text())["training"]
        shape = f"{training['architecture']} {training['hidden']}, latent {training['latent_dim']}"
    except (OSError, KeyError, ValueError):
        return str(where)
    return f"{where} ({shape})"


def latest_version(store: Path, model: str) -> Path:
    versions = [p for p in (store / model).iterdir() if p.name.isdigit()]
    if not versions:
        raise SystemExit(f"bench: no version of {model} in {store}")
    return max(versions, key=lambda p: int(p.name))


def service_env(store: Path, model: str) -> dict[str, str]:
    """vae-serve's settings in every benchmark: the store, quiet, no store polling."""
    return {
        "VAE_MODEL_STORE": str(store),
        "VAE_DEFAULT_MODEL": model,
        "VAE_LOG_LEVEL": "warning",  # no access log, as for every peer
        "VAE_RELOAD_INTERVAL_S": "0",
        "VAE_DRAIN_S": "0",  # no load balancer to tell: stop at once
        "VAE_GRPC_PORT": "0",  # only the server whose gRPC is measured serves it
    }


def make_servers(store: Path, model: str, version_dir: Path) -> dict[str, Server]:
    """Every server the benchmark loads, by its --servers key; one port each."""
    bin_dir = Path(sys.executable).parent
    quiet = service_env(store, model)
    vae_serve = [str(bin_dir / "vae-serve"), "--port"]
    naive = [str(bin_dir / "uvicorn"), "--factory", "bench.naive_server:create_app"]
    naive += ["--log-level", "warning", "--no-access-log", "--port", "8103"]
    bare = [str(bin_dir / "uvicorn"), "--factory", "bench.bare_server:create_app"]
    bare += ["--log-level", "warning", "--no-access-log", "--port", "8112"]
    bento = [str(BENTO_PYTHON), "-m", "bentoml", "serve", "bench.bento_service:VaeEncoder"]
    peer_env = {"BENCH_MODEL_DIR": str(version_dir), "BENTOML_DO_NOT_TRACK": "True"}
    unbatched = {**quiet, "VAE_MAX_BATCH_SIZE": "1", "VAE_MAX_DELAY_MS": "0"}
    pytriton = [str(PYTRITON_PYTHON), "-m", "bench.pytriton_service"]
    pytriton += ["--http-port", "8105", "--grpc-port", "8106", "--metrics-port", "8107"]
    return {
        "vae-serve": Server(
            SERVICE, [*vae_serve, "8101"], 8101, {**quiet, "VAE_GRPC_PORT": "8111"}, grpc_port=8111
        ),
        "unbatched": Server(UNBATCHED, [*vae_serve, "8102"], 8102, unbatched),
        "naive": Server(NAIVE, naive, 8103, peer_env, ready="/healthz"),
        "bentoml": Server(BENTO, [*bento, "--port", "8104"], 8104, peer_env),
        "pytriton": Server(
            PYTRITON, pytriton, 8105, peer_env, ready="/v2/health/ready", grpc_port=8106
        ),
        "bare": Server(BARE, bare, 8112, ready="/healthz"),
    }


def measure(
    bench: Bench,
    key: str,
    server: Server,
    bodies: dict[str, Body],
    conns: list[int],
    bulk_conns: int,
) -> None:
    """The cells of one server (it is running)."""
    if key == "pytriton":
        for n in conns:
            bench.cell(server, "v2-binary", V2_INFER, bodies["v2.bin"], n)
        for n in conns:
            bench.cell(server, "v2-grpc", "", bodies["v2.grpc"], n, grpc=True)
        return
    if key == "bare":
        for n in conns:
            bench.cell(server, "healthz", "/healthz", Body(None), n)
        return
    if key in {"naive", "bentoml"}:
        body = bodies["naive.json" if key == "naive" else "bento.json"]
        for n in conns:
            bench.cell(server, "encode-json", "/encode", body, n)
        return
    if key == "unbatched":
        for n in conns:
            bench.cell(server, "encode-npy", "/encode", bodies["one.npy"], n, graph="encoder")
        return
    for n in conns:
        bench.cell(server, "healthz", "/healthz", Body(None), n)
    for case, path, name in (
        ("encode-npy", "/encode", "one.npy"),
        ("encode-png", "/encode", "one.multipart"),
        ("encode-json", "/encode", "pixels.json"),
        # score=elbo: the bound alone, as before /elbo's default became typicality,
        # whose PNG encoding and pixel entropy per image the next cell measures.
        ("elbo-npy", "/elbo?score=elbo", "one.npy"),
        ("elbo-png", "/elbo?score=elbo", "one.multipart"),
        ("elbo-typicality", "/elbo", "one.npy"),
    ):
        for n in conns:
            bench.cell(server, case, path, bodies[name], n, graph="encoder")
    for n in conns:
        bench.cell(server, "v2-binary", V2_INFER, bodies["v2.bin"], n, graph="encoder")
    for n in conns:
        bench.cell(server, "v2-grpc", "", bodies["v2.grpc"], n, graph="encoder", grpc=True)
    for case, path, name in (
        ("encode-bulk", "/encode", "bulk.npy"),
        ("encode-bulk-npz", "/encode", "bulk.npy>npz"),
        ("elbo-bulk", "/elbo?score=elbo", "bulk.npy"),
    ):
        bench.cell(server, case, path, bodies[name], bulk_conns, graph="encoder")
    sample = Body(None, images=64)
    bench.cell(server, "sample", "/sample?n=64&seed=1", sample, 8, graph="decoder")


def paired_rounds(
    bench: Bench,
    servers: dict[str, Server],
    bodies: dict[str, Body],
    version_dir: Path,
    *,
    rounds: int,
    seconds: int,
    bulk_conns: int,
) -> list[report.Round]:
    """The cells behind the targets, every server up and warm, back to back: per
    round one short single-image cell per server at 32 connections, then in-process
    ONNX Runtime and the bulk cell; odd rounds in the reverse order. This VM's speed
    swings within seconds, so many short rounds pair better than a few long cells."""
    threads = available_cpus()  # as the service sizes its sessions
    ours = servers["vae-serve"]
    cell = functools.partial(bench.measure, seconds=seconds, warmup=0)
    one = bodies["one.npy"]
    v2, v2_grpc = bodies["v2.bin"], bodies["v2.grpc"]
    single: dict[str, Callable[[], Cell]] = {
        "encode": lambda: cell(ours, "encode-npy", "/encode", one, 32, "encoder"),
        "v2": lambda: cell(ours, "v2-binary", V2_INFER, v2, 32, "encoder"),
        "grpc": lambda: cell(ours, "v2-grpc", "", v2_grpc, 32, "encoder", grpc=True),
    }
    if "bare" in servers:
        bare = servers["bare"]
        single["healthz"] = lambda: cell(bare, "healthz", "/healthz", Body(None), 32)
    if "unbatched" in servers:
        unbatched = servers["unbatched"]
        single["unbatched"] = lambda: cell(unbatched, "encode-npy", "/encode", one, 32, "encoder")
    for key, name, body in (("naive", "naive", "naive.json"), ("bentoml", "bento", "bento.json")):
        if key in servers:
            single[name] = functools.partial(
                cell, servers[key], "encode-json", "/encode", bodies[body], 32
            )
    if "pytriton" in servers:
        triton = servers["pytriton"]
        single["triton"] = lambda: cell(triton, "v2-binary", V2_INFER, v2, 32)
        single["triton_grpc"] = lambda: cell(triton, "v2-grpc", "", v2_grpc, 32, grpc=True)

    def in_process() -> float:
        rate = ceiling(version_dir, [BULK], threads=threads, seconds=seconds / 2, ops=("encode",))
        return rate["encode", BULK]

    def bulk() -> Cell:
        return cell(
            ours, "encode-bulk-npz", "/encode", bodies["bulk.npy>npz"], bulk_conns, "encoder"
        )

    found = []
    for i in range(rounds):
        order = list(single) if i % 2 == 0 else list(reversed(single))
        cells = {name: single[name]() for name in order}
        if i % 2 == 0:
            rate, bulk_cell = in_process(), bulk()
        else:
            bulk_cell, rate = bulk(), in_process()
        found.append(report.Round(in_process=rate, bulk=bulk_cell, **cells))
        print(report.rounds_table(found)[-1], flush=True)
    return found


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) so far, in MB; None if unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk cell (whole seconds)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each cell")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--bulk-connections", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=7, help="rounds of the targets' cells (0: use the tables)"
    )
    parser.add_argument(
        "--round-seconds", type=int, default=2, help="per wrk cell in a round (whole seconds)"
    )
    parser.add_argument("--images", type=Path, default=MNIST, help="MNIST IDX images file")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    parser.add_argument("--logs", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVER_KEYS,
        default=SERVER_KEYS,
        help="which servers to load, in this order",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: something else is running, figures will be noisy")
    store = args.store.resolve()
    version_dir = latest_version(store, args.model)
    args.logs.mkdir(parents=True, exist_ok=True)
    conns: list[int] = args.connections
    print(f"model {version_dir}; {args.seconds:g} s per cell after {args.warmup:g} s of warm-up")

    print("== in-process ONNX Runtime", flush=True)
    threads = available_cpus()
    rates = ceiling(version_dir, [1, 8, 64, BULK], threads=threads, seconds=args.seconds / 4)
    print("\n".join(report.ceiling_table(rates)), flush=True)

    bench = Bench(args.seconds, args.warmup)
    rounds: list[report.Round] = []
    servers = make_servers(store, args.model, version_dir)
    venvs = {"bentoml": BENTO_PYTHON, "pytriton": PYTRITON_PYTHON}
    for key, python in venvs.items():
        if key in args.servers and not python.exists():
            print(f"{servers[key].name} skipped: {python} is missing (bash bench/run.sh makes it)")
    chosen = {key: servers[key] for key in args.servers if key not in venvs or venvs[key].exists()}
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp, contextlib.ExitStack() as up:
        bodies = write_bodies(Path(tmp), digits(args.images, BULK))
        # Every server stays up for the whole run, so the rounds can alternate between
        # them; idle, each used under 1 s of CPU in 20 s (ps, all four up).
        processes = {key: up.enter_context(running(s, args.logs)) for key, s in chosen.items()}
        print("== HTTP (wrk, 1 thread, 127.0.0.1), one server loaded at a time", flush=True)
        print("\n".join(report.http_table([])[:2]), flush=True)
        for key, server in chosen.items():
            measure(bench, key, server, bodies, conns, args.bulk_connections)
        if "vae-serve" in chosen and args.rounds:
            print("== rounds: every target's cells back to back", flush=True)
            print("\n".join(report.rounds_table([])[:2]), flush=True)
            rounds = paired_rounds(
                bench,
                chosen,
                bodies,
                version_dir,
                rounds=args.rounds,
                seconds=args.round_seconds,
                bulk_conns=args.bulk_connections,
            )
        rss = peak_rss_mb(processes["vae-serve"].pid) if "vae-serve" in processes else None

    found = report.targets(bench.cells, rates, args.bulk_connections, rounds, rss)
    protocol = report.protocol_targets(rounds)
    text = report.document(
        machine=_machine(load),
        versions=_versions(),
        model=_describe(version_dir),
        when=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=args.seconds,
        minutes=(time.monotonic() - started) / 60,
        ceiling=rates,
        cells=bench.cells,
        connections=conns,
        targets=found,
        rounds=rounds,
        round_seconds=args.round_seconds,
        protocol=protocol,
    )
    args.out.write_text(text)
    print()
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
