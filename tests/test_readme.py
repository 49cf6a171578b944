"""The documented API examples run, as written, against the bundled model store: the
README's four calls, then the ```sh blocks of docs/api.md and docs/protocol.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from app_support import BUNDLED_STORE, ROOT, serve

README = ROOT / "README.md"
API_PAGES = [ROOT / "docs" / "api.md", ROOT / "docs" / "protocol.md"]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def readme_calls() -> list[str]:
    """The ```sh blocks of the README's `## Call it` section."""
    section = README.read_text().split("\n## Call it\n", 1)[1].split("\n## ", 1)[0]
    return sh_blocks(section)


def api_examples() -> list[str]:
    """The README's calls, then the ```sh blocks of the API pages, in order."""
    return readme_calls() + [block for page in API_PAGES for block in sh_blocks(page.read_text())]


def test_the_readme_calls_each_endpoint_of_the_mission() -> None:
    script = "\n".join(readme_calls())
    for endpoint in ("/encode", "/decode", "/sample", "/elbo"):
        assert f'"$B{endpoint}' in script, f"the README does not call {endpoint}"


def test_the_api_pages_have_examples_for_every_endpoint() -> None:
    script = "\n".join(api_examples())
    for endpoint in (
        "/encode",
        "/decode",
        "/sample",
        "/elbo",
        "/healthz",
        "/readyz",
        "/models",
        "/metrics",
        "/admin/reload",
    ):
        assert f"$B{endpoint}" in script, f"no curl example for {endpoint}"


@pytest.mark.slow
def test_every_api_example_works_against_the_bundled_model(tmp_path: Path) -> None:
    assert (BUNDLED_STORE / "mnist").is_dir(), "the bundled model model_store/mnist is missing"
    # The examples call .venv/bin/python relative to the repository, as a reader would.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    # VAE_ADMIN opens /admin/reload without a key, as docs/api.md's example says.
    with serve(BUNDLED_STORE, tmp_path, VAE_RELOAD_INTERVAL_S="0", VAE_ADMIN="true") as server:
        for block in api_examples():
            script = (
                "set -euo pipefail\n"
                # Any HTTP error fails the example, not only a refused connection.
                'curl() { command curl --fail-with-body --silent --show-error "$@"; }\n'
                + block.replace("B=http://127.0.0.1:8000", f"B={server.url}")
            )
            env = {**os.environ, "B": server.url, "VAE_API_KEY": "unused-by-this-server"}
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, (
                f"{block}\nstdout: {result.stdout[-2000:]}\n"
                f"stderr: {result.stderr[-2000:]}\nserver: {server.log_tail()}"
            )
    assert (tmp_path / "grid.png").stat().st_size > 0
    png = b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "decoded.png").read_bytes()[:8] == png
    assert (tmp_path / "reconstruction.png").read_bytes()[:8] == png  # the README's decode
    assert (tmp_path / "encoded.npz").read_bytes()[:2] == b"PK"  # an .npz is a zip
