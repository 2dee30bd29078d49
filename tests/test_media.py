"""media.py against the real bundled ffmpeg: real clips made with numpy, checked with `probe` and Pillow."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hotfolder import media
from hotfolder.backends import Clip
from hotfolder.errors import HotfolderError

SR = 24000


def make_clip(
    num_frames: int = 25,
    height: int = 64,
    width: int = 64,
    fps: float = 24.0,
    audio_seconds: float | None = None,
    channels: int = 2,
) -> Clip:
    """Frames whose colour changes frame by frame (so "the first frame" is checkable), and a sine tone."""
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None, None]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = (30 + 200 * t).astype(np.uint8)
    frames[..., 1] = (200 - 150 * t).astype(np.uint8)
    frames[..., 2] = 60
    frames[:, : height // 2, : width // 2] = (20, 60, 200)  # a blue block, top left
    audio = None
    if audio_seconds is not None:
        n = int(round(audio_seconds * SR))
        s = np.arange(n) / SR
        audio = np.stack([0.5 * np.sin(2 * np.pi * (440 + 220 * c) * s) for c in range(channels)]).astype(np.float32)
    return Clip(frames=frames, fps=fps, audio=audio, sample_rate=SR if audio is not None else None)


def gif_durations_ms(path: Path) -> list[int]:
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(im.info["duration"])
        return out


# --- MP4 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 160)])
def test_video_without_audio_is_h264_yuv420p_faststart_exact_frames(tmp_path: Path, height: int, width: int) -> None:
    clip = make_clip(25, height, width, 24.0)
    out = tmp_path / "clip.mp4"
    media.encode_mp4(clip, out)
    info = media.probe(out)
    assert info.video is not None
    assert (info.video.codec, info.video.pix_fmt) == ("h264", "yuv420p")
    assert (info.video.width, info.video.height) == (width, height)
    assert info.video.num_frames == 25
    assert info.video.fps == pytest.approx(24.0, abs=1e-9)
    assert info.faststart is True
    assert info.audio is None
    assert info.duration == pytest.approx(25 / 24, abs=1e-9)


@pytest.mark.parametrize("audio_seconds", [0.4, 25 / 24, 2.5], ids=["shorter", "equal", "longer"])
def test_audio_is_aac_and_exactly_as_long_as_the_video(tmp_path: Path, audio_seconds: float) -> None:
    clip = make_clip(25, 64, 64, 24.0, audio_seconds=audio_seconds)
    out = tmp_path / "clip.mp4"
    media.encode_mp4(clip, out)
    info = media.probe(out)
    assert info.video is not None and info.audio is not None
    assert info.video.num_frames == 25
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", SR, 2)
    video_s = info.video.num_frames / info.video.fps
    # The spec asks for one frame; padding/trimming plus the MP4 edit list gives it to the sample.
    assert abs(info.audio.duration - video_s) < 1 / info.video.fps
    assert info.audio.duration == pytest.approx(video_s, abs=1e-3)
    assert info.faststart is True


def test_mono_audio_stays_mono(tmp_path: Path) -> None:
    clip = make_clip(9, 64, 64, 24.0, audio_seconds=0.3, channels=1)
    media.encode_mp4(clip, tmp_path / "mono.mp4")
    info = media.probe(tmp_path / "mono.mp4")
    assert info.audio is not None and info.audio.channels == 1
    assert info.audio.duration == pytest.approx(9 / 24, abs=1e-3)


@pytest.mark.parametrize("fps", [23.976, 12.5, 24000 / 1001])
def test_non_integer_fps_is_kept_exactly(tmp_path: Path, fps: float) -> None:
    clip = make_clip(17, 64, 96, fps, audio_seconds=1.0)
    out = tmp_path / "clip.mp4"
    media.encode_mp4(clip, out)
    info = media.probe(out)
    assert info.video is not None and info.audio is not None
    assert info.video.num_frames == 17
    assert info.video.fps == pytest.approx(fps, rel=1e-9)  # not the header's rounded "23.98"
    assert info.audio.duration == pytest.approx(17 / fps, abs=1e-3)


def test_colours_survive_the_round_trip_and_are_tagged_bt709(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (250, 200, 30)]
    frames = np.zeros((3, 32, 32 * len(colours), 3), np.uint8)
    for i, c in enumerate(colours):
        frames[:, :, 32 * i : 32 * (i + 1)] = c
    out = tmp_path / "colours.mp4"
    media.encode_mp4(Clip(frames=frames, fps=24.0), out)
    media.make_thumbnail(out, tmp_path / "colours.jpg")
    with Image.open(tmp_path / "colours.jpg") as im:
        got = np.asarray(im.convert("RGB")).astype(int)
    for i, c in enumerate(colours):
        assert np.abs(got[16, 32 * i + 16] - np.array(c)).max() <= 6, (c, got[16, 32 * i + 16])
    _, _, header = media.ffmpeg._run(["-i", str(out)], file=out, what="reading", timeout=30, check=False)
    assert "yuv420p(tv, bt709" in header


def test_bad_clips_are_refused_with_the_file_named(tmp_path: Path) -> None:
    out = tmp_path / "bad.mp4"
    odd = Clip(frames=np.zeros((3, 63, 64, 3), np.uint8), fps=24.0)
    with pytest.raises(media.MediaError, match=r"bad\.mp4.*even"):
        media.encode_mp4(odd, out)
    floats = Clip(frames=np.zeros((3, 64, 64, 3), np.float32), fps=24.0)
    with pytest.raises(media.MediaError, match="uint8"):
        media.encode_mp4(floats, out)
    no_rate = Clip(frames=np.zeros((3, 64, 64, 3), np.uint8), fps=24.0, audio=np.zeros((2, 100), np.float32))
    with pytest.raises(media.MediaError, match="sample_rate"):
        media.encode_mp4(no_rate, out)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    transposed = Clip(frames=frames, fps=24.0, audio=np.zeros((100, 2), np.float32), sample_rate=SR)
    with pytest.raises(media.MediaError, match="channels"):
        media.encode_mp4(transposed, out)
    with pytest.raises(media.MediaError, match=r"bad\.mp4.*fps"):
        media.encode_mp4(Clip(frames=np.zeros((3, 64, 64, 3), np.uint8), fps=0.0), out)
    assert not out.exists()


def test_a_timeout_raises_media_error_and_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "slow.mp4"
    with pytest.raises(media.MediaError, match=r"slow\.mp4.*did not finish"):
        media.encode_mp4(make_clip(25, 64, 64, 24.0, audio_seconds=1.0), out, timeout=0.001)
    assert not out.exists()


# --- GIF and thumbnail -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "fps", "height", "width"),
    [(25, 24.0, 96, 160), (100, 24.0, 32, 96), (50, 12.5, 32, 96), (200, 60.0, 32, 96)],
    ids=["short-24fps", "long-24fps", "long-12.5fps", "long-60fps"],
)
def test_gif_is_480_wide_loops_and_plays_at_real_speed(
    tmp_path: Path, num_frames: int, fps: float, height: int, width: int
) -> None:
    video, gif = tmp_path / "clip.mp4", tmp_path / "clip.gif"
    media.encode_mp4(make_clip(num_frames, height, width, fps), video)
    media.make_gif(video, gif)
    with Image.open(gif) as im:
        assert im.format == "GIF"
        assert im.width == 480
        assert im.height % 2 == 0
        assert im.height == pytest.approx(480 * height / width, abs=2)
        assert im.info.get("loop") == 0  # forever
    durations = gif_durations_ms(gif)
    assert min(durations) >= 20  # viewers slow down anything under 2 cs
    expected_s = min(3.0, num_frames / fps)
    assert abs(sum(durations) / 1000 - expected_s) <= 1 / fps


def test_gif_seconds_and_width_are_honoured(tmp_path: Path) -> None:
    video, gif = tmp_path / "clip.mp4", tmp_path / "clip.gif"
    media.encode_mp4(make_clip(48, 64, 96, 24.0), video)
    media.make_gif(video, gif, width=200, seconds=1.0)
    with Image.open(gif) as im:
        assert im.size == (200, 134)  # 133.3 rounded to even
    assert abs(sum(gif_durations_ms(gif)) / 1000 - 1.0) <= 1 / 24


def test_thumbnail_is_the_first_frame_at_full_size(tmp_path: Path) -> None:
    clip = make_clip(25, 96, 160, 24.0)
    video, jpg = tmp_path / "clip.mp4", tmp_path / "clip.jpg"
    media.encode_mp4(clip, video)
    media.make_thumbnail(video, jpg)
    with Image.open(jpg) as im:
        assert im.format == "JPEG"
        assert im.size == (160, 96)
        got = np.asarray(im.convert("RGB")).astype(float)
    first = clip.frames[0].astype(float)
    last = clip.frames[-1].astype(float)
    err_first = np.abs(got - first).mean()
    assert err_first < 6
    assert err_first < np.abs(got - last).mean() / 4  # the first frame, not another one


def test_thumbnail_of_a_detailed_frame(tmp_path: Path) -> None:
    """Noisy, real-sized frames: Pillow's optimize=True failed on these ("broken data stream")."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 352, 640, 3), dtype=np.uint8)
    video, jpg = tmp_path / "noisy.mp4", tmp_path / "noisy.jpg"
    media.encode_mp4(Clip(frames=frames, fps=24.0), video)
    media.make_thumbnail(video, jpg)
    with Image.open(jpg) as im:
        assert im.size == (640, 352)


