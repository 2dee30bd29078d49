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
        self._taken = 0  # items handed out by `get` and not yet `done`

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
                if self._heap and self._heap[0].not_before <= now:  # the first in order is due: no search
                    self._taken += 1
                    return heapq.heappop(self._heap)
                due = [i for i in self._heap if i.not_before <= now]
                if due:
                    item = min(due)
                    self._heap.remove(item)
                    heapq.heapify(self._heap)
                    self._taken += 1
                    return item
                if idle_at is not None and now >= idle_at:
                    return IDLE
                waits = [i.not_before - now for i in self._heap] + ([idle_at - now] if idle_at is not None else [])
                self._cond.wait(timeout=min(waits, default=None))
            return None

    def done(self) -> None:
        """The item `get` handed out is finished with (run, or put back)."""
        with self._cond:
            self._taken = max(0, self._taken - 1)

    def pending(self) -> int:
        """Items waiting plus items handed out and not yet done: 0 means nothing is left to run."""
        with self._cond:
            return len(self._heap) + self._taken

    def remove(self, job_id: str) -> int:
        """Take every waiting item of `job_id` off the queue (a cancel); returns how many there were."""
        with self._cond:
            kept = [i for i in self._heap if i.job_id != job_id]
            removed = len(self._heap) - len(kept)
            if removed:
                self._heap = kept
                heapq.heapify(self._heap)
            return removed

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
