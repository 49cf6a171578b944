"""The HTTP ceiling: a bare FastAPI app on uvicorn with one route, GET /healthz.

Whatever a FastAPI + uvicorn service does per request costs at least this
much; bench/run.py measures vae-serve's single-image /encode against it.

    uvicorn --factory bench.bare_server:create_app --port 8112
"""

from __future__ import annotations

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI(title="bare FastAPI")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
