"""Settings come from VAE_* variables and refuse nonsense at startup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, available_cpus, get_settings


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
        "VAE_MAX_CONCURRENCY": "12",
        "VAE_REQUEST_TIMEOUT_S": "2.5",
        "VAE_ADMIN": "true",
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
    assert (settings.max_concurrency, settings.request_timeout_s, settings.admin) == (12, 2.5, True)


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


def test_admin_endpoints_need_a_key_or_vae_admin() -> None:
    assert not Settings().admin_enabled
    assert Settings(admin=True).admin_enabled
    assert Settings(api_key="s3cret").admin_enabled


def test_the_default_budget_admits_the_largest_request_the_limits_allow() -> None:
    settings = Settings()
    largest = settings.max_images_per_request * (1 + settings.max_k)  # /elbo, every image, max k
    assert largest <= settings.max_queue


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs -> 2 threads
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # no quota: the affinity
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_threads_follow_the_cgroup_cpu_quota_not_the_affinity(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))
