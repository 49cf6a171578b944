"""The dashboard's series from real data: vae-serve under a shift in traffic, scraped by
a real Prometheus, drawn with matplotlib (docs/operations.md shows the picture).

    .venv/bin/python -m bench.dashboard --minutes 3 --out docs/operations-dashboard.png

vae-serve serves the bundled mnist model with VAE_DRIFT_SAMPLE_RATE=0.5; one client
sends MNIST test digits (like the calibration set) for `--minutes`, then a shift: half
of its images are Fashion-MNIST clothes, for as long again. Half its requests are
/elbo, half /encode (whose sampled images feed the same drift metrics). Prometheus
scrapes every second and evaluates deploy/monitoring/rules.yml; the figure plots its
query_range answers for the dashboard's queries (deploy/monitoring/grafana-dashboard.json).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from bench import prometheus
from bench.run import ROOT, Server, running, service_env

DATA = ROOT.parent / "shared" / "data"


def images(name: str, n: int) -> np.ndarray:
    raw = gzip.decompress((DATA / name / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, n * 784, offset=16).reshape(n, 28, 28)


def npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def send(url: str, seconds: float, pool: np.ndarray, rate: float, rng: np.random.Generator) -> int:
    """Requests of 4 images drawn from `pool`, `rate` a second, /elbo and /encode in turn."""
    sent, start = 0, time.monotonic()
    with httpx.Client(timeout=60) as client:
        while time.monotonic() - start < seconds:
            batch = pool[rng.choice(len(pool), 4, replace=False)]
            path = "/elbo?score=typicality" if sent % 2 == 0 else "/encode"
            response = client.post(
                url + path, content=npy(batch), headers={"content-type": "application/x-npy"}
            )
            response.raise_for_status()
            sent += 1
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="of each phase")
    parser.add_argument("--rate", type=float, default=8.0, help="requests a second")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "operations-dashboard.png")
    args = parser.parse_args(argv)
    if not prometheus.available():
        raise SystemExit("bench.dashboard: needs Debian's prometheus (apt-get install prometheus)")
    bin_dir = Path(sys.executable).parent
    env = service_env(ROOT / "model_store", "mnist") | {"VAE_DRIFT_SAMPLE_RATE": "0.5"}
    server = Server("vae-serve", [str(bin_dir / "vae-serve"), "--port", "8111"], 8111, env)
    digits, clothes = images("mnist", 5000), images("fashion-mnist", 5000)
    shifted = np.concatenate([digits[:2500], clothes[:2500]])
    rng = np.random.default_rng(0)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="vae-dashboard-") as tmp:
        logs = Path(tmp)
        with (
            running(server, logs),
            prometheus.scraping("127.0.0.1:8111", logs / "prometheus") as prom,
        ):
            time.sleep(3)
            start = time.time()
            send(server.url, seconds, digits, args.rate, rng)
            shift = time.time()
            send(server.url, seconds, shifted, args.rate, rng)
            time.sleep(3)
            end = time.time()
            series = {title: [prom.query_range(q, start, end, 5) for q in queries]
                      for title, queries in PANELS.items()}  # fmt: skip
            hist = {
                phase: prom.query(
                    'sum by (le) (increase(vae_anomaly_percentile_bucket{score="typicality"}'
                    f"[{int(seconds)}s]))",
                    at=at,
                )
                for phase, at in (("digits", shift), ("shift", end))
            }
    draw(series, hist, start, shift, args.out)
    print(f"wrote {args.out}")
    return 0


PANELS = {
    "Flagged at 1 % (10-minute window) against 1 %": [
        'vae:anomaly_flagged_1pct:ratio10m{score="typicality"}',
    ],
    "Requests per second": ["sum by (endpoint) (rate(vae_http_requests_total[30s]))"],
    "Latency p50 / p99 (s)": [
        "histogram_quantile(0.5, sum by (endpoint, le) "
        '(rate(vae_http_request_duration_seconds_bucket{endpoint=~"/elbo|/encode"}[30s])))',
        "histogram_quantile(0.99, sum by (endpoint, le) "
        '(rate(vae_http_request_duration_seconds_bucket{endpoint=~"/elbo|/encode"}[30s])))',
    ],
    "Rows per ONNX Runtime call (mean)": [
        "sum by (graph) (rate(vae_batch_size_sum[30s])) / "
        "sum by (graph) (rate(vae_batch_size_count[30s]))",
    ],
    "Queue wait p99 (s)": [
        "histogram_quantile(0.99, sum by (graph, le) "
        "(rate(vae_batch_queue_wait_seconds_bucket[30s])))",
    ],
    "Images scored per second (drift samples of /encode included)": [
        "sum by (score) (rate(vae_images_scored_total[30s]))",
        'sum(rate(vae_drift_samples_total{outcome="scored"}[30s]))',
    ],
}


def draw(series: dict, hist: dict, start: float, shift: float, out: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 2, figsize=(13, 13))
    for ax, (title, answers) in zip(axes.flat, series.items(), strict=False):
        for qi, answer in enumerate(answers):
            for found in answer:
                t = [(float(ts) - start) / 60 for ts, _ in found["values"]]
                v = [float(value) for _, value in found["values"]]
                labels = {k: v for k, v in found["metric"].items() if k != "__name__"}
                name = " ".join(labels.values()) or "drift samples"
                prefix = ("p50 ", "p99 ")[qi] if "Latency" in title else ""
                ax.plot(t, v, label=prefix + name)
        if "Flagged" in title:
            ax.axhline(0.01, color="grey", linestyle="--", label="expected: 1 %")
        ax.axvline((shift - start) / 60, color="red", linestyle=":", label="shift")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("minutes")
        ax.legend(fontsize=7)
    for ax, (phase, answer) in zip(axes.flat[6:], hist.items(), strict=True):
        cumulative = sorted((float(f["metric"]["le"]), float(f["value"][1])) for f in answer)
        bounds = [b for b, _ in cumulative if b != float("inf")]
        counts = np.diff([0.0] + [c for b, c in cumulative if b != float("inf")])
        total = counts.sum()
        widths = np.diff([0.0, *bounds])
        ax.bar(range(len(bounds)), counts / total / (widths / 100), color="C0")
        ax.axhline(1.0, color="grey", linestyle="--", label="no drift: 1")
        ax.set_yscale("log")
        ax.set_ylim(0.01, 1000)
        ax.set_xticks(range(len(bounds)), [f"≤{b:g}" for b in bounds], fontsize=7)
        ax.set_title(
            f"Percentile histogram, {phase} phase ({total:.0f} images): "
            "observed / expected share per bucket",
            fontsize=10,
        )
        ax.legend(fontsize=7)
    fig.suptitle(
        "vae-serve under a shift in traffic, from a real Prometheus "
        f"({datetime.now(UTC):%Y-%m-%d}; bench/dashboard.py)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    sys.exit(main())
