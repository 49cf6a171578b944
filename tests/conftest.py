"""Shared fixtures: a tiny model trained once per session, and real MNIST images;
the budgets of the property-based tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from app_support import MNIST_TEST_IMAGES, TINY_MODEL, read_mnist
from hypothesis import HealthCheck, settings

# Property-based tests (hypothesis, schemathesis) are deterministic and small in CI: a
# fixed derandomized search, no example database. VAE_HYPOTHESIS=explore searches far
# more, with fresh randomness, for a developer hunting bugs.
settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    settings.get_profile("ci"),
    max_examples=int(os.environ.get("VAE_HYPOTHESIS_EXAMPLES", "2000")),
    derandomize=False,
)
settings.load_profile(os.environ.get("VAE_HYPOTHESIS", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _no_grpc_port() -> Iterator[None]:
    """Apps built in tests serve no gRPC unless a test asks: its fixed default port
    (8001) would collide between two apps, or with another test run on the machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAE_GRPC_PORT", "0")
        yield


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding mnist/1, trained for seconds by the real trainer.

    Tests must not write into it; copy it (see `store_copy`) to change it.
    """
    from trainer.train import main as train  # the trainer needs torch: only tests import it

    root = tmp_path_factory.mktemp("trained")
    store = root / "model_store"
    argv = ["--data", str(MNIST_TEST_IMAGES.parent), "--out", str(store / "mnist")]
    argv += ["--checkpoint-dir", str(root / "runs"), *TINY_MODEL]
    assert train(argv) == 0, "the trainer could not make the test model"
    return store


@pytest.fixture(scope="session")
def version_dir(model_store: Path) -> Path:
    return model_store / "mnist" / "1"


@pytest.fixture
def store_copy(model_store: Path, tmp_path: Path) -> Path:
    """A private copy of the trained store, for tests that add or break versions."""
    copy = tmp_path / "model_store"
    shutil.copytree(model_store, copy)
    return copy


@pytest.fixture(scope="session")
def mnist() -> np.ndarray:
    """The first 64 MNIST test images, uint8 (64, 28, 28)."""
    assert MNIST_TEST_IMAGES.is_file(), f"{MNIST_TEST_IMAGES} is missing (../shared/data)"
    return read_mnist(64)
