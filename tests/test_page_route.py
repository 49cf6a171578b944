"""How the page is served (no browser needed): its files, the setting that turns it
off, and what it may load without the API key. tests/test_page.py drives it in a
browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.routes.page import FILES, PAGE_DIR


@contextmanager
def serving(store: Path, **settings: Any) -> Iterator[TestClient]:
    """The app on an empty store: the page needs no model to be served."""
    base: dict[str, Any] = {"device": "cpu", "reload_interval_s": 0}
    with TestClient(create_app(Settings(model_store=store, **(base | settings)))) as client:
        yield client


@pytest.fixture
def empty_store(tmp_path: Path) -> Path:
    store = tmp_path / "model_store"
    store.mkdir()
    return store


def test_the_page_folder_holds_exactly_the_files_served() -> None:
    assert sorted(path.name for path in PAGE_DIR.iterdir()) == sorted(FILES)


def test_the_page_and_its_files_are_served(empty_store: Path) -> None:
    with serving(empty_store) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self' blob:" in csp
        for name, kind in {
            "page.js": "javascript",
            "page.css": "text/css",
            "icon.svg": "image/svg+xml",
        }.items():
            response = client.get(f"/page/{name}")
            assert response.status_code == 200, name
            assert kind in response.headers["content-type"], name
            assert response.content == (PAGE_DIR / name).read_bytes()
        assert client.get("/page/nothing.js").status_code == 404
        # The page is no API: it stays out of the schema.
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_the_page_can_be_turned_off(empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_PAGE", "false")
    assert Settings().page is False
    with serving(empty_store, page=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/page/page.js").status_code == 404


def test_without_the_key_only_the_pages_own_files_load(empty_store: Path) -> None:
    with serving(empty_store, api_key="s3cret") as client:
        for path in ("/", *(f"/page/{name}" for name in FILES)):
            assert client.get(path).status_code == 200, path
        # Nothing else: not another path under /page/, not the API the page calls.
        for path in ("/page/", "/page/nothing.js", "/models", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 401, path
        assert client.post("/", content=b"x").status_code == 405  # "/" opens only the page


def test_the_page_refers_to_nothing_outside_the_service() -> None:
    """No CDN, no web font, no absolute URL: the page must work on an air-gapped machine
    (the browser tests also record every request; the CSP refuses other origins)."""
    for name in ("index.html", "page.js", "page.css"):
        text = (PAGE_DIR / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text and "@font-face" not in text, name


def test_the_page_has_its_policy_at_every_address(empty_store: Path) -> None:
    """/page/index.html is the page too: framed or fed a foreign script there it is as
    exposed as at `/`, so it carries the same Content-Security-Policy."""
    with serving(empty_store) as client:
        at_root = client.get("/").headers["content-security-policy"]
        assert "frame-ancestors 'none'" in at_root
        for name in FILES:
            response = client.get(f"/page/{name}")
            assert response.headers.get("content-security-policy") == at_root, name
