"""Put jobs into the inbox atomically, follow them, and check job files without running them.

A job is written under `inbox/.incoming/` (a hidden name the daemon ignores) and
then renamed into place, so the daemon never sees half of it. A job with
attachments (--image, --audio, or files its job file names) is staged as a job
folder holding copies of them, and the folder is renamed into place in one step.
The job is checked first with the daemon's own parser and attachment checks:
what it would reject is never submitted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import tomllib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from hotfolder import fsutil
from hotfolder.config import Config
from hotfolder.errors import JobInvalid, UsageError
from hotfolder.folders import status as status_file
from hotfolder.job.attachments import check_job
from hotfolder.job.names import free_name, is_job_file_name, job_file_in_folder
from hotfolder.job.spec import attachment_names, parse


@dataclass(frozen=True)
class SubmitRequest:
    """What `hotfolder submit` was asked to do: the inputs as given, the options, and what stdin held.

    An input `-` stands for standard input: the caller reads it once into `stdin_text`
    (None when no input is `-`). A second `-` finds it already read, as a stream would be.
    """

    inputs: tuple[str, ...]
    format: str | None = None
    mode: str | None = None
    duration: float | None = None
    seed: str | None = None
    model: str | None = None
    priority: int | None = None
    name: str | None = None
    image: Path | None = None
    strength: float | None = None
    audio: Path | None = None
    tts: str | None = None
    narrate: bool = False
    wait: bool = False
    timeout: float | None = None
    stdin_text: str | None = None


@dataclass
class Staged:
    """One job to drop: its job file's name and bytes, and the files to stage beside it (folder name -> source)."""

    name: str
    data: bytes
    files: dict[str, Path] = field(default_factory=dict)


def _options(request: SubmitRequest) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key in ("format", "mode", "duration", "model", "priority"):
        if getattr(request, key) is not None:
            opts[key] = getattr(request, key)
    if request.seed is not None:
        opts["seed"] = request.seed if request.seed == "random" else _int(request.seed, "--seed")
    return opts


def _attachment_flags(request: SubmitRequest) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """The [image]/[audio] tables the flags ask for, and the files to copy (name in the job folder -> source)."""
    tables: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for flag, table in (("image", "image"), ("audio", "audio")):
        source = getattr(request, flag)
        if source is None:
            continue
        if not Path(source).is_file():
            raise UsageError(f"--{flag} {source}: no such file")
        name = Path(source).name
        if name in files or is_job_file_name(name):
            name = f"{flag}-{name}"
        files[name] = Path(source)
        tables.setdefault(table, {})["file"] = name
    if request.strength is not None:
        if "image" not in tables:
            raise UsageError("--strength goes with --image: it says how closely the video follows the image.")
        tables["image"]["strength"] = request.strength
    if request.tts is not None and request.narrate:
        raise UsageError("use --tts TEXT (narrate TEXT) or --narrate (narrate the prompt), not both.")
    if request.tts is not None:
        tables.setdefault("audio", {})["tts"] = request.tts
    elif request.narrate:
        tables.setdefault("audio", {})["tts"] = True
    return tables, files


def _merge_tables(doc: dict[str, Any], tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for table, values in tables.items():
        current = doc.get(table)
        doc[table] = {**(current if isinstance(current, dict) else {}), **values}
    return doc


def _named_files(path: Path, config: Config) -> dict[str, Path]:
    """The attachments a job file names, found beside it, to be copied into its staged folder."""
    try:
        specs = parse(path, config, display_name=path.name)
    except JobInvalid:
        return {}  # the check of the staged copy reports it
    names = {n for spec in specs for n in attachment_names(spec)}
    return {n: path.parent / n for n in sorted(names)}


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f'{flag} {text!r} is not a whole number (or "random").') from None


def _job_document(text: str, opts: dict[str, Any], name: str | None,
                  tables: dict[str, dict[str, Any]] | None = None) -> bytes:
    doc: dict[str, Any] = {"prompt": text.strip(), **opts}
    if name:
        doc["output"] = {"name": name}
    return tomli_w.dumps(_merge_tables(doc, tables or {})).encode()


