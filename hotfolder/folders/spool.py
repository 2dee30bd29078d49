"""Folder states and the transitions between them: settle, claim, deliver, fail.

The folders are the journal. Everything a claimed job owns lives in
`processing/<job_id>/`, so a restart rebuilds the queue from the folders alone:

    processing/<job_id>/job.json        who the job is, its attempts, what was delivered
    processing/<job_id>/input/<rel>     the claimed file or folder (rel keeps inbox/<preset>/), and the
                                        attachments a loose job file named, beside it
    processing/<job_id>/stage/          results being built (thrown away on restart)
    processing/<job_id>/progress.json   stage, step, percent, ETA of the running job
    processing/<job_id>/job.log         this job's log lines

Every state change is one `os.rename` on one filesystem. Pure filesystem: no
threads; the clock is injected so tests can step time.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from hotfolder.config import Config
from hotfolder.errors import UsageError
from hotfolder.fsutil import read_json, write_json_atomic
from hotfolder.job.names import free_paths, is_dataless, is_ignored, is_job_file_name

CANCEL_MARKER = "cancel"  # processing/<job>/cancel: `hotfolder cancel` asks the daemon to stop this job

# Fault injection for the crash tests: SIGKILL this process at the named point. Read
# once, here, because the points are exactly where no outside timing can reach.
_CRASH_AT = os.environ.get("HOTFOLDER_CRASH_AT", "")


def crash_point(name: str) -> None:
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


def timestamp(wall: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(wall))


@dataclass(frozen=True)
class Candidate:
    """Something in the inbox that may become a job."""

    path: Path
    rel: str  # relative to the inbox, "/"-separated
    preset: str | None
    is_link: bool = False


def is_loose_file(c: Candidate) -> bool:
    """A plain file dropped straight into the inbox (or a preset folder): not a folder, not a link."""
    return not c.is_link and c.path.is_file()


def is_job_file(c: Candidate) -> bool:
    return is_job_file_name(c.path.name)


def may_be_attachment(c: Candidate) -> bool:
    """A loose file (or link) that is not a job file: a job file may still come and name it."""
    return not is_job_file(c) and (c.is_link or c.path.is_file())


@dataclass(frozen=True)
class Arrival:
    """What to claim now: a candidate, and the settled attachments a loose job file named."""

    candidate: Candidate
    attachments: tuple[Candidate, ...] = ()


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
        }

    def save(self) -> None:
        write_json_atomic(self.folder / "job.json", self.record())

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


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(total size, newest mtime_ns, entry count) of a file or folder; None if it vanished."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            return (st.st_size, st.st_mtime_ns, 1)
        total, newest, count = 0, st.st_mtime_ns, 0
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                s = os.lstat(os.path.join(dirpath, name))
                total += s.st_size
                newest = max(newest, s.st_mtime_ns)
                count += 1
        return (total, newest, count)
    except FileNotFoundError:
        return None


class Spool:
    """The root's folders and the moves between them."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int, int], float]] = {}
        self._waits: dict[Path, float] = {}  # loose files waiting for (or to be named as) attachments: since when
        self._seq = 0

    # -- folders -------------------------------------------------------
    def ensure_folders(self) -> None:
        for folder in (self.config.inbox, self.config.processing, self.config.outbox, self.config.failed):
            folder.mkdir(parents=True, exist_ok=True)
        for preset in self.config.presets:
            (self.config.inbox / preset).mkdir(exist_ok=True)

    # -- inbox ---------------------------------------------------------
    def scan(self) -> list[Candidate]:
        """Everything in the inbox that could be a job, oldest first."""
        found: list[Candidate] = []
        inbox = self.config.inbox
        for entry in self._entries(inbox):
            if entry.is_dir(follow_symlinks=False) and entry.name in self.config.presets:
                for sub in self._entries(Path(entry.path)):
                    found.append(self._candidate(Path(sub.path), f"{entry.name}/{sub.name}", entry.name))
            else:
                found.append(self._candidate(Path(entry.path), entry.name, None))
        return found

    def _entries(self, folder: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if is_ignored(entry.name):
                continue
            try:
                if is_dataless(entry.stat(follow_symlinks=False)):
                    continue  # an iCloud file not downloaded yet: wait for it
            except FileNotFoundError:
                continue
            yield entry

    @staticmethod
    def _candidate(path: Path, rel: str, preset: str | None) -> Candidate:
        return Candidate(path=path, rel=rel, preset=preset, is_link=path.is_symlink())

    def settled(self, candidates: list[Candidate]) -> tuple[list[Candidate], bool]:
        """Those unchanged (size, mtime, entries) for settle_seconds; and whether any are still settling.

        A file is judged only by what was observed: copies that keep the source's
        mtime (Finder, cp -p, rsync) still grow in size, so nothing is trusted at first sight.
        """
        now = self.clock()
        ready: list[Candidate] = []
        waiting = False
        current = {c.path for c in candidates}
        for path in list(self._seen):
            if path not in current:
                del self._seen[path]
        for c in candidates:
            if c.is_link:
                ready.append(c)  # never followed; failed at once
                continue
            sig = _signature(c.path)
            if sig is None:
                self._seen.pop(c.path, None)
                continue
            prev = self._seen.get(c.path)
            if prev is None or prev[0] != sig:
                self._seen[c.path] = (sig, now)
                waiting = True
            elif now - prev[1] >= self.config.settle_seconds:
                ready.append(c)
            else:
                waiting = True
        # First in, first out: claim in the order the files were last written (then by name).
        ready.sort(key=lambda c: (self._seen[c.path][0][1] if c.path in self._seen else 0, c.rel))
        return ready, waiting

    # -- arrivals: loose job files wait for the files they name ------------
    def arrivals(
        self, candidates: list[Candidate], ready: list[Candidate], names: Callable[[Candidate], tuple[str, ...]]
    ) -> tuple[list[Arrival], bool]:
        """What to claim now, in `ready`'s order, and whether anything is still waiting.

        A settled loose `.toml` that names attachments (`names`: inbox-relative paths) is
        claimed once every one of them has settled too, or, missing some, after
        `attachment_wait_seconds` (the job then fails naming them). Files a job file names
        are never claimed alone. Other loose files that are not job files wait as long, in
        case their job file is still on its way, then are claimed (and fail as not a job); so
        do links, which are never followed (a job file naming one fails saying so).
        """
        now = self.clock()
        limit = self.config.attachment_wait_seconds
        by_path = {c.path: c for c in ready}
        present = {c.path for c in candidates}
        for path in list(self._waits):
            if path not in present:
                del self._waits[path]
        reserved: set[Path] = set()
        plans: dict[Path, Arrival | None] = {}
        for c in ready:
            if not (is_loose_file(c) and c.path.suffix.lower() == ".toml"):
                continue
            wanted = [self.config.inbox / n for n in names(c)]
            reserved.update(wanted)
            settled = tuple(by_path[p] for p in wanted if p in by_path)
            started = self._waits.setdefault(c.path, now)
            if len(settled) == len(wanted) or now - started >= limit:
                plans[c.path] = Arrival(c, settled)
                self._waits.pop(c.path, None)
            else:
                plans[c.path] = None
        out: list[Arrival] = []
        waiting = False
        for c in ready:
            if c.path in plans:
                plan = plans[c.path]
                taken = {a.path for arrival in out for a in arrival.attachments}
                if plan is None or any(a.path in taken for a in plan.attachments):
                    waiting = True  # still waiting, or another job file named the same file first
                else:
                    out.append(plan)
                continue
            if c.path in reserved:
                self._waits.pop(c.path, None)
                continue
            if may_be_attachment(c):
                started = self._waits.setdefault(c.path, now)
                if now - started < limit:
                    waiting = True
                    continue
                self._waits.pop(c.path, None)
            out.append(Arrival(c))
        return out, waiting

    def waited(self, c: Candidate) -> float:
        """Seconds a loose file has waited so far (0 when it is not waiting)."""
        started = self._waits.get(c.path)
        return 0.0 if started is None else self.clock() - started

    # -- claim ---------------------------------------------------------
    def claim(self, c: Candidate, attachments: tuple[Candidate, ...] = ()) -> Job | None:
        """Move the candidate (and the attachments it named) into processing/; None if any changed or vanished.

        job.json is written first and lists the attachments, then each file moves with one
        rename, the job file first. A crash leaves a folder with no input (removed on restart),
        or a claimed job file whose remaining attachments `recover` moves in after it.
        """
        for item in (c, *attachments):
            prev = self._seen.get(item.path)
            if not item.is_link and (prev is None or _signature(item.path) != prev[0]):
                self._seen.pop(item.path, None)
                return None  # changed since it settled: look again next scan
        for item in (c, *attachments):
            self._seen.pop(item.path, None)
        wall = time.time()
        self._seq += 1
        job_id = f"{timestamp(wall)}-{secrets.token_hex(3)}"
        folder = self.config.processing / job_id
        job = Job(job_id=job_id, folder=folder, source=c.rel, preset=c.preset, arrival=wall, seq=self._seq,
                  attachments=[a.rel for a in attachments])  # fmt: skip
        job.input_path.parent.mkdir(parents=True)
        job.save()
        try:
            os.rename(c.path, job.input_path)
        except FileNotFoundError:
            shutil.rmtree(folder, ignore_errors=True)
            return None  # someone else claimed it
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

    def recover(self) -> list[Job]:
        """Rebuild the queue from processing/ after a start or a crash.

        Partial staging output is discarded; folders whose claim never happened are
        removed; a delivery that reached the outbox before the crash is marked done.
        """
        jobs: list[Job] = []
        try:
            entries = sorted(os.scandir(self.config.processing), key=lambda e: e.name)
        except FileNotFoundError:
            return jobs
        for entry in entries:
            if is_ignored(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            folder = Path(entry.path)
            job = Job.load(folder)
            if job is None or not os.path.lexists(job.input_path):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self._claim_attachments(job)  # a crash between the job file's rename and its attachments'
            for index, name in list(job.delivering.items()):
                if index not in job.done and self._delivered_by(job, name):
                    job.done[index] = name
            shutil.rmtree(job.stage, ignore_errors=True)
            job.save()
            jobs.append(job)
        self._seq = max([self._seq] + [j.seq for j in jobs])
        return jobs

    def _delivered_by(self, job: Job, name: str) -> bool:
        marker = self.config.outbox / name / ".hotfolder-job"
        try:
            return marker.read_text().strip() == job.job_id
        except OSError:
            return False

    # -- deliver / fail ------------------------------------------------
    def deliver(self, job: Job, index: int, built: Path, name: str) -> Path:
        """Move a fully built result folder into outbox/ with one rename; never overwrites."""
        (built / ".hotfolder-job").write_text(job.job_id + "\n")

        def journal(target: Path) -> None:  # before the rename, so a restart can tell it happened
            job.delivering[str(index)] = target.name
            job.save()
            crash_point("delivering")

        target = _rename_to_free(built, self.config.outbox, f"{timestamp()}_{name}", before=journal)
        crash_point("delivered")
        job.done[str(index)] = target.name
        job.save()
        crash_point("recorded")
        return target

    def fail(self, job: Job, error: dict[str, Any], *, index: int | None = None, name: str | None = None) -> Path:
        """Put the job's original files plus error.txt and error.json into failed/.

        With `index` (one entry of a batch) the original is copied and the job folder
        stays for the other entries; otherwise the whole claim moves out of processing/.
        """
        name = name or Path(job.source).stem or "job"
        build = job.folder / f"failed-{index if index is not None else 'all'}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        for original in (job.input_path, *job.attachment_paths):
            if not os.path.lexists(original):
                continue  # an attachment that never arrived
            dest = build / original.name
            if index is None:
                os.rename(original, dest)
            elif original.is_symlink():
                os.symlink(os.readlink(original), dest)
            elif original.is_dir():
                shutil.copytree(original, dest, symlinks=True)
            else:
                shutil.copy2(original, dest)
        error = {"job_id": job.job_id, "source": job.source, "index": index, **error}
        if job.attachments:  # inbox-relative: where `hotfolder retry` should put them back
            error["attachments"] = job.attachments
        write_json_atomic(build / "error.json", error)
        (build / "error.txt").write_text(_error_text(error), encoding="utf-8")
        if job.log_file.exists():
            shutil.copy2(job.log_file, build / f"{name}.log")
        target = _rename_to_free(build, self.config.failed, f"{timestamp()}_{name}")
        if index is None:
            self.finish(job)
        else:
            job.done[str(index)] = f"failed:{target.name}"
            job.save()
        return target

    def finish(self, job: Job) -> None:
        """The job is fully delivered or failed: its processing/ folder goes."""
        shutil.rmtree(job.folder, ignore_errors=True)


def _rename_to_free(src: Path, folder: Path, base: str, *, before: Callable[[Path], None] | None = None) -> Path:
    """Move `src` to folder/base (or "base 2", ...) with one rename; a name taken meanwhile is skipped."""
    for target in free_paths(folder, base):
        if before is not None:
            before(target)
        try:
            os.rename(src, target)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return target
    raise UsageError(f"no free name for {base} in {folder}: move some results out of it.")


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
