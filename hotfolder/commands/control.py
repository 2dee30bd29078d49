"""`hotfolder cancel` and `hotfolder retry`: act on jobs through the folders, as a person could.

Cancel writes a `cancel` marker into the job's processing/ folder; the daemon sees it
before the job starts or at its next denoising step (on a cluster, it tells the worker
running the job, which stops at its next step), and moves the job to failed/ as
cancelled. With no daemon running, cancel moves the job itself. Retry moves a failed
job's original file back into the inbox (into its preset folder, if it came from one).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tomllib
from pathlib import Path

import tomli_w

from hotfolder import fsutil
from hotfolder.config import Config
from hotfolder.errors import UsageError
from hotfolder.folders import lock
from hotfolder.folders.spool import Job, Spool, cancelled_error
from hotfolder.job.names import move_to_free_name, split_name


def _processing_jobs(config: Config) -> list[Job]:
    found = []
    for record in sorted(config.processing.glob("*/job.json")):
        job = Job.load(record.parent)
        if job is not None:
            found.append(job)
    return found


def _matches(job_ref: str, job_id: str, source: str) -> bool:
    """A job id, a batch entry's id (<job_id>.<n>), or the job file's name as dropped."""
    return job_ref in (job_id, source, Path(source).name, Path(source).stem) or job_ref.startswith(f"{job_id}.")


def cancel(config: Config, job_ref: str) -> int:
    matches = [job for job in _processing_jobs(config) if _matches(job_ref, job.job_id, job.source)]
    if not matches:
        raise UsageError(f"no job {job_ref!r} in {config.processing}. `hotfolder status` lists the queue.")
    if len(matches) > 1:
        ids = ", ".join(job.job_id for job in matches)
        raise UsageError(f"{job_ref!r} matches several jobs ({ids}); give the job id.")
    job = matches[0]
    if lock.held(config.root):
        job.request_cancel("hotfolder cancel")
        # A cluster's worker running it (the journal names it): the daemon passes the cancel on to that worker.
        worker = next((a.get("worker") for a in reversed(job.attempts) if a.get("worker") and not a.get("outcome")),
                      None)
        print(f"cancel requested for {job.source} ({job.job_id}): it stops at its next step"
              f"{f' on worker {worker}' if worker else ''} and ends in {config.failed}")
        return 0
    # No daemon: move the whole claim (job file and the attachments claimed with it) to failed/ ourselves.
    target = Spool(config).fail(job, cancelled_error("hotfolder cancel (no daemon was running)"))
    print(f"cancelled {job.source} ({job.job_id}): moved to {target}")
    return 0


def _failed_jobs(config: Config) -> list[tuple[Path, dict]]:
    """Every folder in failed/ with its error.json, oldest first."""
    found = []
    for err_file in sorted(config.failed.glob("*/error.json")):
        try:
            found.append((err_file.parent, json.loads(err_file.read_text())))
        except (OSError, ValueError):
            continue
    return found


def retry(config: Config, job_ref: str) -> int:
    candidates = [(folder, err) for folder, err in _failed_jobs(config)
                  if folder.name == job_ref or _matches(job_ref, str(err.get("job_id", "")), str(err.get("source", "")))]
    if not candidates:
        raise UsageError(f"no failed job {job_ref!r} in {config.failed}.")
    folder, err = candidates[-1]  # the newest, if a file failed several times
    print(_retry_folder(config, folder, err))
    return 0


def retry_all(config: Config) -> int:
    """Every job in failed/ back into the inbox; those that cannot go back are named, and the exit is 2."""
    jobs = _failed_jobs(config)
    if not jobs:
        print(f"no failed jobs in {config.failed}")
        return 0
    refused = 0
    for folder, err in jobs:
        try:
            print(_retry_folder(config, folder, err))
        except UsageError as e:
            refused += 1
            print(f"hotfolder: {folder.name}: {e}", file=sys.stderr)
    return 2 if refused else 0


def _retry_folder(config: Config, folder: Path, err: dict) -> str:
    """Move one failed job's original (and its attachments) back into the inbox, never over anything there."""
    source = Path(err["source"])
    original = folder / source.name
    if not os.path.lexists(original):
        raise UsageError(f"{folder} no longer holds the original {source.name}; drop the job file again.")
    # Attachments of a loose job file go back first, under the names the job file uses.
    for rel in err.get("attachments") or []:
        src, dest = folder / Path(rel).name, config.inbox / rel
        if not os.path.lexists(src):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            fsutil.rename_noreplace(src, dest)
        except FileExistsError:
            raise UsageError(f"{dest} already exists; move it away first (the job names {rel}).") from None
    dest_dir = config.inbox / source.parent
    dest_dir.mkdir(parents=True, exist_ok=True)
    index = err.get("index")
    if index is not None and original.is_file() and original.suffix.lower() == ".toml":
        # One failed entry of a [[jobs]] batch: retry that entry alone, not the entries already delivered.
        data = _single_entry(original, int(index))
        staged = config.inbox / ".incoming" / f".retry-{os.getpid()}-{secrets.token_hex(4)}.toml"
        staged.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_new(staged, data, mode=0o644)
        target = move_to_free_name(staged, dest_dir, f"{source.stem}-{int(index) + 1}", ".toml")
        shutil.rmtree(folder)
        return f"entry {int(index) + 1} of {source.name} back in the inbox as {target}"
    stem, suffix = split_name(source.name)
    target = move_to_free_name(original, dest_dir, stem, suffix)
    if index is None:
        shutil.rmtree(folder)
    return f"moved {source.name} back to {target}"


def _single_entry(batch: Path, index: int) -> bytes:
    """The job file for entry `index` of a [[jobs]] batch: top-level keys, then the entry's (tables merged
    key by key, as the parser does), under the entry's original output name."""
    doc = tomllib.loads(batch.read_text(encoding="utf-8"))
    entries = doc.pop("jobs", [])
    if not 0 <= index < len(entries):
        raise UsageError(f"{batch.name} has no entry {index + 1} any more; drop the job file again.")
    for key, value in entries[index].items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    if len(entries) > 1:
        doc.setdefault("output", {}).setdefault("name", f"{batch.stem}-{index + 1}")
    return tomli_w.dumps(doc).encode()
