"""deploy/monitoring: the rules checked and unit-tested by promtool, the dashboard's
queries valid against the metrics the service exports, and a real Prometheus
scraping a real vae-serve process while it scores real images."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from app_support import BUNDLED_STORE, SHARED_DATA, bundled_version, npy, require, serve

from bench import prometheus

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = MONITORING / "rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    require(shutil.which("promtool") is not None, "promtool (Debian's prometheus) is missing")
    done = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid() -> None:
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", str(RULES))


def test_the_rules_unit_tests_pass() -> None:
    """rules.test.yml: a sustained shift alerts within two 10-minute windows, traffic
    exactly like the calibration never does, and each service alert fires."""
    promtool("test", "rules", "rules.test.yml")


def test_the_unit_tests_would_catch_an_alert_that_never_fires(tmp_path: Path) -> None:
    """The unit tests fail when the anomaly alert is broken, here its bound doubled."""
    rules = RULES.read_text().replace("> 0.01 * vae:anomaly_images", "> 2 * vae:anomaly_images")
    assert rules != RULES.read_text()
    (tmp_path / "rules.yml").write_text(rules)
    shutil.copy(MONITORING / "rules.test.yml", tmp_path)
    require(shutil.which("promtool") is not None, "promtool (Debian's prometheus) is missing")
    done = subprocess.run(
        ["promtool", "test", "rules", "rules.test.yml"], cwd=tmp_path, capture_output=True
    )
    assert done.returncode != 0
    assert b"VaeAnomalyRateAboveCalibration" in done.stdout + done.stderr


def test_random_calibration_like_traffic_never_alerts(tmp_path: Path) -> None:
    """Twelve hours of traffic drawn like the calibration set: each minute's images are
    flagged with probability 0.01 (seeded binomial draws), at four traffic levels from
    a trickle to 3,000 images a minute. Checked every 10 minutes, no alert fires."""
    rng = np.random.default_rng(2026)
    minutes = 12 * 60
    series = []
    for rate in (3, 30, 300, 3000):
        labels = f'model="m{rate}", version="1", score="typicality"'
        flagged = np.cumsum(rng.binomial(rate, 0.01, minutes))
        images = np.arange(1, minutes + 1) * rate
        series += [
            {"series": f"vae_anomaly_percentile_count{{{labels}}}", "values": _values(images)},
            {
                "series": f'vae_anomaly_percentile_bucket{{{labels}, le="1"}}',
                "values": _values(flagged),
            },
        ]
    checks = [
        {"alertname": "VaeAnomalyRateAboveCalibration", "eval_time": f"{m}m", "exp_alerts": []}
        for m in range(10, minutes + 1, 10)
    ]
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (tmp_path / "random.test.yml").write_text(yaml.safe_dump(tests))
    promtool("test", "rules", "random.test.yml", cwd=tmp_path)


def _values(counts: np.ndarray) -> str:
    return " ".join(["0", *map(str, counts.tolist())])


def test_the_prometheus_rule_holds_the_rules_files_groups() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def dashboard_queries() -> list[str]:
    """Every query of the dashboard, with Grafana's variables as a Prometheus reads them."""
    board = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert len(found) >= 12
    return [
        q.replace("$__rate_interval", "1m").replace('"$job"', '".*"').replace('"$model"', '".*"')
        for q in found
    ]


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses them (as recording rules), and every series they read is one the
    service exports or a rule of rules.yml records."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(tmp_path / "dashboard.rules.yml"))
    recorded = {
        r["record"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    from app.metrics import Metrics  # the families a scrape shows, their series names

    exported = {
        sample_name
        for family in Metrics().registry.collect()
        for sample_name in _series_names(family)
    }
    for query in queries:
        for name in re.findall(r"\b(vae[_:][a-z0-9_:]+)", query):
            assert name in exported | recorded, f"{name} in {query!r}"


def _series_names(family: Any) -> set[str]:
    base = family.name
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {base + s for s in suffixes.get(family.type, [""])}


# -- a real Prometheus ----------------------------------------------------------------------


def _idx_images(name: str, n: int) -> np.ndarray:
    raw = gzip.decompress((SHARED_DATA / name / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, n * 784, offset=16).reshape(n, 28, 28)


def _elbo(url: str, images: np.ndarray) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{url}/elbo?score=typicality",
        content=npy(images),
        headers={"content-type": "application/x-npy"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_a_real_prometheus_scrapes_what_was_sent(tmp_path: Path) -> None:
    """Digits like the calibration set, then clothes, to the bundled mnist model; the
    scraped counts and the recording rule of the flagged rate match the answers."""
    require(prometheus.available(), "Debian's prometheus is missing")
    version = str(bundled_version("mnist"))
    digits, clothes = _idx_images("mnist", 200), _idx_images("fashion-mnist", 40)
    with (
        serve(
            BUNDLED_STORE, tmp_path, VAE_RELOAD_INTERVAL_S="0", VAE_INTRA_OP_THREADS="1"
        ) as server,
        prometheus.scraping(
            server.url.removeprefix("http://"), tmp_path / "prometheus", 0.5
        ) as prom,
    ):
        labels = f'job="vae-serve", model="mnist", version="{version}", score="typicality"'
        # The series exist at 0 before the first image: rate() misses nothing.
        prom.wait_for(f"vae_anomaly_percentile_count{{{labels}}}", 0)
        results = _elbo(server.url, digits[:100]) + _elbo(server.url, digits[100:])
        results += _elbo(server.url, clothes)
        v2 = httpx.post(
            f"{server.url}/v2/models/mnist-encoder/infer",
            json={
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "UINT8",
                        "shape": [1, 1, 28, 28],
                        "data": digits[0].ravel().tolist(),
                    }
                ]
            },
            timeout=60,
        )
        assert v2.status_code == 200, v2.text

        percentiles = np.array([r["percentile"] for r in results])
        flagged = int(sum(r["is_anomaly"] for r in results))  # at fpr = 0.01, the default
        assert flagged == int((percentiles < 1).sum())  # the rule the buckets rely on
        assert sum(r["is_anomaly"] for r in results[:200]) <= 10  # digits: about 1 %
        assert sum(r["is_anomaly"] for r in results[200:]) >= 20  # clothes: mostly flagged

        sent = len(results)
        prom.wait_for(f"vae_anomaly_percentile_count{{{labels}}}", sent)
        assert prom.value(f"vae_images_scored_total{{{labels}}}") == sent
        assert prom.value(f'vae_anomaly_percentile_bucket{{{labels}, le="1"}}') == flagged
        assert prom.value(f'vae_anomaly_percentile_bucket{{{labels}, le="50"}}') == int(
            (percentiles <= 50).sum()
        )
        total = prom.value(f"vae_anomaly_percentile_sum{{{labels}}}")
        assert total == pytest.approx(percentiles.sum(), rel=1e-9)
        # The recording rule, evaluated on the scraped series: exactly flagged / sent (both
        # counters start at 0 and are sampled together, so rate()'s extrapolation cancels).
        prom.wait_for(
            f"vae:anomaly_flagged_1pct:ratio10m{{{labels}}}", flagged / sent, tolerance=1e-9
        )
        # The v2 protocol's requests, counted with the model as its client named it.
        v2_labels = (
            f'endpoint="/v2/models/{{name}}/infer", model="mnist-encoder", version="{version}"'
        )
        assert prom.value(f'vae_http_requests_total{{{v2_labels}, status="200"}}') == 1
        elbo_labels = f'endpoint="/elbo", status="200", model="mnist", version="{version}"'
        assert prom.value(f"vae_http_requests_total{{{elbo_labels}}}") == 3
        assert prom.value('vae_ready{job="vae-serve"}') == 1
        # Every dashboard query runs against the real series, and the anomaly panels' have data.
        for query in dashboard_queries():
            answer = prom.query(query)
            if "anomaly" in query:
                assert answer, query
