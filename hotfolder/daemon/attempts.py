"""Attempts and their outcome: the rules that decide what an attempt's end means, and the records failures leave.

Each attempt at a job's entry is journalled (folders/spool.py) before its risky work begins. From that
journal these decide whether an entry has used up its attempts (the process died in it, or it failed,
`max_attempts` times: the quarantine of jobs that kill the process), when a job that keeps losing its
worker fails, how long a retry waits, and what error.json says. They decide; the daemon's threads act.
"""

from __future__ import annotations

from typing import Any

from hotfolder.errors import BackendError, JobInvalid
from hotfolder.folders.spool import DIED, LOST, Job, outcome

MAX_BACKOFF_S = 300.0
CRASH_HINT = (
    "Something in this job ends the whole process: running out of memory (the system then kills the biggest "
    "process), a crash in the model's native code, or the machine losing power. Make it lighter: a smaller size "
    "or a shorter duration, mode = \"preview\", or another model (`hotfolder models list`); then move the job "
    "back into the inbox (`hotfolder retry` with this folder's name). If every job does this, run `hotfolder doctor`."
)
LOOK_HINT = "Look at the .log in this folder. To try again, move the job file back into the inbox."


def used_up(job: Job, index: int, max_attempts: int) -> dict[str, Any] | None:
    """The failure record of an entry whose attempts are used up (the process died in them, or they failed)."""
    tries = job.tries(index)
    if len(tries) < max_attempts:
        return None
    last = tries[-1]
    if outcome(last) == DIED:
        deaths = sum(1 for a in tries if outcome(a) == DIED)
        return {"status": "failed", "kind": "crashed",
                "message": f"the process died while running this job {deaths} time{'s' if deaths != 1 else ''} "
                           f"(last stage: {last.get('stage', '?')})",
                "hint": CRASH_HINT, "attempts": tries, "retried": True}
    return {"status": "failed", "kind": last.get("kind") or "backend", "message": last.get("error") or "failed",
            "hint": LOOK_HINT, "attempts": tries}


def backoff_s(base_s: float, tries: int) -> float:
    """How long the next retry waits after `tries` failed attempts: `base_s`, four times longer each time, capped."""
    return min(MAX_BACKOFF_S, base_s * 4 ** (tries - 1))


def lost_count(job: Job, index: int) -> int:
    """How often the entry's worker went away while it ran (not counted towards max_attempts)."""
    return sum(1 for a in job.attempts if a.get("index") == index and outcome(a) == LOST)


def lost_limit(max_attempts: int, threads: int) -> int:
    """Losses of its worker after which an entry fails: max_attempts per worker, and at least twice, so that one
    machine lost by chance never fails a job (even with one worker and max_attempts = 1)."""
    return max(2, max_attempts * max(1, threads))


def lost_error(job: Job, index: int, times: int, e: BaseException) -> dict[str, Any]:
    """The failure record of an entry that lost its worker `times` times: it may be what ends them."""
    return {"status": "failed", "kind": "worker-lost",
            "message": f"the worker running this job went away {times} times (last: {e}); the job itself "
                       "may be what ends them",
            "hint": CRASH_HINT, "attempts": [a for a in job.attempts if a.get("index") == index],
            "retried": True}


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def unreadable_error(job: Job, e: BaseException) -> dict[str, Any]:
    """A job whose reading failed in a way no message foresaw (an I/O error, a bug): failed, never stuck."""
    return {"status": "failed", "kind": "internal", "message": f"{job.source} could not be read: {one_line(e)}",
            "hint": "Look at the .log in this folder and at the daemon's log (hotfolder.log) for the details. "
                    "To try again, `hotfolder retry` with this folder's name.", "retried": False}


def invalid_error(e: JobInvalid) -> dict[str, Any]:
    return {
        "status": "invalid",
        "kind": "invalid",
        "message": e.describe(),
        "problems": [p.to_dict() for p in e.problems],
        "hint": "Fix the job file and drop it into the inbox again (or use `hotfolder validate FILE` first).",
        "retried": False,
    }


def error_record(e: BaseException, kind: str) -> dict[str, Any]:
    hint = getattr(e, "hint", None)
    if hint is None and kind in ("backend", "internal"):
        hint = LOOK_HINT
    return {"status": "failed", "kind": kind, "message": str(e) or type(e).__name__, "hint": hint}


def retries_used_error(e: BaseException, tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The failure record of an entry whose last retry failed too: the error, and every attempt."""
    record = error_record(e, "backend" if isinstance(e, BackendError) else "internal")
    record["attempts"] = tries
    return record
