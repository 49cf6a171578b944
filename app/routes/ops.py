"""Health checks, metrics and the admin reload."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.deps import RegistryDep
from app.metrics import CONTENT_TYPE, Metrics
from app.routes import SummaryRoute
from app.schemas import Health, Readiness, ReloadResponse

router = APIRouter(tags=["operations"], route_class=SummaryRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process is up and answering."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `detail` says why."}},
)
async def readyz(registry: RegistryDep) -> JSONResponse:
    """Readiness: 200 once the default model is loaded, 503 with the reason before."""
    reason = registry.readiness()
    if reason is None:
        return JSONResponse({"ready": True, "detail": None})
    return JSONResponse({"ready": False, "detail": reason}, 503, headers={"Retry-After": "1"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, errors, batch sizes, queue wait."""
    collected: Metrics = request.app.state.metrics
    return Response(collected.render(), media_type=CONTENT_TYPE)


@router.post("/admin/reload", response_model=ReloadResponse)
async def reload(registry: RegistryDep) -> ReloadResponse:
    """Scan the model store now: load new versions, refuse broken ones, retire removed ones."""
    report = await registry.reload()
    return ReloadResponse(loaded=report.loaded, refused=report.refused, retired=report.retired)
