"""The results as markdown: absolute figures, ratios, and the issue's targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.loadgen import Load

# Cell keys: (server, case, connections).
SERVICE, UNBATCHED, NAIVE, BENTO = "vae-serve", "vae-serve, batching off", "naive", "BentoML"
PYTRITON = "PyTriton"
BARE = "bare FastAPI"
# case -> (request, body) as the tables show it
CASES = {
    "healthz": ("GET /healthz", "-"),
    "encode-npy": ("POST /encode, 1 image", ".npy"),
    "encode-png": ("POST /encode, 1 image", "PNG multipart"),
    "elbo-npy": ("POST /elbo?score=elbo, 1 image", ".npy"),
    "elbo-png": ("POST /elbo?score=elbo, 1 image", "PNG multipart"),
    "elbo-typicality": ("POST /elbo (typicality, the default), 1 image", ".npy"),
    "encode-bulk": ("POST /encode, 256 images", ".npy, JSON answer"),
    "encode-bulk-npz": ("POST /encode, 256 images", ".npy, .npz answer"),
    "elbo-bulk": ("POST /elbo?score=elbo, 256 images", ".npy"),
    "sample": ("GET /sample?n=64", "-"),
    "encode-json": ("POST /encode, 1 image", "JSON floats"),
    "v2-binary": ("POST /v2/models/mnist-encoder/infer, 1 image", "UINT8 binary tensor"),
    "v2-grpc": ("gRPC ModelInfer mnist-encoder, 1 image", "UINT8 raw_input_contents"),
}
Ceiling = dict[tuple[str, int], float]


@dataclass(frozen=True)
class Cell:
    server: str
    case: str
    connections: int
    images: int  # per request
    load: Load
    mean_batch: float | None  # encoder rows per ONNX Runtime call (decoder for /sample)

    @property
    def images_per_s(self) -> float:
        return self.load.rps * self.images


@dataclass(frozen=True)
class Round:
    """One round of the cells behind the targets, measured back to back with every
    server up, so that both sides of each ratio see the same moment of a noisy VM.
    A side that was not measured is None, and so are its targets."""

    encode: Cell  # vae-serve POST /encode, one .npy image, 32 connections
    healthz: Cell | None = None  # the bare FastAPI + uvicorn app's GET /healthz, 32 connections
    in_process: float | None = None  # encoder images/s in-process at batch 256
    bulk: Cell | None = None  # vae-serve POST /encode, 256 images, .npz answer
    unbatched: Cell | None = None  # the same as `encode` with batching off
    naive: Cell | None = None  # the naive server, 32 connections
    bento: Cell | None = None  # BentoML, 32 connections
    # The v2 protocol, single-image mnist-encoder infer, 32 connections (gRPC: 32 calls
    # in flight on one channel):
    v2: Cell | None = None  # vae-serve over HTTP, binary tensors
    triton: Cell | None = None  # PyTriton over HTTP, binary tensors
    grpc: Cell | None = None  # vae-serve over gRPC
    triton_grpc: Cell | None = None  # PyTriton over gRPC


@dataclass(frozen=True)
class Target:
    goal: str
    measured: str
    ratio: float | None
    required: str
    met: bool | None  # None: not measured


def _find(cells: Iterable[Cell], server: str, case: str, connections: int) -> Cell | None:
    for cell in cells:
        if (cell.server, cell.case, cell.connections) == (server, case, connections):
            return cell
    return None


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _row(values: Iterable[object]) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def _table(header: list[str], rows: Iterable[Iterable[object]]) -> list[str]:
    return [_row(header), _row("---" for _ in header), *(_row(r) for r in rows)]


def ceiling_table(ceiling: Ceiling) -> list[str]:
    batches = sorted({batch for _, batch in ceiling})
    rows = [[op, *(_num(ceiling[op, b]) for b in batches)] for op in ("encode", "decode", "elbo")]
    return _table(["images/s", *(f"batch {b}" for b in batches)], rows)


def http_table(cells: list[Cell]) -> list[str]:
    rows = []
    for c in cells:
        request, body = CASES[c.case]
        batch = "-" if c.mean_batch is None else f"{c.mean_batch:.1f}"
        load = c.load
        rows.append(
            [
                c.server,
                request,
                body,
                c.connections,
                _num(load.rps),
                _num(c.images_per_s),
                f"{load.p50_ms:.1f}",
                f"{load.p95_ms:.1f}",
                f"{load.p99_ms:.1f}",
                batch,
                f"{load.errors} ({load.error_kinds})" if load.errors else 0,
            ]
        )
    header = [
        "server",
        "request",
        "body",
        "conns",
        "req/s",
        "images/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean batch",
        "errors",
    ]
    return _table(header, rows)


PEERS = [
    (SERVICE, "encode-npy"),
    (SERVICE, "encode-json"),
    (UNBATCHED, "encode-npy"),
    (NAIVE, "encode-json"),
    (BENTO, "encode-json"),
]


def peers_table(cells: list[Cell], connections: list[int]) -> list[str]:
    """Single-image /encode, every server side by side, with ratios to vae-serve."""
    rows = []
    for n in connections:
        found = [_find(cells, server, case, n) for server, case in PEERS]
        row: list[object] = [n]
        row += ["-" if c is None else f"{_num(c.load.rps)} ({c.load.p99_ms:.1f})" for c in found]
        ours = found[0]
        for peer in found[2:]:
            if ours is None or peer is None or not peer.load.rps:
                row.append("-")
            else:
                row.append(f"{ours.load.rps / peer.load.rps:.2f}×")
        rows.append(row)
    header = [
        "conns",
        "vae-serve .npy",
        "vae-serve JSON",
        "batching off .npy",
        "naive JSON",
        "BentoML JSON",
        "× batching off",
        "× naive",
        "× BentoML",
    ]
    return _table(header, rows)


# A side of a target: one round -> (service, reference) figures, None if not measured.
Side = Callable[[Round], tuple[float, float] | None]


def _paired(
    goal: str, rounds: list[Round], need: float, unit: str, rates: Side, p99s: Side | None = None
) -> Target:
    """A target over the rounds: the median of the service/reference ratios, and with
    `p99s` also a lower median p99 than the reference's."""
    pairs, latencies = [rates(r) for r in rounds], [p99s(r) for r in rounds] if p99s else []
    required = f"≥ {need}×" + (", lower p99" if p99s else "")
    if not pairs or None in pairs or None in latencies:
        return Target(goal, "not measured", None, required, None)
    known = [pair for pair in pairs if pair is not None]
    ratios = [a / b for a, b in known]
    ratio = statistics.median(ratios)
    a, b = (statistics.median(pair[i] for pair in known) for i in (0, 1))
    measured, met = f"{_num(a)} vs {_num(b)} {unit}", ratio >= need
    if p99s:
        ours, theirs = (statistics.median(p[i] for p in latencies if p is not None) for i in (0, 1))
        measured += f"; p99 {ours:.1f} vs {theirs:.1f} ms"
        met = met and ours < theirs
    if len(known) > 1:
        each = ", ".join(f"{r:.2f}" for r in ratios)
        measured += f" (medians of {len(known)} rounds; ratio per round {each})"
    return Target(goal, measured, ratio, required, met)


