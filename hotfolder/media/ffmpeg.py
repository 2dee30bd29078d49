"""All ffmpeg work: encode a Clip to MP4 (+AAC), make the preview GIF and thumbnail, probe.

Every call runs the ffmpeg bundled by imageio-ffmpeg (no Homebrew, no PyAV), with an
argument list (never a shell), `-nostdin -hide_banner` and a timeout, so a result never
depends on what happens to be installed on the machine and a stuck ffmpeg cannot hang
the worker; a stopping daemon ends every ffmpeg still running (`stop_all`). There is no
ffprobe in imageio-ffmpeg, so `probe` runs ffmpeg itself: the `-i` header gives codecs and
sizes, and one decode to `framecrc` gives exact frame and sample counts with their time bases.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
import subprocess
import threading
import wave
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hotfolder.errors import HotfolderError

from hotfolder.media.fit import MIX_RATE, describe_fit, fit_audio

if TYPE_CHECKING:
    from hotfolder.media.clip import Clip

ENCODE_TIMEOUT_S = 600.0  # one clip's MP4 encode; generous for 1280x704x121 on two slow cores
TIMEOUT_S = 120.0  # GIF, thumbnail
PROBE_TIMEOUT_S = 60.0  # reading a file through (an attachment check): a 10-hour voice-over must not stall a job
CRF = 18  # visually lossless-ish; x264's default is 23
X264_PRESET = "medium"
AAC_BITRATE = "160k"
GIF_MAX_FPS = 50.0  # GIF delays are whole 1/100 s and viewers clamp delays < 2 cs to 10 cs
MAX_AUDIO_CHANNELS = 8  # more than this is almost surely a transposed (samples, channels) array
_STDERR_TAIL_LINES = 12
_STDERR_TAIL_CHARS = 2000


class MediaError(HotfolderError):
    """ffmpeg could not encode, convert or read a file; the message names the file and quotes ffmpeg."""

    kind = "media"

    def __init__(self, path: Path | str, message: str, stderr: str = "", hint: str | None = None):
        self.path = Path(path)
        self.stderr_tail = _tail(stderr)
        text = f"{path}: {message}"
        if self.stderr_tail:
            text += "\nffmpeg said:\n  " + self.stderr_tail.replace("\n", "\n  ")
        super().__init__(text)
        self.hint = hint


@dataclass(frozen=True)
class VideoInfo:
    codec: str  # e.g. "h264", "gif"
    pix_fmt: str  # e.g. "yuv420p"
    width: int
    height: int
    fps: float  # exact for constant-rate video (from the stream's time base, not the rounded header)
    num_frames: int  # counted by decoding


@dataclass(frozen=True)
class AudioInfo:
    codec: str  # e.g. "aac"
    sample_rate: int
    channels: int
    duration: float  # decoded samples / sample_rate (encoder priming and padding excluded)


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # the longer stream's exact duration; the header's (10 ms) when nothing decoded
    video: VideoInfo | None
    audio: AudioInfo | None
    faststart: bool  # the `moov` atom comes before `mdat`: players can start before the download ends
    header_duration: float | None = None  # what the file's header claims (more than decoded: truncated)
    damage: tuple[str, ...] = ()  # ffmpeg's complaints while decoding (corrupt or cut-off data)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The bundled ffmpeg's path (cached: imageio-ffmpeg searches the disk on each call)."""
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:  # imageio-ffmpeg's "No ffmpeg exe could be found"
        hint = "reinstall imageio-ffmpeg (pip install --force-reinstall imageio-ffmpeg)"
        raise MediaError("ffmpeg", f"no ffmpeg binary: {exc}", hint=hint) from exc


# --- running ffmpeg -------------------------------------------------------------------

_children: set[subprocess.Popen[bytes]] = set()  # every ffmpeg running now, so that a stop can end them
_children_lock = threading.Lock()
_stopping = False


