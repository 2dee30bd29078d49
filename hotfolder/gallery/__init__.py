"""The outbox's gallery: `outbox/index.html` and the live status script beside it.

- `write(config)`: rebuild the page from outbox/ and failed/ (each result's `.json`,
  each failure's `error.json`) and the status script; the daemon calls it after every
  delivery and failure, `hotfolder gallery` on demand.
- `write_status(config, status)`: rewrite `outbox/.hotfolder-status.js`
  (`window.hotfolderStatus = {...}`) from a status.json dict; the daemon calls it at
  each heartbeat. The open page re-reads it every 2 s to show the queue and the
  running job, and says the daemon is not running once its heartbeat is older than
  `folders.status.STALE_S`.
- `mp4_tags(spec, model)`, `describe(spec, model)`: what the MP4's tags and the JPEG's
  EXIF say about a result (the prompt and seed), for `media.encode_mp4` and `make_thumbnail`.

`write` and `write_status` write with one rename (`fsutil.write_atomic`, not fsynced: they are rebuilt from
the folders at any time) and raise nothing but OSError, so a caller can log a gallery
problem and go on: a gallery must never fail a job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hotfolder.config import Config
from hotfolder.folders import status as status_file
from hotfolder.fsutil import write_atomic
from hotfolder.gallery import page
from hotfolder.gallery.jobfile import job_toml
from hotfolder.gallery.read import Scan, scan
from hotfolder.gallery.tags import describe, mp4_tags

__all__ = ["INDEX", "STATUS_SCRIPT", "Scan", "describe", "job_toml", "mp4_tags", "scan", "status_payload", "write",
           "write_status"]

INDEX = "index.html"
STATUS_SCRIPT = ".hotfolder-status.js"
# An unchanged status is still rewritten this often, so the page sees a fresh heartbeat (its limit is STALE_S).
REFRESH_S = status_file.STALE_S / 2
MAX_QUEUE = 50  # queue entries in the status script (the count is always whole)
MAX_RECENT = 10

_lock = threading.Lock()
_tokens: dict[str, str] = {}  # outbox -> token of the page this process wrote last
_pages: dict[str, tuple[str, int]] = {}  # index.html -> (digest, mtime_ns) as this process wrote it
_statuses: dict[str, tuple[str, float]] = {}  # status script -> (digest without the heartbeat, monotonic time)


def write(config: Config) -> Path:
    """Rebuild `outbox/index.html` (skipped when nothing changed) and the status script; returns the page's path."""
    try:
        return _write(config)
    except OSError:
        raise
    except Exception as e:  # a bug here must not become the job's failure: the caller logs OSError
        raise OSError(f"the gallery could not be written: {type(e).__name__}: {e}") from e


def write_status(config: Config, status: dict[str, Any] | None, *, force: bool = False) -> Path | None:
    """Rewrite the status script from `status` (status.json's dict); None when it was left as it was.

    An unchanged status (all but the heartbeat) is rewritten only every REFRESH_S, which
    keeps a synced outbox quiet while the page still sees a live heartbeat.
    """
    try:
        return _write_status(config, status, force=force)
    except OSError:
        raise
    except Exception as e:
        raise OSError(f"the gallery's status could not be written: {type(e).__name__}: {e}") from e


def _write(config: Config) -> Path:
    outbox = config.outbox
    found = scan(outbox, config.failed)
    data = {
        "v": 1,
        "token": found.token,
        "stale_s": status_file.STALE_S,
        "status_script": STATUS_SCRIPT,
        "where": f"{config.root.name}/{outbox.name}",
        "results": [{k: v for k, v in e.items() if k != "sort"} for e in found.results],
        "failed": [{k: v for k, v in e.items() if k != "sort"} for e in found.failed],
    }
    n = len(found.results)
    text = page.render(data, title=f"hotfolder \u00b7 {n} video{'' if n == 1 else 's'}").encode("utf-8")
    path = outbox / INDEX
    digest = hashlib.sha256(text).hexdigest()
    with _lock:
        last = _pages.get(str(path))
    try:
        unchanged = last is not None and last == (digest, path.stat().st_mtime_ns)
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        write_atomic(path, text, durable=False)
        with _lock:
            _pages[str(path)] = (digest, path.stat().st_mtime_ns)
    with _lock:
        _tokens[str(outbox)] = found.token
    # The status script names the newest page, so an open page reloads itself to show the new results.
    _write_status(config, status_file.read(config.root).status, force=True)
    return path


