"""The model registry: which versions of which models are served, and hot reload.

The store is scanned for `<name>/<version>/` folders; each new or changed
version is loaded beside those already served and the whole table is swapped
in one assignment, so a request sees either the old table or the new one.
A request holds a lease on its version for as long as it runs; a version that
leaves the table is retired (its batchers stopped) only when its last lease
ends. A version that fails to load, for any reason, is logged and refused
alone; whatever served before keeps serving, and a pass that fails half-way
leaves nothing it loaded running.

Each version admits a bounded amount of work (`admit`, in rows), so one
model cannot queue more than `VAE_MAX_QUEUE` rows for its graphs; every
graph call of every version runs on the registry's own threads, so image
decoding on the default executor never waits behind ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from app import statistics, tracing
from app.batcher import Batcher, BatchStats, GraphThreads, QueueFull
from app.config import Settings, available_cpus
from app.errors import NotFound, PayloadTooLarge, Unavailable
from app.loader import LoadedGraphs, LoadError, load_version
from app.metrics import Metrics
from vae_contract.manifest import MODEL_NAME, Manifest
from vae_contract.scores import Score, calibration_problem

if TYPE_CHECKING:
    from app.drift import DriftSampler

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model name, version)
OnBatch = Callable[[BatchStats], None]
Fingerprint = tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns) of a version's files


class ModelVersion:
    """One loaded version: its manifest, a batcher per graph and its admission budget."""

    def __init__(
        self,
        graphs: LoadedGraphs,
        path: Path,
        fingerprint: Fingerprint,
        settings: Settings,
        metrics: Metrics,
        threads: GraphThreads | None = None,
        drift: DriftSampler | None = None,
    ) -> None:
        self.manifest: Manifest = graphs.manifest
        self.name = self.manifest.name
        self.version = self.manifest.version
        self.path = path
        self.fingerprint = fingerprint
        self.provider = graphs.provider
        self.loaded_at = datetime.now(UTC)
        self.label = f"{self.name}/{self.version}"
        self.labels = (self.name, str(self.version))  # as metrics and log lines name it
        self.encoder, self.decoder = (
            Batcher(
                graph.run,
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_delay_ms / 1000.0,
                name=f"{self.label}/{role}",
                on_batch=_observers(metrics, self.labels, role),
                threads=threads,
                capture=None if tracing.tracer() is None else tracing.capture,
            )
            for role, graph in (("encoder", graphs.encoder), ("decoder", graphs.decoder))
        )
        self.max_rows = settings.max_queue
        self.admitted_rows = 0  # rows of the requests being computed now
        self.refused_update: str | None = None  # why changed files on disk were not loaded
        self._leases = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.drift = drift  # samples its /encode traffic for the drift metrics, when on
        anomaly = metrics.anomaly
        for score in get_args(Score):  # the scores it can place: their series start at 0
            if not calibration_problem(self.manifest.calibration, score, self.manifest.input.shape):
                anomaly.declare(*self.labels, score)
        self.scored = functools.partial(anomaly.observe, *self.labels)

    def start(self) -> None:
        self.encoder.start()
        self.decoder.start()

    async def stop(self) -> None:
        await self.encoder.stop()
        await self.decoder.stop()

    @property
    def failure(self) -> str | None:
        """Why a batcher of this version is down (until the next request restarts it)."""
        return self.encoder.failure or self.decoder.failure

    @contextlib.contextmanager
    def admit(self, rows: int) -> Iterator[None]:
        """Hold `rows` of this version's work budget (VAE_MAX_QUEUE) while computing.

        Rows: one image through the encoder, or one latent through the decoder.
        A request that alone exceeds the budget can never run (413); one that
        does not fit beside the work in progress is refused for now (503). A
        request is admitted into an idle version whatever it costs within the
        budget, so the budget is a bound on waiting work, not on one request.
        """
        if rows > self.max_rows:
            raise PayloadTooLarge(
                f"this request needs {rows:,} rows of model work; one request may need at most "
                f"{self.max_rows:,} (VAE_MAX_QUEUE); send fewer images or a smaller k"
            )
        if self.admitted_rows and self.admitted_rows + rows > self.max_rows:
            raise QueueFull(
                f"{self.label} is computing {self.admitted_rows:,} rows and this request needs "
                f"{rows:,} more, over the limit of {self.max_rows:,} (VAE_MAX_QUEUE)"
            )
        self.admitted_rows += rows
        try:
            yield
        finally:
            self.admitted_rows -= rows

    def acquire(self) -> None:
        """Take a lease: keep this version's batchers running while a request uses them."""
        self._leases += 1
        self._idle.clear()

    def release(self) -> None:
        self._leases -= 1
        if self._leases == 0:
            self._idle.set()

    @contextlib.contextmanager
    def lease(self) -> Iterator[ModelVersion]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    async def retire(self) -> None:
        """Wait for the requests in flight, then stop the batchers (which drain)."""
        await self._idle.wait()
        await self.stop()
        log.info("retired %s version %d", self.name, self.version)