def _versus(reference: str) -> tuple[Side, Side]:
    """The req/s and p99 sides of single-image /encode against another cell of the round."""

    def rates(r: Round) -> tuple[float, float] | None:
        other: Cell | None = getattr(r, reference)
        if other is None or not other.load.rps:  # no answers: nothing to divide by
            return None
        return r.encode.load.rps, other.load.rps

    def p99s(r: Round) -> tuple[float, float] | None:
        other: Cell | None = getattr(r, reference)
        return None if other is None else (r.encode.load.p99_ms, other.load.p99_ms)

    return rates, p99s


def _bulk(r: Round) -> tuple[float, float] | None:
    if r.bulk is None or not r.in_process:
        return None
    return r.bulk.images_per_s, r.in_process


def targets(
    cells: list[Cell],
    ceiling: Ceiling,
    bulk_connections: int,
    rounds: list[Round] | None = None,
    peak_rss_mb: float | None = None,
) -> list[Target]:
    """The issue's targets, each from figures of this one run: medians over the rounds
    when there are any, else the table's cells taken as one round. `peak_rss_mb`:
    the serving process's peak resident memory over the run."""
    if not rounds:
        ours = _find(cells, SERVICE, "encode-npy", 32)
        rounds = (
            []
            if ours is None
            else [
                Round(
                    encode=ours,
                    healthz=_find(cells, BARE, "healthz", 32),
                    in_process=ceiling.get(("encode", 256)),
                    bulk=_find(cells, SERVICE, "encode-bulk-npz", bulk_connections),
                    unbatched=_find(cells, UNBATCHED, "encode-npy", 32),
                    naive=_find(cells, NAIVE, "encode-json", 32),
                    bento=_find(cells, BENTO, "encode-json", 32),
                )
            ]
        )
    healthz, _ = _versus("healthz")
    naive, naive_p99 = _versus("naive")
    bento, bento_p99 = _versus("bento")
    unbatched, _ = _versus("unbatched")
    batches = [r.encode.mean_batch for r in rounds if r.encode.mean_batch is not None]
    batch = statistics.median(batches) if batches else None
    return [
        _paired(
            "single-image /encode (.npy) vs a bare FastAPI + uvicorn GET /healthz, 32 conns",
            rounds,
            0.6,
            "req/s",
            healthz,
        ),
        _paired(
            f"bulk /encode (256 images, .npy in, .npz out, {bulk_connections} conns) vs "
            "in-process ONNX Runtime at batch 256",
            rounds,
            0.7,
            "images/s",
            _bulk,
        ),
        _paired(
            "single-image /encode vs the naive server, 32 conns",
            rounds,
            3.0,
            "req/s",
            naive,
            naive_p99,
        ),
        _paired(
            "single-image /encode vs BentoML, 32 conns", rounds, 1.5, "req/s", bento, bento_p99
        ),
        Target(
            "mean batch size, single-image /encode at 32 conns (/metrics)",
            "not measured" if batch is None else f"{batch:.1f} images per ONNX Runtime call",
            batch,
            "> 4",
            None if batch is None else batch > 4,
        ),
        _paired(
            "batching on vs off (VAE_MAX_BATCH_SIZE=1), single-image /encode, 32 conns",
            rounds,
            1.5,
            "req/s",
            unbatched,
        ),
        Target(
            "peak RSS of the vae-serve process over the run (both bundled models loaded)",
            "not measured" if peak_rss_mb is None else f"{peak_rss_mb:,.0f} MB",
            peak_rss_mb,
            "≤ 250 MB",
            None if peak_rss_mb is None else peak_rss_mb <= 250,
        ),
    ]


