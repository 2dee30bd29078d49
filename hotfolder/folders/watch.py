"""Wake the daemon when the inbox changes. Events are hints, the rescan is the truth.

File events are duplicated, merged, dropped (FSEvents, network volumes) and never
raised for files present at start-up, so an event only sets a flag; the daemon
then rescans the whole inbox. `polling=True` uses watchdog's PollingObserver for
network and sync volumes that send no events.
"""

from __future__ import annotations

import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self._wake.set()


class InboxWatcher:
    """Sets `wake` whenever something under the inbox changes; restartable if it dies."""

    def __init__(self, inbox: Path, wake: threading.Event, *, polling: bool = False, poll_interval: float = 1.0):
        self.inbox = inbox
        self.wake = wake
        self.polling = polling
        self.poll_interval = poll_interval
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        observer: BaseObserver = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        observer.schedule(_Wake(self.wake), str(self.inbox), recursive=True)
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