# --- probe and errors ------------------------------------------------------------------


def test_probing_a_text_file_named_mp4_raises_media_error_naming_it(tmp_path: Path) -> None:
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is not a video\n")
    with pytest.raises(media.MediaError, match="holiday.mp4") as exc:
        media.probe(fake)
    assert isinstance(exc.value, HotfolderError)
    assert exc.value.kind == "media"
    assert "Invalid data" in str(exc.value)  # the useful tail of ffmpeg's stderr
    with pytest.raises(media.MediaError, match="holiday.mp4"):
        media.make_gif(fake, tmp_path / "x.gif")
    with pytest.raises(media.MediaError, match="holiday.mp4"):
        media.make_thumbnail(fake, tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    with pytest.raises(media.MediaError, match="missing.mp4"):
        media.probe(tmp_path / "missing.mp4")


def _atom(kind: bytes, payload: bytes = b"", *, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def test_faststart_reads_the_top_level_atom_order(tmp_path: Path) -> None:
    front = tmp_path / "front.mp4"
    front.write_bytes(_atom(b"ftyp", b"isom") + _atom(b"moov", b"x" * 20) + _atom(b"mdat", b"y" * 50, large=True))
    back = tmp_path / "back.mp4"
    back.write_bytes(_atom(b"ftyp", b"isom") + _atom(b"mdat", b"y" * 50, large=True) + _atom(b"moov", b"x" * 20))
    text = tmp_path / "text.mp4"
    text.write_text("hello")
    assert media.is_faststart(front) is True
    assert media.is_faststart(back) is False
    assert media.is_faststart(text) is False


def test_write_wav_clips_and_silences_nan(tmp_path: Path) -> None:
    audio = np.array([[0.0, 0.5, 2.0, np.nan], [-1.0, -3.0, 0.25, 1.0]], np.float32)
    path = tmp_path / "a.wav"
    media.write_wav(path, audio, 16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 16000, 4)
        pcm = np.frombuffer(w.readframes(4), "<i2").reshape(4, 2).T
    assert pcm.tolist() == [[0, 16384, 32767, 0], [-32767, -32767, 8192, 32767]]


def test_fit_audio_pads_with_silence_or_trims() -> None:
    a = np.ones((2, 5), np.float32)
    assert media.fit_audio(a, 3).shape == (2, 3)
    padded = media.fit_audio(a, 8)
    assert padded.shape == (2, 8)
    assert padded[:, 5:].sum() == 0 and padded[:, :5].sum() == 10


def test_ffmpeg_exe_is_cached() -> None:
    assert media.ffmpeg_exe() is media.ffmpeg_exe()
    assert Path(media.ffmpeg_exe()).is_file()


# --- soundtracks: voice-over and narration ---------------------------------------------------


def _tone(path: Path, seconds: float, freq: int = 440) -> Path:
    import subprocess

    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"sine=frequency={freq}:duration={seconds}", str(path)], check=True)
    return path


