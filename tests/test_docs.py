"""The documentation: a short README, and a site that builds strictly and misses nothing.

The site is built once per run with `mkdocs build --strict` into a temporary folder:
a broken link or anchor, a page left out of the navigation, a missing README snippet or
a setting without a description fails the build (mkdocs.yml, docs/hooks.py). The
tests below then read what was built.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from app_support import ROOT

from app.config import Settings
from app.main import create_app

README = ROOT / "README.md"
DOCS = ROOT / "docs"

# Where each section of the README of 2026-12-07 (1,229 lines) went, so that nothing it
# said is dropped: (its heading, the page and anchor that hold it now, a phrase of it).
MOVED = [
    ("Quick start", "getting-started.md#install-and-serve", '--8<-- "README.md:quick-start"'),
    ("Try it in the browser", "getting-started.md#try-it-in-the-browser", "draw a digit"),
    ("API", "api.md#the-http-api", "Every model-bound endpoint takes the"),
    ("GET /sample", "api.md#get-sample", "`n` images from the prior"),
    ("POST /encode", "api.md#post-encode", "the parameters of q(z|x) out"),
    ("POST /decode", "api.md#post-decode", 'Latents in (`{"z"'),
    ("POST /elbo", "api.md#post-elbo", "importance-weighted bound (default"),
    ("POST /elbo/map", "api.md#post-elbomap", "a heat map of −log p(x_i|z)"),
    ("Models, health, metrics, reload", "api.md#models-health-metrics-reload", "/admin/reload"),
    ("(API: reload)", "api.md#new-versions-while-serving", "swapped in\natomically"),
    ("(API: the key)", "api.md#api-key", "`Authorization: Bearer <key>`"),
    ("(API: errors)", "api.md#errors", "never a 500 for bad input"),
    ("(API: limits)", "api.md#limits", "No input makes the service allocate"),
    ("(API: batching)", "api.md#dynamic-batching", "`VAE_MAX_DELAY_MS` makes the first"),
    ("Many clients at once", "api.md#many-clients-at-once", "counted in *rows*"),
    ("Input conversion", "input.md#input-conversion", "ITU-R BT.601 luma"),
    (
        "Open Inference Protocol (KServe v2, Triton)",
        "protocol.md#open-inference-protocol-kserve-v2-triton",
        "binary tensor data extension",
    ),
    ("Training", "training.md#training", "vae-train: data: {…}"),
    ("Large image folders", "training.md#large-image-folders", "`training.data.sha256`"),
    (
        "More processes, more machines: torchrun",
        "training.md#more-processes-more-machines-torchrun",
        "DistributedDataParallel",
    ),
    ("GPU", "training.md#gpu", "scripts/gpu_check.py"),
    (
        "The bundled model: `model_store/mnist/1`",
        "training.md#the-bundled-model-model_storemnist1",
        "**−85.22 nats**",
    ),
    ("Model store", "manifest.md#the-bundled-store", "fashion-mnist/1/"),
    ("How the code is laid out", "architecture.md#how-the-code-is-laid-out", "never torch"),
    ("Anomaly detection", "anomaly.md#anomaly-detection", "Nalisnick et al. 2019"),
    ("Measured", "anomaly.md#measured", "One-class MNIST"),
    ("Configuration", "configuration.md#configuration", "<!-- generated: settings -->"),
    ("Deploy", "deploy.md#deploy", "three targets from one context"),
    ("Container", "deploy.md#container", "docker build --target serve-gpu"),
    ("(Container: image size)", "deploy.md#container", "within the\n300 MB goal"),
    ("Compose", "deploy.md#compose", "docker compose up -d"),
    ("Stopping gracefully (the drain)", "deploy.md#stopping-gracefully-the-drain", "SIGTERM"),
    ("Kubernetes", "deploy.md#kubernetes", "kubectl apply -k deploy/overlays/cpu"),
    ("(Kubernetes: autoscaling)", "deploy.md#kubernetes", "prometheus-adapter"),
    ("KServe", "deploy.md#kserve", "kubectl apply -k deploy/kserve-v2"),
    (
        "What was run here, and what was only validated",
        "deploy.md#what-was-run-here-and-what-was-only-validated",
        "No cluster, no KServe",
    ),
    ("Benchmarks", "benchmarks.md#benchmarks", "bash bench/run.sh"),
    ("Against the goals", "benchmarks.md#against-the-goals", "What the misses come from"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI builds it: strict, from the repository root."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        # Material's banner about its successor, printed on every build.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    return out


def page_html(site: Path, page: str) -> str:
    """The built HTML of docs/<page>.md (directory URLs: <page>/index.html)."""
    stem = page.removesuffix(".md")
    path = site / "index.html" if stem == "index" else site / stem / "index.html"
    return path.read_text()


def page_text(site: Path, page: str) -> str:
    """What a reader sees of a page: its HTML without tags, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page_html(site, page)))