def _between(ours: str, reference: str) -> Side:
    """The req/s of two cells of a round, for a target of their ratio."""

    def rates(r: Round) -> tuple[float, float] | None:
        a: Cell | None = getattr(r, ours)
        b: Cell | None = getattr(r, reference)
        if a is None or b is None or not b.load.rps:
            return None
        return a.load.rps, b.load.rps

    return rates


def protocol_targets(rounds: list[Round]) -> list[Target]:
    """The Open Inference Protocol's targets (issue 13), from the rounds."""
    return [
        _paired(
            "single-image v2 infer over HTTP, binary tensors: vae-serve vs PyTriton, 32 conns",
            rounds,
            1.5,
            "req/s",
            _between("v2", "triton"),
        ),
        _paired(
            "single-image v2 infer over HTTP, binary tensors, vs vae-serve's own .npy /encode",
            rounds,
            0.9,
            "req/s",
            _between("v2", "encode"),
        ),
    ]


def protocol_table(rounds: list[Round]) -> list[str]:
    """Per round, single-image mnist-encoder infer by both servers and both transports,
    with vae-serve's .npy /encode: req/s (p99 ms)."""

    def rps(cell: Cell | None) -> str:
        return "-" if cell is None else f"{_num(cell.load.rps)} ({cell.load.p99_ms:.1f})"

    rows = [
        [i, rps(r.encode), rps(r.v2), rps(r.triton), rps(r.grpc), rps(r.triton_grpc)]
        for i, r in enumerate(rounds, 1)
    ]
    header = [
        "round",
        "vae-serve /encode .npy",
        "vae-serve v2 HTTP binary",
        "PyTriton v2 HTTP binary",
        "vae-serve v2 gRPC",
        "PyTriton v2 gRPC",
    ]
    return _table(header, rows)


def rounds_table(rounds: list[Round]) -> list[str]:
    def rps(cell: Cell | None) -> str:
        return "-" if cell is None else f"{_num(cell.load.rps)} ({cell.load.p99_ms:.1f})"

    rows = [
        [
            i,
            rps(r.healthz),
            rps(r.encode),
            rps(r.unbatched),
            rps(r.naive),
            rps(r.bento),
            "-" if r.in_process is None else _num(r.in_process),
            "-" if r.bulk is None else _num(r.bulk.images_per_s),
        ]
        for i, r in enumerate(rounds, 1)
    ]
    header = [
        "round",
        "bare FastAPI /healthz",
        "/encode .npy",
        "batching off .npy",
        "naive JSON",
        "BentoML JSON",
        "in-process images/s",
        "bulk /encode images/s",
    ]
    return _table(header, rows)


