"""The page at `/`: try a model in the browser (draw, drop, score, sample, walk).

Static files only (app/page/), shipped as package data; the page calls the same
public API as any client, so it needs no route of its own beyond its files.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

PAGE_DIR = Path(__file__).resolve().parent.parent / "page"
ASSETS = "/page"
# What the page may load: its own files and the API (blobs for images the API sent);
# nothing from another origin, so it works on an air-gapped machine and a stray
# reference to a CDN fails in tests instead of leaking a request.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The files of app/page/ (tests/test_page_route.py holds the folder to this list).
FILES = ("index.html", "page.css", "page.js", "icon.svg")
# The page and its assets, and nothing else, load without the API key: the page must
# load to ask for the key. Exact paths: no prefix lets data through.
PATHS = frozenset({"/", *(f"{ASSETS}/{name}" for name in FILES)})


async def index() -> FileResponse:
    """The page (HTML); it loads /page/page.css and /page/page.js."""
    return FileResponse(
        PAGE_DIR / "index.html",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


class PageFiles(StaticFiles):
    """The page's files with its policy: /page/index.html is the page too, and framed
    or fed a foreign script there it would be as exposed as at `/`."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Content-Security-Policy"] = CSP
        return response


def add_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under /page/, outside the API schema."""
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS, PageFiles(directory=PAGE_DIR), name="page")