@pytest.mark.parametrize(("suffix", "seconds", "word"), [(".mp3", 3.0, "trimmed"), (".flac", 0.2, "padded"),
                                                         (".m4a", 2.0, "trimmed"), (".aiff", 0.5, "padded")])
def test_replace_audio_fits_any_format_exactly_to_the_video(tmp_path: Path, suffix: str, seconds: float,
                                                            word: str) -> None:
    video = tmp_path / "clip.mp4"
    media.encode_mp4(make_clip(25, fps=24.0, audio_seconds=1.0), video)  # 25 frames: 1.0417 s
    out = tmp_path / "out.mp4"
    how = media.replace_audio(video, _tone(tmp_path / f"voice{suffix}", seconds), out, seconds=25 / 24)
    assert how.startswith(word), how
    info = media.probe(out)
    assert info.video is not None and info.video.num_frames == 25 and info.faststart
    assert info.audio is not None and info.audio.codec == "aac"
    assert abs(info.audio.duration - 25 / 24) < 1 / 48000 * 2


def test_mix_audio_keeps_the_length_and_adds_the_voice(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    media.encode_mp4(make_clip(25, fps=24.0, audio_seconds=1.0), video)
    out = tmp_path / "mixed.mp4"
    how = media.mix_audio(video, _tone(tmp_path / "voice.wav", 0.5, 1000), out, seconds=25 / 24)
    assert how.startswith("padded")
    info = media.probe(out)
    assert info.audio is not None and abs(info.audio.duration - 25 / 24) < 1 / 24
    with pytest.raises(media.MediaError) as bad:  # a video without sound has nothing to mix over
        silent = tmp_path / "silent.mp4"
        media.encode_mp4(make_clip(25, fps=24.0), silent)
        media.mix_audio(silent, tmp_path / "voice.wav", tmp_path / "nope.mp4", seconds=1.0)
    assert "voice.wav" in str(bad.value) and not (tmp_path / "nope.mp4").exists()


def test_probe_reports_cut_off_and_damaged_audio(tmp_path: Path) -> None:
    whole = _tone(tmp_path / "whole.flac", 3.0)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    info = media.probe(cut)
    assert info.header_duration == 3.0 and info.audio is not None and info.audio.duration < 2.0
    wav = _tone(tmp_path / "whole.wav", 1.0)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(wav.read_bytes()[:-1])  # half a sample at the end
    assert any("Invalid" in line or "corrupt" in line for line in media.probe(broken).damage)
    assert media.probe(whole).damage == () and media.probe(whole).header_duration == 3.0


# --- previews from the frames in memory (issue 16): no decode, no ffmpeg ------------------------------------


def _no_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    from hotfolder.media import ffmpeg

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ffmpeg ran")

    monkeypatch.setattr(ffmpeg, "_run", refuse)


@pytest.mark.parametrize(
    ("num_frames", "fps", "height", "width"),
    [(25, 24.0, 96, 160), (100, 24.0, 32, 96), (50, 12.5, 32, 96), (200, 60.0, 32, 96)],
    ids=["short-24fps", "long-24fps", "long-12.5fps", "long-60fps"],
)
def test_a_gif_from_the_frames_is_480_wide_loops_and_plays_at_real_speed_without_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, num_frames: int, fps: float, height: int, width: int
) -> None:
    clip = make_clip(num_frames, height, width, fps)
    _no_ffmpeg(monkeypatch)
    gif = tmp_path / "clip.gif"
    media.ffmpeg.make_gif_from_frames(clip.frames, fps, gif)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.width == 480 and im.height % 2 == 0
        assert im.height == pytest.approx(480 * height / width, abs=2)
        assert im.info.get("loop") == 0
    durations = gif_durations_ms(gif)
    assert min(durations) >= 20
    assert abs(sum(durations) / 1000 - min(3.0, num_frames / fps)) <= 1 / fps