def targets_table(found: list[Target]) -> list[str]:
    status = {True: "met", False: "**missed**", None: "not measured"}
    rows = [
        [
            t.goal,
            t.measured,
            "-" if t.ratio is None else f"{t.ratio:.2f}",
            t.required,
            status[t.met],
        ]
        for t in found
    ]
    return _table(["target", "measured", "ratio", "required", "status"], rows)


NOTES = """\
How to read it: one run, one machine, one server at a time on 127.0.0.1, each
cell a wrk run (1 thread, sharing the 2 cores with the server for every peer
alike) after an unmeasured warm-up. Latencies are wrk's, per request.
"mean batch" is rows per encoder call (decoder for /sample), from the
service's vae_batch_size histogram, scraped before and after the cell.

- vae-serve: `vae-serve` as shipped (defaults: VAE_MAX_BATCH_SIZE=256,
  VAE_MAX_DELAY_MS=0), access log off (VAE_LOG_LEVEL=warning), no store polling.
- vae-serve, batching off: the same with VAE_MAX_BATCH_SIZE=1, VAE_MAX_DELAY_MS=0.
- naive: bench/naive_server.py, FastAPI with a sync endpoint taking a JSON list
  of 784 floats, the PyTorch eager encoder (rebuilt layer by layer from the same
  encoder.onnx), one image per model call; uvicorn, access log off.
- BentoML: bench/bento_service.py, `@bentoml.api(batchable=True,
  max_batch_size=64)` around the same encoder.onnx in ONNX Runtime with the
  service's session options; its own JSON ndarray body; access log off.
- bare FastAPI: bench/bare_server.py, one `async def` route, GET /healthz
  answering {"status": "ok"}, on uvicorn as vae-serve runs (one worker,
  access log off): what any FastAPI + uvicorn service pays per request.
- in-process: ONNX Runtime called in a loop from Python, the service's session
  options; elbo adds reparameterize, log p(x|z) and the KL in numpy (vae_contract).
- PyTriton: bench/pytriton_service.py, Triton Inference Server (nvidia-pytriton) in
  front of the same encoder.onnx in ONNX Runtime with the service's session options,
  dynamic batcher up to 256 rows, no queue delay; the v2 protocol's reference. Both
  servers get the same v2 requests: one UINT8 image (the bytes of the .npy body) as a
  binary tensor over HTTP (Inference-Header-Content-Length), as raw_input_contents over
  gRPC, mean and log_var back as binary; both scale it to [0, 1] before the graph.
  gRPC cells are loaded by bench/grpcload.py (grpcio's asyncio client, 32 calls in
  flight on one channel), which costs more CPU per call than wrk.
"""


def document(
    *,
    machine: str,
    versions: str,
    model: str,
    when: str,
    seconds: float,
    minutes: float,
    ceiling: Ceiling,
    cells: list[Cell],
    connections: list[int],
    targets: list[Target],
    rounds: list[Round],
    round_seconds: int,
    protocol: list[Target] | None = None,
) -> str:
    """The whole results file."""
    lines = [
        "# Benchmark results",
        "",
        f"Made by `bash bench/run.sh` on {when} in {minutes:.1f} minutes ({seconds:g} s per cell).",
        "",
        f"- machine: {machine}",
        f"- software: {versions}",
        f"- model: {model}",
        "",
        "## Targets (ratios within this run)",
        "",
        *targets_table(targets),
        "",
        *(
            [
                f"The targets come from {len(rounds)} rounds measured with every server up "
                f"and warm: per round, {round_seconds} s of each server's single-image cell "
                "at 32 connections (req/s, p99 ms in brackets), then in-process ONNX Runtime "
                "and the bulk cell, back to back, the order reversed every other round; "
                "each ratio is the median over the rounds. The tables below are one pass, "
                "one server loaded at a time.",
                "",
                *rounds_table(rounds),
                "",
            ]
            if rounds
            else []
        ),
        *(
            [
                "## Open Inference Protocol (v2): targets",
                "",
                *targets_table(protocol),
                "",
                "Per round (req/s, p99 ms in brackets), the same rounds as above:",
                "",
                *protocol_table(rounds),
                "",
            ]
            if protocol
            else []
        ),
        "## Single-image /encode: req/s (p99 ms) by connections",
        "",
        *peers_table(cells, connections),
        "",
        "## In-process ONNX Runtime (the ceiling)",
        "",
        *ceiling_table(ceiling),
        "",
        "## HTTP",
        "",
        *http_table(cells),
        "",
        NOTES,
    ]
    return "\n".join(lines)
