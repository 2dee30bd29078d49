"""Read the outbox and failed/ into what the gallery shows: one small dict per result or failure.

Each folder is parsed once and remembered by its path and modification time (a result is
moved in whole and its metadata rewritten only by renames, which change the folder's
mtime), so rebuilding the page after each delivery reads only the new folder: with
2,000 results a rebuild is a scandir and 2,000 stats. Anything unreadable is skipped,
never an error: a half-synced or hand-edited folder must not stop the page.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hotfolder.gallery.jobfile import job_toml

MAX_JSON_BYTES = 4 * 1024 * 1024  # a result's metadata is a few KB; anything bigger is not ours
MAX_ERROR_CHARS = 6000  # error.txt shown on the page (the file itself is linked)
MAX_PROMPT_FILE_BYTES = 256 * 1024
_STAMP = re.compile(r"^(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)_(.*)$")


@dataclass(frozen=True)
class Scan:
    results: list[dict[str, Any]]  # newest first
    failed: list[dict[str, Any]]  # newest first
    token: str  # changes whenever a folder comes, goes or changes


# (absolute folder path) -> (mtime_ns, parsed entry or None for "not a result")
_cache: dict[str, tuple[int, dict[str, Any] | None]] = {}
# (folder path, mtime_ns, page folder) -> the entry with its links made: a rebuild with thousands of results
# makes only the new ones' links
_linked_cache: dict[tuple[str, int, str], dict[str, Any]] = {}
_cache_lock = threading.Lock()


def scan(outbox: Path, failed: Path, *, page_dir: Path | None = None) -> Scan:
    """Every result in `outbox` and every failure in `failed`, newest first.

    Links in the entries are relative to `page_dir` (default: the outbox, where index.html lives).
    """
    page_dir = page_dir or outbox
    seen: set[str] = set()
    stamp = hashlib.sha256()
    results = _entries(outbox, "result", page_dir, seen, stamp)
    failures = _entries(failed, "failed", page_dir, seen, stamp)
    with _cache_lock:  # forget folders that are gone (only those under the roots just scanned)
        prefixes = (str(outbox) + os.sep, str(failed) + os.sep)
        for key in [k for k in _cache if k.startswith(prefixes) and k not in seen]:
            del _cache[key]
        for links in [k for k in _linked_cache if k[0] not in _cache or _cache[k[0]][0] != k[1]]:
            del _linked_cache[links]
    results.sort(key=lambda e: (e["sort"], e["folder"]), reverse=True)
    failures.sort(key=lambda e: (e["sort"], e["folder"]), reverse=True)
    return Scan(results, failures, stamp.hexdigest()[:16])


def _entries(base: Path, kind: str, page_dir: Path, seen: set[str], stamp: Any) -> list[dict[str, Any]]:
    try:
        listing = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for de in listing:
        if de.name.startswith(".") or not de.is_dir(follow_symlinks=False):
            continue
        try:
            mtime = de.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            continue  # gone since the listing
        key = de.path
        seen.add(key)
        stamp.update(f"{kind}\0{de.name}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None and hit[0] == mtime:
            entry = hit[1]
        else:
            folder = Path(de.path)
            entry = _read_result(folder) if kind == "result" else _read_failure(folder)
            with _cache_lock:
                _cache[key] = (mtime, entry)
        if entry is not None:
            links = (key, mtime, str(page_dir))
            with _cache_lock:
                linked = _linked_cache.get(links)
            if linked is None:
                linked = _linked(entry, base, page_dir)
                with _cache_lock:
                    _linked_cache[links] = linked
            out.append(dict(linked))
    return out


def _linked(entry: dict[str, Any], base: Path, page_dir: Path) -> dict[str, Any]:
    """The cached entry with its file names turned into relative, percent-encoded links."""
    rel = os.path.relpath(base / entry["folder"], page_dir)
    prefix = "/".join(quote(part, safe="") for part in Path(rel).parts)
    out = {k: v for k, v in entry.items() if k != "files"}
    out["href"] = prefix + "/"
    for role, name in entry["files"].items():
        out[role] = f"{prefix}/{quote(name, safe='')}"
    return out


# --- one result --------------------------------------------------------------------


def _read_result(folder: Path) -> dict[str, Any] | None:
    try:
        names = {e.name for e in os.scandir(folder) if not e.name.startswith(".")}
    except OSError:
        return None
    # The metadata is <name>.json in a folder <stamp>_<name> (or "<stamp>_<name> 2"): try that one first.
    m = _STAMP.match(folder.name)
    guesses = list(dict.fromkeys([f"{m[7]}.json", f"{m[7].rsplit(' ', 1)[0]}.json"])) if m else []
    order = [g for g in guesses if g in names] + sorted(n for n in names if n.endswith(".json") and n not in guesses)
    meta: dict[str, Any] | None = None
    meta_name = ""
    for candidate in order:
        data = _load_json(folder / candidate)
        if isinstance(data, dict) and isinstance(data.get("prompt"), str) and data.get("status") == "done":
            meta, meta_name = data, candidate
            break
    if meta is None:
        return None
    outputs = meta.get("outputs") if isinstance(meta.get("outputs"), dict) else {}
    files: dict[str, str] = {"meta": meta_name}
    for role, key, suffix in (("video", "video", ".mp4"), ("gif", "gif", ".gif"), ("jpg", "thumbnail", ".jpg"),
                              ("log", "log", ".log"), ("job", "job", None)):
        name = outputs.get(key)
        if not isinstance(name, str) and suffix:
            name = meta_name[: -len(".json")] + suffix
        if isinstance(name, str) and name in names:
            files[role] = name
    if "video" not in files:
        return None  # a result without its video is not worth a card
    timings = meta.get("timings") if isinstance(meta.get("timings"), dict) else {}
    finished = _text(timings.get("finished")) or _folder_time(folder.name)
    attachments = [a for a in meta.get("attachments") or [] if isinstance(a, dict)]
    entry = {
        "folder": folder.name,
        "name": _text(meta_name[: -len(".json")]),
        "sort": finished,
        "finished": finished,
        "prompt": meta["prompt"],
        "negative_prompt": _text(meta.get("negative_prompt")),
        "seed": meta.get("seed"),
        "seed_random": bool(meta.get("seed_random")),
        "model": _text(meta.get("model")),
        "backend": _text(meta.get("backend")),
        "device": _text(meta.get("device")),
        "width": meta.get("width"),
        "height": meta.get("height"),
        "num_frames": meta.get("num_frames"),
        "fps": meta.get("fps"),
        "duration": _seconds(meta),
        "steps": meta.get("steps"),
        "mode": _text(meta.get("mode")),
        "format": _text(meta.get("format")),
        "audio": _text(meta.get("audio")),
        "cache_hit": bool(meta.get("cache_hit")),
        "timings": {k: timings.get(k) for k in ("load_s", "generate_s", "encode_s", "total_s", "wait_s")
                    if isinstance(timings.get(k), (int, float))},
        "source": _text(meta.get("source")),
        "adjustments": [a for a in meta.get("adjustments") or [] if isinstance(a, str)],
        "attachments": [_text(a.get("name")) for a in attachments if a.get("kind") in ("image", "voice-over")],
        "warning": _text(meta.get("warning")),
        "files": files,
    }
    try:
        entry["toml"] = job_toml(meta, name=entry["name"] or "video")
    except (TypeError, ValueError):
        entry["toml"] = ""
    return entry


def _seconds(meta: dict[str, Any]) -> float | None:
    """The video's real length: frames / fps (what was made), else the duration asked for."""
    try:
        return round(float(meta["num_frames"]) / float(meta["fps"]), 3)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        value = meta.get("duration")
        return float(value) if isinstance(value, (int, float)) else None