def _observers(metrics: Metrics, labels: tuple[str, str], role: str) -> OnBatch:
    """A batcher's on_batch: one record of each graph call, read by the Prometheus
    metrics, by the per-model statistics (app.statistics) and, when tracing is on, by
    the spans."""
    observers = [metrics.batch_observer(*labels, role), statistics.observe_batch]
    if tracing.tracer() is not None:
        observers.append(tracing.batch_observer(f"{labels[0]}/{labels[1]}/{role}"))

    def observe(stats: BatchStats) -> None:
        for observer in observers:
            observer(stats)

    return observe


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
    """Cheap identity of a version folder's files: a changed file means a reload.

    A folder that cannot be listed gets a fingerprint of its own, so that loading
    it is tried (and refused with the reason) once, not at every scan.
    """
    try:
        entries = []
        for path in sorted(folder.iterdir()):
            if path.is_file():
                stat = path.stat()
                entries.append((path.name, stat.st_size, stat.st_mtime_ns))
        return tuple(entries)
    except FileNotFoundError:
        raise
    except OSError as exc:
        return ((f"<unreadable: {exc.strerror}>", exc.errno or 0, 0),)


@dataclass
class Scan:
    versions: dict[Key, tuple[Path, Fingerprint]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # model folders we could not list


def scan(store: Path) -> Scan:
    """Every `<name>/<version>` folder in the store. Hidden and non-integer folders
    (the trainer's `.3.tmp-*` staging) are skipped: they are not versions yet.
    Raises OSError only when the store itself cannot be listed."""
    found = Scan()
    if not store.is_dir():
        return found
    for model_dir in sorted(store.iterdir()):
        if not model_dir.is_dir() or not MODEL_NAME.fullmatch(model_dir.name):
            continue
        try:
            version_dirs = list(model_dir.iterdir())
        except OSError as exc:
            found.unreadable[model_dir.name] = exc.strerror or str(exc)
            continue
        for version_dir in version_dirs:
            name = version_dir.name
            # "01" would alias "1": only canonical integers are versions.
            if version_dir.is_dir() and name.isdigit() and str(int(name)) == name != "0":
                with contextlib.suppress(FileNotFoundError):  # removed while we looked
                    found.versions[model_dir.name, int(name)] = (
                        version_dir,
                        _fingerprint(version_dir),
                    )
    return found


def _label(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


class Registry:
    """The served model versions; `reload()` brings the table in line with the store."""

    def __init__(
        self, settings: Settings, metrics: Metrics, drift: DriftSampler | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.drift = drift
        self._table: dict[str, dict[int, ModelVersion]] = {}
        self._refused: dict[Key, Refusal] = {}
        self._unreadable: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        # Graph calls get threads of their own: on the default executor they would
        # queue behind image decoding (and it behind them). Two at least, so that an
        # encoder and a decoder call can overlap.
        self.threads = GraphThreads(max(2, available_cpus()), name="onnxruntime")
        self.loaded_once = asyncio.Event()
        self.draining = False
        self.stopping = False

    # -- lookups (synchronous: one request sees one table) ---------------------------

    def models(self) -> dict[str, dict[int, ModelVersion]]:
        return self._table

    def refusals(self, name: str) -> dict[int, str]:
        """Versions of `name` in the store that were refused and are not served. (A served
        version whose files changed and were refused says so in `refused_update`.)"""
        served = self._table.get(name, {})
        return {
            v: r.reason
            for (n, v), r in sorted(self._refused.items())
            if n == name and v not in served
        }

    def index(self) -> dict[Key, str | None]:
        """Every version the last scan found: None when it is served, else why it was
        refused."""
        found: dict[Key, str | None] = {
            (name, version): None for name, versions in self._table.items() for version in versions
        }
        for key, refusal in self._refused.items():
            found.setdefault(key, refusal.reason)
        return found

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
        versions = self._table.get(name)
        if versions:
            failure = versions[max(versions)].failure
            return None if failure is None else f"{failure}; the next request restarts it"
        refused = self.refusals(name)
        if refused:
            version, reason = max(refused.items())
            return f"default model {name!r} is not loaded: version {version} was refused: {reason}"
        store = self.settings.model_store
        return f"default model {name!r} is not loaded: no version of it in {store}"

    # -- loading ----------------------------------------------------------------------

    async def reload(self) -> ReloadReport:
        """Load new or changed versions, drop vanished ones, swap the table atomically.

        Raises Unavailable if the store cannot be listed (nothing changes then).
        """
        async with self._lock:
            store = self.settings.model_store
            try:
                found = await asyncio.to_thread(scan, store)
            except OSError as exc:
                log.error("cannot read the model store %s: %s", store, exc)
                raise Unavailable(
                    f"cannot read the model store: {exc}; the versions loaded before serve on",
                    headers={"Retry-After": "1"},
                ) from None
            for name, reason in found.unreadable.items():
                if self._unreadable.get(name) != reason:  # logged once, not at every scan
                    log.error("cannot list %s in the model store: %s", name, reason)
            self._unreadable = found.unreadable
            old = {(n, v): mv for n, versions in self._table.items() for v, mv in versions.items()}
            # Versions of a model whose folder we cannot list serve on as they are.
            new = {key: mv for key, mv in old.items() if key[0] in found.unreadable}
            report, started = ReloadReport(), []
            try:
                for key, (path, fingerprint) in sorted(found.versions.items()):
                    mv = await self._reload_one(key, path, fingerprint, old.get(key), report)
                    if mv is not None:
                        new[key] = mv
                        if mv is not old.get(key):
                            started.append(mv)
            except BaseException:
                # Cancelled half-way: nothing this pass started may outlive it.
                await asyncio.shield(asyncio.gather(*(mv.stop() for mv in started)))
                raise
            self._refused = {k: r for k, r in self._refused.items() if k in found.versions}
            table: dict[str, dict[int, ModelVersion]] = {}
            for (name, version), mv in sorted(new.items()):
                table.setdefault(name, {})[version] = mv
            self._table = table  # the swap: one assignment, seen whole by every request
            self.metrics.versions_loaded.set(len(new))
            for key, mv in old.items():
                if key not in new:  # gone, not replaced: its series go too
                    self.metrics.retire(*mv.labels)
                if new.get(key) is not mv:
                    report.retired.append(_label(key))
                    task = asyncio.create_task(mv.retire())
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
            self.loaded_once.set()
            return report

    async def _reload_one(
        self,
        key: Key,
        path: Path,
        fingerprint: Fingerprint,
        current: ModelVersion | None,
        report: ReloadReport,
    ) -> ModelVersion | None:
        """The version to serve for `key` after this pass: the current one, a newly
        loaded one, or None. Any failure to load refuses this version alone."""
        if current is not None and current.fingerprint == fingerprint:
            current.refused_update = None  # its files are back as they were
            self._refused.pop(key, None)
            return current
        refusal = self._refused.get(key)
        if refusal is not None and refusal.fingerprint == fingerprint:
            return current  # refused before, unchanged since: not retried, not logged again
        try:
            mv = await self._load(key, path, fingerprint)
        except Exception as exc:  # an unreadable manifest, PermissionError, ORT: anything
            if isinstance(exc, LoadError):
                reason = str(exc)
                log.error("refused %s version %d from %s: %s", *key, path, reason)
            else:
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("refused %s version %d from %s", *key, path)
            self.metrics.loads.labels("refused").inc()
            self._refused[key] = Refusal(fingerprint, reason)
            report.refused[_label(key)] = reason
            if current is not None:  # its files changed on disk; the copy in memory serves on
                current.refused_update = reason
            return current
        self._refused.pop(key, None)
        report.loaded.append(_label(key))
        return mv

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
        mv = ModelVersion(
            graphs, path, fingerprint, self.settings, self.metrics, self.threads, self.drift
        )
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
            except Unavailable:  # the store could not be listed: logged, try again later
                self.loaded_once.set()
            except Exception:  # a bug: logged, and polling goes on
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
        if self.drift is not None:
            await self.drift.stop()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        async with self._lock:
            versions = [mv for vs in self._table.values() for mv in vs.values()]
            self._table = {}
            await asyncio.gather(*(mv.retire() for mv in versions), self.retired())
        self.threads.shutdown()
