"""What is being served: /models and /models/{name}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from app.deps import RegistryDep, SettingsDep
from app.errors import NotFound
from app.registry import ModelVersion
from app.routes import SummaryRoute
from app.schemas import ErrorDetail, ModelDetail, ModelsResponse
from vae_contract import calibration as rule
from vae_contract import scores
from vae_contract.manifest import MODEL_NAME

router = APIRouter(tags=["models"], route_class=SummaryRoute)


def _score_info(mv: ModelVersion) -> dict[str, dict[str, Any]]:
    """Each anomaly score: its default k, and whether its calibration holds here."""
    calibration, shape = mv.manifest.calibration, mv.manifest.input.shape
    info: dict[str, dict[str, Any]] = {}
    for score in scores.SCORES:
        try:
            scores.choose(calibration, score)
            problem = scores.calibration_problem(calibration, score, shape)
        except scores.Unusable as exc:
            problem = str(exc)
        k = scores.default_k(calibration, score)
        n = None if calibration is None else rule.images(calibration, score)
        info[score] = {
            "k": k,
            "calibrated": problem is None,
            "problem": problem,
            "min_fpr": None if problem or n is None else rule.min_fpr(n),
        }
    return info


def _as_loaded(mv: ModelVersion) -> dict[str, Any]:
    """The manifest as its file has it: optional fields it leaves out stay out."""
    manifest: dict[str, Any] = mv.manifest.model_dump(mode="json", exclude_unset=True)
    return manifest


def _version_info(mv: ModelVersion) -> dict[str, Any]:
    manifest = mv.manifest
    return {
        "version": mv.version,
        "provider": mv.provider,
        "loaded_at": mv.loaded_at,
        "created": manifest.created,
        "input": manifest.input.model_dump(),
        "latent_dim": manifest.latent_dim,
        "likelihood": manifest.likelihood,
        "default_score": scores.choose(manifest.calibration, None),
        "scores": _score_info(mv),
        "refused_update": mv.refused_update,
    }


@router.get("/models", response_model=ModelsResponse)
async def list_models(registry: RegistryDep, settings: SettingsDep) -> dict[str, Any]:
    """The models and versions being served, with the execution provider of each."""
    models = [
        {
            "name": name,
            "latest_version": max(versions),
            "versions": [_version_info(mv) for mv in versions.values()],
        }
        for name, versions in registry.models().items()
    ]
    return {"default_model": settings.default_model, "models": models}


@router.get(
    "/models/{name}",
    response_model=ModelDetail,
    responses={404: {"model": ErrorDetail, "description": "No such model is loaded."}},
)
async def get_model(
    registry: RegistryDep,
    name: str = Path(pattern=f"^{MODEL_NAME.pattern}$", max_length=100, examples=["mnist"]),
) -> dict[str, Any]:
    """One model: each version's manifest and provider, and versions refused from the store."""
    versions = registry.models().get(name)
    refused = registry.refusals(name)
    if not versions:
        why = "".join(f"; version {v} was refused: {reason}" for v, reason in refused.items())
        raise NotFound(f"no model named {name!r} is loaded{why}")
    return {
        "name": name,
        "latest_version": max(versions),
        "versions": [{**_version_info(mv), "manifest": _as_loaded(mv)} for mv in versions.values()],
        "refused": [{"version": version, "reason": reason} for version, reason in refused.items()],
    }
