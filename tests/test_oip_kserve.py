"""KServe's own REST client against vae-serve on 127.0.0.1: health, binary and JSON
tensors, parameters, and an error with the server's sentence.

The client runs in a process of its own (tests/oip_kserve_client.py): `kserve` and
tritonclient's gRPC module (tests/test_oip.py) cannot share one protobuf descriptor pool.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from app_support import Reference, Server, read_mnist, serve

CLIENT = Path(__file__).with_name("oip_kserve_client.py")


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(model_store, tmp_path_factory.mktemp("kserve"), VAE_RELOAD_INTERVAL_S="0") as s:
        yield s


def test_kserves_client_works_unchanged(server: Server, version_dir: Path, tmp_path: Path) -> None:
    images = read_mnist(3)[:, None]
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [sys.executable, CLIENT, server.url, tmp_path / "images.npy"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout)
    assert found["live"] is True and found["ready"] is True
    assert found["encoder_ready"] is True and found["unknown_ready"] is False

    ref = Reference(version_dir)
    x = ref.x(images[:, 0])
    mean, _ = ref.encode(x)
    np.testing.assert_array_equal(np.asarray(found["mean_binary"], np.float32), mean)
    np.testing.assert_array_equal(np.asarray(found["mean_json"], np.float32), mean)
    want = ref.elbo(x, k=4, seed=2)
    for name in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(found["elbo"][name], want[name], rtol=1e-6, err_msg=name)
    assert found["elbo_parameters"]["k"] == 4 and found["elbo_parameters"]["seed"] == 2
    assert found["error"]["status"] == 400
    assert "input 'x' has datatype 'FP64'; it accepts FP32 or UINT8" in found["error"]["message"]
