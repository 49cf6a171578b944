"""Health checks, metrics and the admin reload."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.deps import RegistryDep, SettingsDep, registry_of
from app.errors import Forbidden
from app.metrics import CONTENT_TYPE, Metrics
from app.routes import QueryRoute, SummaryRoute
from app.schemas import Health, Readiness, ReloadResponse

# The probes are called often and by everyone: Starlette's plain request wrapper
# (QueryRoute), like the model routes, not FastAPI's dependency machinery.
probes = APIRouter(tags=["operations"], route_class=QueryRoute)
router = APIRouter(tags=["operations"], route_class=SummaryRoute)

_OK = b'{"status":"ok"}'


@probes.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Response:
    """Liveness: the process is up and answering."""
    return Response(_OK, media_type="application/json")


@probes.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `detail` says why."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the default model is loaded and its batchers run, else 503
    with the reason."""
    reason = registry_of(request).readiness()
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


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses={
        403: {"description": "The admin endpoints are off (no VAE_API_KEY, no VAE_ADMIN)."},
        503: {"description": "The model store cannot be read; what was loaded serves on."},
    },
)
async def reload(registry: RegistryDep, settings: SettingsDep) -> ReloadResponse:
    """Scan the model store now: load new versions, refuse broken ones, retire removed ones.

    Off unless VAE_API_KEY is set (then it needs the key) or VAE_ADMIN=true."""
    if not settings.admin_enabled:
        raise Forbidden(
            "the admin endpoints are off: set VAE_API_KEY (they then need the key) "
            "or VAE_ADMIN=true to open them"
        )
    report = await registry.reload()
    return ReloadResponse(loaded=report.loaded, refused=report.refused, retired=report.retired)
