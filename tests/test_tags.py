"""The prompt inside the files: the MP4's tags, the JPEG's EXIF, and AAC at 48 kHz whatever the model's rate.

Read back with the bundled ffmpeg's `-i` header (what ffprobe shows; imageio-ffmpeg has no
ffprobe), `media.probe`, and Pillow's EXIF reader; with the system's ffprobe too where it exists.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_spec, needs_tool
from hotfolder import __version__, gallery, media
from hotfolder.backends import Clip
from hotfolder.config import Config
from hotfolder.media.ffmpeg import _run

PROMPT = "A red fox trotting through fresh snow, caf\u00e9 lights \u65e5\u672c in the distance"


def _clip(rate: int, *, seconds: float = 9 / 24) -> Clip:
    frames = np.full((9, 64, 64, 3), (200, 80, 30), np.uint8)
    t = np.arange(round(seconds * rate)) / rate
    audio = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.3
    return Clip(frames=frames, fps=24.0, audio=audio, sample_rate=rate)


def _tags(path: Path) -> dict[str, str]:
    """The file-level metadata as `ffmpeg -i` prints it (continuation lines of a value joined with newlines)."""
    _, _, err = _run(["-i", str(path)], file=path, what="reading", timeout=60, check=False)
    block = err.split("Metadata:", 1)[1].split("Duration:", 1)[0]
    tags: dict[str, str] = {}
    key = ""
    for line in block.splitlines():
        m = re.match(r"^\s+([^\s:][^:]*?)?\s*: (.*)$", line)
        if not m:
            continue
        if m[1]:
            key = m[1]
            tags[key] = m[2]
        elif key:
            tags[key] += "\n" + m[2]
    return tags


def _spec_and_model():
    spec = make_spec(prompt=PROMPT, seed=4242, negative_prompt="blurry")
    model = Config(root=Path("/nowhere")).model_info("tiny")
    assert model is not None
    return spec, model


@pytest.mark.parametrize("rate", [16000, 24000, 44100])
def test_the_mp4_carries_the_prompt_seed_and_maker_and_its_sound_is_48_khz(tmp_path: Path, rate: int) -> None:
    spec, model = _spec_and_model()
    out = tmp_path / "fox.mp4"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    media.encode_mp4(_clip(rate), out, tags=gallery.mp4_tags(spec, model), audio_rate=media.MIX_RATE)
    tags = _tags(out)
    assert tags["title"] == PROMPT
    for key in ("comment", "description"):
        assert PROMPT in tags[key] and "seed 4242" in tags[key] and "negative prompt: blurry" in tags[key]
    assert tags["encoder"] == f"hotfolder {__version__} ({model.name})"
    made = datetime.fromisoformat(tags["creation_time"].replace("Z", "+00:00"))
    assert before <= made <= datetime.now(timezone.utc)

    info = media.probe(out)
    assert info.audio is not None and info.video is not None
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 48000, 2)
    assert info.audio.duration == pytest.approx(9 / 24, abs=1e-3)  # still exactly the video's length
    assert info.faststart


def test_without_tags_or_a_rate_the_encode_is_as_before(tmp_path: Path) -> None:
    out = tmp_path / "plain.mp4"
    media.encode_mp4(_clip(24000), out)
    assert "title" not in _tags(out)
    assert media.probe(out).audio.sample_rate == 24000


def test_a_voice_over_keeps_the_title_and_prompt(tmp_path: Path) -> None:
    spec, model = _spec_and_model()
    video, voice, out = tmp_path / "v.mp4", tmp_path / "voice.wav", tmp_path / "out.mp4"
    media.encode_mp4(_clip(24000), video, tags=gallery.mp4_tags(spec, model), audio_rate=media.MIX_RATE)
    t = np.arange(8000) / 16000
    media.write_wav(voice, np.stack([np.sin(2 * np.pi * 300 * t)]).astype(np.float32), 16000)
    media.replace_audio(video, voice, out, seconds=9 / 24)
    tags = _tags(out)
    assert tags["title"] == PROMPT and "seed 4242" in tags["comment"]
    assert media.probe(out).audio.sample_rate == 48000


@pytest.mark.parametrize("prompt", ["A lighthouse in a storm", PROMPT], ids=["ascii", "unicode"])
def test_the_thumbnail_describes_itself_in_exif(tmp_path: Path, prompt: str) -> None:
    spec, model = _spec_and_model()
    spec = type(spec)(**{**spec.__dict__, "prompt": prompt})
    video, jpg = tmp_path / "v.mp4", tmp_path / "v.jpg"
    media.encode_mp4(_clip(24000), video)
    description = gallery.describe(spec, model)
    media.make_thumbnail(video, jpg, description=description)
    with Image.open(jpg) as im:
        exif = im.getexif()
        raw = exif[0x010E]
        text = raw if prompt.isascii() else raw.encode("latin-1").decode("utf-8")  # Pillow reads EXIF text as latin-1
        assert text == description and text.startswith(prompt) and "seed 4242" in text
        assert exif[0x0131] == "hotfolder"
        assert exif[0x9C9C].decode("utf-16-le").rstrip("\0") == description
        assert im.info["comment"].decode("utf-8") == description
        assert im.size == (64, 64) and im.mode == "RGB"


def test_a_thumbnail_without_a_description_has_no_exif(tmp_path: Path) -> None:
    video, jpg = tmp_path / "v.mp4", tmp_path / "v.jpg"
    media.encode_mp4(_clip(24000), video)
    media.make_thumbnail(video, jpg)
    with Image.open(jpg) as im:
        assert 0x010E not in im.getexif()


def test_a_long_prompt_makes_a_short_title_and_keeps_everything_in_the_comment() -> None:
    spec, model = _spec_and_model()
    long = "A very long prompt " * 20 + "\nsecond line"
    spec = type(spec)(**{**spec.__dict__, "prompt": long})
    tags = gallery.mp4_tags(spec, model)
    assert len(tags["title"]) <= 120 and tags["title"].endswith("\u2026") and "\n" not in tags["title"]
    assert tags["comment"].startswith(long)


def test_ffprobe_shows_the_tags(tmp_path: Path) -> None:
    # imageio-ffmpeg ships ffmpeg only: a system ffprobe is the independent reader here (CI installs it).
    ffprobe = needs_tool("ffprobe", "Debian: apt-get install ffmpeg; macOS: brew install ffmpeg")
    spec, model = _spec_and_model()
    out = tmp_path / "fox.mp4"
    media.encode_mp4(_clip(24000), out, tags=gallery.mp4_tags(spec, model), audio_rate=media.MIX_RATE)
    run = subprocess.run([ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(out)],
                         capture_output=True, text=True, timeout=60, check=True)
    data = json.loads(run.stdout)
    assert data["format"]["tags"]["title"] == PROMPT
    assert "seed 4242" in data["format"]["tags"]["comment"]
    assert [s["sample_rate"] for s in data["streams"] if s["codec_type"] == "audio"] == ["48000"]
