"""The registry against a real exported model: scanning, verification, hot reload."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from app_support import Reference, copy_version

from app.batcher import BatcherClosed, QueueFull
from app.config import Settings
from app.errors import NotFound, PayloadTooLarge, Unavailable
from app.metrics import Metrics
from app.registry import Registry, scan
from vae_contract.graphs import session_options


def settings_for(store: Path, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {"device": "cpu", "reload_interval_s": 0, "intra_op_threads": 1}
    return Settings(model_store=store, **(defaults | overrides))


@pytest.fixture
async def registry(store_copy: Path) -> AsyncIterator[Registry]:
    registry = Registry(settings_for(store_copy), Metrics())
    await registry.reload()
    yield registry
    await registry.stop()


def mnist_dir(store: Path) -> Path:
    return store / "mnist"


def test_scan_sees_versions_only(store_copy: Path) -> None:
    junk = [".2.tmp-x8k2", "notes", "01", "0"]  # staging, not an integer, not canonical
    for name in junk:
        (mnist_dir(store_copy) / name).mkdir()
    (mnist_dir(store_copy) / "7").write_text("a file, not a folder")
    (store_copy / "Not_A_Name" / "1").mkdir(parents=True)
    assert list(scan(store_copy).versions) == [("mnist", 1)]
    assert scan(store_copy / "missing").versions == {}


async def test_the_newest_version_is_served_unless_one_is_pinned(
    registry: Registry, store_copy: Path
) -> None:
    copy_version(mnist_dir(store_copy) / "1", store_copy, 2)
    report = await registry.reload()
    assert report.loaded == ["mnist/2"] and report.refused == {} and report.retired == []
    assert registry.resolve(None, None).version == 2
    assert registry.resolve("mnist", 1).version == 1
    assert registry.readiness() is None
    with pytest.raises(NotFound, match=r"no version 9 loaded \(loaded: \[1, 2\]\)"):
        registry.resolve("mnist", 9)
    with pytest.raises(NotFound, match="no model named 'fashion' is loaded"):
        registry.resolve("fashion", None)


async def test_a_loaded_version_computes_what_its_encoder_graph_computes(
    registry: Registry, version_dir: Path, mnist: np.ndarray
) -> None:
    reference = Reference(version_dir)
    x = reference.x(mnist[:5])
    mv = registry.resolve(None, None)
    assert mv.provider == "CPUExecutionProvider"
    mean, log_var = await mv.encoder.submit(x)
    want_mean, want_log_var = reference.encode(x)
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(log_var, want_log_var)


def _flip_a_byte(folder: Path) -> None:
    data = bytearray((folder / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "decoder.onnx").write_bytes(bytes(data))


def _not_onnx(folder: Path) -> None:
    (folder / "encoder.onnx").write_bytes(b"this is not a protobuf")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["sha256"] = hashlib.sha256(b"this is not a protobuf").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(changes)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _wrong_latent_dim(folder: Path) -> None:
    """A manifest that is consistent with itself (latent 9) but not with the graphs (8)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["latent_dim"] = 9
    graphs = manifest["graphs"]
    graphs["encoder"]["outputs"] = {"mean": ["batch", 9], "log_var": ["batch", 9]}
    graphs["decoder"]["inputs"] = {"z": ["batch", 9]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "bad checksum": (_flip_a_byte, "decoder.onnx has sha256 [0-9a-f]+, the manifest says"),
    "unreadable onnx": (_not_onnx, "ONNX Runtime cannot load encoder.onnx"),
    "graphs unlike the manifest": (_wrong_latent_dim, r"shape \[.*\], the manifest declares"),
    "unknown likelihood": (_edit(likelihood="gaussian"), "likelihood"),
    "misplaced manifest": (_edit(version=3), "describes mnist version 3, but lies in mnist/2"),
    "no manifest": (lambda folder: (folder / "manifest.json").unlink(), "manifest.json is missing"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
async def test_a_broken_version_is_refused_with_a_log_line_and_the_old_one_serves_on(
    registry: Registry, store_copy: Path, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    breaks, reason = BREAKAGES[breakage]
    good = registry.resolve(None, None)
    broken = copy_version(mnist_dir(store_copy) / "1", store_copy, 2)
    breaks(broken)
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        report = await registry.reload()
    assert list(report.refused) == ["mnist/2"]
    assert re.search(reason, report.refused["mnist/2"]), report.refused["mnist/2"]
    assert any("refused mnist version 2" in r.getMessage() for r in caplog.records)
    assert registry.resolve(None, None) is good
    assert registry.refusals("mnist") == {2: report.refused["mnist/2"]}
    assert registry.readiness() is None

    caplog.clear()
    again = await registry.reload()  # unchanged files: not retried, not logged again
    assert again.refused == {} and not caplog.records

    shutil.rmtree(broken)
    copy_version(mnist_dir(store_copy) / "1", store_copy, 2)  # fixed
    assert (await registry.reload()).loaded == ["mnist/2"]
    assert registry.resolve(None, None).version == 2 and registry.refusals("mnist") == {}


async def test_hot_reload_swaps_atomically_and_requests_in_flight_finish_on_the_old_version(
    registry: Registry, store_copy: Path, version_dir: Path, mnist: np.ndarray
) -> None:
    x = Reference(version_dir).x(mnist[:3])
    old = registry.resolve(None, None)
    with old.lease():  # a request in flight on version 1
        copy_version(mnist_dir(store_copy) / "1", store_copy, 2)
        shutil.rmtree(mnist_dir(store_copy) / "1")
        report = await registry.reload()
        assert report.loaded == ["mnist/2"] and report.retired == ["mnist/1"]
        assert registry.resolve(None, None).version == 2  # new requests: the new version
        with pytest.raises(NotFound):
            registry.resolve("mnist", 1)
        mean, _ = await old.encoder.submit(x)  # the one in flight still completes
        assert mean.shape == (3, 8)
    await registry.retired()  # its last lease ended: now it is stopped
    with pytest.raises(BatcherClosed):
        await old.encoder.submit(x)


async def test_a_version_whose_files_change_is_reloaded(
    registry: Registry, store_copy: Path
) -> None:
    old = registry.resolve(None, None)
    _edit(note="retrained in place")(mnist_dir(store_copy) / "1")
    report = await registry.reload()
    assert report.loaded == ["mnist/1"] and report.retired == ["mnist/1"]
    new = registry.resolve(None, None)
    assert new is not old and new.manifest.model_extra == {"note": "retrained in place"}


async def test_readiness_gives_the_reason(store_copy: Path, tmp_path: Path) -> None:
    empty = Registry(settings_for(tmp_path / "empty"), Metrics())
    assert empty.readiness() == f"loading models from {tmp_path / 'empty'}"
    await empty.reload()
    assert empty.readiness() == (
        f"default model 'mnist' is not loaded: no version of it in {tmp_path / 'empty'}"
    )
    _edit(likelihood="gaussian")(mnist_dir(store_copy) / "1")
    broken = Registry(settings_for(store_copy), Metrics())
    await broken.reload()
    reason = broken.readiness()
    assert reason is not None and "version 1 was refused" in reason and "likelihood" in reason
    await broken.stop()
    assert broken.readiness() == "shutting down"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
)
async def test_device_cuda_without_cuda_is_refused(store_copy: Path) -> None:
    registry = Registry(settings_for(store_copy, device="cuda"), Metrics())
    report = await registry.reload()
    assert "VAE_DEVICE=cuda" in report.refused["mnist/1"]
    await registry.stop()


def test_cpu_sessions_do_not_spin() -> None:
    options = session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


async def test_any_failure_to_load_refuses_that_version_alone(
    registry: Registry, store_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only the failures the loader words (LoadError): an OSError it does not
    expect refuses its version, and the pass goes on with the next one."""
    unreadable = copy_version(mnist_dir(store_copy) / "1", store_copy, 2)
    (unreadable / "manifest.json").unlink()
    (unreadable / "manifest.json").mkdir()  # reading it raises IsADirectoryError
    copy_version(mnist_dir(store_copy) / "1", store_copy, 3)
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        report = await registry.reload()
    assert report.loaded == ["mnist/3"]
    assert report.refused["mnist/2"].startswith("IsADirectoryError: ")
    assert registry.resolve(None, None).version == 3
    assert registry.refusals("mnist") == {2: report.refused["mnist/2"]}
    assert any("refused mnist version 2" in r.getMessage() for r in caplog.records)


async def test_a_pass_cancelled_half_way_leaves_nothing_it_loaded_running(
    registry: Registry,
    store_copy: Path,
    version_dir: Path,
    mnist: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy_version(mnist_dir(store_copy) / "1", store_copy, 2)
    copy_version(mnist_dir(store_copy) / "1", store_copy, 3)
    started, loading_3 = [], asyncio.Event()
    load = registry._load

    async def load_until_cancelled(key: Any, path: Path, fingerprint: Any) -> Any:
        if key == ("mnist", 3):  # hangs until the pass is cancelled (a shutdown)
            loading_3.set()
            await asyncio.Event().wait()
        mv = await load(key, path, fingerprint)
        started.append(mv)
        return mv

    monkeypatch.setattr(registry, "_load", load_until_cancelled)
    reloading = asyncio.create_task(registry.reload())
    await loading_3.wait()
    reloading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reloading
    (two,) = started
    with pytest.raises(BatcherClosed):  # version 2 was loaded by the pass, and stopped
        await two.encoder.submit(Reference(version_dir).x(mnist[:1]))
    assert registry.resolve(None, None).version == 1  # the table never changed


async def test_a_version_corrupted_after_loading_serves_on_and_is_reported_once(
    registry: Registry, store_copy: Path, version_dir: Path, mnist: np.ndarray
) -> None:
    served = registry.resolve(None, None)
    _flip_a_byte(mnist_dir(store_copy) / "1")
    report = await registry.reload()
    assert list(report.refused) == ["mnist/1"] and report.retired == []
    assert registry.resolve(None, None) is served  # from memory
    mean, _ = await served.encoder.submit(Reference(version_dir).x(mnist[:1]))
    assert mean.shape == (1, 8)
    assert served.refused_update is not None and "sha256" in served.refused_update
    assert registry.refusals("mnist") == {}  # reported on the version, not as refused too
    assert registry.readiness() is None


async def test_a_store_that_cannot_be_listed_changes_nothing(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unlistable(store: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(store))

    monkeypatch.setattr("app.registry.scan", unlistable)
    with pytest.raises(Unavailable, match=r"cannot read the model store: .*Permission denied"):
        await registry.reload()
    assert registry.resolve(None, None).version == 1


async def test_a_version_admits_work_up_to_its_budget_in_rows(store_copy: Path) -> None:
    registry = Registry(settings_for(store_copy, max_queue=300, max_batch_size=8), Metrics())
    await registry.reload()
    mv = registry.resolve(None, None)
    too_large = r"needs 301 rows .* at most 300 \(VAE_MAX_QUEUE\)"
    with pytest.raises(PayloadTooLarge, match=too_large), mv.admit(301):
        pass
    # Alone, the largest request the budget allows; beside it, not even one row more.
    busy = r"computing 300 rows .* needs 1 more"
    with mv.admit(300), pytest.raises(QueueFull, match=busy), mv.admit(1):
        pass
    with mv.admit(200), mv.admit(100):
        assert mv.admitted_rows == 300
    assert mv.admitted_rows == 0
    await registry.stop()
