"""The model-bound endpoints: /encode, /decode, /sample, /elbo, /elbo/map."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app import inference
from app.deps import ModelName, Version, leased, settings_of
from app.errors import Unprocessable
from app.inputs import NPY, read_body, read_images, read_latents
from app.registry import ModelVersion
from app.render import diverging, encode_png, heat, map_png
from app.routes import QueryRoute
from app.schemas import (
    NPZ,
    ElboResponse,
    EncodeResponse,
    ErrorDetail,
    NumpyJSON,
    PixelsResponse,
    SampleResponse,
    npy,
    npz,
    wants_npz,
)
from vae_contract import maps
from vae_contract.scores import Score

router = APIRouter(tags=["vae"], route_class=QueryRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorDetail, "description": text}
    for code, text in {
        400: "Malformed body: invalid JSON or base64, corrupt image, unreadable .npy.",
        401: "Missing or wrong API key (when VAE_API_KEY is set).",
        404: "Unknown model or version.",
        413: "Body too large, too many images or pixels, decompression bomb, more model "
        "work than one request may need (VAE_MAX_QUEUE rows).",
        415: "Unsupported content type, or a file that is not an image.",
        422: "Wrong size, channels, range or latent length; NaN; empty batch; limits.",
        503: "Busy (VAE_MAX_QUEUE, VAE_MAX_CONCURRENCY) or not ready; retry after the "
        "Retry-After header.",
        504: "The request took longer than VAE_REQUEST_TIMEOUT_S.",
    }.items()
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_IMAGES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "Images as multipart files in the field `images`, as JSON (base64 image files "
            "or pixel arrays N×H×W, N×C×H×W or N×H×W×C of floats in [0, 1]), as a .npy body "
            "(uint8, uint16, bool or floats in [0, 1], the same layouts), or as one raw image "
            "body. docs/input.md (Input conversion) says what each becomes."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["images"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string"}},
                        "pixels": {"type": "array", "items": {}},
                    },
                },
                "examples": {
                    "files": {"value": {"images": ["iVBORw0KGgoAAAANSUhEUgAA..."]}},
                    "pixels": {"value": {"pixels": [[[0.0, 0.5], [1.0, 0.0]]]}},
                },
            },
            NPY: _BINARY,
            "image/png": _BINARY,
        },
    }
}
_LATENTS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Latents N×L (or one vector of length L) as JSON or a .npy body.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"z": {"type": "array", "items": {}}},
                    "required": ["z"],
                },
                "example": {"z": [[0.1, -0.4, 1.2]]},
            },
            NPY: _BINARY,
        },
    }
}


def _png_or_json(model: type[PixelsResponse]) -> dict[int | str, dict[str, Any]]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        200: {
            "description": "A PNG (one image, or a grid for several), or JSON with format=json.",
            "content": {"image/png": {}, "application/json": {"schema": schema}},
        },
        **_ERRORS,
    }


Resize = Annotated[
    bool | Literal["stretch", "crop"],
    Query(
        description="Images of another size than the model's are refused (422) unless this "
        "is true or stretch (resized to the model's height×width) or crop (centre-cropped to "
        "its aspect ratio first, as the trainer's --center-crop). The answer's X-Resize "
        "header says which rule was applied."
    ),
]
Format = Annotated[
    Literal["png", "json"], Query(description="png (default) or json (pixel means N×C×H×W).")
]
Seed = Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Seed for the noise.")]


# Answers with more results are written off the event loop.
_INLINE_RESULTS = 8


def _headers(mv: ModelVersion) -> dict[str, str]:
    """Which model answered, for binary answers that cannot say it in their body."""
    return {"X-Model": mv.name, "X-Model-Version": str(mv.version)}


def _resized(response: Response, resize: bool | str) -> Response:
    """Say which rule images of another size were resized by (none when resize was not asked)."""
    response.headers["X-Resize"] = "crop" if resize == "crop" else "stretch" if resize else "none"
    return response


async def _json(content: dict[str, Any], results: int) -> Response:
    """A JSON answer; one of many results is written on a worker thread, so that
    writing it (a millisecond for 256 encodings) does not stall the event loop."""
    if results <= _INLINE_RESULTS:
        return NumpyJSON(content)
    return await run_in_threadpool(NumpyJSON, content)


async def _pixels(mv: ModelVersion, pixels: np.ndarray, fmt: str, **extra: Any) -> Response:
    """Pixel means (N, C, H, W) as a PNG (grid for N > 1) or JSON."""
    if fmt == "json":
        content = {"model": mv.name, "version": mv.version, **extra, "pixels": pixels}
        return await _json(content, len(pixels))
    headers = _headers(mv)
    if "seed" in extra:
        headers["X-Seed"] = str(extra["seed"])
    png = encode_png(pixels) if len(pixels) == 1 else await run_in_threadpool(encode_png, pixels)
    return Response(png, media_type="image/png", headers=headers)


_ENCODE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON; with `Accept: application/x-npz`, one .npz holding mean and "
        "log_var (and z with sample=true), N×L float32 each.",
        "content": {NPZ: _BINARY},
    },
    **_ERRORS,
}


@router.post(
    "/encode",
    response_model=EncodeResponse,
    responses=_ENCODE_RESPONSES,
    openapi_extra=_IMAGES_BODY,
)
async def encode(
    request: Request,
    model: ModelName = None,
    version: Version = None,
    sample: Annotated[bool, Query(description="Also draw z = mean + std·eps per image.")] = False,
    seed: Seed = None,
    resize: Resize = False,
) -> Response:
    """Encode images to q(z|x): mean and log_var per image, and z with sample=true."""
    settings = settings_of(request)
    # The body first: a slow upload must not hold a version that a reload retires.
    body = await read_body(request, settings.max_body_bytes)
    with leased(request, model, version) as mv:
        x = await read_images(request, mv.manifest, settings, resize=resize, body=body)
        encoded = await inference.encode(mv, x, sample=sample, seed=seed)
        if wants_npz(request.headers.get("accept")):
            arrays = {"mean": encoded.mean, "log_var": encoded.log_var}
            if encoded.z is not None:
                arrays["z"] = encoded.z
            return _resized(npz(arrays, _headers(mv)), resize)
        # orjson writes numpy rows directly, but only C-contiguous ones.
        means, log_vars = np.ascontiguousarray(encoded.mean), np.ascontiguousarray(encoded.log_var)
        results: list[dict[str, np.ndarray]] = [
            {"mean": mean, "log_var": log_var}
            for mean, log_var in zip(means, log_vars, strict=True)
        ]
        if encoded.z is not None:
            for result, z in zip(results, np.ascontiguousarray(encoded.z), strict=True):
                result["z"] = z
        answer = await _json({"model": mv.name, "version": mv.version, "results": results}, len(x))
        return _resized(answer, resize)


@router.post(
    "/decode",
    response_model=PixelsResponse,
    responses=_png_or_json(PixelsResponse),
    openapi_extra=_LATENTS_BODY,
)
async def decode(
    request: Request, model: ModelName = None, version: Version = None, format: Format = "png"
) -> Response:
    """Decode latents to pixel means: a PNG (a grid for several) or JSON."""
    settings = settings_of(request)
    body = await read_body(request, settings.max_body_bytes)
    with leased(request, model, version) as mv:
        z = await read_latents(request, mv.manifest.latent_dim, settings, body=body)
        pixels = await inference.decode(mv, z)
        return await _pixels(mv, pixels, format)


@router.get("/sample", response_model=SampleResponse, responses=_png_or_json(SampleResponse))
async def sample(
    request: Request,
    model: ModelName = None,
    version: Version = None,
    n: Annotated[int, Query(ge=1, description="How many images (at most VAE_MAX_SAMPLES).")] = 1,
    seed: Seed = None,
    temperature: Annotated[
        float, Query(ge=0, le=10, description="Scale of the prior's standard deviation.")
    ] = 1.0,
    format: Format = "png",
) -> Response:
    """Draw n images from the prior: decode z ~ N(0, temperature² I)."""
    settings = settings_of(request)
    with leased(request, model, version) as mv:
        if n > settings.max_samples:
            raise Unprocessable(f"n={n} is above the limit of {settings.max_samples}")
        seed = secrets.randbits(63) if seed is None else seed  # reported back, so reproducible
        z = inference.prior(seed, n, mv.manifest.latent_dim, temperature)
        pixels = await inference.decode(mv, z)
        return await _pixels(mv, pixels, format, seed=seed, temperature=temperature, z=z)


@router.post("/elbo", response_model=ElboResponse, responses=_ERRORS, openapi_extra=_IMAGES_BODY)
async def elbo(
    request: Request,
    model: ModelName = None,
    version: Version = None,
    k: Annotated[
        int | None,
        Query(
            ge=1,
            description="Importance samples; k > 1 gives the IWAE bound. Default: the k the "
            "score was calibrated at (iwae: the manifest's, e.g. 64; the others: 1).",
        ),
    ] = None,
    seed: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Noise seed; fixed so scores repeat.")
    ] = 0,
    fpr: Annotated[
        float,
        Query(
            ge=0,
            le=1,
            description="False-positive rate the threshold is set for, on held-out normal "
            "images. Thresholds hold at the score's calibrated k: compare scores at that k.",
        ),
    ] = 0.01,
    score: Annotated[
        Score,
        Query(
            description="The anomaly score: typicality (how far the image's ELBO, KL, PNG "
            "code length and pixel entropy lie from normal images'), elbo (-ELBO), iwae "
            "(minus the importance-weighted bound) or complexity (-ELBO minus the PNG code "
            "length in nats). Without it, versions calibrated before typicality existed "
            "are scored with elbo. See docs/manifest.md."
        ),
    ] = "typicality",
    resize: Resize = False,
) -> Response:
    """Score images: ELBO, reconstruction, KL, bits/dim, an anomaly score and flag per image."""
    settings = settings_of(request)
    body = await read_body(request, settings.max_body_bytes)
    with leased(request, model, version) as mv:
        # Unasked, the version's default: elbo for versions without typicality's detector.
        chosen = inference.choose_score(mv, score if "score" in request.query_params else None)
        k = inference.importance_samples(mv, chosen, k, settings.max_k)
        x = await read_images(request, mv.manifest, settings, resize=resize, body=body)
        found = await inference.assess(mv, x, k=k, seed=seed, score=chosen, fpr=fpr)
        bounds, percentiles = found.bounds, found.percentile
        bits, entropy = found.statistics.complexity_bits, found.statistics.pixel_entropy
        flags, limit = found.is_anomaly, found.threshold
        results = []
        for i, bound in enumerate(bounds.elbo.tolist()):
            results.append(
                {
                    "elbo": bound,
                    "reconstruction": float(bounds.reconstruction[i]),
                    "kl": float(bounds.kl[i]),
                    "bits_per_dim": float(bounds.bits_per_dim[i]),
                    "anomaly_score": float(found.anomaly_score[i]),
                    "complexity_bits": None if bits is None else float(bits[i]),
                    "pixel_entropy": None if entropy is None else float(entropy[i]),
                    "percentile": None if percentiles is None else float(percentiles[i]),
                    "is_anomaly": None if flags is None else bool(flags[i]),
                }
            )
        answer = await _json(
            {
                "model": mv.name,
                "version": mv.version,
                "k": k,
                "seed": seed,
                "score": chosen,
                "fpr": fpr,
                # The ELBO threshold of score=elbo, as before scores had calibrations of their own.
                "threshold": None if limit is None or chosen != "elbo" else -limit,
                "anomaly_threshold": limit,
                "calibration_problem": found.problem,
                "results": results,
            },
            len(results),
        )
        return _resized(answer, resize)


_MAP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "format=png: an RGB PNG, per image a row of input | reconstruction | "
        "map. format=json: the maps' numbers. format=npy: the chosen map, N×H×W float32.",
        "content": {"image/png": {}, "application/json": {}, NPY: _BINARY},
    },
    **_ERRORS,
}
MapKind = Annotated[
    Literal["nats", "deviation"],
    Query(
        description="nats: -log p(x_i|z) per pixel (one-sided, in nats); deviation: the "
        "two-sided map in standard deviations, negative where the image is more predictable "
        "than the model's own samples (a smudge). docs/manifest.md, The maps."
    ),
]
MapFormat = Annotated[
    Literal["png", "json", "npy"],
    Query(description="png (default), json (both maps' numbers) or npy (the chosen map)."),
]


@router.post("/elbo/map", responses=_MAP_RESPONSES, openapi_extra=_IMAGES_BODY)
async def elbo_map(
    request: Request,
    model: ModelName = None,
    version: Version = None,
    zoom: Annotated[int, Query(ge=1, le=16, description="Pixels per image pixel.")] = 4,
    map: MapKind = "nats",
    format: MapFormat = "png",
    resize: Resize = False,
) -> Response:
    """Where images depart from the model: input | reconstruction | per-pixel map."""
    settings = settings_of(request)
    body = await read_body(request, settings.max_body_bytes)
    with leased(request, model, version) as mv:
        x = await read_images(request, mv.manifest, settings, resize=resize, body=body)
        two_sided = format == "json" or map == "deviation"
        found = await inference.reconstruct(mv, x, two_sided=two_sided)
        chosen = found.nats if map == "nats" else found.deviation
        assert chosen is not None
        if format == "npy":
            return _resized(npy(chosen.astype(np.float32), _headers(mv)), resize)
        if format == "json":
            content = {
                "model": mv.name,
                "version": mv.version,
                "likelihood": mv.manifest.likelihood,
                "window": maps.WINDOW,
                "nats": found.nats.astype(np.float32),
                "deviation": None
                if found.deviation is None
                else found.deviation.astype(np.float32),
            }
            return _resized(await _json(content, len(x)), resize)
        panel = heat(found.nats) if map == "nats" else diverging(chosen)
        png = await run_in_threadpool(map_png, x, found.means, panel, zoom)
        return _resized(Response(png, media_type="image/png", headers=_headers(mv)), resize)