def nav_pages(nav: list[object]) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [str(value)]
    return pages


def mkdocs_nav() -> list[str]:
    # mkdocs.yml is plain YAML except for Material's !!python tags, which it does not use.
    return nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_every_setting_is_in_the_configuration_reference(site: Path) -> None:
    text = page_text(site, "configuration.md")
    for name, field in Settings.model_fields.items():
        assert f"VAE_{name.upper()}" in text, f"VAE_{name.upper()} is not documented"
        assert field.description and " ".join(field.description.split()) in " ".join(text.split())


def test_every_route_is_in_the_api_reference(site: Path) -> None:
    app = create_app(Settings.model_construct())
    text = page_text(site, "reference.md")
    # The schema's paths, and the app's own routes kept out of it (the page, /docs, ...).
    paths = set(app.openapi()["paths"]) | {getattr(route, "path", "") for route in app.routes}
    paths.discard("")  # an included router (FastAPI >= 0.16x): its routes are in the schema
    served = {"/encode", "/decode", "/sample", "/elbo", "/elbo/map", "/models", "/metrics"}
    assert served | {"/admin/reload", "/v2/models/{name}/infer", "/", "/docs"} <= paths
    for path in paths:
        assert path in text, f"the route {path} is not in the API reference"
    # The schema the site offers is the one the service serves.
    assert json.loads((site / "openapi.json").read_text()) == app.openapi()


def test_each_section_of_the_old_readme_has_a_page(site: Path) -> None:
    for heading, target, phrase in MOVED:
        page, anchor = target.split("#")
        assert f'id="{anchor}"' in page_html(site, page), f"{heading!r}: no #{anchor} in {page}"
        assert phrase in (DOCS / page).read_text(), f"{heading!r}: {phrase!r} is not in {page}"


def test_every_page_is_in_the_navigation_and_the_readme_map() -> None:
    nav = mkdocs_nav()
    written = {p.name for p in DOCS.glob("*.md")}
    assert set(nav) == written  # mkdocs --strict also refuses a page outside the nav
    readme = README.read_text()
    for page in nav:
        if page != "index.md":
            assert f"(docs/{page})" in readme, f"the README's map does not link docs/{page}"


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "docs/page/desktop.png" in text  # the page's screenshot
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == ["Quick start", "Call it", "Deploy", "Documentation"]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"the README links {target}, which does not exist"


def test_the_readme_snippets_reach_the_site(site: Path) -> None:
    """getting-started and the home page include the README's own blocks (one copy)."""
    started = page_text(site, "getting-started.md")
    assert ".venv/bin/pip install -e '.[train,dev]'" in started
    assert 'curl -F images=@digit.png "$B/elbo"' in started
    home = page_text(site, "index.md")
    assert "kubectl apply -k deploy/overlays/cpu" in home
    assert "--8<--" not in started + home


def test_the_benchmark_reports_are_pages(site: Path) -> None:
    reports = sorted((ROOT / "bench").glob("*.md"))
    assert reports
    listed = page_html(site, "benchmarks.md")
    for report in reports:
        assert (site / "bench" / report.stem / "index.html").is_file()
        assert f'href="../bench/{report.stem}/"' in listed, f"benchmarks.md does not link {report}"
