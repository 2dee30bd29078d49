"""Folder states and the transitions between them: settle, claim, deliver, fail.

The folders are the journal. Everything a claimed job owns lives in
`processing/<job_id>/`, so a restart rebuilds the queue from the folders alone:

    processing/<job_id>/job.json        who the job is, its attempts, what was delivered
    processing/<job_id>/input/<rel>     the claimed file or folder (rel keeps inbox/<preset>/)
    processing/<job_id>/stage/          results being built (thrown away on restart)
    processing/<job_id>/progress.json   stage, step, percent, ETA of the running job
    processing/<job_id>/job.log         this job's log lines

Every state change is one `os.rename` on one filesystem. Pure filesystem: no
threads; the clock is injected so tests can step time.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import stat
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Iterator

from hotfolder.config import Config

# Names a person, a sync client or an OS writes while a file is not ready (or never a job).
IGNORED_PATTERNS = (
    ".*",  # hidden: .DS_Store, ._x, .x.icloud placeholders, .syncthing.x.tmp, our own .incoming
    "*.tmp",
    "*.part",
    "*.crdownload",
    "*.download",
    "~$*",
    "Icon\r",
)
UF_DATALESS = 0x40000000  # macOS: the file's data is not on this machine yet (iCloud)

# Fault injection for the crash tests: SIGKILL this process at the named point. Read
# once, here, because the points are exactly where no outside timing can reach.
_CRASH_AT = os.environ.get("HOTFOLDER_CRASH_AT", "")


def crash_point(name: str) -> None:
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


def is_ignored(name: str) -> bool:
    """True for names that are never jobs and never touched."""
    return any(fnmatch(name, pattern) for pattern in IGNORED_PATTERNS)


def is_dataless(st: os.stat_result) -> bool:
    return bool(getattr(st, "st_flags", 0) & UF_DATALESS)


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write JSON so a reader sees the old or the new file, never half of one.

    `durable` also fsyncs before the rename: for the journal (job.json), not for
    status and progress files, which are rewritten constantly and rebuilt after a crash.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def timestamp(wall: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(wall))


@dataclass(frozen=True)
class Candidate:
    """Something in the inbox that may become a job."""

    path: Path
    rel: str  # relative to the inbox, "/"-separated
    preset: str | None
    is_link: bool = False


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

    @property
    def input_path(self) -> Path:
        return self.folder / "input" / self.source

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
        }

    def save(self) -> None:
        write_json_atomic(self.folder / "job.json", self.record())


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

    # -- claim ---------------------------------------------------------
    def claim(self, c: Candidate) -> Job | None:
        """Move the candidate into processing/ with one rename; None if it changed or vanished.

        job.json is written before the rename, so a crash leaves either a folder with
        no input (removed on restart) or a complete claim.
        """
        prev = self._seen.pop(c.path, None)
        if not c.is_link and (prev is None or _signature(c.path) != prev[0]):
            return None  # changed since it settled: look again next scan
        wall = time.time()
        self._seq += 1
        job_id = f"{timestamp(wall)}-{secrets.token_hex(3)}"
        folder = self.config.processing / job_id
        job = Job(job_id=job_id, folder=folder, source=c.rel, preset=c.preset, arrival=wall, seq=self._seq)
        job.input_path.parent.mkdir(parents=True)
        job.save()
        try:
            os.rename(c.path, job.input_path)
        except FileNotFoundError:
            shutil.rmtree(folder, ignore_errors=True)
            return None  # someone else claimed it
        crash_point("claimed")
        return job

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
            try:
                rec = read_json(folder / "job.json")
            except (OSError, ValueError):
                rec = None
            if rec is None or not (folder / "input" / rec["source"]).exists() and not (
                folder / "input" / rec["source"]
            ).is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                continue
            job = Job(
                job_id=rec["job_id"],
                folder=folder,
                source=rec["source"],
                preset=rec.get("preset"),
                arrival=rec.get("arrival", 0.0),
                seq=rec.get("seq", 0),
                attempts=rec.get("attempts", []),
                delivering=rec.get("delivering", {}),
                done=rec.get("done", {}),
            )
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
        base = f"{timestamp()}_{name}"
        for n in range(1, 10_000):
            target = self.config.outbox / (base if n == 1 else f"{base} {n}")
            if os.path.lexists(target):
                continue
            job.delivering[str(index)] = target.name
            job.save()
            crash_point("delivering")
            try:
                os.rename(built, target)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            crash_point("delivered")
            job.done[str(index)] = target.name
            job.save()
            crash_point("recorded")
            return target
        raise RuntimeError(f"no free name for {base} in {self.config.outbox}")

    def fail(self, job: Job, error: dict[str, Any], *, index: int | None = None, name: str | None = None) -> Path:
        """Put the job's original files plus error.txt and error.json into failed/.

        With `index` (one entry of a batch) the original is copied and the job folder
        stays for the other entries; otherwise the whole claim moves out of processing/.
        """
        name = name or Path(job.source).stem or "job"
        build = job.folder / f"failed-{index if index is not None else 'all'}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        original = job.input_path
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
        write_json_atomic(build / "error.json", error)
        (build / "error.txt").write_text(_error_text(error), encoding="utf-8")
        if job.log_file.exists():
            shutil.copy2(job.log_file, build / f"{name}.log")
        base = f"{timestamp()}_{name}"
        for n in range(1, 10_000):
            target = self.config.failed / (base if n == 1 else f"{base} {n}")
            if os.path.lexists(target):
                continue
            try:
                os.rename(build, target)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            break
        if index is None:
            self.finish(job)
        else:
            job.done[str(index)] = f"failed:{target.name}"
            job.save()
        return target

    def finish(self, job: Job) -> None:
        """The job is fully delivered or failed: its processing/ folder goes."""
        shutil.rmtree(job.folder, ignore_errors=True)


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
