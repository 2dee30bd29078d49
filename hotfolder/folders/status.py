"""`status.json`: the daemon's heartbeat, queue, running job and recent results, and the one rule for "alive".

The daemon rewrites the file atomically every `HEARTBEAT_S`; every reader (`status`,
`submit --wait`, `agent install`, `doctor`) asks `read` here, so they all agree:
a daemon is alive while its file says "running" and its heartbeat is younger than
`STALE_S`. A daemon that is killed cannot say "stopped"; its heartbeat goes stale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotfolder.fsutil import read_json, write_json_atomic

FILE = "status.json"
HEARTBEAT_S = 2.0  # how often a running daemon rewrites status.json
STALE_S = 10.0  # a heartbeat older than this: the daemon is not running (or hangs)
STOP_GRACE_S = 8.0  # SIGTERM ends the daemon within this (the service files give it a little more)


@dataclass(frozen=True)
class Seen:
    """What `status.json` says about the daemon, judged once."""

    status: dict[str, Any] | None  # the whole file, None when there is none (or it is unreadable)
    alive: bool
    age_s: float | None  # seconds since the last heartbeat

    @property
    def daemon(self) -> dict[str, Any]:
        return (self.status or {}).get("daemon") or {}

    @property
    def pid(self) -> int | None:
        return self.daemon.get("pid")


def read(root: Path, *, now: float | None = None) -> Seen:
    """Read the root's status.json and judge the heartbeat."""
    try:
        status = read_json(root / FILE)
    except (OSError, ValueError):
        status = None
    if not isinstance(status, dict) or not isinstance(status.get("daemon"), dict):
        return Seen(None, False, None)
    daemon = status["daemon"]
    try:
        age = (time.time() if now is None else now) - float(daemon.get("heartbeat_unix") or 0)
    except (TypeError, ValueError):
        age = None
    alive = daemon.get("state") == "running" and age is not None and age < STALE_S
    return Seen(status, alive, age)


def write(root: Path, status: dict[str, Any]) -> None:
    """Rewrite status.json atomically (not fsynced: it is rebuilt at every heartbeat)."""
    write_json_atomic(root / FILE, status, durable=False)
