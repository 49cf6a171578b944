"""The model registry: which versions of which models are served, and hot reload.

The store is scanned for `<name>/<version>/` folders; each new or changed
version is loaded beside those already served and the whole table is swapped
in one assignment, so a request sees either the old table or the new one.
A request holds a lease on its version for as long as it runs; a version that
leaves the table is retired (its batchers stopped) only when its last lease
ends. A version that fails to load is logged and refused; whatever served
before keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.batcher import Batcher
from app.config import Settings
from app.errors import NotFound, Unavailable
from app.loader import LoadedGraphs, LoadError, load_version
from app.metrics import Metrics
from vae_contract.manifest import MODEL_NAME, Manifest

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model name, version)
Fingerprint = tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns) of a version's files


class ModelVersion:
    """One loaded version: its manifest and a batcher per graph."""

    def __init__(
        self,
        graphs: LoadedGraphs,
        path: Path,
        fingerprint: Fingerprint,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.manifest: Manifest = graphs.manifest
        self.name = self.manifest.name
        self.version = self.manifest.version
        self.path = path
        self.fingerprint = fingerprint
        self.provider = graphs.provider
        self.loaded_at = datetime.now(UTC)
        label = f"{self.name}/{self.version}"
        self.encoder, self.decoder = (
            Batcher(
                graph.run,
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_delay_ms / 1000.0,
                max_queue=settings.max_queue,
                name=f"{label}/{role}",
                on_batch=metrics.batch_observer(self.name, role),
            )
            for role, graph in (("encoder", graphs.encoder), ("decoder", graphs.decoder))
        )
        self._leases = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self.encoder.start()
        self.decoder.start()

    @contextlib.contextmanager
    def lease(self) -> Iterator[ModelVersion]:
        """Keep this version's batchers running while a request uses them."""
        self._leases += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._idle.set()

    async def retire(self) -> None:
        """Wait for the requests in flight, then stop the batchers (which drain)."""
        await self._idle.wait()
        await self.encoder.stop()
        await self.decoder.stop()
        log.info("retired %s version %d", self.name, self.version)


@dataclass(frozen=True)
class Refusal:
    fingerprint: Fingerprint
    reason: str


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)


def _fingerprint(folder: Path) -> Fingerprint:
    """Cheap identity of a version folder's files: a changed file means a reload."""
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def scan(store: Path) -> dict[Key, tuple[Path, Fingerprint]]:
    """Every `<name>/<version>` folder in the store. Hidden and non-integer folders
    (the trainer's `.3.tmp-*` staging) are skipped: they are not versions yet."""
    found: dict[Key, tuple[Path, Fingerprint]] = {}
    if not store.is_dir():
        return found
    for model_dir in sorted(store.iterdir()):
        if not model_dir.is_dir() or not MODEL_NAME.fullmatch(model_dir.name):
            continue
        for version_dir in model_dir.iterdir():
            name = version_dir.name
            # "01" would alias "1": only canonical integers are versions.
            if version_dir.is_dir() and name.isdigit() and str(int(name)) == name != "0":
                with contextlib.suppress(OSError):  # removed while we looked
                    found[model_dir.name, int(name)] = (version_dir, _fingerprint(version_dir))
    return found