def _staged_jobs(request: SubmitRequest, config: Config) -> list[Staged]:
    """What to drop for each input: prompt text, a job file (with the files it names), or stdin."""
    opts = _options(request)
    tables, files = _attachment_flags(request)
    name = request.name
    stdin_left = request.stdin_text or ""
    jobs: list[Staged] = []
    for item in request.inputs:
        if item == "-":
            text, stdin_left = stdin_left, ""  # standard input is read once: a second `-` finds it empty
            if not text.strip():
                raise UsageError("nothing on standard input: pipe a prompt into `hotfolder submit -`.")
            jobs.append(Staged(f"{name or 'prompt'}.toml", _job_document(text, opts, name, tables), files))
        elif Path(item).is_file():
            path = Path(item)
            data = path.read_bytes()
            named = _named_files(path, config) if path.suffix.lower() == ".toml" else {}
            if not opts and not name and not tables:
                jobs.append(Staged(path.name, data, named))
            elif path.suffix.lower() == ".txt":
                text = data.decode("utf-8", "replace")
                jobs.append(Staged(f"{path.stem}.toml", _job_document(text, opts, name, tables), files))
            else:
                try:
                    doc = tomllib.loads(data.decode("utf-8"))
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                    raise UsageError(f"{path}: {e}") from e
                doc.update(opts)
                if name:
                    doc.setdefault("output", {})["name"] = name
                doc = _merge_tables(doc, tables)
                jobs.append(Staged(path.name, tomli_w.dumps(doc).encode(), {**named, **files}))
        elif is_job_file_name(item) and len(item.split()) == 1:
            raise UsageError(f"{item}: no such file. To submit it as a prompt, put it in quotes with more words.")
        else:
            stem = name or _slug(item)
            jobs.append(Staged(f"{stem}.toml", _job_document(item, opts, name, tables), files))
    return jobs


def _slug(text: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return "-".join(words[:6])[:60] or "prompt"


def submit(config: Config, request: SubmitRequest) -> int:
    """Check, stage and drop each job; with --wait follow them to the end."""
    incoming = config.inbox / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    dropped: list[tuple[Path, int]] = []
    for job in _staged_jobs(request, config):
        try:
            target, count = _drop_folder(config, incoming, job) if job.files else _drop_file(config, incoming, job)
        except JobInvalid as e:
            print(e.describe(), file=sys.stderr)
            return 2
        dropped.append((target, count))
        print(f"submitted {target}", file=sys.stderr if request.wait else sys.stdout)
    if not request.wait:
        return 0
    return wait_for(config, dropped, timeout=request.timeout)


def _drop_file(config: Config, incoming: Path, job: Staged) -> tuple[Path, int]:
    """A lone job file: written hidden, checked, renamed into the inbox. Returns (path, entries)."""
    tmp = incoming / f"{secrets.token_hex(6)}-{job.name}"
    tmp.write_bytes(job.data)
    try:
        specs = parse(tmp, config, display_name=job.name)
    except JobInvalid:
        tmp.unlink()
        raise
    fsutil.fsync_path(tmp)
    target = free_name(config.inbox, job.name)
    os.rename(tmp, target)
    return target, len(specs)


def _drop_folder(config: Config, incoming: Path, job: Staged) -> tuple[Path, int]:
    """A job folder: the job file plus copies of its attachments, checked like the daemon will
    (parser, paths, probes), then moved into the inbox with one rename."""
    stem = Path(job.name).stem
    tmp = incoming / f"{secrets.token_hex(6)}-{stem}"
    tmp.mkdir()
    try:
        (tmp / job.name).write_bytes(job.data)
        for name, source in job.files.items():
            if not source.is_file():
                raise UsageError(f"{source}: no such file (named by {job.name})")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp / name)
        specs = parse(tmp / job.name, config, display_name=stem)
        check_job(specs, tmp, config, label=stem, loose=False)
        for path in tmp.rglob("*"):
            if path.is_file():
                fsutil.fsync_path(path)
        target = free_name(config.inbox, stem)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, len(specs)


