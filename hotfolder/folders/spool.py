"""Folder states and the transitions between them: claim, recover, deliver, fail.

The folders are the journal. Everything a claimed job owns lives in
`processing/<job_id>/`, so a restart rebuilds the queue from the folders alone:

    processing/<job_id>/job.json        who the job is, its attempts (each started, its stage, how it ended),
                                        what was delivered or failed
    processing/<job_id>/input/<rel>     the claimed file or folder (rel keeps inbox/<preset>/), and the
                                        attachments a loose job file named, beside it
    processing/<job_id>/stage/          results being built (thrown away on restart)
    processing/<job_id>/failed-<i>/     a failed/ folder being built (thrown away on restart)
    processing/<job_id>/progress.json   stage, step, percent, ETA of the running job ("queued" otherwise)
    processing/<job_id>/job.log         this job's log lines

Every state change is one `os.rename` on one filesystem, journalled in job.json
before it happens. The input never leaves processing/ before the folder that takes
its place (a result, or a failed/ folder holding links to the same files) is in
place. An attempt is journalled before the risky work begins, so a restart knows
which attempts the process did not survive. What is in the inbox and when it has
settled is `arrivals.py`'s part; `Spool.inbox` is that watcher.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from hotfolder.config import Config
from hotfolder.folders.arrivals import Arrivals, Candidate
from hotfolder.fsutil import read_json, write_atomic, write_json_atomic
from hotfolder.job.names import RESULT_NAME_MAX_BYTES, fit_name, is_ignored, move_to_free_name

CANCEL_MARKER = "cancel"  # processing/<job>/cancel: `hotfolder cancel` asks the daemon to stop this job

# Fault injection for the crash tests: SIGKILL this process at the named point. Read
# once, here, because the points are exactly where no outside timing can reach.
_CRASH_AT = os.environ.get("HOTFOLDER_CRASH_AT", "")


def crash_point(name: str) -> None:
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


def timestamp(wall: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(wall))


# How an attempt ended (job.json "attempts"): none yet means it is running, or the process died in it.
DELIVERED, FAILED, DIED, STOPPED, PAUSED = "delivered", "failed", "died", "stopped", "paused"
LOST = "lost"  # the cluster worker running it went away (or the daemon did, with the job on a worker): not counted
COUNTED = (FAILED, DIED)  # the outcomes that use up one of max_attempts


def outcome(attempt: dict[str, Any]) -> str | None:
    """How an attempt ended; a record from before outcomes were journalled counts as failed."""
    return attempt.get("outcome") or (FAILED if "error" in attempt else None)


_SAVES = threading.Lock()  # job.json is saved by the worker and, at a stop, by the main thread


@dataclass
class Job:
    """A claimed job: its folder in processing/ and what job.json records."""

    job_id: str
    folder: Path
    source: str  # inbox-relative name as dropped
    preset: str | None
    arrival: float  # wall time of the claim; FIFO order within a priority
    seq: int  # tie-breaker for arrivals in the same instant
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivering: dict[str, str] = field(default_factory=dict)  # index -> outbox folder name
    done: dict[str, str] = field(default_factory=dict)  # index -> outbox folder name (or "failed:...")
    attachments: list[str] = field(default_factory=list)  # inbox-relative files claimed with a loose job file
    failing: dict[str, str] = field(default_factory=dict)  # "all" or index -> failed/ folder name, before the move

    @property
    def input_path(self) -> Path:
        return self.folder / "input" / self.source

    @property
    def attachment_paths(self) -> list[Path]:
        """Where the claimed attachments of a loose job file live (beside it under input/)."""
        return [self.folder / "input" / rel for rel in self.attachments]

    @property
    def base(self) -> Path:
        """The job's folder, which attachment paths are relative to: the dropped folder, or the job file's."""
        return self.input_path if self.input_path.is_dir() else self.input_path.parent

    @property
    def stage(self) -> Path:
        return self.folder / "stage"

    @property
    def progress_file(self) -> Path:
        return self.folder / "progress.json"

    @property
    def log_file(self) -> Path:
        return self.folder / "job.log"

    @property
    def display_name(self) -> str:
        return Path(self.source).name

    def record(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "source": self.source,
            "preset": self.preset,
            "arrival": self.arrival,
            "seq": self.seq,
            "attempts": self.attempts,
            "delivering": self.delivering,
            "done": self.done,
            "attachments": self.attachments,
            "failing": self.failing,
        }

    def save(self, *, durable: bool = True, timeout: float = -1) -> bool:
        """Journal the job. Serialised, so the last save holds the last change; False when the lock was not
        had within `timeout` seconds (a stop that cannot wait). `durable=False` survives the process being
        killed (the kernel has it) but not a power loss: for details that may be lost, never for a state."""
        if not _SAVES.acquire(timeout=timeout):
            return False
        try:
            write_json_atomic(self.folder / "job.json", self.record(), durable=durable)
        finally:
            _SAVES.release()
        return True

    def tries(self, index: int) -> list[dict[str, Any]]:
        """The attempts at entry `index` that used up one of max_attempts (failed, or the process died)."""
        return [a for a in self.attempts if a.get("index") == index and outcome(a) in COUNTED]

    def write_progress(self, data: dict[str, Any]) -> None:
        """progress.json: rewritten atomically, not fsynced (rebuilt at every start)."""
        write_json_atomic(self.progress_file, data, durable=False)

    @classmethod
    def from_record(cls, folder: Path, rec: dict[str, Any]) -> Job:
        """The job as its journal (`job.json`) records it: recovery, cancel and retry all read it so."""
        return cls(
            job_id=rec["job_id"],
            folder=folder,
            source=rec["source"],
            preset=rec.get("preset"),
            arrival=rec.get("arrival", 0.0),
            seq=rec.get("seq", 0),
            attempts=rec.get("attempts", []),
            delivering=rec.get("delivering", {}),
            done=rec.get("done", {}),
            attachments=rec.get("attachments", []),
            failing=rec.get("failing", {}),
        )

    @classmethod
    def load(cls, folder: Path) -> Job | None:
        """The job journalled in `folder`, or None when job.json is missing or unreadable."""
        try:
            rec = read_json(folder / "job.json")
            return cls.from_record(folder, rec)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def cancel_requested(self) -> bool:
        return (self.folder / CANCEL_MARKER).exists()

    def request_cancel(self, by: str) -> None:
        write_json_atomic(self.folder / CANCEL_MARKER, {"requested_by": by, "pid": os.getpid()})


class Spool:
    """The root's folders and the moves between them."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.inbox = Arrivals(config, clock)  # what is in the inbox, and what has settled
        self._seq = 0

    # -- folders -------------------------------------------------------
    def ensure_folders(self, *, make_root: bool = True) -> None:
        """The root's folders, made where missing. `make_root=False` (a running daemon putting back a folder
        someone deleted) never creates the root itself: a root that vanished (an unmounted drive) stays gone."""
        for folder in (self.config.inbox, self.config.processing, self.config.outbox, self.config.failed):
            folder.mkdir(parents=make_root, exist_ok=True)
        for preset in self.config.presets:
            (self.config.inbox / preset).mkdir(exist_ok=True)

    # -- claim ---------------------------------------------------------
    def claim(self, c: Candidate, attachments: tuple[Candidate, ...] = ()) -> Job | None:
        """Move the candidate (and the attachments it named) into processing/; None if any changed or vanished.

        job.json is written first and lists the attachments, then each file moves with one
        rename, the job file first. A crash leaves a folder with no input (removed on restart),
        or a claimed job file whose remaining attachments `recover` moves in after it.
        """
        if not self.inbox.confirm((c, *attachments)):
            return None  # changed since it settled: look again next scan
        wall = time.time()
        self._seq += 1
        job_id = f"{timestamp(wall)}-{secrets.token_hex(3)}"
        folder = self.config.processing / job_id
        job = Job(job_id=job_id, folder=folder, source=c.rel, preset=c.preset, arrival=wall, seq=self._seq,
                  attachments=[a.rel for a in attachments])  # fmt: skip
        try:
            job.input_path.parent.mkdir(parents=True)
            job.save()
            os.rename(c.path, job.input_path)
        except FileNotFoundError:
            shutil.rmtree(folder, ignore_errors=True)
            return None  # someone else claimed it
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)  # a full disk: the file stays in the inbox
            raise
        crash_point("claimed")
        self._claim_attachments(job)
        return job

    def _claim_attachments(self, job: Job) -> None:
        """Move each attachment still in the inbox beside the claimed job file (one rename each).

        One that vanished is left out; the job then fails naming it.
        """
        for rel, target in zip(job.attachments, job.attachment_paths):
            if os.path.lexists(target):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(self.config.inbox / rel, target)
            except FileNotFoundError:
                continue
            crash_point("claimed_attachment")

    def recover(self, skip: Collection[str] = ()) -> list[Job]:
        """Rebuild the queue from processing/ after a start or a crash (jobs in `skip` are left alone).

        Partial staging output and half-built failed/ folders are discarded; folders whose
        claim never happened are removed; a delivery (or a move to failed/) that happened
        before the crash is marked done; an attempt the journal says started and never
        ended is marked "died" (the process died while running it); progress.json says
        "queued", never what a dead process was doing.
        """
        jobs: list[Job] = []
        try:
            entries = sorted(os.scandir(self.config.processing), key=lambda e: e.name)
        except FileNotFoundError:
            return jobs
        for entry in entries:
            if is_ignored(entry.name) or not entry.is_dir(follow_symlinks=False) or entry.name in skip:
                continue
            folder = Path(entry.path)
            job = Job.load(folder)
            if job is None or not os.path.lexists(job.input_path):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if self._failed_already(job):
                self.finish(job)  # moved to failed/ just before the crash: only the clean-up was left
                continue
            self._claim_attachments(job)  # a crash between the job file's rename and its attachments'
            for index, name in list(job.delivering.items()):
                if index not in job.done and self._delivered_by(job, name):
                    job.done[index] = name
            for attempt in job.attempts:
                if outcome(attempt) is None and attempt.get("worker") and attempt.get("executor", "local") != "local":
                    # It ran on a cluster worker, not in the process that died: not the job's fault.
                    attempt["outcome"] = LOST
                    attempt["error"] = f"the daemon stopped while worker {attempt['worker']} ran it"
                elif outcome(attempt) is None:
                    attempt["outcome"] = DIED
                    attempt["error"] = f"the process died while running it (stage: {attempt.get('stage', '?')})"
            shutil.rmtree(job.stage, ignore_errors=True)
            for built in folder.glob("failed-*"):
                shutil.rmtree(built, ignore_errors=True)
            job.save()
            with contextlib.suppress(OSError):
                job.write_progress({"job_id": job.job_id, "stage": "queued", "text": "queued (after a restart)"})
            jobs.append(job)
        self._seq = max([self._seq] + [j.seq for j in jobs])
        return jobs

    def _delivered_by(self, job: Job, name: str) -> bool:
        marker = self.config.outbox / name / ".hotfolder-job"
        try:
            return marker.read_text().strip() == job.job_id
        except OSError:
            return False

    def _failed_already(self, job: Job) -> bool:
        """Sort out moves to failed/ the journal announced: True when the whole job is already there."""
        for key, name in list(job.failing.items()):
            try:
                landed = read_json(self.config.failed / name / "error.json").get("job_id") == job.job_id
            except (OSError, ValueError, AttributeError):
                landed = False
            if landed and key == "all":
                return True
            if landed:
                job.done[key] = f"failed:{name}"
            del job.failing[key]
        return False

    # -- deliver / fail ------------------------------------------------
    def deliver(self, job: Job, index: int, built: Path, name: str,
                before: Callable[[Path], None] | None = None) -> Path:
        """Move a fully built result folder into outbox/ with one rename; never overwrites.

        `before(target)` runs right before each try, with the folder the result would become
        (the producer writes the log's last line there). An outbox someone deleted is made again.

        Durable: the journal's `delivering` entry, flushed before the rename (a crash after the rename then
        never delivers twice). Not flushed: the result's files, and `done` is not journalled at all (`recover`
        derives it); the daemon flushes the result before it removes the job's folder (`Daemon._retire`), so
        until then the input in processing/ is the record.
        """
        (built / ".hotfolder-job").write_text(job.job_id + "\n")

        def journal(target: Path) -> None:  # before the rename, so a restart can tell it happened
            if before is not None:
                before(target)
            job.delivering[str(index)] = target.name
            job.save()
            crash_point("delivering")

        self.config.outbox.mkdir(exist_ok=True)
        target = move_to_free_name(built, self.config.outbox, f"{timestamp()}_{name}", before=journal)
        crash_point("delivered")
        # Not journalled on its own: `recover` knows it from `delivering` and the result's marker, and the job's
        # next save (its next entry's attempt) carries it.
        job.done[str(index)] = target.name
        crash_point("recorded")
        return target

    def fail(self, job: Job, error: dict[str, Any], *, index: int | None = None, name: str | None = None) -> Path:
        """Put the job's original files plus error.txt and error.json into failed/.

        The failed/ folder is built whole inside the job's folder, holding hard links to
        the originals (copies where links cannot be made, and for one entry of a batch,
        whose job folder stays for the other entries), journalled, then moved into failed/
        with one rename: until that rename the input is still where a restart finds it,
        and after it a restart sees the move happened (`recover`). Then the job's folder goes.
        """
        name = fit_name(name or Path(job.source).stem or "job", RESULT_NAME_MAX_BYTES)
        key = "all" if index is None else str(index)
        build = job.folder / f"failed-{key}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        for original in (job.input_path, *job.attachment_paths):
            if os.path.lexists(original):  # else an attachment that never arrived
                _place(original, build / original.name, link=index is None)
        error = {"job_id": job.job_id, "source": job.source, "index": index, **error}
        if job.attachments:  # inbox-relative: where `hotfolder retry` should put them back
            error["attachments"] = job.attachments
        write_json_atomic(build / "error.json", error)
        write_atomic(build / "error.txt", _error_text(error).encode("utf-8"))
        if job.log_file.exists():
            shutil.copy2(job.log_file, build / f"{name}.log")

        def journal(target: Path) -> None:  # before the rename, so a restart can tell it happened
            job.failing[key] = target.name
            job.save()
            crash_point("failing")

        self.config.failed.mkdir(exist_ok=True)
        target = move_to_free_name(build, self.config.failed, f"{timestamp()}_{name}", before=journal)
        crash_point("failed")
        if index is None:
            self.finish(job)
        else:
            job.done[key] = f"failed:{target.name}"
            job.failing.pop(key, None)
            job.save()
        return target

    def finish(self, job: Job) -> None:
        """The job is fully delivered or failed: its processing/ folder goes."""
        shutil.rmtree(job.folder, ignore_errors=True)