def status_payload(config: Config, status: dict[str, Any] | None) -> dict[str, Any]:
    """What the page needs from status.json: small, no absolute paths, links relative to the outbox."""
    status = status if isinstance(status, dict) else {}
    daemon = status.get("daemon") if isinstance(status.get("daemon"), dict) else {}
    queue = [q for q in status.get("queue") or [] if isinstance(q, dict)]
    running = status.get("running") if isinstance(status.get("running"), dict) else None
    with _lock:
        token = _tokens.get(str(config.outbox))
    out: dict[str, Any] = {
        "v": 1,
        "gallery": token,
        "daemon": {k: daemon.get(k) for k in ("state", "heartbeat", "heartbeat_unix", "started", "model_loaded")},
        "queue": [{k: q.get(k) for k in ("position", "job_id", "source", "name", "priority")} for q in queue[:MAX_QUEUE]],
        "queue_total": len(queue),
        "paused": status.get("paused") if isinstance(status.get("paused"), str) else None,
        "running": None,
        "recent": [],
    }
    if running is not None:
        progress = running.get("progress") if isinstance(running.get("progress"), dict) else {}
        out["running"] = {
            **{k: running.get(k) for k in ("job_id", "source", "name", "prompt", "worker")},
            "progress": {k: progress.get(k) for k in ("stage", "step", "total_steps", "percent", "eta_s")},
        }
    others = [r for r in status.get("running_jobs") or [] if isinstance(r, dict)][1:]  # a cluster's other workers
    if running is not None and others:
        out["running_others"] = [{"name": r.get("name"), "worker": r.get("worker"),
                                  "percent": (r.get("progress") or {}).get("percent")} for r in others[:MAX_QUEUE]]
    for r in (status.get("recent") or [])[:MAX_RECENT]:
        if isinstance(r, dict):
            out["recent"].append({"job_id": r.get("job_id"), "source": r.get("source"), "status": r.get("status"),
                                  "finished": r.get("finished"), "href": _relative(config, r.get("path"))})
    return out


def _write_status(config: Config, status: dict[str, Any] | None, *, force: bool) -> Path | None:
    data = status_payload(config, status)
    steady = {**data, "daemon": {k: v for k, v in data["daemon"].items() if not k.startswith("heartbeat")}}
    digest = hashlib.sha256(json.dumps(steady, sort_keys=True, default=str).encode()).hexdigest()
    path = config.outbox / STATUS_SCRIPT
    now = time.monotonic()
    with _lock:
        last = _statuses.get(str(path))
    if not force and last is not None and last[0] == digest and now - last[1] < REFRESH_S:
        return None
    data["written_unix"] = round(time.time(), 3)
    text = "window.hotfolderStatus = " + json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str) + ";\n"
    write_atomic(path, text.encode("ascii"), durable=False)
    with _lock:
        _statuses[str(path)] = (digest, now)
    return path


def _relative(config: Config, path: Any) -> str | None:
    """A result's or failure's absolute path as a link from the outbox (None when it is elsewhere)."""
    if not isinstance(path, str) or not path:
        return None
    try:
        rel = os.path.relpath(path, config.outbox)
    except ValueError:  # another drive (Windows)
        return None
    if rel.startswith(os.pardir) and not rel.startswith(os.path.join(os.pardir, config.failed.name) + os.sep):
        return None
    return "/".join(quote(p, safe="") for p in Path(rel).parts)
