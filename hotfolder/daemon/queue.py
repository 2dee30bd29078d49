"""The job queue: priority first, then first come first served; retries held back until due."""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

IDLE = "idle"  # what `get` returns when nothing came for `idle_after` seconds


@dataclass(order=True)
class QueueItem:
    sort_key: tuple[int, float, int, int]  # (-priority, arrival, seq, index)
    job_id: str = field(compare=False)
    index: int = field(compare=False)
    not_before: float = field(compare=False, default=0.0)  # monotonic; retries wait


class JobQueue:
    """Priority first, then FIFO by arrival; items held back until `not_before` (retry backoff)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._heap: list[QueueItem] = []
        self._cond = threading.Condition()
        self._closed = False
        self._clock = clock

    def put(self, item: QueueItem) -> None:
        with self._cond:
            heapq.heappush(self._heap, item)
            self._cond.notify()

    def get(self, idle_after: float | None = None) -> QueueItem | str | None:
        """The next due item; None once closed; IDLE when nothing came for `idle_after` seconds."""
        with self._cond:
            idle_at = None if idle_after is None else self._clock() + idle_after
            while not self._closed:
                now = self._clock()
                due = [i for i in self._heap if i.not_before <= now]
                if due:
                    item = min(due)
                    self._heap.remove(item)
                    heapq.heapify(self._heap)
                    return item
                if idle_at is not None and now >= idle_at:
                    return IDLE
                waits = [i.not_before - now for i in self._heap] + ([idle_at - now] if idle_at is not None else [])
                self._cond.wait(timeout=min(waits, default=None))
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def snapshot(self) -> list[QueueItem]:
        with self._cond:
            return sorted(self._heap)

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)