def wait_for(config: Config, dropped: list[tuple[Path, int]], *, timeout: float | None = None) -> int:
    """Follow submitted jobs until each entry is delivered or failed; print the .mp4 paths last."""
    t0 = time.time()
    pending = {p.relative_to(config.inbox).as_posix(): n for p, n in dropped}
    videos: list[str] = []
    failed = False
    warned = False
    seen: set[Path] = set()
    while pending:
        for folder, source, kind in _new_results(config, t0 - 2, seen):
            if source in pending:
                if kind == "done":
                    meta = json.loads(next(folder.glob("*.json")).read_text())
                    videos.append(str(folder / meta["outputs"]["video"]))
                else:
                    failed = True
                    print((folder / "error.txt").read_text(), file=sys.stderr)
                pending[source] -= 1
                if pending[source] <= 0:
                    del pending[source]
        if not pending:
            break
        beat = status_file.read(config.root)
        status, alive = beat.status, beat.alive
        if not alive and not warned and time.time() - t0 > 3:
            print(f"hotfolder: no daemon is running on {config.root}; start one with `hotfolder run` "
                  "(waiting anyway)", file=sys.stderr)
            warned = True
        running = (status or {}).get("running") or {}
        if running.get("source") in pending:
            _progress_bar(running)
        if timeout is not None and time.time() - t0 > timeout:
            print(f"hotfolder: gave up waiting after {timeout:.0f} s; the job is still queued", file=sys.stderr)
            return 1
        time.sleep(0.5)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for v in videos:
        print(v)
    return 1 if failed else 0


def _new_results(config: Config, since: float, seen: set[Path]) -> list[tuple[Path, str, str]]:
    found = []
    for base, kind, pattern in ((config.outbox, "done", "*.json"), (config.failed, "failed", "error.json")):
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            continue
        for e in entries:
            folder = Path(e.path)
            if folder in seen or not e.is_dir() or e.stat().st_mtime < since:
                continue
            for meta_path in folder.glob(pattern):
                try:
                    meta = json.loads(meta_path.read_text())
                except (OSError, ValueError):
                    continue
                if "source" in meta:
                    seen.add(folder)
                    found.append((folder, meta["source"], kind))
                    break
    return found


def _progress_bar(running: dict[str, Any]) -> None:
    p = running.get("progress") or {}
    pct = float(p.get("percent") or 0)
    bar = "#" * int(pct / 5)
    eta = f" ETA {p['eta_s']:.0f}s" if p.get("eta_s") is not None else ""
    line = f"\r[{bar:<20}] {pct:5.1f}% {p.get('stage', '')} {p.get('step', 0)}/{p.get('total_steps', 0)}{eta}"
    if sys.stderr.isatty():
        sys.stderr.write(line.ljust(70))
        sys.stderr.flush()


def validate(config: Config, files: list[Path], *, preset: str | None = None) -> int:
    """Print what the daemon would make of each file; exit 2 if any is invalid."""
    bad = 0
    for path in files:
        p = preset
        if p is None and path.parent.name in config.presets and path.parent.parent.name == "inbox":
            p = path.parent.name
        try:
            if not path.exists():
                raise UsageError(f"{path}: no such file")
            folder_job = path.is_dir()
            job_file = job_file_in_folder(path, path.name) if folder_job else path
            specs = parse(job_file, config, preset=p, display_name=path.name if folder_job else None)
            # The files it names, judged as the daemon will: inside the job's folder, no links, probed.
            specs = check_job(specs, job_file.parent, config, label=path.name, loose=not folder_job)
        except JobInvalid as e:
            bad += 1
            print(e.describe())
            continue
        except UsageError as e:
            bad += 1
            print(e)
            continue
        for s in specs:
            print(f"ok {path}: {s.name}: {s.width}x{s.height}, {s.num_frames} frames at {s.fps:g} fps, "
                  f"{s.steps} steps, seed {s.seed}, {s.mode}, model {s.model} ({s.backend})")
            for a in s.adjustments:
                print(f"   adjusted: {a}")
    return 2 if bad else 0
