"""The daemon: watch the inbox, claim settled jobs, run them one at a time on a resident model.

Two threads. The main thread scans (woken by file events, and on a timer because
events are only hints), settles, claims and parses; invalid jobs fail at once.
One worker thread owns the backend, keeps the model loaded between jobs, and
runs the queue by priority, then arrival. Signal handlers only set flags.
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from hotfolder import attachments, backends, log, notify
from hotfolder.cache import ResultCache, cache_key, model_identity, reads_cache, writes_cache
from hotfolder.config import Config, ModelInfo
from hotfolder.control import CANCEL_MARKER, cancelled_error
from hotfolder.errors import BackendError, HotfolderError, Interrupted, JobInvalid, Problem, UsageError, WeightsMissing
from hotfolder.results import Outcome, Timings, copy_original, entry_id, iso, write_metadata
from hotfolder.narration import NarrationUnavailable
from hotfolder.spec import JobSpec, attachment_names, parse
from hotfolder.spool import (
    Arrival,
    Candidate,
    Job,
    Spool,
    crash_point,
    job_file_in_folder,
    read_json,
    sync_conflict_of,
    write_json_atomic,
)

HEARTBEAT_S = 2.0
STOP_GRACE_S = 8.0  # SIGTERM must end the process within 10 s
MAX_BACKOFF_S = 300.0
IDLE = "idle"


# -- the queue ---------------------------------------------------------
@dataclass(order=True)
class QueueItem:
    sort_key: tuple[int, float, int, int]  # (-priority, arrival, seq, index)
    job_id: str = field(compare=False)
    index: int = field(compare=False)
    not_before: float = field(compare=False, default=0.0)  # monotonic; retries wait


class JobQueue:
    """Priority first, then FIFO by arrival; items held back until `not_before` (retry backoff)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._heap: list[QueueItem] = []
        self._cond = threading.Condition()
        self._closed = False
        self._clock = clock

    def put(self, item: QueueItem) -> None:
        with self._cond:
            heapq.heappush(self._heap, item)
            self._cond.notify()

    def get(self, idle_after: float | None = None) -> QueueItem | str | None:
        """The next due item; None once closed; IDLE when nothing came for `idle_after` seconds."""
        with self._cond:
            idle_at = None if idle_after is None else self._clock() + idle_after
            while not self._closed:
                now = self._clock()
                due = [i for i in self._heap if i.not_before <= now]
                if due:
                    item = min(due)
                    self._heap.remove(item)
                    heapq.heapify(self._heap)
                    return item
                if idle_at is not None and now >= idle_at:
                    return IDLE
                waits = [i.not_before - now for i in self._heap] + ([idle_at - now] if idle_at is not None else [])
                self._cond.wait(timeout=min(waits, default=None))
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def snapshot(self) -> list[QueueItem]:
        with self._cond:
            return sorted(self._heap)

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)


# -- the resident model ------------------------------------------------
class Provider:
    """Keeps one backend loaded, keyed by (backend, model); reloads only when the key changes."""

    def __init__(self, config: Config, factory: Callable[[str, ModelInfo, Config], backends.Backend]):
        self.config = config
        self.factory = factory
        self.key: tuple[str, str] | None = None
        self.backend: backends.Backend | None = None
        self.loads = 0

    def get(self, spec: JobSpec, model: ModelInfo) -> tuple[backends.Backend, float]:
        """The loaded backend for this spec, and the seconds spent loading it now (0 when resident)."""
        key = (spec.backend, model.name)
        if self.backend is not None and key == self.key:
            return self.backend, 0.0
        self.close()
        t0 = time.perf_counter()
        backend = self.factory(spec.backend, model, self.config)
        backend.load()
        self.backend, self.key = backend, key
        self.loads += 1
        return backend, time.perf_counter() - t0

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend, self.key = None, None


# -- one daemon per root ------------------------------------------------
class RootLock:
    """An flock on <root>/.hotfolder.lock: the kernel drops it when the process dies, so a stale lock is free."""

    def __init__(self, root: Path):
        self.path = root / ".hotfolder.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"another hotfolder daemon (pid {holder}) is already running on {self.path.parent}. "
                "Stop it first, or use another --root."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- the daemon -------------------------------------------------------
