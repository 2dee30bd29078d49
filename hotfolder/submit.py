"""Put jobs into the inbox atomically, follow them, and check job files without running them.

A job is written under `inbox/.incoming/` (a hidden name the daemon ignores) and
then renamed into place, so the daemon never sees half of it. The job is checked
first with the daemon's own parser: what it would reject is never submitted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from hotfolder.config import Config
from hotfolder.errors import JobInvalid, UsageError
from hotfolder.spec import parse

STALE_HEARTBEAT_S = 10.0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key in ("format", "mode", "duration", "model", "priority"):
        if getattr(args, key, None) is not None:
            opts[key] = getattr(args, key)
    if args.seed is not None:
        opts["seed"] = args.seed if args.seed == "random" else _int(args.seed, "--seed")
    return opts


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f'{flag} {text!r} is not a whole number (or "random").') from None


def _job_document(text: str, opts: dict[str, Any], name: str | None) -> bytes:
    doc: dict[str, Any] = {"prompt": text.strip(), **opts}
    if name:
        doc["output"] = {"name": name}
    return tomli_w.dumps(doc).encode()


def _staged_jobs(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """(file name, content) for each input: prompt text, a job file, or stdin."""
    opts = _options(args)
    jobs: list[tuple[str, bytes]] = []
    for item in args.inputs:
        if item == "-":
            text = sys.stdin.read()
            if not text.strip():
                raise UsageError("nothing on standard input: pipe a prompt into `hotfolder submit -`.")
            jobs.append((f"{args.name or 'prompt'}.toml", _job_document(text, opts, args.name)))
        elif Path(item).is_file():
            path = Path(item)
            data = path.read_bytes()
            if not opts and not args.name:
                jobs.append((path.name, data))
            elif path.suffix.lower() == ".txt":
                jobs.append((f"{path.stem}.toml", _job_document(data.decode("utf-8", "replace"), opts, args.name)))
            else:
                try:
                    doc = tomllib.loads(data.decode("utf-8"))
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                    raise UsageError(f"{path}: {e}") from e
                doc.update(opts)
                if args.name:
                    doc.setdefault("output", {})["name"] = args.name
                jobs.append((path.name, tomli_w.dumps(doc).encode()))
        elif Path(item).suffix.lower() in (".toml", ".txt") and len(item.split()) == 1:
            raise UsageError(f"{item}: no such file. To submit it as a prompt, put it in quotes with more words.")
        else:
            name = args.name or _slug(item)
            jobs.append((f"{name}.toml", _job_document(item, opts, args.name)))
    return jobs


def _slug(text: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return "-".join(words[:6])[:60] or "prompt"


def _free_name(folder: Path, name: str) -> Path:
    stem, suffix = Path(name).stem, Path(name).suffix
    for n in range(1, 10_000):
        target = folder / (name if n == 1 else f"{stem} {n}{suffix}")
        if not os.path.lexists(target):
            return target
    raise UsageError(f"no free name for {name} in {folder}")


def submit(config: Config, args: argparse.Namespace) -> int:
    """Check, stage and drop each job; with --wait follow them to the end."""
    incoming = config.inbox / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    dropped: list[tuple[Path, int]] = []
    for name, data in _staged_jobs(args):
        tmp = incoming / f"{secrets.token_hex(6)}-{name}"
        tmp.write_bytes(data)
        try:
            specs = parse(tmp, config, display_name=name)
        except JobInvalid as e:
            tmp.unlink()
            print(e.describe(), file=sys.stderr)
            return 2
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        target = _free_name(config.inbox, name)
        os.rename(tmp, target)
        dropped.append((target, len(specs)))
        print(f"submitted {target}", file=sys.stderr if args.wait else sys.stdout)
    if not args.wait:
        return 0
    return wait_for(config, dropped, timeout=args.timeout)


def wait_for(config: Config, dropped: list[tuple[Path, int]], *, timeout: float | None = None) -> int:
    """Follow submitted jobs until each entry is delivered or failed; print the .mp4 paths last."""
    from hotfolder.daemon import read_status

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
        status = read_status(config.root)
        alive = status is not None and time.time() - status["daemon"].get("heartbeat_unix", 0) < STALE_HEARTBEAT_S
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
            specs = parse(path, config, preset=p)
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


def copy_tree_atomic(src: Path, dest_dir: Path) -> Path:
    """Copy a folder into dest_dir under a hidden name, then rename it into place."""
    tmp = dest_dir / f".incoming-{secrets.token_hex(4)}"
    shutil.copytree(src, tmp)
    target = _free_name(dest_dir, src.name)
    os.rename(tmp, target)
    return target
