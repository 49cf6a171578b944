"""Settings come from VAE_* variables and refuse nonsense at startup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, get_settings


def test_defaults_serve_the_bundled_store_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("VAE_")]:
        monkeypatch.delenv(name)
    settings = Settings()
    assert settings.model_store == Path("model_store") and settings.default_model == "mnist"
    assert (settings.host, settings.port, settings.device) == ("127.0.0.1", 8000, "auto")
    assert settings.api_key is None and settings.threads >= 1


def test_the_environment_sets_every_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "VAE_MODEL_STORE": "/srv/models",
        "VAE_DEFAULT_MODEL": "fashion-mnist",
        "VAE_DEVICE": "cpu",
        "VAE_MAX_BATCH_SIZE": "32",
        "VAE_MAX_DELAY_MS": "5",
        "VAE_MAX_QUEUE": "64",
        "VAE_MAX_IMAGES_PER_REQUEST": "10",
        "VAE_MAX_BODY_BYTES": "4096",
        "VAE_MAX_PIXELS": "1000",
        "VAE_MAX_SAMPLES": "3",
        "VAE_MAX_K": "7",
        "VAE_INTRA_OP_THREADS": "2",
        "VAE_API_KEY": "s3cret",
        "VAE_RELOAD_INTERVAL_S": "0",
        "VAE_HOST": "0.0.0.0",
        "VAE_PORT": "9000",
        "VAE_LOG_LEVEL": "debug",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    get_settings.cache_clear()
    assert settings.model_store == Path("/srv/models")
    assert settings.default_model == "fashion-mnist" and settings.device == "cpu"
    assert (settings.max_batch_size, settings.max_delay_ms, settings.max_queue) == (32, 5.0, 64)
    assert (settings.max_images_per_request, settings.max_body_bytes) == (10, 4096)
    assert (settings.max_pixels, settings.max_samples, settings.max_k) == (1000, 3, 7)
    assert settings.threads == 2 and settings.reload_interval_s == 0
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9000, "debug")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("VAE_DEFAULT_MODEL", "../etc", "is not a model name"),
        ("VAE_DEVICE", "tpu", "auto"),
        ("VAE_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("VAE_MAX_QUEUE", "8", "must be at least max_batch_size"),
        ("VAE_MAX_DELAY_MS", "-1", "greater than or equal to 0"),
        ("VAE_PORT", "http", "valid integer"),
    ],
)
def test_nonsense_fails_fast(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    monkeypatch.setenv(field, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_an_empty_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_API_KEY", "")
    assert Settings().api_key is None
