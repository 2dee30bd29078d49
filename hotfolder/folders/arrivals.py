"""The inbox side: what is there, what has settled, and what to claim together.

A file (or folder) is taken only after its size, newest mtime and entry count have
stayed the same for `settle_seconds`, judged by what was observed, so a slow copy,
a download or a sync is never read half-way. The settle clock starts at the last
change known: the latest file event naming the file (or anything inside a job
folder), which the watcher reports with its time (`note`), else the scan that saw it
change; the daemon sleeps until the earliest settling file is due (`next_due`). A loose job file that names
attachments waits (up to `attachment_wait_seconds`) until they have settled too;
so does a loose image or sound, which a job file still on its way may name. Any
other file (a .rtf, a .docx) is claimed once settled and fails at once.
Pure filesystem, no threads; the clock is injected so tests can step time.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from hotfolder.config import Config
from hotfolder.job.names import could_be_attachment, is_dataless, is_ignored, is_job_file_name


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
    """A loose image or sound (or a link named like one): a job file may still come and name it.

    Only the kinds a job can name wait for one (names.could_be_attachment); a document
    no job can name (.rtf, .docx, .md, .pdf) is claimed at once and fails saying what to do.
    """
    return could_be_attachment(c.path.name) and (c.is_link or c.path.is_file())


@dataclass(frozen=True)
class Arrival:
    """What to claim now: a candidate, and the settled attachments a loose job file named."""

    candidate: Candidate
    attachments: tuple[Candidate, ...] = ()


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


class Arrivals:
    """Watches the inbox through successive scans; `confirm` re-checks a candidate right before its claim."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        # path -> (signature, unchanged since, last sight, judged ready): the settle clock of each candidate
        self._seen: dict[Path, tuple[tuple[int, int, int], float, float, bool]] = {}
        self._waits: dict[Path, float] = {}  # loose files waiting for (or to be named as) attachments: since when
        self._events: dict[Path, float] = {}  # candidate path -> the time of the latest file event in it
        self._scanned_at = self._previous_scan = clock()
        self._real_inbox: Path | None = None

    def note(self, path: str | Path, when: float) -> None:
        """A file event named `path` at `when` (this clock): the candidate holding it changed then."""
        top = self._top(Path(path))
        if top is not None and when > self._events.get(top, float("-inf")):
            self._events[top] = when

    def _top(self, path: Path) -> Path | None:
        """The candidate path an event's path belongs to: inbox/<name>, or inbox/<preset>/<name>."""
        for inbox in self._inboxes():
            try:
                parts = path.relative_to(inbox).parts
                break
            except ValueError:
                continue
        else:
            return None  # not under the inbox: no head start, the scan still looks
        if not parts:
            return None
        if parts[0] in self.config.presets:
            return self.config.inbox / parts[0] / parts[1] if len(parts) > 1 else None
        return self.config.inbox / parts[0]

    def _inboxes(self) -> tuple[Path, ...]:
        """The inbox as configured, and as the OS may name it in events (macOS: /var is /private/var)."""
        inbox = self.config.inbox
        if self._real_inbox is None:
            self._real_inbox = Path(os.path.realpath(inbox))
        return (inbox,) if self._real_inbox == inbox else (inbox, self._real_inbox)

    def next_due(self) -> float | None:
        """When (this clock) the next scan may find something new to claim: the earliest moment a settling
        candidate may be ready (at once for one seen a first time long after its last event), or a loose
        file's wait for its job file or attachments ends. None: nothing is settling or waiting."""
        settle, limit, now = self.config.settle_seconds, self.config.attachment_wait_seconds, self.clock()
        times = [since + settle for _, since, _, ready in self._seen.values() if not ready]
        times += [start + limit for start in self._waits.values() if start + limit > now]
        return min(times, default=None)

    def scan(self) -> list[Candidate]:
        """Everything in the inbox that could be a job, oldest first."""
        self._previous_scan, self._scanned_at = self._scanned_at, self.clock()
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
        mtime (Finder, cp -p, rsync) still grow in size, so nothing is trusted at first sight:
        a candidate is ready at its second sight at the earliest, once settle_seconds have
        passed since its last change. At first sight that change is its latest file event
        (`note`) when the event came after the previous scan began (an event comes at the
        change itself; an older one may not be its last change), else the sight itself; a
        sight that finds it changed starts the clock again, and so does a later event.
        """
        now = self.clock()
        ready: list[Candidate] = []
        waiting = False
        current = {c.path for c in candidates}
        for path in list(self._seen):
            if path not in current:
                del self._seen[path]
        for path, when in list(self._events.items()):  # events of what is gone (claimed, removed) are done
            if path not in current and when < self._scanned_at:
                del self._events[path]
        for c in candidates:
            if c.is_link:
                ready.append(c)  # never followed; failed at once
                continue
            sig = _signature(c.path)
            if sig is None:
                self._seen.pop(c.path, None)
                continue
            event = self._events.get(c.path)
            prev = self._seen.get(c.path)
            if prev is None:  # first sight: since its event, when that came after the previous scan began
                fresh = event is not None and event >= self._previous_scan
                self._seen[c.path] = (sig, min(event, now) if fresh and event is not None else now, now, False)
                waiting = True
                continue
            if prev[0] != sig:
                self._seen[c.path] = (sig, now, now, False)
                waiting = True
                continue
            since = max(prev[1], event) if event is not None else prev[1]  # a change the signature cannot show
            settled = now - since >= self.config.settle_seconds
            self._seen[c.path] = (sig, since, now, settled)
            if settled:
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
        are never claimed alone. A loose image or sound no job file names waits as long, in
        case its job file is still on its way, then is claimed (and fails as not a job); so does
        a link named like one, which is never followed (a job file naming it fails saying so).
        Anything else that is not a job file is claimed at once: no job file could name it.
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

    def confirm(self, items: tuple[Candidate, ...]) -> bool:
        """True when every item is still exactly as it settled (then it is forgotten: it is being claimed)."""
        for item in items:
            prev = self._seen.get(item.path)
            if not item.is_link and (prev is None or _signature(item.path) != prev[0]):
                self._seen.pop(item.path, None)
                self._events.pop(item.path, None)
                return False  # changed since it settled: look again next scan
        for item in items:
            self._seen.pop(item.path, None)
            self._events.pop(item.path, None)
        return True