def stop_all() -> int:
    """Kill every ffmpeg this process runs and refuse new ones (the process is stopping); returns how many.

    The caller of each killed run gets a MediaError saying ffmpeg was stopped.
    """
    global _stopping
    with _children_lock:
        _stopping = True
        running = list(_children)
    for proc in running:
        with contextlib.suppress(OSError):
            proc.kill()
    return len(running)


def _tail(stderr: str) -> str:
    """The last lines of ffmpeg's log, progress lines (\\r) dropped: where the cause is."""
    lines = [ln.rsplit("\r", 1)[-1].rstrip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    text = "\n".join(lines[-_STDERR_TAIL_LINES:])
    return text[-_STDERR_TAIL_CHARS:]


def _run(
    args: list[str],
    *,
    file: Path,
    what: str,
    timeout: float,
    stdin: bytes | memoryview | None = None,
    check: bool = True,
) -> tuple[int, bytes, str]:
    """Run ffmpeg with `args`; return (returncode, stdout, stderr). Raises MediaError on
    timeout, on a missing binary, and (with `check`) on a non-zero exit."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", *args]
    with _children_lock:
        if _stopping:
            raise MediaError(file, f"{what}: not started, the process is stopping")
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise MediaError(file, f"{what}: cannot run ffmpeg ({exc})") from exc
        _children.add(proc)
    try:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            stderr = err.decode("utf-8", "replace")
            raise MediaError(file, f"{what}: ffmpeg did not finish within {timeout:g} s", stderr) from None
        except BaseException:  # e.g. KeyboardInterrupt: never leave an ffmpeg behind
            proc.kill()
            proc.wait()
            raise
    finally:
        with _children_lock:
            _children.discard(proc)
    stderr = err.decode("utf-8", "replace")
    if _stopping and proc.returncode != 0:
        raise MediaError(file, f"{what}: ffmpeg was stopped (the process is stopping)", stderr)
    if check and proc.returncode != 0:
        raise MediaError(file, f"{what} failed (ffmpeg exit {proc.returncode})", stderr)
    return proc.returncode, out, stderr


def _rate(fps: float) -> Fraction:
    """fps as the exact rational ffmpeg should use (23.976 -> 2997/125, 24000/1001. -> 24000/1001)."""
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


# --- encoding -------------------------------------------------------------------------


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio (channels, samples) in [-1, 1] as 16-bit PCM WAV with the stdlib
    (no PyAV). NaN becomes silence and values outside [-1, 1] are clipped."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 2 or not 1 <= a.shape[0] <= MAX_AUDIO_CHANNELS:
        raise ValueError(f"audio must be (channels, samples), 1..{MAX_AUDIO_CHANNELS} channels; got shape {a.shape}")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    pcm = np.round(np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(a.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.T.tobytes())  # interleaved: (samples, channels) in C order


def encode_mp4(clip: Clip, path: Path, *, timeout: float = ENCODE_TIMEOUT_S, tags: dict[str, str] | None = None,
               audio_rate: int | None = None) -> None:
    """Encode `clip` to `path`: H.264 yuv420p (CRF 18, BT.709 tagged), +faststart, fps exactly
    `clip.fps`, and AAC audio exactly as long as the video when the clip has sound.

    Frames go to ffmpeg as raw rgb24 on stdin; audio goes through a temporary WAV beside `path`, which
    is written in place (the caller stages it); a partial file is removed on failure.
    `tags`: the file's own metadata (title, comment, description, encoder, ...), which
    Finder, Spotlight and players show; `creation_time` is now unless given. `audio_rate`:
    resample the AAC to this rate (48000 for delivery) instead of keeping the clip's own.
    """
    path = Path(path)
    frames = np.asarray(clip.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise MediaError(path, f"frames must be uint8 (frames, height, width, 3), got {frames.dtype} {frames.shape}")
    num_frames, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise MediaError(path, f"yuv420p needs an even width and height, got {width}x{height}")
    try:
        rate = _rate(clip.fps)
    except ValueError as exc:
        raise MediaError(path, str(exc)) from None
    frames = np.ascontiguousarray(frames)

    wav = path.with_name(f".{path.name}.{os.getpid()}.wav")  # beside the output: no temporary folder to make
    try:
        audio_args: list[str] = []
        audio_out: list[str] = []
        if clip.audio is not None:
            if not clip.sample_rate:
                raise MediaError(path, "the clip has audio but no sample_rate")
            audio = np.asarray(clip.audio, dtype=np.float32)
            if audio.ndim != 2 or not 1 <= audio.shape[0] <= MAX_AUDIO_CHANNELS:
                raise MediaError(path, f"audio must be (channels, samples), got shape {audio.shape}")
            # The video lasts num_frames / fps exactly; the audio must end with it.
            num_samples = round(Fraction(num_frames) * int(clip.sample_rate) / rate)
            write_wav(wav, fit_audio(audio, num_samples), int(clip.sample_rate))
            audio_args = ["-i", str(wav)]
            audio_out = ["-map", "1:a:0", "-c:a", "aac", "-b:a", AAC_BITRATE]
            if audio_rate:
                audio_out += ["-ar", str(int(audio_rate))]
        metadata: list[str] = []
        for key, value in (tags or {}).items():
            # The muxer replaces "encoder" with its own name; "encoding_tool" fills the same MP4 atom.
            metadata += ["-metadata", f"{'encoding_tool' if key == 'encoder' else key}={value}"]
        if tags and "creation_time" not in tags:
            metadata += ["-metadata", "creation_time=now"]

        args = [
            "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
            *audio_args,
            "-map", "0:v:0",
            # Convert and tag as BT.709 so browsers and QuickTime show the colours we made
            # (setparams tags the frames, which ffmpeg 7+ follows; the -color* flags the encoder).
            "-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int,"
            "format=yuv420p,setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv",
            "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
            "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
            *audio_out,
            *metadata,
            "-movflags", "+faststart",
            "-f", "mp4", str(path),
        ]  # fmt: skip
        try:
            _run(args, file=path, what="encoding the MP4", timeout=timeout, stdin=memoryview(frames).cast("B"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    finally:
        wav.unlink(missing_ok=True)


# --- previews: the GIF and the thumbnail ------------------------------------------------------------
#
# Both are made from frames: on a miss from the frames the backend returned (already in memory: no decode),
# for a cached clip that has none yet from the MP4, decoded by ffmpeg straight to the GIF's size. The GIF's
# palette comes from a few frames spread over it, and Pillow maps every frame onto it with Floyd-Steinberg
# dithering, whose colour lookup is cached per small cell of colour space: on noise (every pixel a new
# colour) that costs a fraction of ffmpeg's paletteuse, which searches its palette for nearly every pixel.
# Frames are scaled and dithered on two threads.

GIF_WIDTH = 480
GIF_SECONDS = 3.0
GIF_PALETTE_FRAMES = 8  # the palette is made from this many frames, spread over the GIF, at half size
GIF_METHOD = "pillow-mediancut-fs/1"  # how the GIF is made: part of its name in the cache (settings change it)
THUMBNAIL_QUALITY = 92


def gif_settings(*, width: int = GIF_WIDTH, seconds: float = GIF_SECONDS) -> dict[str, object]:
    """Everything that changes a GIF made from a given clip (for its name in the cache)."""
    return {"width": int(width), "seconds": float(seconds), "max_fps": GIF_MAX_FPS, "method": GIF_METHOD}


def thumbnail_settings(*, description: str | None = None, quality: int = THUMBNAIL_QUALITY) -> dict[str, object]:
    """Everything that changes a thumbnail made from a given clip: the EXIF description (the prompt) included."""
    return {"quality": int(quality), "description": description or "", "format": "jpeg-444/1"}


def _gif_plan(num_frames: int, fps: float, seconds: float) -> tuple[list[int], Fraction]:
    """Which frames the GIF shows (the first `seconds`, every k-th above GIF_MAX_FPS) and at what rate."""
    rate = _rate(fps)
    step = math.ceil(fps / GIF_MAX_FPS) if fps > GIF_MAX_FPS else 1
    shown = min(num_frames, math.ceil(Fraction(seconds) * rate - Fraction(1, 10**6)))  # frames starting before `seconds`
    return list(range(0, max(1, shown), step)), rate / step


def _gif_height(width: int, src_width: int, src_height: int) -> int:
    """The GIF's height for `width`: the clip's aspect, rounded to an even number (ffmpeg's `scale=W:-2`)."""
    return max(2, 2 * round(width * src_height / (2 * src_width)))


def make_gif_from_frames(frames: np.ndarray, fps: float, gif: Path, *, width: int = GIF_WIDTH,
                         seconds: float = GIF_SECONDS) -> None:
    """`make_gif` from the clip's own frames ((frames, height, width, 3) uint8, as a backend returns them):
    no MP4 decode, no ffmpeg; the GIF's frames are scaled with Lanczos, as ffmpeg's scale filter did."""
    from PIL import Image

    gif = Path(gif)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise MediaError(gif, f"frames must be uint8 (frames, height, width, 3), got {frames.dtype} {frames.shape}")
    if width < 2 or seconds <= 0:
        raise ValueError(f"width must be >= 2 and seconds > 0, got {width}, {seconds}")
    try:
        indices, rate = _gif_plan(frames.shape[0], fps, seconds)
    except ValueError as exc:
        raise MediaError(gif, str(exc)) from None
    size = (width, _gif_height(width, frames.shape[2], frames.shape[1]))
    images = _map(lambda i: Image.fromarray(np.ascontiguousarray(frames[i]), "RGB").resize(
        size, Image.Resampling.LANCZOS), indices)
    _write_gif(images, rate, gif)


def make_gif(
    video: Path, gif: Path, *, width: int = GIF_WIDTH, seconds: float = GIF_SECONDS, timeout: float = TIMEOUT_S
) -> None:
    """A looping preview GIF of the first `seconds` of `video`, `width` px wide (even height),
    with a palette made for this clip, playing at the video's real speed.

    ffmpeg decodes the first `seconds`, scaled to the GIF's size (Lanczos); the frames are
    then made into the GIF as `make_gif_from_frames` does. Each frame's delay is its share
    of the clip's time rounded to 1/100 s cumulatively (4, 4, 5 cs at 24 fps), so the total
    stays right. Above GIF_MAX_FPS frames are dropped evenly, since viewers slow down delays
    under 2 cs.
    """
    from PIL import Image

    video, gif = Path(video), Path(gif)
    if width < 2 or seconds <= 0:
        raise ValueError(f"width must be >= 2 and seconds > 0, got {width}, {seconds}")
    header = _header(video, timeout=timeout)
    if header.video is None or not header.video.width or not header.video.height:
        raise MediaError(video, "has no video stream to make a GIF from")
    fps = header.video.fps
    if not fps:
        raise MediaError(video, "has no frame rate to make a GIF from")
    size = (width, _gif_height(width, header.video.width, header.video.height))
    args = [
        "-loglevel", "error", "-t", f"{seconds:g}", "-i", str(video),
        "-map", "0:v:0", "-vf", f"scale={size[0]}:{size[1]}:flags=lanczos", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    _, out, err = _run(args, file=video, what=f"reading the frames for the GIF {gif.name}", timeout=timeout)
    frame_bytes = size[0] * size[1] * 3
    count = len(out) // frame_bytes
    if not count:
        raise MediaError(video, "has no frame to make a GIF from", err)
    decoded = np.frombuffer(out, np.uint8, count * frame_bytes).reshape(count, size[1], size[0], 3)
    indices, rate = _gif_plan(count, fps, seconds)
    _write_gif([Image.fromarray(decoded[i], "RGB") for i in indices], rate, gif)


def _write_gif(images: list, rate: Fraction, gif: Path) -> None:
    """Quantise the frames to one palette (from a few of them) with Floyd-Steinberg, and write a looping GIF."""
    from PIL import Image

    picks = sorted({round(i * (len(images) - 1) / max(1, GIF_PALETTE_FRAMES - 1))
                    for i in range(min(len(images), GIF_PALETTE_FRAMES))})
    w, h = images[0].size
    half = (max(1, w // 2), max(1, h // 2))
    sample = Image.new("RGB", (half[0], half[1] * len(picks)))
    for n, i in enumerate(picks):
        sample.paste(images[i].resize(half, Image.Resampling.BOX), (0, n * half[1]))
    palette = sample.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    indexed = _map(lambda im: im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG), images)
    # Delays in whole 1/100 s, rounded cumulatively so that the GIF lasts exactly as long as its frames.
    ticks = [round(Fraction(100 * i) / rate) for i in range(len(images) + 1)]
    durations = [10 * max(2, b - a) for a, b in zip(ticks, ticks[1:])]
    try:
        indexed[0].save(gif, "GIF", save_all=True, append_images=indexed[1:], duration=durations, loop=0,
                        optimize=False)
    except BaseException:
        gif.unlink(missing_ok=True)
        raise


def _map(fn, items: list) -> list:
    """`fn` over `items` in order, on two threads (Pillow lets go of the GIL while it scales and dithers)."""
    if len(items) < 8 or (os.cpu_count() or 1) < 2:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hotfolder-gif") as pool:
        return list(pool.map(fn, items))


def make_thumbnail(video: Path, jpg: Path, *, quality: int = THUMBNAIL_QUALITY, timeout: float = TIMEOUT_S,
                   description: str | None = None) -> None:
    """The first frame of `video`, full size, as a JPEG (quality 92, 4:4:4 chroma).

    ffmpeg decodes the frame to PNG (colour converted by the stream's tags) and Pillow
    writes the JPEG, which gives a standard full-range JFIF and control over quality.
    `description` (the prompt and seed) goes into the EXIF ImageDescription (UTF-8 when it
    is not ASCII, as macOS and exiftool read it), Windows' XPComment and the JPEG comment.
    """
    from PIL import Image

    video, jpg = Path(video), Path(jpg)
    args = [
        "-loglevel", "error", "-i", str(video),
        "-map", "0:v:0", "-frames:v", "1", "-pix_fmt", "rgb24",
        "-f", "image2pipe", "-c:v", "png", "pipe:1",
    ]  # fmt: skip
    _, out, err = _run(args, file=video, what="reading the first frame", timeout=timeout)
    if not out:
        raise MediaError(video, "has no frame to make a thumbnail from", err)
    with Image.open(io.BytesIO(out)) as im:
        _save_jpeg(im.convert("RGB"), jpg, quality=quality, description=description)


def thumbnail_from_frame(frame: np.ndarray, jpg: Path, *, quality: int = THUMBNAIL_QUALITY,
                         description: str | None = None) -> None:
    """`make_thumbnail` from the clip's own first frame ((height, width, 3) uint8): no decode, no ffmpeg."""
    from PIL import Image

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise MediaError(jpg, f"a frame must be uint8 (height, width, 3), got {frame.dtype} {frame.shape}")
    _save_jpeg(Image.fromarray(np.ascontiguousarray(frame), "RGB"), Path(jpg), quality=quality,
               description=description)


def _save_jpeg(im: object, jpg: Path, *, quality: int, description: str | None) -> None:
    from PIL import Image

    about: dict[str, object] = {}
    if description:
        exif = Image.Exif()
        exif[0x010E] = description if description.isascii() else description.encode("utf-8")  # ImageDescription
        exif[0x0131] = "hotfolder"  # Software
        exif[0x9C9C] = description.encode("utf-16-le") + b"\0\0"  # XPComment
        about = {"exif": exif, "comment": description.encode("utf-8")}
    try:
        # No optimize=True: Pillow 13 fails on detailed frames with "broken data stream".
        im.save(jpg, "JPEG", quality=quality, subsampling=0, **about)  # type: ignore[attr-defined]
    except BaseException:
        jpg.unlink(missing_ok=True)
        raise


# --- probing --------------------------------------------------------------------------

_INPUT_RE = re.compile(r"^Input #0, ", re.M)
_DURATION_RE = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio): (.*)$", re.M)
_SIZE_RE = re.compile(r"^(\d+)x(\d+)")
_FPS_RE = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_HZ_RE = re.compile(r"^(\d+) Hz$")
_LAYOUT_CHANNELS = {
    "mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4,
    "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6,
    "6.0": 6, "6.0(front)": 6, "hexagonal": 6, "6.1": 7, "6.1(back)": 7, "6.1(front)": 7,
    "7.0": 7, "7.0(front)": 7, "7.1": 8, "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8,
}  # fmt: skip


def _fields(desc: str) -> list[str]:
    """Split a stream description on the commas that are not inside parentheses or brackets."""
    out, depth, cur = [], 0, ""
    for ch in desc:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _parse_header(stderr: str) -> tuple[float | None, VideoInfo | None, AudioInfo | None]:
    """The `ffmpeg -i` header's duration and first video/audio stream (fps rounded, counts 0)."""
    m = _DURATION_RE.search(stderr)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None
    video = audio = None
    for kind, desc in _STREAM_RE.findall(stderr):
        f = _fields(desc)
        codec = f[0].split()[0] if f[0] else "?"
        if kind == "Video" and video is None:
            width = height = 0
            pix_fmt = ""
            fps = 0.0
            for i, field in enumerate(f[1:], 1):
                if sm := _SIZE_RE.match(field):
                    width, height = int(sm[1]), int(sm[2])
                    if i > 1:
                        pix_fmt = re.split(r"[\s(]", f[1], maxsplit=1)[0]
                elif (fm := _FPS_RE.fullmatch(field)) and not fps:
                    fps = float(fm[1]) * (1000 if fm[2] else 1)
            video = VideoInfo(codec, pix_fmt, width, height, fps, 0)
        elif kind == "Audio" and audio is None:
            rate = next((int(hm[1]) for x in f[1:] if (hm := _HZ_RE.match(x))), 0)
            channels = 0
            for x in f[1:]:
                if x in _LAYOUT_CHANNELS:
                    channels = _LAYOUT_CHANNELS[x]
                elif cm := re.fullmatch(r"(\d+) channels(?: \(.*\))?", x):
                    channels = int(cm[1])
            audio = AudioInfo(codec, rate, channels, 0.0)
    return duration, video, audio


def _header(path: Path, *, timeout: float) -> MediaInfo:
    """What `ffmpeg -i` says about `path`, without decoding (fast; fps is the rounded header value)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "no such file")
    _, _, err = _run(["-i", str(path)], file=path, what="reading", timeout=timeout, check=False)
    if not _INPUT_RE.search(err):
        raise MediaError(path, "is not a media file ffmpeg can read", err)
    duration, video, audio = _parse_header(err)
    return MediaInfo(duration or 0.0, video, audio, False)


def _top_level_atoms(path: Path, limit: int = 64) -> list[str]:
    """The types of the first `limit` top-level ISO-BMFF atoms ("ftyp", "moov", "mdat", ...)."""
    types: list[str] = []
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= total and len(types) < limit:
            f.seek(pos)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:  # 64-bit size follows the type
                size = struct.unpack(">Q", f.read(8))[0]
            elif size == 0:  # runs to the end of the file
                size = total - pos
            if size < 8:
                break  # not an MP4 (or a broken one)
            types.append(kind.decode("latin-1"))
            pos += size
    return types


def is_faststart(path: Path) -> bool:
    """True when the `moov` atom precedes `mdat` at the top level of an MP4/MOV."""
    atoms = _top_level_atoms(Path(path))
    return "moov" in atoms and "mdat" in atoms and atoms.index("moov") < atoms.index("mdat")


def probe(path: Path, *, timeout: float = PROBE_TIMEOUT_S) -> MediaInfo:
    """Describe `path` exactly: codecs and sizes from ffmpeg's header, frame and sample counts
    by decoding the first video and audio streams once (to `framecrc`, which also prints each
    stream's time base, so fps is exact rather than the header's two decimals).

    Raises MediaError naming the file when ffmpeg cannot read it as audio or video.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "no such file")
    args = [
        "-i", str(path), "-map", "0:v:0?", "-map", "0:a:0?",
        "-fps_mode", "passthrough", "-f", "framecrc", "pipe:1",
    ]  # fmt: skip
    rc, out, err = _run(args, file=path, what="probing", timeout=timeout, check=False)
    if not _INPUT_RE.search(err):
        raise MediaError(path, "is not a media file ffmpeg can read", err)
    header_duration, video, audio = _parse_header(err)
    if video is None and audio is None:
        raise MediaError(path, "has no video or audio stream", err)
    if rc != 0:
        raise MediaError(path, f"could not be decoded (ffmpeg exit {rc})", err)

    # framecrc: "#tb 0: 1/24", "#media_type 0: video", then "stream, dts, pts, duration, size, hash".
    tbs: dict[int, Fraction] = {}
    kinds: dict[int, str] = {}
    codecs: dict[int, str] = {}
    durations: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for line in out.decode("ascii", "replace").splitlines():
        if line.startswith("#"):
            if m := re.match(r"#(tb|media_type|codec_id) (\d+): (\S+)", line):
                key, idx, value = m[1], int(m[2]), m[3]
                if key == "tb":
                    tbs[idx] = Fraction(value)
                elif key == "media_type":
                    kinds[idx] = value
                else:
                    codecs[idx] = value
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 5 and parts[0].isdigit():
            idx = int(parts[0])
            durations.setdefault(idx, []).append(int(parts[3]))
            sizes[idx] = sizes.get(idx, 0) + int(parts[4])
    index = {kind: idx for idx, kind in kinds.items()}

    stream_durations: list[float] = []
    if video is not None:
        idx = index.get("video")
        ds = durations.get(idx, []) if idx is not None else []
        tb = tbs.get(idx) if idx is not None else None
        fps = video.fps
        if ds and tb and all(d > 0 for d in ds):
            if len(set(ds)) == 1:
                fps = float(1 / (tb * ds[0]))  # constant rate: exact
            else:
                fps = float(len(ds) / (tb * sum(ds)))  # variable rate (e.g. a GIF): the average
            stream_durations.append(float(tb * sum(ds)))
        elif ds and fps:
            stream_durations.append(len(ds) / fps)
        video = VideoInfo(video.codec, video.pix_fmt, video.width, video.height, fps, len(ds))
    if audio is not None:
        idx = index.get("audio")
        ds = durations.get(idx, []) if idx is not None else []
        tb = tbs.get(idx) if idx is not None else None
        seconds = float(tb * sum(ds)) if tb else 0.0
        channels = audio.channels
        samples = round(seconds * audio.sample_rate) if audio.sample_rate else 0
        if codecs.get(idx) == "pcm_s16le" and samples:
            channels = round(sizes.get(idx, 0) / (2 * samples))  # exact, whatever the layout's name
        audio = AudioInfo(audio.codec, audio.sample_rate, channels, seconds)
        stream_durations.append(seconds)
    duration = max(stream_durations) if stream_durations else (header_duration or 0.0)
    return MediaInfo(duration, video, audio, is_faststart(path), header_duration, _damage(err))


_DAMAGE_RE = re.compile(
    r"decoding error|error while decoding|corrupt|invalid data|header missing|invalid pcm packet|"
    r"filesize and duration do not match|truncat|partial file",
    re.I,
)


def _damage(stderr: str) -> tuple[str, ...]:
    """ffmpeg's lines that say data is missing or broken, without the '[decoder @ 0x...]' prefixes."""
    lines = []
    for line in stderr.splitlines():
        if _DAMAGE_RE.search(line):
            text = re.sub(r"\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line).strip()
            if text and text not in lines:
                lines.append(text)
    return tuple(lines[:5])


# --- soundtracks: voice-over and narration --------------------------------------------

DUCK = "threshold=0.03:ratio=8:attack=15:release=350"  # the bed drops ~15 dB while the voice speaks


def _fit_chain(samples: int) -> str:
    """Resample to stereo MIX_RATE, then cut or pad with silence to exactly `samples`."""
    return (f"aresample={MIX_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo,"
            f"atrim=end_sample={samples},apad=whole_len={samples},asetpts=N/SR/TB")


def _mux_soundtrack(video: Path, audio: Path, out: Path, graph: str, *, what: str, timeout: float) -> None:
    """Copy `video`'s picture untouched and encode the filter graph's [a] as AAC into `out`."""
    args = [
        "-loglevel", "error", "-y",
        "-i", str(video), "-i", str(audio),
        "-filter_complex", graph,
        "-map", "0:v:0", "-map", "[a]",
        "-c:v", "copy", "-c:a", "aac", "-b:a", AAC_BITRATE,
        "-movflags", "+faststart", "-f", "mp4", str(out),
    ]  # fmt: skip
    try:
        _run(args, file=audio, what=what, timeout=timeout)
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise


def replace_audio(video: Path, audio: Path, out: Path, *, seconds: float, timeout: float = ENCODE_TIMEOUT_S) -> str:
    """`video` with its soundtrack replaced by `audio`, trimmed or padded to exactly `seconds`
    (the video's length: the picture is never cut to the audio). Any format ffmpeg reads.

    Returns how the audio was fitted, for the metadata.
    """
    video, audio, out = Path(video), Path(audio), Path(out)
    samples = round(seconds * MIX_RATE)
    graph = f"[1:a:0]{_fit_chain(samples)}[a]"
    _mux_soundtrack(video, audio, out, graph, what=f"putting {audio.name} under the video", timeout=timeout)
    return describe_fit(_header(audio, timeout=TIMEOUT_S).duration, seconds)


def mix_audio(video: Path, voice: Path, out: Path, *, seconds: float, timeout: float = ENCODE_TIMEOUT_S) -> str:
    """`video` with `voice` spoken over its soundtrack, which is ducked (compressed, keyed by
    the voice) while the voice speaks; both fitted to exactly `seconds`.

    Returns how the voice was fitted, for the metadata.
    """
    video, voice, out = Path(video), Path(voice), Path(out)
    samples = round(seconds * MIX_RATE)
    graph = (
        f"[1:a:0]{_fit_chain(samples)},asplit=2[voice][key];"
        f"[0:a:0]{_fit_chain(samples)}[bed];"
        f"[bed][key]sidechaincompress={DUCK}[ducked];"
        f"[ducked][voice]amix=inputs=2:duration=first:normalize=0,alimiter=limit=0.95,"
        f"atrim=end_sample={samples},apad=whole_len={samples}[a]"
    )
    _mux_soundtrack(video, voice, out, graph, what=f"mixing {voice.name} over the soundtrack", timeout=timeout)
    return describe_fit(_header(voice, timeout=TIMEOUT_S).duration, seconds)