def _place(src: Path, dest: Path, *, link: bool) -> None:
    """`src` at `dest` too: a hard link (`link`, same disk: instant, no space), else a copy; a link as a link."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dest)
    elif src.is_dir():
        shutil.copytree(src, dest, symlinks=True, copy_function=_link_or_copy if link else shutil.copy2)
    elif link:
        _link_or_copy(src, dest)
    else:
        shutil.copy2(src, dest)


def _link_or_copy(src: str | Path, dest: str | Path) -> None:
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:  # a file system without hard links (or their limit reached): a copy
        shutil.copy2(src, dest, follow_symlinks=False)


def cancelled_error(by: str) -> dict[str, Any]:
    """The failure record of a cancelled job (error.json)."""
    return {"status": "cancelled", "kind": "cancelled", "message": f"cancelled by {by}",
            "hint": "To run it after all: `hotfolder retry` with this folder's name."}


def _error_text(error: dict[str, Any]) -> str:
    """error.txt: what went wrong, in words, and what to do next."""
    lines = [f"This job could not be made: {error.get('source')}", ""]
    lines.append(error.get("message", "unknown error"))
    for p in error.get("problems", []) or []:
        where = ""
        if p.get("line"):
            where = f" (line {p['line']}, column {p.get('column')})"
        if p.get("message") and p["message"] not in error.get("message", ""):
            lines.append(f"- {p['message']}{where}")
    if error.get("hint"):
        lines += ["", f"What to do: {error['hint']}"]
    if error.get("attempts"):
        lines += ["", f"Attempts: {len(error['attempts'])}"]
        for a in error["attempts"]:
            lines.append(f"- {a.get('started', '')}: {a.get('error', '')}")
    lines += ["", f"Job id: {error.get('job_id')}"]
    return "\n".join(lines) + "\n"
