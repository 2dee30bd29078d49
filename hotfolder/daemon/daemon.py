"""The daemon: watch the inbox, claim settled jobs, run them one at a time on a resident model.

Two threads. The main thread scans (woken by file events, and on a timer because
events are only hints), settles, claims and parses; invalid jobs fail at once.
One worker thread owns the backend, keeps the model loaded between jobs, and
runs the queue by priority, then arrival. Signal handlers only set flags.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import structlog

from hotfolder import backends, log
from hotfolder.config import Config, ModelInfo
from hotfolder.daemon.produce import Producer, Report, Timings, entry_id, iso
from hotfolder.daemon.provider import Provider
from hotfolder.daemon.queue import IDLE, JobQueue, QueueItem
from hotfolder.errors import BackendError, HotfolderError, Interrupted, JobInvalid, Problem, retryable
from hotfolder.folders import status as status_file
from hotfolder.folders.lock import RootLock
from hotfolder.folders.arrivals import Arrival, Candidate
from hotfolder.folders.spool import Job, Spool, cancelled_error, crash_point
from hotfolder.folders.status import HEARTBEAT_S, STOP_GRACE_S
from hotfolder.fsutil import read_json, write_json_atomic
from hotfolder.job import attachments
from hotfolder.job.names import is_job_file_name, job_file_in_folder, sync_conflict_of
from hotfolder.job.spec import JobSpec, attachment_names, parse
from hotfolder.service import notify

MAX_BACKOFF_S = 300.0


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
        self._peeked: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}
        self.producer = Producer(config, self.spool, self.provider, self.stop)

    # -- lifecycle ----------------------------------------------------
    def run(self) -> int:
        """Serve until stopped (or, with once, until the inbox is empty). Returns the exit code."""
        from hotfolder.folders.watch import InboxWatcher

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
            candidates = self.spool.inbox.scan()
            ready, settling = self.spool.inbox.settled(candidates)
            arrivals, _ = self.spool.inbox.arrivals(candidates, ready, self._named_attachments)
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
        elif not is_job_file_name(path.name):
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
            video = self.producer.produce(job, index, len(specs), spec, timings, self._reporter(job, eid, spec))
            self.delivered += 1
            self._remember(job, eid, "done", video)
            notify.job_finished(self.config, name=spec.name, path=str(video), ok=True)
        except Interrupted as e:
            if self.stop.is_set():
                self.log.info("interrupted by stop; stays queued for the next start", reason=str(e))
            elif not job.folder.exists():
                self.log.info("cancelled: the job's folder was removed from processing/")
                self.jobs.pop(job.job_id, None)
            else:
                self.log.info("cancelled", reason=str(e))
                self._fail(job, cancelled_error("hotfolder cancel"), index=None)
        except Exception as e:  # the error's type says whether another attempt could help
            if retryable(e):
                self._attempt_failed(job, item, specs, spec, e, timings)
            else:
                if not isinstance(e, JobInvalid):
                    self.log.error("failed; retrying cannot help", kind=getattr(e, "kind", "error"), error=str(e))
                record = _invalid_error(e) if isinstance(e, JobInvalid) else _error(e, getattr(e, "kind", "error"))
                self._fail(job, record, index=index, count=len(specs), spec=spec)
        finally:
            shutil.rmtree(job.stage / str(index), ignore_errors=True)
            self._set_running(None)
            log.detach_job_log(eid)
            structlog.contextvars.unbind_contextvars("job_id")

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
    def _reporter(self, job: Job, eid: str, spec: JobSpec) -> Report:
        """What the producer tells as it goes: the stage (status.json) and each step (progress.json)."""
        return Report(stage=lambda stage: self._set_running(job, eid, spec, stage=stage),
                      on_step=self._progress_callback(job))

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
                status_file.write(self.config.root, status)
            except OSError as e:
                self.log.warning("cannot write status", error=str(e))


# -- helpers ----------------------------------------------------------
def _check_cancel(job: Job) -> None:
    """A removed folder or a `cancel` marker (hotfolder cancel) stops the job."""
    if not job.folder.exists():
        raise Interrupted("the job's folder was removed from processing/")
    if job.cancel_requested:
        raise Interrupted("cancelled by hotfolder cancel")


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
