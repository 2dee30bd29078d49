"""Wake the daemon when the inbox changes, and say which paths changed when. Events are hints, the rescan is
the truth.

File events are duplicated, merged, dropped (FSEvents, network volumes) and never
raised for files present at start-up, so an event only records the path it names and
the moment it came (`Changes`) and wakes the daemon, which then rescans the inbox: the
settle clock of a file starts at its last event rather than at the next scan
(`Arrivals.note`). `polling=True` uses watchdog's PollingObserver for network and
sync volumes that send no events (its events come up to `poll_interval` late).

On Linux watchdog holds every IN_MOVED_FROM event for half a second, to pair it with
its IN_MOVED_TO: a file renamed into place inside the inbox (what `submit`, editors
and sync clients do) would be seen half a second late. The pairing needs microseconds
(both halves come in one read), so the hold is cut to `MOVE_PAIRING_S`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

MOVE_PAIRING_S = 0.01  # how long watchdog's inotify emitter waits for the second half of a rename
MAX_PENDING = 100_000  # paths remembered between two drains; beyond that the rescan does the work


def _prompt_moves() -> None:
    """Shorten watchdog's hold on rename events (Linux inotify only; nothing elsewhere)."""
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # another watchdog layout, or not Linux: events come as they come
        return
    if getattr(InotifyMoveEventGrouper, "delay", 0) > MOVE_PAIRING_S:
        InotifyMoveEventGrouper.delay = MOVE_PAIRING_S


class Changes:
    """Paths file events named, each with the (monotonic) time of its latest event; thread-safe."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._paths: dict[str, float] = {}
        self._overflow = False

    def add(self, *paths: str) -> None:
        now = self.clock()
        with self._lock:
            for path in paths:
                if path:
                    self._paths[path] = now
            if len(self._paths) > MAX_PENDING:
                self._paths.clear()
                self._overflow = True

    def drain(self) -> tuple[dict[str, float], bool]:
        """What came since the last drain, and whether any event came at all (an overflow counts)."""
        with self._lock:
            paths, self._paths = self._paths, {}
            overflow, self._overflow = self._overflow, False
        return paths, bool(paths) or overflow


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event, changes: Changes | None):
        self._wake = wake
        self._changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self._changes is not None:
            self._changes.add(os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or ""))
        self._wake.set()


class InboxWatcher:
    """Sets `wake` whenever something under the inbox changes (and records what in `changes`); restartable."""

    def __init__(self, inbox: Path, wake: threading.Event, *, polling: bool = False, poll_interval: float = 1.0,
                 changes: Changes | None = None):
        self.inbox = inbox
        self.wake = wake
        self.polling = polling
        self.poll_interval = poll_interval
        self.changes = changes
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        if not self.polling:
            _prompt_moves()
        observer: BaseObserver = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        observer.schedule(_Wake(self.wake, self.changes), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def ensure_alive(self) -> bool:
        """Restart a watcher that died (emitter crash, volume remount); False if it had to."""
        if self.alive():
            return True
        self.stop()
        try:
            self.start()
        except OSError:
            self._observer = None
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; waits at most `timeout` seconds for the observer's thread (a daemon thread)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=max(0.0, timeout))
            self._observer = None
