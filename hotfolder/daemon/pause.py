"""The full-disk pause: a full disk is never a job's fault, so claiming and jobs wait until there is space again.

The daemon keeps a little space in hand on the root's disk (`Reserve`). When the disk fills (`disk_full` reads
it in an error), `DiskPause.pause` gives the reserve back, so that status.json and the journal can still be
written, and says why in `text` (status.json's "paused"); the workers wait on `resumed`. `try_resume` goes
on once RESUME_FREE_BYTES are free (at most a tenth of the disk) and the reserve is made again. The daemon
holds one `DiskPause` and acts on what it says (the jobs it set aside, status.json).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

from hotfolder import fsutil
from hotfolder.daemon.attempts import one_line
from hotfolder.errors import Interrupted
from hotfolder.folders.spool import PAUSED, Job, outcome

RESERVE_NAME = ".hotfolder.reserve"
RESERVE_BYTES = 1024 * 1024  # kept in hand on the root's disk, given back when it fills
RESUME_FREE_BYTES = 256 * 1024 * 1024  # a paused daemon resumes with this free (at most a tenth of the disk)
MAX_PAUSED_TRIES = 3  # a job that meets a full disk this often fails like any other error (the disk may be another)


class Paused(Interrupted):
    """Raised from a step callback when the disk filled: the job stops and waits for space."""


class Reserve:
    """A little space kept in hand on the root's disk (<root>/.hotfolder.reserve), given back when the disk
    fills so the daemon can still say so in status.json and journal what it stops; made again to resume."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES):
        self.path = path
        self.size = size

    def make(self) -> OSError | None:
        """The reserve in place (random bytes: a compressing file system cannot shrink it); the error if not."""
        try:
            if self.path.stat().st_size == self.size:
                return None
        except OSError:
            pass
        try:
            fsutil.write_atomic(self.path, os.urandom(self.size), durable=False)
        except OSError as e:
            return e
        return None

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class DiskPause:
    """Whether the root's disk is full: `text` says why claiming and jobs wait (None while there is space),
    `resumed` is clear while they do. `say` writes status.json at once (the daemon's)."""

    def __init__(self, root: Path, log: Any, say: Callable[[], None]):
        self.root = root
        self.log = log
        self.reserve = Reserve(root / RESERVE_NAME)
        self.text: str | None = None
        self.resumed = threading.Event()  # clear while paused: the workers wait on it
        self.resumed.set()
        self._say = say
        self._lock = threading.Lock()

    @property
    def paused(self) -> bool:
        return self.text is not None

    def start(self) -> None:
        """The reserve in place at the start; a disk already full pauses at once."""
        trouble = self.reserve.make()
        if trouble is not None and disk_full(trouble):
            self.pause(trouble, "starting")

    def pause(self, e: BaseException, doing: str, *, say: bool = True) -> None:
        """The root's disk is full: stop claiming and starting jobs, give back the reserve (so status.json and
        the journal can still be written), and say so; `try_resume` goes on once space is back."""
        with self._lock:
            first = self.text is None
            self.resumed.clear()
            if first:
                self.text = "disk full"
        if first:
            self.reserve.release()
            text = self._text()
            with self._lock:
                self.text = text
            self.log.warning("disk full: claiming and jobs are paused until there is space again; nothing is lost",
                             doing=doing, error=one_line(e), root=str(self.root), status=text)
        if say:
            self._say()

    def try_resume(self) -> bool:
        """Resume once there is space again (True then: the caller takes up what the pause set aside)."""
        free, need = self._free(), self._resume_need()
        if free < need:
            text = self._text()
            with self._lock:
                changed, self.text = self.text != text, text
            if changed:
                self._say()
            return False
        if self.reserve.make() is not None:
            return False
        with self._lock:
            self.text = None
            self.resumed.set()
        self.log.info("disk space is back: resuming", free=_size(free), root=str(self.root))
        return True

    def _text(self) -> str:
        free, need = self._free(), self._resume_need()
        return (f"disk full: {_size(free)} free on the disk of {self.root}; claiming and jobs wait, "
                f"and go on by themselves once {_size(need)} are free")

    def _free(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0

    def _resume_need(self) -> int:
        try:
            total = shutil.disk_usage(self.root).total
        except OSError:
            total = RESUME_FREE_BYTES
        return min(RESUME_FREE_BYTES, total // 10) + RESERVE_BYTES


def waits_for_space(e: BaseException, job: Job, index: int, *, stopping: bool) -> bool:
    """Whether an attempt at entry `index` that ended with `e` waits for space and starts again: the pause stopped
    it, or the disk filled under it (not while stopping, and fewer than MAX_PAUSED_TRIES times)."""
    paused = [a for a in job.attempts if a.get("index") == index and outcome(a) == PAUSED]
    return isinstance(e, Paused) or (disk_full(e) and not stopping and len(paused) < MAX_PAUSED_TRIES)


def disk_full(e: BaseException | None) -> bool:
    """Whether `e` (or what caused it) is a full disk or quota, from the OS or from ffmpeg's words."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
