"""What the names in the inbox mean: job files, names never touched, sync conflicts, free names.

One home for the rules every part applies to a name: the daemon's scan, the
parser, `submit`, `retry` and `validate`.
"""

from __future__ import annotations

import errno
import os
import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterator

from hotfolder import fsutil
from hotfolder.errors import JobInvalid, Problem, UsageError

JOB_FILE_SUFFIXES = (".toml", ".txt")


def is_job_file_name(name: str) -> bool:
    """A `.toml` job file or a `.txt` prompt (any case)."""
    return Path(name).suffix.lower() in JOB_FILE_SUFFIXES


# Names a person, a sync client or an OS writes while a file is not ready (or never a job).
IGNORED_PATTERNS = (
    ".*",  # hidden: .DS_Store, ._x, .x.icloud placeholders, .syncthing.x.tmp, our own .incoming
    "*.tmp",
    "*.part",
    "*.crdownload",
    "*.download",
    "~$*",
    "Icon\r",
)
UF_DATALESS = 0x40000000  # macOS: the file's data is not on this machine yet (iCloud)

# The names sync clients give the second version of a file changed in two places at once.
# iCloud's "NAME 2" is left out: it is also how people number their own files.
_CONFLICT_PATTERNS = (
    re.compile(r"^(?P<stem>.+?) \([^()]*conflicted copy[^()]*?(?: \(\d+\))?\)(?P<ext>\.[^.]*)?$"),  # Dropbox
    re.compile(r"^(?P<stem>.+?)\.sync-conflict-\d{8}-\d{6}-[0-9A-Z]{7}(?P<ext>\.[^.]*)?$"),  # Syncthing
)


def sync_conflict_of(name: str) -> str | None:
    """The original's name when `name` is a Dropbox or Syncthing conflict copy, else None."""
    for pattern in _CONFLICT_PATTERNS:
        m = pattern.match(name)
        if m:
            return m["stem"] + (m["ext"] or "")
    return None


def is_ignored(name: str) -> bool:
    """True for names that are never jobs and never touched."""
    return any(fnmatch(name, pattern) for pattern in IGNORED_PATTERNS)


def job_file_in_folder(folder: Path, label: str) -> Path:
    """A folder job holds exactly one .toml or .txt job file."""
    files = sorted(p for p in folder.iterdir() if not is_ignored(p.name) and is_job_file_name(p.name))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise JobInvalid(
            label,
            [Problem(f"a job folder must hold exactly one .toml or .txt job file; found {len(files)} ({found})")],
        )
    return files[0]


def is_dataless(st: os.stat_result) -> bool:
    return bool(getattr(st, "st_flags", 0) & UF_DATALESS)


NAME_MAX_BYTES = 255  # one file name on APFS, ext4, btrfs, NTFS (UTF-8 bytes here)
# Names Windows reserves in any folder, with or without an extension: an outbox synced there breaks on them.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def fit_name(name: str, max_bytes: int = NAME_MAX_BYTES) -> str:
    """`name` made safe as one path component of at most `max_bytes` UTF-8 bytes.

    No "/" or NUL, not "." or "..", no Windows-reserved stem (CON, NUL, COM1...: "_" is
    added), cut at a character boundary (never half a multibyte character), trailing dots
    and spaces dropped (Windows drops them silently). Never empty: "job" if nothing is left.
    """
    text = name.replace("/", "_").replace("\x00", "")
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    encoded = text.encode("utf-8", "surrogateescape")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", "ignore")  # drops a cut multibyte tail
    text = text.rstrip(". ")
    return text if text not in ("", ".", "..") else "job"


def free_paths(folder: Path, stem: str, suffix: str = "") -> Iterator[Path]:
    """folder/<stem><suffix>, then "<stem> 2<suffix>", "<stem> 3<suffix>", ...: those not taken (never overwrite)."""
    stem = fit_name(stem, NAME_MAX_BYTES - len(suffix.encode()) - len(" 9999"))  # room for the number
    for n in range(1, 10_000):
        target = folder / (f"{stem}{suffix}" if n == 1 else f"{stem} {n}{suffix}")
        if not os.path.lexists(target):
            yield target


def split_name(name: str) -> tuple[str, str]:
    """("lake", ".toml") for a job file; (name, "") for a folder or anything else ("lake.v2" stays whole)."""
    path = Path(name)
    return (path.stem, path.suffix) if is_job_file_name(name) else (name, "")


def move_to_free_name(src: Path, folder: Path, stem: str, suffix: str = "", *,
                      before: Callable[[Path], None] | None = None) -> Path:
    """Move `src` to folder/<stem><suffix>, or "<stem> 2<suffix>", ...: the first name free at the
    moment of the move. The move never overwrites (`fsutil.rename_noreplace`): a name another
    process takes meanwhile is skipped. `before(target)` runs before each try (the journal)."""
    for target in free_paths(folder, stem, suffix):
        if before is not None:
            before(target)
        try:
            fsutil.rename_noreplace(src, target)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return target
    raise UsageError(f"no free name for {stem}{suffix} in {folder}: move some files out of it.")


def free_name(folder: Path, name: str) -> Path:
    """A free path for a job file or folder: "lake.toml" -> "lake 2.toml"; a folder "lake.v2" -> "lake.v2 2"."""
    path = Path(name)
    stem, suffix = (path.stem, path.suffix) if is_job_file_name(name) else (name, "")
    target = next(free_paths(folder, stem, suffix), None)
    if target is None:
        raise UsageError(f"no free name for {name} in {folder}: move some files out of it.")
    return target