class Registry:
    """The served model versions; `reload()` brings the table in line with the store."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._table: dict[str, dict[int, ModelVersion]] = {}
        self._refused: dict[Key, Refusal] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self.loaded_once = asyncio.Event()
        self.draining = False
        self.stopping = False

    # -- lookups (synchronous: one request sees one table) ---------------------------

    def models(self) -> dict[str, dict[int, ModelVersion]]:
        return self._table

    def refusals(self, name: str) -> dict[int, str]:
        return {v: r.reason for (n, v), r in sorted(self._refused.items()) if n == name}

    def resolve(self, name: str | None, version: int | None) -> ModelVersion:
        """The version a request asked for: `name` or the default, `version` or the newest."""
        if self.stopping:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        name = name or self.settings.default_model
        versions = self._table.get(name)
        if not versions:
            if not self.loaded_once.is_set():
                raise Unavailable("models are still loading", headers={"Retry-After": "1"})
            known = ", ".join(sorted(self._table)) or "none"
            raise NotFound(f"no model named {name!r} is loaded (loaded: {known})")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version} loaded (loaded: {sorted(versions)})"
            )
        return versions[version]

    def readiness(self) -> str | None:
        """None when ready to serve the default model, else the reason why not."""
        if self.stopping:
            return "shutting down"
        if self.draining:
            return "draining"
        if not self.loaded_once.is_set():
            return f"loading models from {self.settings.model_store}"
        name = self.settings.default_model
        if name in self._table:
            return None
        refused = self.refusals(name)
        if refused:
            version, reason = max(refused.items())
            return f"default model {name!r} is not loaded: version {version} was refused: {reason}"
        store = self.settings.model_store
        return f"default model {name!r} is not loaded: no version of it in {store}"

    # -- loading ----------------------------------------------------------------------

    async def reload(self) -> ReloadReport:
        """Load new or changed versions, drop vanished ones, swap the table atomically."""
        async with self._lock:
            report = ReloadReport()
            found = await asyncio.to_thread(scan, self.settings.model_store)
            old = {(n, v): mv for n, versions in self._table.items() for v, mv in versions.items()}
            new: dict[Key, ModelVersion] = {}
            for key, (path, fingerprint) in sorted(found.items()):
                current = old.get(key)
                refusal = self._refused.get(key)
                if current is not None and current.fingerprint == fingerprint:
                    new[key] = current
                    continue
                if refusal is not None and refusal.fingerprint == fingerprint:
                    if current is not None:  # the old one keeps serving
                        new[key] = current
                    continue
                try:
                    mv = await self._load(key, path, fingerprint)
                except LoadError as exc:
                    log.error("refused %s version %d from %s: %s", *key, path, exc)
                    self.metrics.loads.labels("refused").inc()
                    self._refused[key] = Refusal(fingerprint, str(exc))
                    report.refused[f"{key[0]}/{key[1]}"] = str(exc)
                    if current is not None:
                        new[key] = current
                    continue
                self._refused.pop(key, None)
                new[key] = mv
                report.loaded.append(f"{key[0]}/{key[1]}")
            self._refused = {k: r for k, r in self._refused.items() if k in found}
            table: dict[str, dict[int, ModelVersion]] = {}
            for (name, version), mv in sorted(new.items()):
                table.setdefault(name, {})[version] = mv
            self._table = table  # the swap: one assignment, seen whole by every request
            self.metrics.versions_loaded.set(len(new))
            for key, mv in old.items():
                if new.get(key) is not mv:
                    report.retired.append(f"{key[0]}/{key[1]}")
                    task = asyncio.create_task(mv.retire())
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
            self.loaded_once.set()
            return report

    async def _load(self, key: Key, path: Path, fingerprint: Fingerprint) -> ModelVersion:
        name, version = key
        graphs = await asyncio.to_thread(
            load_version,
            path,
            name,
            version,
            device=self.settings.device,
            threads=self.settings.threads,
        )
        mv = ModelVersion(graphs, path, fingerprint, self.settings, self.metrics)
        mv.start()
        self.metrics.loads.labels("loaded").inc()
        log.info("loaded %s version %d on %s from %s", name, version, mv.provider, path)
        return mv

    # -- lifecycle ----------------------------------------------------------------------

    def drain(self) -> None:
        """Say "not ready" (`draining`) while serving on: load balancers' cue to stop
        sending before the server closes its socket (app/drain.py). Safe in a signal
        handler: it only sets a flag."""
        self.draining = True

    def start(self) -> None:
        """Load the store in the background, then poll it if reload_interval_s > 0."""
        self._poller = asyncio.create_task(self._poll(), name="registry:poll")

    async def _poll(self) -> None:
        interval = self.settings.reload_interval_s
        while True:
            try:
                # Shielded: shutdown cancels the poller, never a half-done swap.
                await asyncio.shield(self.reload())
            except asyncio.CancelledError:
                raise
            except Exception:  # a scan that fails (store unmounted) must not end polling
                log.exception("reloading the model store failed")
                self.loaded_once.set()
            if interval <= 0:
                return
            await asyncio.sleep(interval)

    async def retired(self) -> None:
        """Wait until every version that left the table has finished and stopped."""
        await asyncio.gather(*self._retiring)

    async def stop(self) -> None:
        """Refuse new requests, let those in flight finish, stop every batcher."""
        self.stopping = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        async with self._lock:
            versions = [mv for vs in self._table.values() for mv in vs.values()]
            self._table = {}
            await asyncio.gather(*(mv.retire() for mv in versions), self.retired())
