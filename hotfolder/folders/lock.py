"""One daemon per root: an flock the kernel releases when the process dies, so a stale lock is free."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hotfolder.errors import UsageError


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
        try:  # the pid is for people (and the message above); a full disk must not stop the start
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def held(root: Path) -> bool:
    """Whether a live daemon holds the root's lock right now (a dead process's lock is free)."""
    lock = RootLock(root)
    try:
        lock.acquire()
    except UsageError:
        return True
    except FileNotFoundError:
        return False
    lock.release()
    return False

