"""What the names in the inbox mean: job files, attachments, names never touched, sync conflicts,
documents that are not jobs (and what to do with them), names that fit a file system, free names.

One home for the rules every part applies to a name: the daemon's scan, the
parser, the attachment checks, `submit`, `retry` and `validate`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterator

from hotfolder import fsutil
from hotfolder.config import NEVER_FOLLOWS, file_kind
from hotfolder.errors import JobInvalid, Problem, UsageError

JOB_FILE_SUFFIXES = (".toml", ".txt")

# What a job may name as its image or voice-over; nothing else is opened as one (and only these
# wait in the inbox for a job file that may name them).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".aiff", ".aif", ".flac")
IMAGE_FORMATS = "png, jpg or webp"
AUDIO_FORMATS = "wav, mp3, m4a, aiff or flac"


def is_job_file_name(name: str) -> bool:
    """A `.toml` job file or a `.txt` prompt (any case)."""
    return Path(name).suffix.lower() in JOB_FILE_SUFFIXES


def could_be_attachment(name: str) -> bool:
    """An image or sound a job file may name (any case): `first.png`, `voice.MP3`."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES + AUDIO_SUFFIXES


# What to do with a file people often drop that is not a job (by suffix, lower case).
_TEXTEDIT = "TextEdit: Format > Make Plain Text, then save as .txt"
_WORD = "Word: save as Plain Text (.txt)"
_DOCUMENT_HINTS = {
    ".rtf": _TEXTEDIT,
    ".rtfd": _TEXTEDIT,
    ".doc": _WORD,
    ".docx": _WORD,
    ".odt": "LibreOffice: File > Save As, type Text (.txt)",
    ".pages": "Pages: File > Export To > Plain Text",
    ".md": "Markdown: rename it to .txt if it holds only the prompt",
    ".markdown": "Markdown: rename it to .txt if it holds only the prompt",
    ".pdf": "PDF: copy the prompt into a .txt file",
    ".json": "job settings are TOML (duration = 8.0): write it as a .toml job file",
    ".yaml": "job settings are TOML (duration = 8.0): write it as a .toml job file",
    ".yml": "job settings are TOML (duration = 8.0): write it as a .toml job file",
}
_WHAT_A_JOB_IS = "a job is a .toml job file, or a .txt file that holds the prompt (plain UTF-8 text)"


def not_a_job_hint(name: str) -> str:
    """What to do with `name`, a file that is not a job: per kind (TextEdit, Word, Markdown...), else in general."""
    suffix = Path(name).suffix.lower()
    if suffix in _DOCUMENT_HINTS:
        return f"{_WHAT_A_JOB_IS}. {_DOCUMENT_HINTS[suffix]}"
    if could_be_attachment(name):
        return (f"{_WHAT_A_JOB_IS}. To use this file as an image or voice-over, name it in a job file beside it "
                "([image] file or [audio] file), or put both into one folder")
    return _WHAT_A_JOB_IS


def not_a_job_message(name: str, *, wait_s: float | None = None) -> str:
    """"'notes.rtf' is not a job file: ... TextEdit: ...". `wait_s`: how long the inbox let it wait
    (attachment_wait_seconds); only a file that could be an attachment waited, so only it says so."""
    if wait_s is not None and could_be_attachment(name):
        return (f"'{name}' is not a job file, and no job file in the inbox named it within {wait_s:g} s "
                f"(attachment_wait_seconds): {not_a_job_hint(name)}")
    return f"'{name}' is not a job file: {not_a_job_hint(name)}"


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
    """A folder job's one .toml or .txt job file: a plain file, never a link (it is never followed)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise JobInvalid(label, [Problem(f"the folder cannot be read ({e.strerror or e})")]) from None
    files = [e for e in entries if not is_ignored(e.name) and is_job_file_name(e.name)]
    if len(files) != 1:
        found = ", ".join(e.name for e in files) or "none"
        message = f"a job folder must hold exactly one .toml or .txt job file; found {len(files)} ({found})"
        if not files and Path(folder.name).suffix.lower() in _DOCUMENT_HINTS:  # TextEdit's .rtfd is a folder
            message = f"'{folder.name}' is a document, not a job folder: {not_a_job_hint(folder.name)}"
        elif not files:  # a folder of documents: say what to do with the first
            document = next((e.name for e in entries if not is_ignored(e.name)
                             and Path(e.name).suffix.lower() in _DOCUMENT_HINTS), None)
            if document is not None:
                message += f". '{document}' is not a job file: {not_a_job_hint(document)}"
        raise JobInvalid(label, [Problem(message)])
    entry = files[0]
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError as e:
        raise JobInvalid(label, [Problem(f"'{entry.name}' cannot be read ({e.strerror or e})")]) from None
    if stat.S_ISLNK(mode):
        raise JobInvalid(label, [Problem(f"'{entry.name}' is a symbolic link; {NEVER_FOLLOWS} into the job's folder")])
    if not stat.S_ISREG(mode):
        raise JobInvalid(label, [Problem(f"'{entry.name}' is {file_kind(mode)}, not a plain file: save the job as "
                                         "an ordinary .toml or .txt file")])  # fmt: skip
    return Path(entry.path)


def is_dataless(st: os.stat_result) -> bool:
    return bool(getattr(st, "st_flags", 0) & UF_DATALESS)


NAME_MAX_BYTES = 255  # one file name on APFS, ext4, btrfs, NTFS (UTF-8 bytes here)
# Names Windows reserves in any folder, with or without an extension: an outbox synced there breaks on them.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


# What the daemon adds around a result's name (spec.name): the outbox folder "20261121-101500_<name> 9999"
# (timestamp, then a number when the name is taken); while it is built, ".<name>.voice-over.mp4" and the
# atomic writer's temporary ".<name>.json.<pid>.<6 hex>.tmp" (fsutil.write_atomic; pids have at most 7
# digits); the result's files ("<name>.mp4", ".json", ".log", ".gif", ".jpg") are shorter. A name of at
# most RESULT_NAME_MAX_BYTES fits in every one of them.
RESULT_NAME_ROOM = max(
    len("YYYYmmdd-HHMMSS_") + len(" 9999"),
    len(".") + len(".voice-over.mp4"),
    len(".") + len(".json") + len(".4194304.abcdef.tmp"),
)
RESULT_NAME_MAX_BYTES = NAME_MAX_BYTES - RESULT_NAME_ROOM


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
