"""The files a job names (an image, a voice-over), checked on the claimed copies before any use.

The job file only says where they are (`spec.py` checks the text of the path);
here the real files are judged: inside the job's folder, no symbolic link on the
way, a plain file within `max_attachment_bytes`, and what ffmpeg (and Pillow, for
images) finds in it. Every refusal is a `Problem` naming the key, the file, what
was found and what to do, so a corrupt or mistyped file fails the job at once.

Hostile files are bounded before they are decoded: an image by the pixels its
header claims (MAX_IMAGE_PIXELS, hotfolder's own bound, not Pillow's global), a
voice-over by the length its header claims (MAX_AUDIO_SECONDS); only the image
kinds hotfolder names are opened, and anything a parser raises is a message.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable

from hotfolder import media
from hotfolder.cache import file_sha256
from hotfolder.config import Config, file_kind
from hotfolder.errors import JobInvalid, Problem
from hotfolder.job.names import AUDIO_FORMATS, IMAGE_FORMATS
from hotfolder.job.spec import JobSpec

TRUNCATION_SLACK_S = 0.1  # the header may round; more missing than this (and 2 %) is a cut-off file
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels (8660x5773): far above any video size, far below a decompression bomb
PILLOW_FORMATS = ("PNG", "JPEG", "WEBP")  # png, jpg (a camera's multi-picture jpg too), webp: no other parser runs
MAX_AUDIO_SECONDS = 30 * 60  # a voice-over longer than this is refused from its header, before it is decoded


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
    try:
        size = path.lstat().st_size
    except OSError as e:
        raise _invalid(key, name, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise _invalid(key, name, "is empty (0 bytes): copy the file again")
    if size > config.max_attachment_bytes:
        raise _invalid(key, name, f"is {size:,} bytes, over the limit of {config.max_attachment_bytes:,} bytes for "
                       "an attachment (max_attachment_bytes in the config file): use a smaller file")  # fmt: skip
    found = _check_image(key, name, path) if key == "image.file" else _check_audio(key, name, path)
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise _invalid(key, name, f"cannot be read ({e.strerror or e})") from None
    return Attachment(key=key, name=name, path=path, sha256=digest, found=found)


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
        if last and not stat.S_ISREG(st.st_mode):  # never opened: a pipe would block its reader forever
            raise _invalid(key, name, f"is {file_kind(st.st_mode)}, not a plain file: name an image or audio file")
    real, root = os.path.realpath(current), os.path.realpath(base)
    if os.path.commonpath([real, root]) != root:
        raise _invalid(key, name, "leaves the job's folder: give a path inside it")
    return current.absolute()


# --- what a file holds -------------------------------------------------------------


def _check_image(key: str, name: str, path: Path) -> str:
    """A png, jpg or webp image of at most MAX_IMAGE_PIXELS that Pillow can read in full (a cut-off PNG
    fails its load). The size is judged from the header, before anything is decoded or probed."""
    from PIL import Image, UnidentifiedImageError

    def unreadable(reason: str) -> JobInvalid:
        info = _probe(key, name, path, "an image")
        found = f"ffmpeg finds {_describe(info)} in it" if info is not None else "ffmpeg cannot read it either"
        return _invalid(key, name, f"{reason}; {found}. Use a {IMAGE_FORMATS} image")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # between Pillow's two limits
            with Image.open(path, formats=PILLOW_FORMATS) as im:  # reads the header only
                fmt, (width, height) = (im.format or "image").lower(), im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_many_pixels(key, name, f"{width}x{height} ({width * height:,} pixels)")
                im.load()
    except JobInvalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # over Pillow's own limit
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_many_pixels(key, name, f"{int(pixels[1]):,} pixels" if pixels else "too many pixels") from None
    except UnidentifiedImageError:
        raise unreadable(f"is not an image that can be opened (not a {IMAGE_FORMATS} image)") from None
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises on hostile bytes (struct.error, EOFError...)
        raise unreadable(f"is not an image that can be opened ({e or type(e).__name__})") from None
    info = _probe(key, name, path, "an image")
    if info is not None and info.audio is not None and info.video is None:
        raise _invalid(key, name, f"is not an image: ffmpeg finds {_describe(info)} in it. Use a {IMAGE_FORMATS} image")
    return f"{fmt} image {width}x{height}"


def _too_many_pixels(key: str, name: str, size: str) -> JobInvalid:
    return _invalid(key, name, f"is too large an image: {size}, over the limit of {MAX_IMAGE_PIXELS:,} pixels "
                    "(50 megapixels). Scale it down (the video is at most 4096 pixels wide) and save it again")


def _check_audio(key: str, name: str, path: Path) -> str:
    """Sound ffmpeg can decode from start to end, as long as the file's header says, and not too long.

    The length the header claims is judged first, without decoding: a ten-hour file is
    refused in a moment instead of being decoded for a minute.
    """
    claimed = _header_seconds(path)
    if claimed is not None and claimed > MAX_AUDIO_SECONDS:
        raise _too_long(key, name, claimed)
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
    if decoded > MAX_AUDIO_SECONDS:  # a header that said less than the file holds
        raise _too_long(key, name, decoded)
    return f"{info.audio.codec} audio, {info.audio.sample_rate} Hz, {info.audio.channels} ch, {decoded:.2f} s"


def _header_seconds(path: Path) -> float | None:
    """How long the file's header says it is (ffmpeg reads the header only); None when it says nothing.

    (media's header-only read is `media.ffmpeg._header`; it has no public name yet.)
    """
    try:
        seconds = media.ffmpeg._header(path, timeout=media.TIMEOUT_S).duration
    except media.MediaError:
        return None  # the full probe says what is wrong with it
    return seconds or None


def _too_long(key: str, name: str, seconds: float) -> JobInvalid:
    return _invalid(key, name, f"is {_length(seconds)} long, and a voice-over may be at most "
                    f"{_length(MAX_AUDIO_SECONDS)} (a video is at most a few seconds; the rest would be cut). "
                    "Cut the part you need and use that file")  # fmt: skip


def _length(seconds: float) -> str:
    """'10 h', '1 h 05 min', '31 min', '30 min 20 s', '42.50 s'."""
    whole = int(round(seconds))
    hours, minutes, secs = whole // 3600, whole % 3600 // 60, whole % 60
    if hours:
        return f"{hours} h" + (f" {minutes:02d} min" if minutes else "")
    if minutes:
        return f"{minutes} min" + (f" {secs:02d} s" if secs else "")
    return f"{seconds:.2f} s"


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