# --- one failure -------------------------------------------------------------------


def _read_failure(folder: Path) -> dict[str, Any] | None:
    error = _load_json(folder / "error.json")
    text = _read_text(folder / "error.txt", MAX_ERROR_CHARS)
    if not isinstance(error, dict) and text is None:
        return None
    error = error if isinstance(error, dict) else {}
    try:
        names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
    except OSError:
        return None
    m = _STAMP.match(folder.name)
    source = _text(error.get("source"))
    original = Path(source).name if source else ""
    files: dict[str, str] = {}
    if "error.txt" in names:
        files["error_txt"] = "error.txt"
    if original and original in names:
        files["original"] = original
    problems = [_text(p.get("message")) for p in error.get("problems") or [] if isinstance(p, dict)]
    return {
        "folder": folder.name,
        "name": m[7] if m else folder.name,
        "sort": _folder_time(folder.name),
        "finished": _folder_time(folder.name),
        "source": source,
        "status": _text(error.get("status")) or "failed",
        "kind": _text(error.get("kind")),
        "message": _text(error.get("message")) or next(iter((text or "").strip().splitlines()[2:3]), ""),
        "hint": _text(error.get("hint")),
        "problems": [p for p in problems if p],
        "text": text or "",
        "prompt": _prompt_of(folder / original) if original in names else "",
        "files": files,
    }


def _prompt_of(path: Path) -> str:
    """The prompt of a failed job's original file, when one can be read from it (best effort)."""
    try:
        if path.is_dir() and not path.is_symlink():
            inner = sorted(p for p in path.iterdir() if p.suffix.lower() in (".toml", ".txt"))
            return _prompt_of(inner[0]) if inner else ""
        text = _read_text(path, MAX_PROMPT_FILE_BYTES)
    except OSError:
        return ""
    if text is None:
        return ""
    if path.suffix.lower() != ".toml":
        return text.strip()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        m = re.search(r'^\s*prompt\s*=\s*"((?:[^"\\]|\\.)*)"', text, re.M)  # a broken file may still name it
        return m[1] if m else ""
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        jobs = data.get("jobs")
        prompt = jobs[0].get("prompt") if isinstance(jobs, list) and jobs and isinstance(jobs[0], dict) else None
    return prompt.strip() if isinstance(prompt, str) else ""


# --- helpers -----------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    data = _read_bytes(path, MAX_JSON_BYTES)
    if data is None or len(data) > MAX_JSON_BYTES:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _read_text(path: Path, limit: int) -> str | None:
    data = _read_bytes(path, limit)
    if data is None:
        return None
    text = data[:limit].decode("utf-8", "replace")
    return text + ("\n\u2026" if len(data) > limit else "")


def _read_bytes(path: Path, limit: int) -> bytes | None:
    """At most `limit` + 1 bytes of a plain file; None for anything else: a link is never followed, a named pipe
    never waited on (a failed job's original may be exactly such a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read(limit + 1)
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _folder_time(name: str) -> str:
    """`20261121-101500_fox` -> `2026-11-21T10:15:00.000` (the same shape as the metadata's timings)."""
    m = _STAMP.match(name)
    return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}.000" if m else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
