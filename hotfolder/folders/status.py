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
STOP_GRACE_S = 8.0  # after SIGTERM the running job has this long to reach its next step (then it is left for
STOP_PROMISE_S = 10.0  # the next start) and the process is gone within this, whatever it was doing


@dataclass(frozen=True)
class Seen:
    """What `status.json` says about the daemon, judged once."""

    status: dict[str, Any] | None  # the whole file, None when there is none (or it is unreadable)
    alive: bool
    age_s: float | None  # seconds since the last heartbeat
    unreadable: str | None = None  # why a status.json that is there cannot be read, in words; None otherwise

    @property
    def daemon(self) -> dict[str, Any]:
        return (self.status or {}).get("daemon") or {}

    @property
    def pid(self) -> int | None:
        return self.daemon.get("pid")


def read(root: Path, *, now: float | None = None) -> Seen:
    """Read the root's status.json and judge the heartbeat."""
    path = root / FILE
    try:
        status = read_json(path)
    except FileNotFoundError:
        return Seen(None, False, None)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).split("\n")[0]
        return Seen(None, False, None, f"{path} is unreadable ({why}); a running daemon rewrites it within "
                                       f"{HEARTBEAT_S:g} s, else start one with `hotfolder run`")
    if not isinstance(status, dict) or not isinstance(status.get("daemon"), dict):
        return Seen(None, False, None, f"{path} is unreadable (not a daemon's status); a running daemon rewrites "
                                       f"it within {HEARTBEAT_S:g} s, else start one with `hotfolder run`")
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