class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        once: bool = False,
        backend_factory: Callable[[str, ModelInfo, Config], backends.Backend] = backends.create,
    ):
        self.config = config
        self.once = once
        self.spool = Spool(config)
        self.queue = JobQueue()
        self.provider = Provider(config, backend_factory)
        self.log = log.get("hotfolder.daemon")
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.jobs: dict[str, tuple[Job, list[JobSpec]]] = {}
        self.failures = 0
        self.delivered = 0
        self._busy = threading.Event()  # the worker is running a job
        self._state_lock = threading.Lock()
        self._running: dict[str, Any] | None = None
        self._recent: list[dict[str, Any]] = []
        self._started = time.time()
        self._worker: threading.Thread | None = None
        self._identities: dict[tuple[str, str], str] = {}
        self._peeked: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}
        self._cache: ResultCache | None = None

    @property
    def cache(self) -> ResultCache:
        """Opened on first use, by the worker (opening cleans up stores a crash left behind)."""
        if self._cache is None:
            self._cache = ResultCache(self.config.cache_dir, self.config.cache_max_bytes)
        return self._cache

    # -- lifecycle ----------------------------------------------------
    def run(self) -> int:
        """Serve until stopped (or, with once, until the inbox is empty). Returns the exit code."""
        from hotfolder.watch import InboxWatcher

        self.spool.ensure_folders()
        lock = RootLock(self.config.root)
        lock.acquire()
        self._install_signals()
        watcher = InboxWatcher(self.config.inbox, self.wake, polling=self.config.polling)
        try:
            self.log.info(
                "daemon started",
                root=str(self.config.root),
                pid=os.getpid(),
                model=self.config.model,
                backend=self.config.backend,
                once=self.once,
            )
            for job in self.spool.recover():
                self.log.info("requeued after restart", job_id=job.job_id, source=job.source)
                self._admit(job)
            crash_point("recovered")
            watcher.start()
            self._worker = threading.Thread(target=self._work, name="hotfolder-worker", daemon=True)
            self._worker.start()
            self._scan_loop(watcher)
        finally:
            self.stop.set()
            self.queue.close()
            if self._worker is not None:
                self._worker.join(timeout=STOP_GRACE_S)
            watcher.stop()
            if self._worker is None or not self._worker.is_alive():
                self.provider.close()
            self._write_status(state="stopped")
            lock.release()
            self.log.info("daemon stopped", delivered=self.delivered, failed=self.failures)
        return 1 if (self.once and self.failures) else 0

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            if self.stop.is_set():
                os._exit(1)  # a second signal: out at once; processing/ still holds the job
            self.stop.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _scan_loop(self, watcher: Any) -> None:
        last_status = 0.0
        while not self.stop.is_set():
            self.wake.clear()
            candidates = self.spool.scan()
            ready, settling = self.spool.settled(candidates)
            arrivals, _ = self.spool.arrivals(candidates, ready, self._named_attachments)
            for arrival in arrivals:
                self._take(arrival)
            now = time.monotonic()
            if now - last_status >= HEARTBEAT_S:
                watcher.ensure_alive()
                self._write_status()
                last_status = now
            if self.once and not candidates and not len(self.queue) and not self._busy.is_set():
                break
            timeout = max(0.05, self.config.settle_seconds / 4) if settling else self.config.rescan_seconds
            if self.once:
                timeout = min(timeout, 0.25)
            self.wake.wait(min(timeout, HEARTBEAT_S))

    # -- claim and admit ------------------------------------------------
    def _take(self, arrival: Arrival) -> None:
        job = self.spool.claim(arrival.candidate, arrival.attachments)
        if job is None:
            return
        self.log.info("claimed", job_id=job.job_id, source=job.source, attachments=job.attachments or None)
        original = sync_conflict_of(Path(job.source).name)
        if original is not None:
            self.log.warning("sync conflict copy: processed as its own job", job_id=job.job_id, source=job.source,
                             original=original)
        self._admit(job)

    def _named_attachments(self, c: Candidate) -> tuple[str, ...]:
        """The inbox-relative files a settled loose job file names beside it (read in place, not claimed).

        A file that does not parse, or names files in subfolders, names nothing here: it is
        claimed at once and fails with the parser's (or the attachment check's) message.
        """
        try:
            st = c.path.stat()
        except OSError:
            return ()
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._peeked.get(c.path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            specs = parse(c.path, self.config, preset=c.preset, display_name=Path(c.rel).name)
        except JobInvalid:
            specs = []
        names = {n for spec in specs for n in attachment_names(spec)}
        folder = Path(c.rel).parent
        found = () if any("/" in n for n in names) else tuple(sorted((folder / n).as_posix() for n in names))
        self._peeked[c.path] = (stamp, found)
        if len(self._peeked) > 10_000:
            self._peeked.clear()
        return found

    def _admit(self, job: Job) -> None:
        """Parse a claimed job (or reuse the specs saved at its first claim) and queue its entries."""
        try:
            specs = self._specs(job)
        except JobInvalid as e:
            self._fail(job, _invalid_error(e))
            return
        self.jobs[job.job_id] = (job, specs)
        for index, spec in enumerate(specs):
            if str(index) in job.done:
                continue
            self.queue.put(QueueItem((-spec.priority, job.arrival, job.seq, index), job.job_id, index))
        if all(str(i) in job.done for i in range(len(specs))):
            self.spool.finish(job)
            self.jobs.pop(job.job_id, None)
        self._write_status()

    def _specs(self, job: Job) -> list[JobSpec]:
        saved = job.folder / "specs.json"
        if saved.is_file():
            return [JobSpec(**{**d, "adjustments": tuple(d["adjustments"])}) for d in read_json(saved)]
        path = job.input_path
        label = job.source
        if path.is_symlink():
            raise JobInvalid(
                label,
                [
                    Problem(
                        f"{label} is a symbolic link. hotfolder never follows links: "
                        "copy the file itself into the inbox."
                    )
                ],
            )
        if path.is_dir():
            path = job_file_in_folder(path, label)
        elif path.suffix.lower() not in (".toml", ".txt"):
            raise JobInvalid(label, [Problem(
                f"'{path.name}' is not a job file, and no job file in the inbox named it within "
                f"{self.config.attachment_wait_seconds:g} s (attachment_wait_seconds). A job is a .toml or .txt "
                "file; to use this file as an image or voice-over, name it in a job file ([image] file or "
                "[audio] file) next to it, or put both into one folder"
            )])  # fmt: skip
        specs = parse(path, self.config, preset=job.preset, display_name=Path(job.source).name)
        specs = attachments.check_job(specs, job.base, self.config, label=label, loose=not job.input_path.is_dir())
        write_json_atomic(saved, [asdict(s) for s in specs])
        return specs

    # -- the worker ---------------------------------------------------
    def _work(self) -> None:
        idle_after = self.config.idle_unload_minutes * 60 or None
        while True:
            item = self.queue.get(idle_after if self.provider.backend is not None else None)
            if item is None:
                return
            if item == IDLE:
                self.log.info("idle: unloading the model", model=(self.provider.key or ("", ""))[1],
                              idle_minutes=self.config.idle_unload_minutes)
                self.provider.close()
                self._write_status()
                continue
            entry = self.jobs.get(item.job_id)
            if entry is None:
                continue
            job, specs = entry
            if str(item.index) in job.done:
                continue  # already delivered (or failed): a stale retry must not run it twice
            self._busy.set()
            try:
                self._run_entry(job, item, specs)
            except Exception:  # the worker must survive anything a job does
                self.log.exception("worker error", job_id=job.job_id)
            finally:
                self._busy.clear()
                self.wake.set()
            if all(str(i) in job.done for i in range(len(specs))):
                crash_point("finishing")
                self.spool.finish(job)
                self.jobs.pop(job.job_id, None)

    def _run_entry(self, job: Job, item: QueueItem, specs: list[JobSpec]) -> None:
        index, spec = item.index, specs[item.index]
        eid = entry_id(job, index, len(specs))
        structlog.contextvars.bind_contextvars(job_id=eid)
        log.attach_job_log(eid, job.log_file)
        timings = Timings(queued=job.arrival, started=time.time())
        try:
            _check_cancel(job)
            self.log.info(
                "job started",
                source=job.source,
                prompt=spec.prompt[:80],
                size=f"{spec.width}x{spec.height}",
                frames=spec.num_frames,
                fps=spec.fps,
                steps=spec.steps,
                seed=spec.seed,
                model=spec.model,
                backend=spec.backend,
            )
            for adjustment in spec.adjustments:
                self.log.info("adjusted", change=adjustment)
            self._set_running(job, eid, spec, stage="loading")
            self._generate_and_deliver(job, index, len(specs), spec, timings)
        except Interrupted as e:
            if self.stop.is_set():
                self.log.info("interrupted by stop; stays queued for the next start", reason=str(e))
            elif not job.folder.exists():
                self.log.info("cancelled: the job's folder was removed from processing/")
                self.jobs.pop(job.job_id, None)
            else:
                self.log.info("cancelled", reason=str(e))
                self._fail(job, cancelled_error("hotfolder cancel"), index=None)
        except JobInvalid as e:
            self._fail(job, _invalid_error(e), index=index, count=len(specs), spec=spec)
        except WeightsMissing as e:
            self.log.error("weights missing", error=str(e))
            self._fail(job, _error(e, "weights_missing"), index=index, count=len(specs), spec=spec)
        except NarrationUnavailable as e:  # permanent until a speech engine is installed
            self.log.error("no speech engine for the narration", error=str(e))
            self._fail(job, _error(e, e.kind), index=index, count=len(specs), spec=spec)
        except Exception as e:  # BackendError, media errors, anything unexpected: retry, then fail
            self._attempt_failed(job, item, specs, spec, e, timings)
        finally:
            shutil.rmtree(job.stage / str(index), ignore_errors=True)
            self._set_running(None)
            log.detach_job_log(eid)
            structlog.contextvars.unbind_contextvars("job_id")

    def _generate_and_deliver(self, job: Job, index: int, count: int, spec: JobSpec, timings: Timings) -> None:
        from hotfolder import media

        model = self.config.model_info(spec.model)
        if model is None:
            raise JobInvalid(job.source, [Problem(f"model {spec.model!r} is no longer in the model table")])
        stage = job.stage / str(index)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        mp4 = stage / f"{spec.name}.mp4"

        # 1. The cache, before the model is touched: a hit never loads (or imports) the backend.
        image = attachments.resolve("image.file", spec.image, job.base, label=job.source) if spec.image else None
        key = cache_key(spec, model, model_identity=self._identity(model, spec.backend), **_conditioning(spec))
        outcome = self._from_cache(key, spec, model, mp4)
        if outcome is None:
            outcome = self._generate(job, index, count, spec, model, mp4, timings, image)
            outcome.cache_key = key
            if writes_cache(spec):
                self.cache.put(key, mp4, {"backend": outcome.backend, "device": outcome.device,
                                          "has_audio": outcome.has_audio, "seed": spec.seed, "model": model.name,
                                          "width": spec.width, "height": spec.height,
                                          "num_frames": spec.num_frames, "fps": spec.fps, "info": outcome.info})
                self.log.info("stored in cache", cache_key=key)
                crash_point("cached")

        # 2. Post-processing: everything that is not in the cache key.
        self._progress(job, stage="encoding")
        t0 = time.perf_counter()
        used = self._soundtrack(job, spec, mp4, stage, outcome)
        if image is not None:
            used.insert(0, _image_record(spec, image))
        outputs: dict[str, str] = {"video": mp4.name}
        if spec.gif:
            media.make_gif(mp4, stage / f"{spec.name}.gif")
            outputs["gif"] = f"{spec.name}.gif"
            crash_point("mid_encode")
        if spec.thumbnail:
            media.make_thumbnail(mp4, stage / f"{spec.name}.jpg")
            outputs["thumbnail"] = f"{spec.name}.jpg"
        outputs["job"] = copy_original(job, stage)
        _copy_attachments(job, stage)
        timings.encode_s += time.perf_counter() - t0
        self.log.info("encoded", encode_s=round(timings.encode_s, 2))

        # 3. Metadata and log, then one rename into the outbox.
        outputs["metadata"] = f"{spec.name}.json"
        outputs["log"] = f"{spec.name}.log"
        timings.finished = time.time()
        write_metadata(stage, job=job, index=index, count=count, spec=spec, outcome=outcome,
                       timings=timings, outputs=outputs, attachments=used)
        self.log.info("delivering", total_s=round(timings.finished - timings.started, 2))
        if job.log_file.exists():
            shutil.copy2(job.log_file, stage / f"{spec.name}.log")
        crash_point("staged")
        target = self.spool.deliver(job, index, stage, spec.name)
        self.delivered += 1
        self.log.info("delivered", path=str(target / mp4.name))
        self._remember(job, entry_id(job, index, count), "done", target / mp4.name)
        notify.job_finished(self.config, name=spec.name, path=str(target / mp4.name), ok=True)

    def _from_cache(self, key: str, spec: JobSpec, model: ModelInfo, mp4: Path) -> Outcome | None:
        if not reads_cache(spec):
            if spec.cache == "refresh":
                self.log.info("cache refresh: regenerating", cache_key=key)
            return None
        entry = self.cache.get(key)
        if entry is None:
            return None
        try:
            how = self.cache.deliver(entry, mp4)
        except FileNotFoundError:
            return None  # evicted between get and deliver: a miss
        meta = entry.meta
        self.log.info("cache hit: the model was not used", cache_key=key, delivered_by=how)
        return Outcome(backend=meta.get("backend", spec.backend), device=meta.get("device", "none"), model=model,
                       cache_hit=True, cache_key=key, has_audio=bool(meta.get("has_audio")),
                       info={**meta.get("info", {}), "cache_delivery": how})

    def _soundtrack(self, job: Job, spec: JobSpec, mp4: Path, stage: Path, outcome: Outcome) -> list[dict[str, Any]]:
        """Voice-over, then narration, fitted to the video's length; returns what was used, for the metadata.

        Never in the cache key: a cached clip gets them too. Each step writes a new file and
        renames it over the MP4 (a cached MP4 may be a hard link into the cache).
        """
        from hotfolder import media, narration

        used: list[dict[str, Any]] = []
        seconds = spec.num_frames / spec.fps
        has_audio = outcome.has_audio
        if spec.audio_file:
            voice = attachments.resolve("audio.file", spec.audio_file, job.base, label=job.source)
            tmp = stage / f".{spec.name}.voice-over.mp4"
            fitted = media.replace_audio(mp4, voice, tmp, seconds=seconds)
            os.replace(tmp, mp4)
            has_audio = True
            used.append({"name": spec.audio_file, "kind": "voice-over", "sha256": spec.audio_sha256,
                         "fitted": fitted})
            self.log.info("voice-over", file=spec.audio_file, fitted=fitted)
        if spec.tts:
            speech = narration.synthesize(spec.tts, stage)
            tmp = stage / f".{spec.name}.narrated.mp4"
            mix = media.mix_audio if has_audio else media.replace_audio
            fitted = mix(mp4, speech, tmp, seconds=seconds)
            os.replace(tmp, mp4)
            speech.unlink(missing_ok=True)
            how = "over the soundtrack, which is ducked while it speaks" if has_audio else "alone"
            used.append({"name": "tts", "kind": "narration", "sha256": None, "text": spec.tts,
                         "fitted": f"{fitted}; {how}"})
            self.log.info("narration", words=len(spec.tts.split()), fitted=fitted, mixed=how)
        return used

    def _generate(self, job: Job, index: int, count: int, spec: JobSpec, model: ModelInfo, mp4: Path,
                  timings: Timings, image: Path | None = None) -> Outcome:
        """Load (once), generate with per-step progress and stop checks, encode the clip to `mp4`.

        The backend gets the image's absolute path; the spec itself keeps it relative to the job.
        """
        from hotfolder import media

        if self.stop.is_set():
            raise Interrupted("stopping")
        backend, timings.load_s = self.provider.get(spec, model)
        if timings.load_s:
            self.log.info("model loaded", model=model.label, backend=backend.name, device=backend.device,
                          load_s=round(timings.load_s, 2))
        self._set_running(job, entry_id(job, index, count), spec, stage="generating")
        t0 = time.perf_counter()
        run_spec = dataclasses.replace(spec, image=str(image)) if image is not None else spec
        clip = backend.generate(run_spec, self._progress_callback(job))
        timings.generate_s = time.perf_counter() - t0
        stages = [f"{st.get('name')} {st.get('width')}x{st.get('height')} {st.get('steps')} steps"
                  for st in clip.info.get("stages", [])]
        self.log.info("generated", generate_s=round(timings.generate_s, 2), frames=len(clip.frames),
                      **({"stages": "; ".join(stages)} if stages else {}))
        self._progress(job, stage="encoding")
        t0 = time.perf_counter()
        media.encode_mp4(clip, mp4)
        crash_point("encoded")
        timings.encode_s = time.perf_counter() - t0
        return Outcome(backend=backend.name, device=backend.device, model=model, has_audio=clip.audio is not None,
                       info=clip.info)

    def _identity(self, model: ModelInfo, backend: str) -> str:
        """The model's weights identity for the cache key (memoised: it may read a folder)."""
        k = (model.name, backend)
        if k not in self._identities:
            self._identities[k] = model_identity(model, backend)
        return self._identities[k]

    def _attempt_failed(
        self, job: Job, item: QueueItem, specs: list[JobSpec], spec: JobSpec, e: Exception, timings: Timings
    ) -> None:
        index = item.index
        attempt = {"index": index, "started": iso(timings.started), "error": _one_line(e), "type": type(e).__name__}
        job.attempts.append(attempt)
        job.save()
        tries = [a for a in job.attempts if a.get("index") == index]
        self.log.error("attempt failed", attempt=len(tries), max_attempts=self.config.max_attempts, error=_one_line(e),
                       exc_info=not isinstance(e, HotfolderError))
        if len(tries) < self.config.max_attempts and not self.stop.is_set():
            delay = min(MAX_BACKOFF_S, self.config.retry_backoff_seconds * 4 ** (len(tries) - 1))
            self.log.info("will retry", in_s=delay)
            self.queue.put(QueueItem(item.sort_key, item.job_id, index, not_before=time.monotonic() + delay))
            return
        error = _error(e, "backend" if isinstance(e, BackendError) else "internal")
        error["attempts"] = tries
        self._fail(job, error, index=index, count=len(specs), spec=spec)

    def _fail(self, job: Job, error: dict[str, Any], *, index: int | None = None, count: int = 1,
              spec: JobSpec | None = None) -> None:
        self.failures += 1
        single = index is None or count == 1
        eid = job.job_id if index is None else entry_id(job, index, count)
        self.log.warning("failed", job_id=eid, source=job.source, error=error.get("message"))
        name = spec.name if spec is not None else None
        target = self.spool.fail(job, error, index=None if single else index, name=name)
        if single:
            self.jobs.pop(job.job_id, None)
            if index is not None:
                job.done[str(index)] = f"failed:{target.name}"
        self._remember(job, eid, "failed", target / "error.txt")
        notify.job_finished(self.config, name=name or Path(job.source).stem, path=str(target / "error.txt"),
                            ok=False, message=str(error.get("message") or ""))

    # -- progress and status ------------------------------------------
    def _progress_callback(self, job: Job) -> Callable[[str, int, int], None]:
        started = time.monotonic()
        last = [0.0]

        def on_step(stage: str, step: int, total: int) -> None:
            if self.stop.is_set():
                raise Interrupted("stopping")
            _check_cancel(job)
            now = time.monotonic()
            if now - last[0] >= 0.25 or step >= total:
                last[0] = now
                elapsed = now - started
                eta = elapsed / step * (total - step) if step else None
                self._progress(job, stage=stage, step=step, total=total, eta_s=eta)

        return on_step

    def _progress(self, job: Job, *, stage: str, step: int = 0, total: int = 0, eta_s: float | None = None) -> None:
        data = {
            "job_id": job.job_id,
            "stage": stage,
            "step": step,
            "total_steps": total,
            "percent": round(100.0 * step / total, 1) if total else 0.0,
            "eta_s": None if eta_s is None else round(eta_s, 1),
            "updated": iso(time.time()),
        }
        try:
            write_json_atomic(job.progress_file, data, durable=False)
        except FileNotFoundError:
            return  # the folder was removed (cancel); the next step notices
        with self._state_lock:
            if self._running is not None:
                self._running["progress"] = data

    def _set_running(self, job: Job | None, eid: str = "", spec: JobSpec | None = None, stage: str = "") -> None:
        with self._state_lock:
            if job is None or spec is None:
                self._running = None
            else:
                self._running = {"job_id": eid, "source": job.source, "name": spec.name, "prompt": spec.prompt[:200],
                                 "progress": {"stage": stage}}
        if job is not None:
            self._progress(job, stage=stage)
        self._write_status()

    def _remember(self, job: Job, eid: str, status: str, path: Path) -> None:
        with self._state_lock:
            self._recent.insert(0, {"job_id": eid, "source": job.source, "status": status, "path": str(path),
                                    "finished": iso(time.time())})
            del self._recent[20:]
        self._write_status()

    def _write_status(self, state: str = "running") -> None:
        with self._state_lock:
            queue = []
            for pos, item in enumerate(self.queue.snapshot()):
                entry = self.jobs.get(item.job_id)
                if entry is None:
                    continue
                job, specs = entry
                queue.append({"position": pos + 1, "job_id": entry_id(job, item.index, len(specs)),
                              "source": job.source, "name": specs[item.index].name,
                              "priority": specs[item.index].priority})
            status = {
                "daemon": {"state": state, "pid": os.getpid(), "root": str(self.config.root),
                           "started": iso(self._started), "heartbeat": iso(time.time()),
                           "heartbeat_unix": time.time(), "model_loaded": list(self.provider.key or [])},
                "queue": queue,
                "running": self._running,
                "recent": self._recent,
            }
            try:
                write_json_atomic(self.config.status_file, status, durable=False)
            except OSError as e:
                self.log.warning("cannot write status", error=str(e))


# -- helpers ----------------------------------------------------------
def _check_cancel(job: Job) -> None:
    """A removed folder or a `cancel` marker (hotfolder cancel) stops the job."""
    if not job.folder.exists():
        raise Interrupted("the job's folder was removed from processing/")
    if (job.folder / CANCEL_MARKER).exists():
        raise Interrupted("cancelled by hotfolder cancel")


def _conditioning(spec: JobSpec) -> dict[str, Any]:
    """The cache key's share of the attachments: the image's digest and strength (never audio or TTS)."""
    if not spec.image:
        return {}
    assert spec.image_sha256 is not None, "attachments.check_job fills image_sha256 at admission"
    return {"attachments": {"image": spec.image_sha256}, "extra": {"image_strength": float(spec.image_strength)}}


def _image_record(spec: JobSpec, image: Path) -> dict[str, Any]:
    """The metadata's entry for the conditioning image: how it covers the video's frame."""
    from PIL import Image

    with Image.open(image) as im:
        size = im.size
    return {"name": spec.image, "kind": "image", "sha256": spec.image_sha256, "strength": spec.image_strength,
            "size": list(size), "fitted": attachments.describe_image_fit(size, spec.width, spec.height)}


def _copy_attachments(job: Job, stage: Path) -> None:
    """A loose job's attachments go into the result beside its job file (hard links: same filesystem)."""
    for src in job.attachment_paths:
        target = stage / src.name
        if os.path.lexists(target) or not src.is_file():
            continue
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _invalid_error(e: JobInvalid) -> dict[str, Any]:
    return {
        "status": "invalid",
        "kind": "invalid",
        "message": e.describe(),
        "problems": [p.to_dict() for p in e.problems],
        "hint": "Fix the job file and drop it into the inbox again (or use `hotfolder validate FILE` first).",
        "retried": False,
    }


def _error(e: BaseException, kind: str) -> dict[str, Any]:
    hint = getattr(e, "hint", None)
    if hint is None and kind in ("backend", "internal"):
        hint = "Look at the .log in this folder. To try again, move the job file back into the inbox."
    return {"status": "failed", "kind": kind, "message": str(e) or type(e).__name__, "hint": hint}


def read_status(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "status.json").read_text())
    except (OSError, ValueError):
        return None