def _psnr(gif: Path, frames: np.ndarray, fps: float) -> float:
    errors, t = [], 0.0
    with Image.open(gif) as im:
        for i in range(im.n_frames):
            im.seek(i)
            got = np.asarray(im.convert("RGB"), dtype=float)
            want = Image.fromarray(frames[min(len(frames) - 1, round(t * fps))]).resize(im.size, Image.LANCZOS)
            errors.append(((got - np.asarray(want, dtype=float)) ** 2).mean())
            t += im.info["duration"] / 1000
    return 10 * np.log10(255**2 / np.mean(errors))


def test_the_gif_from_the_frames_looks_like_the_clip_at_least_as_well_as_the_one_from_the_mp4(tmp_path: Path) -> None:
    """A moving pattern with gradients (where a GIF's palette and dithering show): the frames' GIF is as close
    to the clip as the MP4's (which also carries the encode's loss)."""
    n, h, w, fps = 48, 128, 192, 24.0
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 255 / w + 4 * i) % 256
        frames[i, ..., 1] = y * 255 / h
        frames[i, ..., 2] = 128 + 100 * np.sin((x + 3 * i) / 9.0)
    video = tmp_path / "pattern.mp4"
    media.encode_mp4(Clip(frames=frames, fps=fps), video)
    from_frames, from_video = tmp_path / "frames.gif", tmp_path / "video.gif"
    media.ffmpeg.make_gif_from_frames(frames, fps, from_frames)
    media.make_gif(video, from_video)
    assert _psnr(from_frames, frames, fps) >= _psnr(from_video, frames, fps) - 0.5 > 18


def test_a_thumbnail_from_the_first_frame_carries_the_description_without_ffmpeg(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = make_clip(25, 96, 160, 24.0)
    _no_ffmpeg(monkeypatch)
    jpg = tmp_path / "clip.jpg"
    media.ffmpeg.thumbnail_from_frame(clip.frames[0], jpg, description="Un café au bord du lac\n\nseed 7")
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (160, 96)
        got = np.asarray(im.convert("RGB")).astype(float)
        described = im.getexif()[0x010E]  # UTF-8 bytes, which Pillow hands back as Latin-1 text
        assert (described if isinstance(described, bytes) else described.encode("latin-1")).decode() == \
            "Un café au bord du lac\n\nseed 7"
    assert np.abs(got - clip.frames[0].astype(float)).mean() < 3  # the first frame itself, not an encode of it
