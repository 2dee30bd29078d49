"""The daemon: watch the inbox, claim settled jobs, run them on the executor's resident model(s).

Threads, each with one kind of work, so that nothing slow ever stalls the scan:
- main: the scan (woken by file events, which also start each file's settle clock, at
  the moment the earliest settling file is due, and every `rescan_seconds` because events
  are only hints), settle and claim (one rename and a small journal write), the heartbeat
  (status.json every HEARTBEAT_S, on its own timer), status.json and the gallery as jobs
  move (coalesced: at most every STATUS_EVERY_S and GALLERY_EVERY_S, and at once when
  idle), cancels of queued jobs, a full disk's pause and resume. Signal handlers only set flags.
- admit: parses each claimed job (bounded by max_prompt_bytes) and queues it; invalid
  jobs fail at once.
- check (CHECK_THREADS): the attachment checks of jobs that name an image or a voice-over
  (ffmpeg reads each file through, at most PROBE_TIMEOUT_S), so a slow file delays only its job.
- workers (the executor's `threads`): each takes a slot of the executor (a free model: this
  process's, or a Ray actor's on a cluster), then the next job by priority, then arrival, and
  makes it; the local executor's two workers overlap one job's encode with the next one's
  generation, the Ray executor's run one job per cluster worker (daemon/executor.py, cluster.py).
- retire: flushes each delivered result to the disk, then removes its job's folder from
  processing/ (the input is the record of a job until its result is safe), off the worker's way.

A job that kills the process (out of memory, a crash in native code, power loss) is
known at the next start from its journal: each attempt is recorded before the risky
work begins; after `max_attempts` such deaths the job goes to failed/ and the queue
moves on (the rules: daemon/attempts.py). A full disk pauses claiming and jobs (status.json
says so) until space is back (daemon/pause.py). A stop ends the process within STOP_PROMISE_S
whatever the worker is doing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as queues
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from hotfolder import backends, fsutil, gallery, log
from hotfolder.config import Config, ModelInfo
from hotfolder.daemon.attempts import (backoff_s, error_record, invalid_error, lost_count, lost_error, lost_limit,
                                       one_line, retries_used_error, unreadable_error, used_up)
from hotfolder.daemon.executor import Executor, LocalExecutor, Slot, WorkerLost
from hotfolder.daemon.pause import DiskPause, Paused, disk_full, waits_for_space
from hotfolder.daemon.produce import Producer, Report, Timings, entry_id, iso
from hotfolder.daemon.provider import Provider
from hotfolder.daemon.queue import IDLE, JobQueue, QueueItem
from hotfolder.errors import HotfolderError, Interrupted, JobInvalid, Problem, UsageError, retryable
from hotfolder.folders import status as status_file
from hotfolder.folders.arrivals import Arrival, Candidate
from hotfolder.folders.lock import RootLock
from hotfolder.folders.spool import (DELIVERED, FAILED, LOST, PAUSED, STOPPED, Job, Spool, cancelled_error,
                                     crash_point, outcome)
from hotfolder.folders.status import HEARTBEAT_S, STOP_GRACE_S, STOP_PROMISE_S
from hotfolder.fsutil import read_json, write_json_atomic
from hotfolder.job import attachments
from hotfolder.job.names import is_job_file_name, job_file_in_folder, not_a_job_message, sync_conflict_of
from hotfolder.job.spec import JobSpec, attachment_names, parse
from hotfolder.media import ffmpeg
from hotfolder.service import notify

CHECK_THREADS = 2  # attachment checks at once: one slow voice-over never holds up the others
STATUS_EVERY_S = 0.25  # status.json follows the running job at most this often (progress.json at every stage)
GALLERY_EVERY_S = 1.0  # outbox/index.html is rewritten at most this often while jobs run, and at once when idle
RETIRE_EVERY_S = 2.0  # delivered results are flushed to the disk together, at most this often (then their inputs go)
# The stages of a running job, in order, and how each reads. The journal records the risky ones
# (the model's work, in this process) before they begin; "starting" is the cache lookup.
STAGES = {"queued": "queued", "starting": "checking the cache", "waiting": "waiting for a worker",
          "loading": "loading the model",
          "generating": "generating", "decoding": "decoding", "encoding": "encoding", "delivering": "delivering"}
RISKY = ("loading", "generating", "decoding", "encoding")
# Denoising phases a backend follows with another (its two-stage pipelines): their last step is not the end.
FIRST_OF_TWO = frozenset({"stage1"})


@dataclass
class _Run:
    """The entry the worker runs now: what status.json and progress.json say about it."""

    job: Job
    eid: str
    spec: JobSpec
    attempt: dict[str, Any]  # this attempt's record in job.json
    slot: Slot | None = None  # the executor's slot (its worker) making it
    stage: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    phase: str = ""
    phase_started: float = field(default_factory=time.monotonic)


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
        self.jobs: dict[str, tuple[Job, list[JobSpec]]] = {}  # admitted, with entries queued or running
        self.failures = 0
        self.delivered = 0
        self._lock = threading.RLock()  # jobs, the running entries, recent results, counters
        self._runs: dict[str, _Run] = {}  # worker thread name -> the entry it runs now
        self._active: dict[str, int] = {}  # job id -> entries of it the workers hold
        self._admitting: set[str] = set()  # claimed, being parsed or checked
        self._admit_queue: queues.SimpleQueue[Job | None] = queues.SimpleQueue()
        self._check_queue: queues.SimpleQueue[tuple[Job, list[JobSpec]] | None] = queues.SimpleQueue()
        self._recent: list[dict[str, Any]] = []
        self._started = time.time()
        self._workers: list[threading.Thread] = []
        self._peeked: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}
        self.disk = DiskPause(config.root, self.log, lambda: self._write_status(now=True))  # a full disk's pause
        self._stop_at: float | None = None  # monotonic time of the stop signal
        self._said: dict[str, str] = {}  # the last error logged per place, so a lasting one is said once
        # Where generation runs. The Ray one (which imports ray: heavy) is made by run(), which joins the cluster.
        self.executor: Executor = LocalExecutor(self.provider)
        self.producer = Producer(config, self.spool, self.stop)
        self._changes: Any = None  # the watcher's Changes: paths file events named, with their times
        self._status_at = float("-inf")  # monotonic time of the last status.json write
        self._status_dirty = False  # something changed since: written by the scan thread at STATUS_EVERY_S
        self._gallery_at = float("-inf")
        self._gallery_dirty = False
        self._retire_queue: queues.SimpleQueue[Job | None] = queues.SimpleQueue()
        self._retiring: set[str] = set()  # delivered jobs whose folders wait for their results to be flushed
        self._retirer: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------
    def run(self) -> int:
        """Serve until stopped (or, with once, until the inbox is empty). Returns the exit code."""
        from hotfolder.folders.watch import Changes, InboxWatcher

        lock = self._open_root()
        try:
            if self.config.executor == "ray":
                from hotfolder.daemon.cluster import RayExecutor

                self.executor = RayExecutor(self.config, self.stop)
            self.executor.start()  # a cluster that cannot be reached is an error now, naming its address
        except BaseException:
            lock.release()
            raise
        self._install_signals()
        self._changes = Changes()
        watcher = InboxWatcher(self.config.inbox, self.wake, polling=self.config.polling, changes=self._changes)
        try:
            self._write_status(now=True)  # at once: what a dead daemon left never shows its job as running
            self._write_gallery()
            self.log.info(
                "daemon started",
                root=str(self.config.root),
                pid=os.getpid(),
                model=self.config.model,
                backend=self.config.backend,
                once=self.once,
            )
            self._warn_missing_weights()
            self.disk.start()
            self._start_threads()
            for job in self.spool.recover():
                self.log.info("requeued after restart", job_id=job.job_id, source=job.source)
                self._admit(job)
            crash_point("recovered")
            watcher.start()
            self._scan_loop(watcher)
        finally:
            self._shutdown(watcher, lock)
        return self._exit_code()

    def _exit_code(self) -> int:
        return 1 if (self.once and self.failures) else 0

    def _open_root(self) -> RootLock:
        """Make the root's folders and take its lock; a root that cannot be written is refused in words."""
        lock = RootLock(self.config.root)
        try:
            self.spool.ensure_folders()
            lock.acquire()
        except UsageError:
            raise
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise UsageError(
                f"cannot use {self.config.root} as the root: {e.strerror or e}{where}. hotfolder needs a writable "
                "folder there: make it writable, or give another root with --root (or root = in the config file)."
            ) from None
        return lock

    def _start_threads(self) -> None:
        for n in range(self.executor.threads):
            worker = threading.Thread(target=self._work, name=f"hotfolder-worker-{n + 1}", daemon=True)
            self._workers.append(worker)
            worker.start()
        threading.Thread(target=self._admit_loop, name="hotfolder-admit", daemon=True).start()
        for n in range(CHECK_THREADS):
            threading.Thread(target=self._check_loop, name=f"hotfolder-check-{n + 1}", daemon=True).start()
        self._retirer = threading.Thread(target=self._retire_loop, name="hotfolder-retire", daemon=True)
        self._retirer.start()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            if self.stop.is_set():  # a second signal: out at once; processing/ still holds the job
                self._leave_running_job(wait_s=0.5)
                os._exit(1)
            self._stop_at = time.monotonic()
            self.stop.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _shutdown(self, watcher: Any, lock: RootLock) -> None:
        """Stop within STOP_PROMISE_S of the signal, whatever the worker is doing.

        The running job gets until STOP_GRACE_S to reach its next step (a second, in a stage that has
        no steps: loading, decoding); an ffmpeg still running is ended at once (the job is made again
        at the next start anyway). A worker still inside a long call is left behind: its job stays in
        processing/, journalled as stopped (not as a death). After a signal the process ends at once
        once status.json and the lock are done, without the interpreter's slow teardown.
        """
        signalled = self._stop_at is not None
        stop_at = self._stop_at if signalled else time.monotonic()
        self.stop.set()
        self.wake.set()
        self.queue.close()
        self.disk.resumed.set()
        if signalled:  # an ffmpeg still running works for nothing now
            ffmpeg.stop_all()
        self._admit_queue.put(None)
        for _ in range(CHECK_THREADS):
            self._check_queue.put(None)
        self._wait_for_worker(stop_at)
        stuck = any(worker.is_alive() for worker in self._workers)
        self._retire_queue.put(None)  # delivered results still to flush: their job folders go after
        if self._retirer is not None:
            self._retirer.join(timeout=max(0.0, stop_at + STOP_PROMISE_S - 2.5 - time.monotonic()) if signalled
                               else 600.0)
        watcher.stop(timeout=max(0.0, min(2.0, stop_at + STOP_PROMISE_S - 1.5 - time.monotonic())))
        if stuck:
            self._leave_running_job(wait_s=0.5)
        if not signalled and not stuck:
            self.executor.close()
        elif self.executor.kind != "local":  # the cluster's workers end with their owner; say goodbye quickly
            with contextlib.suppress(Exception):
                self.executor.close()
        if self._gallery_dirty:
            self._flush_gallery(force=True)
        self._write_status(state="stopped", now=True)
        lock.release()
        self.log.info("daemon stopped", delivered=self.delivered, failed=self.failures)
        if signalled or stuck:
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(self._exit_code())

    def _wait_for_worker(self, stop_at: float) -> None:
        """Until the workers are done, or their grace is over: STOP_GRACE_S to reach a step, 1 s where there is
        none."""
        while True:
            alive = [worker for worker in self._workers if worker.is_alive()]
            if not alive:
                return
            with self._lock:
                stages = {run.stage for run in self._runs.values()}
            grace = min(STOP_GRACE_S, 1.0) if stages & {"loading", "decoding"} else STOP_GRACE_S
            left = stop_at + grace - time.monotonic()
            if left <= 0:
                return
            alive[0].join(timeout=min(left, 0.1))

    def _leave_running_job(self, *, wait_s: float) -> None:
        """The process ends with jobs running: journal their attempts as stopped (it is not the jobs' fault)."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if outcome(run.attempt) is not None:
                continue
            run.attempt["outcome"] = STOPPED
            with contextlib.suppress(OSError):
                run.job.save(timeout=wait_s)
            with contextlib.suppress(Exception):
                self.log.info("stopping without waiting for the running job: it stays in processing/ and starts "
                              "again at the next start", job_id=run.eid, stage=run.stage)

    def _scan_loop(self, watcher: Any) -> None:
        """Scan when the inbox changed (a file event), when a settling file is due, and every rescan_seconds
        (events are hints: the rescan finds what they missed); the heartbeat, status.json, the gallery and the
        cancels of queued jobs each on their own timer. Sleeps until the earliest of them."""
        rescan, sweep_every = self.config.rescan_seconds, min(self.config.rescan_seconds, HEARTBEAT_S)
        last_scan = last_beat = last_sweep = float("-inf")
        due: float | None = None  # when a settling (or waiting) file may be ready
        candidates: list[Candidate] = []
        while not self.stop.is_set():
            self.wake.clear()
            paths, changed = self._changes.drain() if self._changes is not None else ({}, False)
            for path, when in paths.items():
                self.spool.inbox.note(path, when)
            resumed = self._try_resume() if self.disk.paused else False
            now = time.monotonic()
            if changed or resumed or self.once or now - last_scan >= rescan or (due is not None and now >= due):
                last_scan = now
                candidates = self.spool.inbox.scan()
                ready, _ = self.spool.inbox.settled(candidates)
                if not self._claiming_paused():
                    arrivals, _ = self.spool.inbox.arrivals(candidates, ready, self._named_attachments)
                    for arrival in arrivals:
                        if self.stop.is_set() or self.disk.paused:
                            break
                        self._take(arrival)
                        if time.monotonic() - last_beat >= HEARTBEAT_S:  # a burst of claims never stales it
                            self._write_status(now=True)
                            last_beat = time.monotonic()
                due = self.spool.inbox.next_due()
            now = time.monotonic()
            if now - last_sweep >= sweep_every:
                self._sweep_cancels()
                last_sweep = now
            if now - last_beat >= HEARTBEAT_S:
                self._keep_folders()
                watcher.ensure_alive()
                self._write_status(now=True)
                last_beat = now
            elif self._status_dirty and now - self._status_at >= STATUS_EVERY_S:
                self._write_status(now=True)
            gallery_due = self._flush_gallery()
            if self.once and not candidates and self._idle():
                break
            wake_at = [last_scan + rescan, last_sweep + sweep_every, last_beat + HEARTBEAT_S]
            wake_at += [t for t in (due, gallery_due) if t is not None]
            if self._status_dirty:
                wake_at.append(self._status_at + STATUS_EVERY_S)
            if self.once or self._claiming_paused():
                wake_at.append(now + (0.25 if self.once else 1.0))
            self.wake.wait(max(0.0, min(wake_at) - time.monotonic()))

    def _claiming_paused(self, *, note: bool = True) -> str | None:
        """Why claiming waits, or None: the one place that decides. A full disk first (it holds jobs back too),
        then the executor's hold (a cluster that went away: claimed jobs still run), noted by `_held` as it
        begins and ends unless `note` is false (status.json asks, and must not write itself)."""
        return self.disk.text or (self._held() if note else self.executor.held())

    def _held(self) -> str | None:
        """Why claiming waits for the executor (a cluster that went away), said once as it begins and ends."""
        held = self.executor.held()
        if held != self._said.get("held"):
            if held:
                self.log.warning("claiming paused", reason=held)
            elif self._said.get("held"):
                self.log.info("claiming resumed: the cluster is back")
            self._said["held"] = held or ""
            self._write_status(now=True)
        return held

    def _idle(self) -> bool:
        """Nothing claimed is waiting for admission, for its turn or for space: what --once waits for."""
        with self._lock:
            return not self._admitting and not self.disk.paused and self.queue.pending() == 0

    def _keep_folders(self) -> None:
        """Folders someone deleted while the daemon runs are made again (never the root itself)."""
        try:
            self.spool.ensure_folders(make_root=False)
        except OSError as e:
            self._say("folders", "cannot make the root's folders", error=one_line(e), root=str(self.config.root))

    # -- claim and admit ------------------------------------------------
    def _take(self, arrival: Arrival) -> None:
        try:
            job = self.spool.claim(arrival.candidate, arrival.attachments)
        except Exception as e:  # the file stays in the inbox; the scan goes on
            if disk_full(e):
                self.disk.pause(e, f"claiming {arrival.candidate.rel}")
            else:
                self._say(f"claim {arrival.candidate.rel}", "cannot claim: it stays in the inbox",
                          source=arrival.candidate.rel, error=one_line(e))
            return
        if job is None:
            return
        self.log.info("claimed", job_id=job.job_id, source=job.source, attachments=job.attachments)
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
        except Exception:  # claimed as it is, it fails with what is wrong (at admission, off this thread)
            specs = []
        names = {n for spec in specs for n in attachment_names(spec)}
        folder = Path(c.rel).parent
        found = () if any("/" in n for n in names) else tuple(sorted((folder / n).as_posix() for n in names))
        self._peeked[c.path] = (stamp, found)
        if len(self._peeked) > 10_000:
            self._peeked.clear()
        return found

    def _admit(self, job: Job) -> None:
        """Hand a claimed job to the admit thread (parse, checks, queue): never work on the scan thread."""
        with self._lock:
            self._admitting.add(job.job_id)
        self._admit_queue.put(job)

    def _admit_loop(self) -> None:
        while (job := self._admit_queue.get()) is not None:
            self._admission(job, self._parse)

    def _check_loop(self) -> None:
        while (item := self._check_queue.get()) is not None:
            job, specs = item
            self._admission(job, lambda j: self._check(j, specs))

    def _admission(self, job: Job, step: Callable[[Job], list[JobSpec] | None]) -> None:
        """One step of a job's admission; it ends queued, in failed/, or set aside (a full disk, a stop)."""
        handed_on = False
        try:
            try:
                specs = step(job)
            except JobInvalid as e:
                if not self.stop.is_set():  # a check ended by the stop is no verdict on the file
                    self._fail(job, invalid_error(e))
                return
            except Exception as e:
                if self.stop.is_set() or disk_full(e):
                    raise  # not the job's fault: set aside below
                self.log.error("the job could not be read", job_id=job.job_id, source=job.source,
                               error=one_line(e), exc_info=not isinstance(e, OSError))
                self._fail(job, unreadable_error(job, e))
                return
            if specs is None:
                handed_on = True  # to the checkers
                return
            self._queue_job(job, specs)
        except Exception as e:
            self._set_aside(job, e, "admitting it")
        finally:
            if not handed_on:
                with self._lock:
                    self._admitting.discard(job.job_id)
                self.wake.set()

    def _parse(self, job: Job) -> list[JobSpec] | None:
        """The job's entries (saved at its first admission, or parsed now); None when its files need checks."""
        saved = job.folder / "specs.json"
        if saved.is_file():
            try:
                return [JobSpec(**{**d, "adjustments": tuple(d["adjustments"])}) for d in read_json(saved)]
            except (OSError, ValueError, TypeError, KeyError):
                pass  # torn by a power loss (it is not flushed): parsed again below
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
            raise JobInvalid(label, [Problem(not_a_job_message(path.name,
                                                               wait_s=self.config.attachment_wait_seconds))])
        specs = parse(path, self.config, preset=job.preset, display_name=Path(job.source).name)
        if any(attachment_names(spec) for spec in specs):
            self._check_queue.put((job, specs))  # ffmpeg reads them through: off this thread
            return None
        return self._check(job, specs)

    def _check(self, job: Job, specs: list[JobSpec]) -> list[JobSpec]:
        specs = attachments.check_job(specs, job.base, self.config, label=job.source, loose=not job.input_path.is_dir())
        # Not flushed: a parse saved for the next start; lost or torn by a power loss, the job is parsed again.
        write_json_atomic(job.folder / "specs.json", [asdict(s) for s in specs], durable=False)
        return specs

    def _queue_job(self, job: Job, specs: list[JobSpec]) -> None:
        """Queue the entries still to make; a cancelled job, and entries whose attempts are used up, fail here."""
        if job.cancel_requested:
            self.log.info("cancelled before it started", job_id=job.job_id, source=job.source)
            self._fail(job, cancelled_error("hotfolder cancel"))
            return
        for index, spec in enumerate(specs):
            if str(index) in job.done:
                continue
            error = used_up(job, index, self.config.max_attempts)
            if error is not None:
                self._fail(job, error, index=index, count=len(specs), spec=spec)
                if len(specs) == 1:
                    return
        if all(str(i) in job.done for i in range(len(specs))):
            self._retire(job)  # delivered before a crash: its results are flushed before its folder goes
            self._write_status()
            return
        with contextlib.suppress(OSError):  # before it is queued: never over a running job's progress
            job.write_progress({"job_id": job.job_id, "stage": "queued", "text": STAGES["queued"],
                                "updated": iso(time.time())})
        with self._lock:
            self.jobs[job.job_id] = (job, specs)
            for index, spec in enumerate(specs):
                if str(index) not in job.done:
                    self.queue.put(QueueItem((-spec.priority, job.arrival, job.seq, index), job.job_id, index))
        self._write_status()

    def _set_aside(self, job: Job, e: BaseException, doing: str) -> None:
        """A job that could not go on for a reason not its own stays in processing/, out of the queue: a full
        disk takes it up again on resume, anything else at the next start."""
        with self._lock:
            self.jobs.pop(job.job_id, None)
        self.queue.remove(job.job_id)
        if self.stop.is_set():
            return
        if disk_full(e):
            self.disk.pause(e, f"{doing} ({job.source})")
        else:
            self.log.error("could not go on with the job: it stays in processing/ and is taken up at the next start",
                           job_id=job.job_id, source=job.source, doing=doing, error=one_line(e),
                           exc_info=not isinstance(e, (OSError, HotfolderError)))

    def _sweep_cancels(self) -> None:
        """A queued (not running) job whose cancel marker appeared, or whose folder was removed, leaves now."""
        with self._lock:
            waiting = [job for job_id, (job, _) in self.jobs.items() if job_id not in self._active]
        for job in waiting:
            gone = not job.folder.exists()
            if not gone and not job.cancel_requested:
                continue
            with self._lock:
                if job.job_id in self._active or job.job_id not in self.jobs:
                    continue  # the worker took it meanwhile: its own check stops it
                self.jobs.pop(job.job_id)
            self.queue.remove(job.job_id)
            if gone:
                self.log.info("cancelled: the job's folder was removed from processing/", job_id=job.job_id)
                self._write_status()
                continue
            self.log.info("cancelled while queued", job_id=job.job_id, source=job.source)
            try:
                self._fail(job, cancelled_error("hotfolder cancel"))
            except Exception as e:
                self._set_aside(job, e, "cancelling it")

    # -- retiring delivered jobs --------------------------------------
    def _retire(self, job: Job) -> None:
        """A job whose entries are all delivered (or failed): flush its results, then remove its folder."""
        with self._lock:
            self._retiring.add(job.job_id)
        self._retire_queue.put(job)

    def _retire_loop(self) -> None:
        """Takes whatever waits, flushes those results to the disk together, then removes their job folders.

        Until a result is on the disk its job's input stays in processing/: a power loss before then finds the
        job there at the next start (delivered, by its journal and the result's marker) and flushes it again.
        """
        last = float("-inf")
        while True:
            batch = [self._retire_queue.get()]
            if batch[0] is not None:  # while jobs keep coming, flush at most every RETIRE_EVERY_S: one for many
                self.stop.wait(max(0.0, last + RETIRE_EVERY_S - time.monotonic()))
            last = time.monotonic()
            while True:
                try:
                    batch.append(self._retire_queue.get_nowait())
                except queues.Empty:
                    break
            jobs = [job for job in batch if job is not None]
            if jobs:
                try:
                    self._flush_results(jobs)
                except Exception as e:  # the job stays in processing/; the next start retires it
                    self.log.error("could not flush the results to the disk", error=one_line(e))
                else:
                    for job in jobs:
                        crash_point("finishing")
                        self.spool.finish(job)
                with self._lock:
                    self._retiring.difference_update(job.job_id for job in jobs)
            if None in batch:
                return

    def _flush_results(self, jobs: list[Job]) -> None:
        folders = [self.config.outbox / name for job in jobs for name in job.done.values()
                   if not name.startswith("failed:")]
        if folders:
            fsutil.sync_filesystem(self.config.outbox, folders)
            with contextlib.suppress(OSError):
                fsutil.fsync_path(self.config.outbox)

    # -- the worker ---------------------------------------------------
    def _work(self) -> None:
        """One of the executor's workers: take a slot (a free model), then the next job in order, and make it.

        The slot comes first, so jobs start in priority-then-arrival order whatever the number of workers;
        taking it never contacts a cluster (a cache hit needs none of it)."""
        idle_after = self.config.idle_unload_minutes * 60 or None
        while True:
            self.disk.resumed.wait()
            slot = self.executor.acquire(self.stop)
            if slot is None:
                return
            try:
                item = self.queue.get(idle_after if self.executor.loaded() else None)
                if item is None:
                    return
                if item == IDLE:
                    self.log.info("idle: unloading the model", model=(self.executor.loaded() or ["", ""])[-1],
                                  idle_minutes=self.config.idle_unload_minutes)
                    self.executor.idle()
                    self._write_status()
                    continue
                try:
                    self._take_item(item, slot)
                except Exception:  # the worker must survive anything a job does
                    self.log.exception("worker error", job_id=item.job_id)
                finally:
                    self.queue.done()
                    self.wake.set()
            finally:
                slot.release()

    def _take_item(self, item: QueueItem, slot: Slot) -> None:
        if self.disk.paused:  # the disk filled while it waited: back it goes until there is space
            self.queue.put(item)
            return
        with self._lock:
            entry = self.jobs.get(item.job_id)
            if entry is None:
                return  # failed, cancelled or set aside meanwhile
            job, specs = entry
            if str(item.index) in job.done:
                return  # already delivered (or failed): a stale retry must not run it twice
            self._active[job.job_id] = self._active.get(job.job_id, 0) + 1
        try:
            self._run_entry(job, item, specs, slot)
        finally:
            with self._lock:
                left = self._active.pop(job.job_id, 1) - 1
                if left:
                    self._active[job.job_id] = left
                finished = not left and self.jobs.get(job.job_id, (None,))[0] is job and \
                    all(str(i) in job.done for i in range(len(specs)))
                if finished:
                    self.jobs.pop(job.job_id, None)
        if finished:
            self._retire(job)

    def _run_entry(self, job: Job, item: QueueItem, specs: list[JobSpec], slot: Slot) -> None:
        index, spec = item.index, specs[item.index]
        eid = entry_id(job, index, len(specs))
        structlog.contextvars.bind_contextvars(job_id=eid)
        log.attach_job_log(eid, job.log_file)
        timings = Timings(queued=job.arrival, started=time.time())
        attempt: dict[str, Any] = {"index": index, "started": iso(timings.started), "stage": "starting"}
        job.attempts.append(attempt)  # journalled when the risky work begins (see _stage)
        run = _Run(job=job, eid=eid, spec=spec, attempt=attempt, slot=slot)
        worker = threading.current_thread().name
        with self._lock:
            self._runs[worker] = run
        again: QueueItem | None = None  # the entry, when this attempt's end puts it back in the queue
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
            self._stage(run, "starting")
            report = Report(stage=lambda stage: self._stage(run, stage), on_step=self._on_step(run))
            video = self.producer.produce(job, index, len(specs), spec, timings, report, slot)
            with self._lock:
                self.delivered += 1
            self._remember(job, eid, "done", video)
            notify.job_finished(self.config, name=spec.name, path=str(video), ok=True)
        except Exception as e:
            again = self._entry_failed(run, item, specs, e)
        finally:
            shutil.rmtree(job.stage / str(index), ignore_errors=True)
            with self._lock:
                self._runs.pop(worker, None)
            self._write_status()
            log.detach_job_log(eid)
            structlog.contextvars.unbind_contextvars("job_id")
            # Back to the queue only now: another worker thread may take the entry at once, and must not find
            # this attempt's stage folder being removed, or its job log detached, under it.
            if again is not None:
                self.queue.put(again)

    def _entry_failed(self, run: _Run, item: QueueItem, specs: list[JobSpec], e: Exception) -> QueueItem | None:
        """What an attempt's end means: wait for space, stop, cancel, try again, or fail. Returns the entry to
        queue again (the caller queues it once the attempt is cleaned up), or None."""
        job, attempt, index, spec = run.job, run.attempt, item.index, run.spec
        if waits_for_space(e, job, index, stopping=self.stop.is_set()):
            if not isinstance(e, Paused):
                self.disk.pause(e, f"running {run.eid}")
            attempt["outcome"] = PAUSED
            self._save_quietly(job)
            self.log.warning("the disk is full: the job waits for space, then starts again", stage=run.stage)
            return QueueItem(item.sort_key, item.job_id, index)
        if self.stop.is_set():  # whatever ended it (a step's stop check, an ffmpeg ended by the stop)
            attempt["outcome"] = STOPPED
            self._save_quietly(job)
            self.log.info("interrupted by stop; stays queued for the next start", reason=one_line(e))
            return None
        if isinstance(e, WorkerLost):
            return self._worker_lost(run, item, specs, e)
        if isinstance(e, Interrupted):
            attempt["outcome"] = "cancelled"
            if not job.folder.exists():
                self.log.info("cancelled: the job's folder was removed from processing/")
                with self._lock:
                    self.jobs.pop(job.job_id, None)
                self.queue.remove(job.job_id)
                return None
            self.log.info("cancelled", reason=str(e))
            self._fail_or_set_aside(job, cancelled_error("hotfolder cancel"))
            return None
        attempt.update(outcome=FAILED, error=one_line(e), type=type(e).__name__, kind=getattr(e, "kind", "error"))
        if retryable(e):
            return self._attempt_failed(job, item, specs, spec, e)
        if not isinstance(e, JobInvalid):
            self.log.error("failed; retrying cannot help", kind=getattr(e, "kind", "error"), error=str(e))
        record = invalid_error(e) if isinstance(e, JobInvalid) else error_record(e, getattr(e, "kind", "error"))
        self._fail_or_set_aside(job, record, index=index, count=len(specs), spec=spec)
        return None

    def _worker_lost(self, run: _Run, item: QueueItem, specs: list[JobSpec], e: WorkerLost) -> QueueItem | None:
        """The worker went away mid-job: not the job's fault, so back to the queue at once (no attempt used up);
        but a job that has lost its worker max_attempts times per worker (and at least twice, so that one machine
        lost by chance never fails a job, even with one worker and max_attempts = 1) takes them all down: it fails."""
        job, index = run.job, item.index
        run.attempt.update(outcome=LOST, error=one_line(e))
        times = lost_count(job, index)
        limit = lost_limit(self.config.max_attempts, self.executor.threads)
        if times >= limit:
            self.log.error("the job's worker was lost too often: failing it", lost=times, error=one_line(e))
            error = lost_error(job, index, times, e)
            self._fail_or_set_aside(run.job, error, index=index, count=len(specs), spec=run.spec)
            return None
        self._save_quietly(job)
        self.log.warning("the worker went away: the job goes back to the queue (not counted as an attempt)",
                         worker=run.attempt.get("worker"), lost=times, limit=limit, error=one_line(e))
        return QueueItem(item.sort_key, item.job_id, index)

    def _attempt_failed(self, job: Job, item: QueueItem, specs: list[JobSpec], spec: JobSpec,
                        e: Exception) -> QueueItem | None:
        index = item.index
        self._save_quietly(job)
        tries = job.tries(index)
        self.log.error("attempt failed", attempt=len(tries), max_attempts=self.config.max_attempts, error=one_line(e),
                       exc_info=not isinstance(e, HotfolderError))
        if len(tries) < self.config.max_attempts:
            delay = backoff_s(self.config.retry_backoff_seconds, len(tries))
            self.log.info("will retry", in_s=delay)
            return QueueItem(item.sort_key, item.job_id, index, not_before=time.monotonic() + delay)
        self._fail_or_set_aside(job, retries_used_error(e, tries), index=index, count=len(specs), spec=spec)
        return None

    def _save_quietly(self, job: Job) -> None:
        """Journal an attempt's end; a journal that cannot be written now (a full disk) is written later."""
        try:
            job.save()
        except OSError as e:
            self._say("journal", "cannot write the job's journal", job_id=job.job_id, error=one_line(e))

    def _fail_or_set_aside(self, job: Job, error: dict[str, Any], **kwargs: Any) -> None:
        try:
            self._fail(job, error, **kwargs)
        except Exception as e:
            self._set_aside(job, e, "moving it to failed/")

    def _fail(self, job: Job, error: dict[str, Any], *, index: int | None = None, count: int = 1,
              spec: JobSpec | None = None) -> None:
        single = index is None or count == 1
        eid = job.job_id if index is None else entry_id(job, index, count)
        name = spec.name if spec is not None else None
        target = self.spool.fail(job, error, index=None if single else index, name=name)
        with self._lock:
            self.failures += 1
            if single:
                self.jobs.pop(job.job_id, None)
                if index is not None:
                    job.done[str(index)] = f"failed:{target.name}"
        if single:
            self.queue.remove(job.job_id)
        self.log.warning("failed", job_id=eid, source=job.source, error=error.get("message"), path=str(target))
        self._remember(job, eid, "failed", target / "error.txt")
        notify.job_finished(self.config, name=name or Path(job.source).stem, path=str(target / "error.txt"),
                            ok=False, message=str(error.get("message") or ""))

    # -- a full disk ------------------------------------------------------
    def _try_resume(self) -> bool:
        """Resume once there is space again (True then), taking up the jobs set aside while the disk was full."""
        if not self.disk.try_resume():
            return False
        with self._lock:
            known = set(self.jobs) | self._admitting | self._retiring | set(self._active)
        for job in self.spool.recover(skip=known):  # jobs set aside while the disk was full
            self.log.info("taken up again now that there is space", job_id=job.job_id, source=job.source)
            self._admit(job)
        self._write_status(now=True)
        return True

    # -- progress and status ------------------------------------------
    def _stage(self, run: _Run, stage: str, **step: Any) -> None:
        """The running entry enters `stage`: journalled before the risky work, then shown.

        The first risky stage makes the attempt durable (fsynced: it survives a power loss too);
        later stages only refine where it got, written without a flush (they survive the process
        being killed, which is what they are for, at no cost per job).
        """
        if stage == "waiting":  # for a cluster worker to be ready (said again while it waits): a cancel reaches it
            _check_cancel(run.job)
        if outcome(run.attempt) is None and stage in RISKY and run.attempt.get("stage") != stage:
            first = run.attempt.get("stage") not in RISKY
            run.attempt["stage"] = stage
            if self.executor.kind != "local" and run.slot is not None:  # which worker runs it (a restart reads it)
                run.attempt.update(executor=self.executor.kind, worker=run.slot.name)
            run.job.save(durable=first)
        if stage == run.stage and not step:
            return
        if stage == "delivering":
            run.attempt["outcome"] = DELIVERED  # the risky work is over; the delivery journals it
        run.stage = stage
        self._progress(run, stage, **step)
        self._write_status()

    def _on_step(self, run: _Run) -> Callable[[str, int, int], None]:
        """The backend's per-step callback: stop, pause and cancel checks, the step, and the end of denoising."""
        last = [0.0]

        def on_step(phase: str, step: int, total: int) -> None:
            if self.stop.is_set():
                raise Interrupted("stopping")
            if self.disk.paused:
                raise Paused("the disk is full")
            _check_cancel(run.job)
            if step == 1:
                crash_point("generating")
            if phase in ("decode", "decoding") or (total and step >= total and phase not in FIRST_OF_TWO):
                stage = "decoding"  # the last step is done: the backend decodes until generate returns
            else:
                stage = "generating"
            if phase != run.phase:
                run.phase, run.phase_started = phase, time.monotonic()
            now = time.monotonic()
            if stage != run.stage:
                last[0] = now
                self._stage(run, stage, phase=phase, step=step, total=total)
            elif now - last[0] >= 0.25 or step >= total:  # status.json takes it with the next heartbeat
                last[0] = now
                self._progress(run, stage, phase=phase, step=step, total=total)

        return on_step

    def _progress(self, run: _Run, stage: str, *, phase: str = "", step: int = 0, total: int = 0) -> None:
        """progress.json (and status.json's running entry): the stage; steps only while generating."""
        data: dict[str, Any] = {"job_id": run.job.job_id, "stage": stage, "text": STAGES.get(stage, stage)}
        if stage == "generating" and total:
            elapsed = time.monotonic() - run.phase_started
            eta = elapsed / step * (total - step) if step else None
            data.update(phase=phase, step=step, total_steps=total, percent=round(100.0 * step / total, 1),
                        eta_s=None if eta is None else round(eta, 1))
            data["text"] = f"generating step {step}/{total}" + (f" ({phase})" if phase and phase != "denoise" else "")
        data["updated"] = iso(time.time())
        with self._lock:
            run.progress = data
        try:
            run.job.write_progress(data)
        except FileNotFoundError:
            return  # the folder was removed (cancel); the next step notices
        except OSError as e:
            if disk_full(e):
                self.disk.pause(e, "writing progress.json")

    def _remember(self, job: Job, eid: str, status: str, path: Path) -> None:
        with self._lock:
            self._recent.insert(0, {"job_id": eid, "source": job.source, "status": status, "path": str(path),
                                    "finished": iso(time.time())})
            del self._recent[20:]
        self._write_status()
        self._gallery_dirty = True  # rewritten by the scan thread: at most every GALLERY_EVERY_S, at once when idle
        self.wake.set()

    def _flush_gallery(self, *, force: bool = False) -> float | None:
        """Rewrite the gallery if a result came since, unless it was rewritten less than GALLERY_EVERY_S ago and
        jobs are still running (the last rewrite is never skipped: at idle it comes at once); returns when it is
        due when it had to wait."""
        if not self._gallery_dirty:
            return None
        now = time.monotonic()
        if not force and now - self._gallery_at < GALLERY_EVERY_S and self.queue.pending():
            return self._gallery_at + GALLERY_EVERY_S
        self._gallery_dirty = False
        self._gallery_at = now
        self._write_gallery()
        return None

    def _write_gallery(self) -> None:
        """outbox/index.html, after each delivery and failure and at start: never a job's problem."""
        try:
            gallery.write(self.config)
        except OSError as e:
            self._say("gallery", "cannot write the gallery (outbox/index.html)", error=one_line(e))
        else:
            self._said.pop("gallery", None)

    def _status(self, state: str) -> dict[str, Any]:
        queue = []
        for item in self.queue.snapshot():
            entry = self.jobs.get(item.job_id)
            if entry is None:
                continue
            job, specs = entry
            queue.append({"position": len(queue) + 1, "job_id": entry_id(job, item.index, len(specs)),
                          "source": job.source, "name": specs[item.index].name,
                          "priority": specs[item.index].priority, "stage": "queued"})
        runs = sorted(self._runs.values(), key=lambda r: r.job.arrival) if state == "running" else []
        running = [{"job_id": run.eid, "source": run.job.source, "name": run.spec.name,
                    "prompt": run.spec.prompt[:200], "worker": run.slot.name if run.slot is not None else None,
                    # a run just registered has not said its first stage yet: it is starting, as its attempt says
                    "progress": run.progress or {"stage": run.stage or "starting"}} for run in runs]
        return {
            "daemon": {"state": state, "pid": os.getpid(), "root": str(self.config.root),
                       "started": iso(self._started), "heartbeat": iso(time.time()),
                       "heartbeat_unix": time.time(), "model_loaded": self.executor.loaded(),
                       "model": self.config.model, "backend": self.config.backend,  # for jobs that name none
                       "executor": self.config.executor},
            "paused": self._claiming_paused(note=False) if state == "running" else self.disk.text,
            "queue": queue,
            "running": running[0] if running else None,  # the first: readers from before several ran at once
            "running_jobs": running,  # every running entry, with its worker
            "workers": self.executor.describe() if state == "running" else None,
            "recent": self._recent,
        }

    def _write_status(self, state: str = "running", *, now: bool = False) -> None:
        """status.json (and the gallery's status script), at once with `now` (the heartbeat, start, stop, a
        pause); else marked for the scan thread, which writes it at most every STATUS_EVERY_S: the worker never
        waits for it, and a burst of changes is one write."""
        if not now and state == "running":
            self._status_dirty = True
            self.wake.set()
            return
        with self._lock:
            self._status_dirty = False
            self._status_at = time.monotonic()
        for first in (True, False):
            with self._lock:
                try:
                    status = self._status(state)
                    status_file.write(self.config.root, status)
                except OSError as e:
                    error = e
                else:
                    self._said.pop("status", None)
                    try:
                        gallery.write_status(self.config, status)  # the gallery's live view
                    except OSError as e:
                        self._say("gallery", "cannot write the gallery's status script", error=one_line(e))
                    return
            if not (first and disk_full(error) and not self.disk.paused):
                break
            self.disk.pause(error, "writing status.json", say=False)  # the reserve it gives back makes room
        self._say("status", "cannot write status.json", path=str(self.config.status_file), error=one_line(error))

    def _say(self, where: str, event: str, **fields: Any) -> None:
        """Log a warning once while it stays the same (a lasting problem is not repeated every scan)."""
        text = f"{event} {fields}"
        if self._said.get(where) != text:
            self._said[where] = text
            self.log.warning(event, **fields)

    # -- the default model ----------------------------------------------
    def _warn_missing_weights(self) -> None:
        """Say at start when the default model's weights are not here: each job using it would fail."""
        try:
            problem = _weights_missing(self.config)
        except Exception:  # a question about the disk must never stop the start
            return
        if problem:
            self.log.warning(problem)


# -- helpers ----------------------------------------------------------
def _weights_missing(config: Config) -> str | None:
    """Why the default model cannot run here for lack of weights, with the command that fetches them; None if it can."""
    from hotfolder.backends import choose

    model = config.model_info(config.model)
    if model is None:
        return None
    backend, _ = choose.resolve("auto", model, config)  # the backend jobs that name no other would run on
    problem = choose.weights_problem(model, config, backend=backend)
    return f"default model {model.name} ({backend}): {problem} Every job that uses it fails until then." \
        if problem else None


def _check_cancel(job: Job) -> None:
    """A removed folder or a `cancel` marker (hotfolder cancel) stops the job."""
    if not job.folder.exists():
        raise Interrupted("the job's folder was removed from processing/")
    if job.cancel_requested:
        raise Interrupted("cancelled by hotfolder cancel")
