"""The files a job names (an image, a voice-over), checked on the claimed copies before any use.

The job file only says where they are (`spec.py` checks the text of the path);
here the real files are judged: inside the job's folder, no symbolic link on the
way, a plain file within `max_attachment_bytes`, and what ffmpeg (and Pillow, for
images) finds in it. Every refusal is a `Problem` naming the key, the file, what
was found and what to do, so a corrupt or mistyped file fails the job at once.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable

from hotfolder import media
from hotfolder.cache import file_sha256
from hotfolder.config import Config
from hotfolder.errors import JobInvalid, Problem
from hotfolder.job.spec import JobSpec

AUDIO_FORMATS = "wav, mp3, m4a, aiff or flac"
IMAGE_FORMATS = "png, jpg or webp"
TRUNCATION_SLACK_S = 0.1  # the header may round; more missing than this (and 2 %) is a cut-off file


@dataclass(frozen=True)
class Attachment:
    """One checked file: what it is and its digest (images: the cache key; audio: the metadata)."""

    key: str  # "image.file" | "audio.file"
    name: str  # as written, relative to the job's folder
    path: Path  # absolute path of the claimed file
    sha256: str
    found: str  # what it holds, in words: "png image 1024x768", "mp3 audio, 3.00 s"


def check_job(
    specs: list[JobSpec],
    base: Path,
    config: Config,
    *,
    label: str,
    loose: bool,
    which: Callable[[str], str | None] = shutil.which,
) -> list[JobSpec]:
    """The specs with `image_sha256` (and `audio_sha256`) filled in; JobInvalid naming every bad file.

    `base` is the job's folder as claimed (a folder job's folder, or the inbox folder a
    loose job file sat in); `loose` says which, for the messages.
    """
    problems: list[Problem] = []
    checked: dict[tuple[str, str], Attachment | None] = {}
    for spec in specs:
        for key, name in (("image.file", spec.image), ("audio.file", spec.audio_file)):
            if name and (key, name) not in checked:
                try:
                    checked[key, name] = check_file(key, name, base, config, loose=loose)
                except JobInvalid as e:
                    checked[key, name] = None
                    problems.extend(e.problems)
    if any(spec.tts for spec in specs):
        problems.extend(_narration_problems(which))
    if problems:
        raise JobInvalid(label, problems)
    return [_with_digests(spec, checked) for spec in specs]


def check_file(key: str, name: str, base: Path, config: Config, *, loose: bool) -> Attachment:
    """One named file: where it is, that it is a plain file of a sane size, and what it holds."""
    path = resolve(key, name, base, loose=loose, wait_s=config.attachment_wait_seconds)
    size = path.stat().st_size
    if size == 0:
        raise _invalid(key, name, "is empty (0 bytes): copy the file again")
    if size > config.max_attachment_bytes:
        raise _invalid(key, name, f"is {size:,} bytes, over the limit of {config.max_attachment_bytes:,} bytes for "
                       "an attachment (max_attachment_bytes in the config file): use a smaller file")  # fmt: skip
    found = _check_image(key, name, path) if key == "image.file" else _check_audio(key, name, path)
    return Attachment(key=key, name=name, path=path, sha256=file_sha256(path), found=found)


def resolve(key: str, name: str, base: Path, *, loose: bool = False, wait_s: float = 0.0, label: str = "") -> Path:
    """The absolute path of `name` under `base`, refusing what leaves the folder or is not a plain file.

    Each part of the path is looked at with lstat, so a link anywhere on the way is refused
    and never followed; the result is then checked to lie inside `base` once more.
    `label` names the job in the error (the daemon's worker checks again right before use).
    """
    try:
        return _resolve(key, name, base, loose=loose, wait_s=wait_s)
    except JobInvalid as e:
        raise JobInvalid(label, e.problems) from None


def _resolve(key: str, name: str, base: Path, *, loose: bool, wait_s: float) -> Path:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise _invalid(key, name, "leaves the job's folder: give a path inside it, like \"voice.mp3\"")
    if loose and len(rel.parts) > 1:
        raise _invalid(key, name, "is in a subfolder, but this job file was dropped loose in the inbox, where it "
                       "can name only files beside it: put the job file and its media into one folder and drop "
                       "that folder into the inbox")  # fmt: skip
    current = Path(base)
    for i, part in enumerate(rel.parts):
        current = current / part
        try:
            st = current.lstat()
        except (FileNotFoundError, NotADirectoryError):
            raise _missing(key, name, base, loose=loose, wait_s=wait_s) from None
        last = i == len(rel.parts) - 1
        if stat.S_ISLNK(st.st_mode):
            link = "/".join(rel.parts[: i + 1])
            raise _invalid(key, name, f"{'is' if last else 'goes through'} a symbolic link ({link}). hotfolder "
                           "never follows links: copy the file itself into the job's folder")  # fmt: skip
        if not last and not stat.S_ISDIR(st.st_mode):
            raise _missing(key, name, base, loose=loose, wait_s=wait_s)
        if last and not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise _invalid(key, name, f"is {what}: name an image or audio file")
    real, root = os.path.realpath(current), os.path.realpath(base)
    if os.path.commonpath([real, root]) != root:
        raise _invalid(key, name, "leaves the job's folder: give a path inside it")
    return current.absolute()


# --- what a file holds -------------------------------------------------------------


def _check_image(key: str, name: str, path: Path) -> str:
    """An image both ffmpeg and Pillow can read in full (a cut-off PNG fails Pillow's load)."""
    from PIL import Image, UnidentifiedImageError

    info = _probe(key, name, path, "an image")
    try:
        with Image.open(path) as im:
            im.load()
            fmt, (width, height) = (im.format or "image").lower(), im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        found = f"ffmpeg finds {_describe(info)} in it" if info is not None else "ffmpeg cannot read it either"
        raise _invalid(key, name, f"is not an image that can be opened ({e}); {found}. "
                       f"Use a {IMAGE_FORMATS} image") from None  # fmt: skip
    if info is not None and info.audio is not None and info.video is None:
        raise _invalid(key, name, f"is not an image: ffmpeg finds {_describe(info)} in it. Use a {IMAGE_FORMATS} image")
    return f"{fmt} image {width}x{height}"


def _check_audio(key: str, name: str, path: Path) -> str:
    """Sound ffmpeg can decode from start to end, as long as the file's header says."""
    info = _probe(key, name, path, "audio")
    if info is None:
        raise _invalid(key, name, f"is not a media file ffmpeg can read (damaged, or not audio). "
                       f"Use a {AUDIO_FORMATS} file")  # fmt: skip
    if info.audio is None:
        raise _invalid(key, name, f"is not audio: ffmpeg finds {_describe(info)} in it and no sound. "
                       f"Use a {AUDIO_FORMATS} file")  # fmt: skip
    decoded = info.audio.duration
    claimed = info.header_duration
    if claimed is not None and claimed - decoded > max(TRUNCATION_SLACK_S, 0.02 * claimed):
        raise _invalid(key, name, f"is cut off: its header says {claimed:.2f} s but only {decoded:.2f} s of "
                       f"{info.audio.codec} audio could be decoded{_said(info)}. "
                       "Export or download it again")  # fmt: skip
    if info.damage:
        raise _invalid(key, name, f"is damaged: ffmpeg decoded {decoded:.2f} s of {info.audio.codec} audio and "
                       f"reported{_said(info)}. Export or download it again")  # fmt: skip
    if decoded <= 0:
        raise _invalid(key, name, f"holds no sound (0 s of {info.audio.codec} audio). Use a {AUDIO_FORMATS} file")
    return f"{info.audio.codec} audio, {info.audio.sample_rate} Hz, {info.audio.channels} ch, {decoded:.2f} s"


def _probe(key: str, name: str, path: Path, wanted: str) -> media.MediaInfo | None:
    """ffmpeg's view of the file; None when ffmpeg cannot read it at all."""
    try:
        return media.probe(path)
    except media.MediaError as e:
        if "did not finish" in str(e):
            raise _invalid(key, name, f"could not be read as {wanted} in time ({e})") from None
        return None


def _describe(info: media.MediaInfo) -> str:
    """'a png image (64x48)', 'mp3 audio (3.00 s)', 'h264 video (640x352)'."""
    if info.video is not None and info.video.num_frames <= 1 and info.audio is None:
        return f"a {info.video.codec} image ({info.video.width}x{info.video.height})"
    if info.video is not None:
        return f"{info.video.codec} video ({info.video.width}x{info.video.height})"
    assert info.audio is not None
    return f"{info.audio.codec} audio ({info.audio.duration:.2f} s)"


def _said(info: media.MediaInfo) -> str:
    return f" (ffmpeg: {'; '.join(info.damage[:2])})" if info.damage else ""


# --- narration ---------------------------------------------------------------------


def _narration_problems(which: Callable[[str], str | None]) -> list[Problem]:
    """No speech engine means no narration: say so before the model is loaded, not after."""
    from hotfolder.media.narration import INSTALL_HINT, NarrationUnavailable, find_engine

    try:
        find_engine(which)
    except NarrationUnavailable as e:
        return [Problem(f"audio.tts: {e} {INSTALL_HINT}", key="audio.tts")]
    return []


# --- messages ----------------------------------------------------------------------


def _invalid(key: str, name: str, text: str) -> JobInvalid:
    return JobInvalid("", [Problem(f'{key} = "{name}" {text}', key=key, value=name)])


def _missing(key: str, name: str, base: Path, *, loose: bool, wait_s: float) -> JobInvalid:
    """Where the file was looked for, what is there instead, and how to bring it."""
    if loose:
        return _invalid(key, name, f"did not arrive: no file {name} beside the job file in the inbox after "
                        f"waiting {wait_s:g} s (attachment_wait_seconds). Copy it next to the job file, or drop "
                        "the job file and its media together in one folder")  # fmt: skip
    try:
        present = sorted(p.name for p in Path(base).iterdir() if not p.name.startswith("."))
    except OSError:
        present = []
    return _invalid(key, name, f"is not in the job's folder (it holds: {', '.join(present) or 'nothing'}). "
                    "Put the file into the folder, or correct the name")  # fmt: skip


def _with_digests(spec: JobSpec, checked: dict[tuple[str, str], Attachment | None]) -> JobSpec:
    image = checked.get(("image.file", spec.image or ""))
    audio = checked.get(("audio.file", spec.audio_file or ""))
    return replace(spec, image_sha256=image.sha256 if image else None, audio_sha256=audio.sha256 if audio else None)
