"""Attachments end to end: images, voice-overs and narration through the real daemon (fake backend).

Every media file is made here: images with Pillow, sound with the bundled ffmpeg's
generators. The daemon is a real process; waiting is polling with deadlines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import Root, needs_tool, wait_until
from hotfolder import media
from hotfolder.job import attachments
from hotfolder.media import narration
from hotfolder.config import Config
from hotfolder.errors import JobInvalid
from hotfolder.job.spec import parse

FPS = 16
SMALL = f"width = 64\nheight = 64\nduration = 0.5\nfps = {FPS}\nsteps = 2\n"  # 9 frames: 0.5625 s
CLIP_S = 9 / FPS
SPEECH = ("say", "espeak-ng", "espeak")
SPEECH_HINT = "apt-get install espeak-ng, or brew install espeak-ng; CI installs it"


# --- media made by the tests ---------------------------------------------------------


def make_image(path: Path, colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (96, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def make_audio(path: Path, seconds: float, freq: int = 440) -> Path:
    """A sine tone in the format the suffix says (wav, mp3, m4a, flac, aiff), by the bundled ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"sine=frequency={freq}:duration={seconds}", "-ac", "2", str(path)], check=True)
    return path


def job_folder(root: Root, name: str, toml: str, files: dict[str, Path | bytes] | None = None) -> Path:
    """A job folder built hidden, then renamed into the inbox (as a copy tool finishing would)."""
    tmp = root.inbox / f".{name}"
    tmp.mkdir(parents=True)
    (tmp / f"{name}.toml").write_text(toml)
    for rel, content in (files or {}).items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    os.rename(tmp, root.inbox / name)
    return root.inbox / name


def drop(path: Path, data: str | bytes) -> Path:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.rename(tmp, path)
    return path


def by_source(root: Root) -> dict[str, tuple[Path, dict]]:
    return {root.metadata(r)["source"]: (r, root.metadata(r)) for r in root.results()}


def errors(root: Root) -> dict[str, tuple[Path, dict, str]]:
    out = {}
    for folder in root.failures():
        err = json.loads((folder / "error.json").read_text())
        out[err["source"]] = (folder, err, (folder / "error.txt").read_text())
    return out


def leftovers(root: Root) -> list[str]:
    """What is still in the inbox: files and links, not the preset folders or hidden staging names."""
    return sorted(p.relative_to(root.inbox).as_posix() for p in root.inbox.rglob("*")
                  if (p.is_file() or p.is_symlink()) and not any(part.startswith(".") for part in p.parts))


def assert_audio_spans_the_video(mp4: Path) -> media.MediaInfo:
    info = media.probe(mp4)
    assert info.video is not None and info.audio is not None, info
    video_s = info.video.num_frames / info.video.fps
    assert abs(info.audio.duration - video_s) <= 1 / info.video.fps, (info.audio.duration, video_s)
    assert info.video.num_frames == 9  # never the video cut to the audio
    return info


# --- folder jobs: image + voice-over ------------------------------------------------------


VOICE_OVERS = [("wav", 0.2), ("mp3", 3.0), ("m4a", 0.3), ("flac", 2.0), ("aiff", 0.25)]


def test_folder_jobs_with_an_image_and_a_voice_over_shorter_or_longer_than_the_clip(root: Root, tmp_path: Path) -> None:
    images = tmp_path / "images.txt"
    media_dir = tmp_path / "media"
    for ext, seconds in VOICE_OVERS:
        job_folder(root, f"vo-{ext}", f'prompt = "A lake, voice-over {ext}"\n{SMALL}[image]\nfile = "first.png"\n'
                   f'strength = 0.8\n[audio]\nfile = "voice.{ext}"\n',
                   {"first.png": make_image(media_dir / f"{ext}.png"),
                    f"voice.{ext}": make_audio(media_dir / f"voice.{ext}", seconds)})  # fmt: skip
    run = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_IMAGES=str(images)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert root.failures() == []
    results = by_source(root)
    assert set(results) == {f"vo-{ext}" for ext, _ in VOICE_OVERS}
    for ext, seconds in VOICE_OVERS:
        result, meta = results[f"vo-{ext}"]
        info = assert_audio_spans_the_video(result / meta["outputs"]["video"])
        assert info.audio.codec == "aac" and info.faststart
        assert meta["audio"] == "voice-over"
        image, voice = meta["attachments"]
        assert image["kind"] == "image" and image["name"] == "first.png" and len(image["sha256"]) == 64
        assert image["strength"] == 0.8 and "cropped to 64x64" in image["fitted"]
        assert voice["kind"] == "voice-over" and voice["name"] == f"voice.{ext}" and len(voice["sha256"]) == 64
        assert ("trimmed" if seconds > CLIP_S else "padded with") in voice["fitted"]
        assert (result / f"vo-{ext}" / f"voice.{ext}").is_file()  # the dropped folder travels with the result
    # The backend got the claimed image by its absolute path inside the job's processing folder.
    seen = images.read_text().split()
    assert len(seen) == len(VOICE_OVERS)
    assert all(Path(p).is_absolute() and "/processing/" in p and p.endswith("/first.png") for p in seen)


# --- loose job files waiting for what they name ----------------------------------------


def test_a_loose_job_file_waits_for_the_file_it_names_then_runs(root: Root, tmp_path: Path) -> None:
    root.write_config(attachment_wait_seconds=60)
    daemon = root.start(fake=True)
    try:
        drop(root.inbox / "lake.toml", f'prompt = "A lake"\n{SMALL}[audio]\nfile = "voice.wav"\n')
        drop(root.inbox / "other.toml", f'prompt = "Another job, dropped after lake.toml"\n{SMALL}')
        wait_until(lambda: "other.toml" in by_source(root), what="the job dropped after it")
        # lake.toml settled before other.toml, which is done: lake.toml is waiting, untouched.
        assert (root.inbox / "lake.toml").is_file() and root.failures() == []
        voice = make_audio(tmp_path / "voice.wav", 1.0)
        shutil.copyfile(voice, root.inbox / ".voice.wav.tmp")
        os.rename(root.inbox / ".voice.wav.tmp", root.inbox / "voice.wav")
        wait_until(lambda: "lake.toml" in by_source(root), what="the job once its voice-over arrived")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    result, meta = by_source(root)["lake.toml"]
    assert meta["audio"] == "voice-over" and meta["attachments"][0]["name"] == "voice.wav"
    assert_audio_spans_the_video(result / "lake.mp4")
    assert (result / "lake.toml").is_file() and (result / "voice.wav").is_file()
    assert leftovers(root) == []
    assert root.failures() == []


def test_a_file_that_never_arrives_fails_the_job_after_the_wait_naming_it(root: Root, tmp_path: Path) -> None:
    root.write_config(attachment_wait_seconds=1.0)
    make_image(root.inbox / "first.png")
    drop(root.inbox / "lake.toml", f'prompt = "A lake"\n{SMALL}[image]\nfile = "first.png"\n'
                                   '[audio]\nfile = "voice.mp3"\n')
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 1
    [(source, (folder, err, text))] = errors(root).items()
    assert source == "lake.toml" and err["status"] == "invalid" and err["retried"] is False
    assert 'audio.file = "voice.mp3" did not arrive' in text and "waiting 1 s (attachment_wait_seconds)" in text
    assert "first.png" not in err["message"]  # the image that did arrive is fine ...
    assert (folder / "lake.toml").is_file() and (folder / "first.png").is_file()  # ... and comes back with the job
    assert root.results() == [] and leftovers(root) == []
    # The missing voice-over turns up; `hotfolder retry` puts the job and the image it named back together.
    make_audio(root.inbox / "voice.mp3", 1.0)
    back = root.cli("retry", "lake.toml")
    assert back.returncode == 0, back.stderr
    assert (root.inbox / "lake.toml").is_file() and (root.inbox / "first.png").is_file() and root.failures() == []
    assert root.cli("run", "--once", fake=True).returncode == 0
    [(result, meta)] = by_source(root).values()
    assert {a["name"] for a in meta["attachments"]} == {"first.png", "voice.mp3"}


def test_a_stray_media_file_no_job_names_fails_after_the_wait(root: Root) -> None:
    root.write_config(attachment_wait_seconds=0.5)
    make_audio(root.inbox / "song.mp3", 0.5)
    assert root.cli("run", "--once", fake=True).returncode == 1
    [(source, (folder, _, text))] = errors(root).items()
    assert source == "song.mp3" and "not a job file, and no job file in the inbox named it" in text
    assert (folder / "song.mp3").is_file()


# --- the image is part of the cache key, the voice-over is not -----------------------


def test_the_image_changes_the_cache_key_and_a_voice_over_is_applied_to_a_cache_hit(root: Root, tmp_path: Path) -> None:
    images = tmp_path / "images.txt"
    red, blue = make_image(tmp_path / "red.png"), make_image(tmp_path / "blue.png", (20, 40, 220))
    voice = make_audio(tmp_path / "voice.wav", 0.3)
    job = f'prompt = "The same request"\n{SMALL}'
    with_image = job + '[image]\nfile = "first.png"\n'
    job_folder(root, "a-plain", job)
    job_folder(root, "b-red", with_image, {"first.png": red})
    run = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_IMAGES=str(images)))
    assert run.returncode == 0, run.stderr
    job_folder(root, "c-red-again", with_image + '[audio]\nfile = "v.wav"\n', {"first.png": red, "v.wav": voice})
    job_folder(root, "d-blue", with_image, {"first.png": blue})
    job_folder(root, "e-red-weaker", with_image + "strength = 0.5\n", {"first.png": red})
    run = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_IMAGES=str(images)))
    assert run.returncode == 0, run.stderr
    metas = {s: m for s, (_, m) in by_source(root).items()}
    keys = {s: m["cache_key"] for s, m in metas.items()}
    assert [metas[s]["cache_hit"] for s in sorted(metas)] == [False, False, True, False, False]
    assert keys["b-red"] == keys["c-red-again"]  # the same image twice: generated once
    assert len({keys["a-plain"], keys["b-red"], keys["d-blue"], keys["e-red-weaker"]}) == 4
    assert len(images.read_text().split()) == 4  # a, b, d, e generated; c came from the cache
    result, meta = by_source(root)["c-red-again"]
    assert meta["audio"] == "voice-over" and meta["attachments"][1]["kind"] == "voice-over"
    assert_audio_spans_the_video(result / "c-red-again.mp4")
    # The fake backend, like a real one, paints what the image says: red and blue differ.
    thumbs = {s: Image.open(r / m["outputs"]["thumbnail"]).convert("RGB").getpixel((5, 5))
              for s, (r, m) in by_source(root).items()}  # fmt: skip
    assert thumbs["b-red"][0] > 150 and thumbs["d-blue"][2] > 150


# --- narration ----------------------------------------------------------------------------


def test_narration_alone_and_over_the_generated_sound(root: Root) -> None:
    needs_tool(SPEECH, SPEECH_HINT)  # (the ducking itself is measured in test_promises.py)
    job_folder(root, "alone", f'prompt = "A lighthouse"\n{SMALL}[audio]\ngenerate = false\n'
                              'tts = "--help; rm -rf / $(reboot) \\"quoted\\""\n')
    job_folder(root, "over", f'prompt = "A lighthouse in a storm"\n{SMALL}[audio]\ntts = true\n')
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stdout + run.stderr
    results = by_source(root)
    for source, kind in (("alone", "narration"), ("over", "generated + narration")):
        result, meta = results[source]
        assert_audio_spans_the_video(result / meta["outputs"]["video"])
        assert meta["audio"] == kind
        [entry] = meta["attachments"]
        assert entry["kind"] == "narration"
    assert results["over"][1]["attachments"][0]["text"] == "A lighthouse in a storm"
    assert "ducked" in results["over"][1]["attachments"][0]["fitted"]


def test_synthesize_reads_the_text_from_a_file_never_a_shell(tmp_path: Path) -> None:
    needs_tool(SPEECH, SPEECH_HINT)
    out = narration.synthesize("-v nonsense; echo pwned > x", tmp_path)
    info = media.probe(out)
    assert info.audio is not None and info.audio.duration > 0.3
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_without_a_speech_engine_narration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(narration.NarrationUnavailable) as info:
        narration.find_engine(lambda name: None)
    assert "say, espeak-ng, espeak" in str(info.value) and "apt-get install espeak-ng" in info.value.hint
    assert narration.find_engine(lambda name: f"/usr/bin/{name}" if name == "espeak-ng" else None).name == "espeak-ng"
    assert narration.find_engine(lambda name: f"/usr/bin/{name}").name == "say"  # say first: it ships with macOS
    # The daemon's admission check fails such a job at once, naming the key and what to install.
    job = tmp_path / "job.toml"
    job.write_text('prompt = "x"\n[audio]\ntts = true\n')
    config = Config(root=tmp_path)
    with pytest.raises(JobInvalid) as bad:
        attachments.check_job(parse(job, config), tmp_path, config, label="job.toml", loose=True,
                              which=lambda name: None)  # fmt: skip
    assert str(bad.value).startswith("job.toml: audio.tts: narration ([audio] tts) needs a text-to-speech program")
    assert "apt-get install espeak-ng" in str(bad.value)


# --- bad attachments -----------------------------------------------------------------


def test_bad_attachments_land_in_failed_with_a_precise_message(root: Root, tmp_path: Path) -> None:
    root.write_config(max_attachment_bytes=300_000, attachment_wait_seconds=5)
    good_mp3 = make_audio(tmp_path / "good.mp3", 3.0)
    good_bytes = good_mp3.read_bytes()
    truncated = good_mp3.read_bytes()[: good_mp3.stat().st_size // 2]
    png = make_image(tmp_path / "red.png").read_bytes()
    (root.path / "secret.png").write_bytes(png)
    job = f'prompt = "x"\n{SMALL}'
    cases = {
        "escape": (job + '[image]\nfile = "../secret.png"\n', {},
                   'image.file = "../secret.png" leaves the job\'s folder'),
        "absolute": (job + '[image]\nfile = "/etc/hosts"\n', {}, 'image.file = "/etc/hosts" is an absolute path'),
        "truncated": (job + '[audio]\nfile = "voice.mp3"\n', {"voice.mp3": truncated},
                      'audio.file = "voice.mp3" is cut off: its header says 3.00 s but only'),
        "png-as-mp3": (job + '[audio]\nfile = "voice.mp3"\n', {"voice.mp3": png},
                       'audio.file = "voice.mp3" is not audio: ffmpeg finds a png image (96x64) in it'),
        "text-as-png": (job + '[image]\nfile = "first.png"\n', {"first.png": b"not an image at all\n"},
                        'image.file = "first.png" is not an image that can be opened'),
        "too-big": (job + '[audio]\nfile = "long.wav"\n', {"long.wav": make_audio(tmp_path / "long.wav", 4.0)},
                    "bytes, over the limit of 300,000 bytes for an attachment (max_attachment_bytes"),
        "missing": (job + '[image]\nfile = "first.png"\n', {"frist.png": png},
                    'image.file = "first.png" is not in the job\'s folder (it holds: frist.png, missing.toml)'),
        "empty": (job + '[audio]\nfile = "voice.wav"\n', {"voice.wav": b""}, "is empty (0 bytes)"),
    }
    for name, (toml, files, _) in cases.items():
        job_folder(root, name, toml, files)
    linked = job_folder(root, ".symlink-staging", job + '[audio]\nfile = "voice.mp3"\n')
    os.symlink(good_mp3, linked / "voice.mp3")
    (linked / ".symlink-staging.toml").rename(linked / "symlink.toml")
    os.rename(linked, root.inbox / "symlink")
    cases["symlink"] = ("", {}, 'audio.file = "voice.mp3" is a symbolic link (voice.mp3). hotfolder never follows')
    # A loose job file naming a symlink beside it: claimed with it (moved as a link), never followed.
    os.symlink(good_mp3, root.inbox / "voice.mp3")
    drop(root.inbox / "loose-link.toml", job + '[audio]\nfile = "voice.mp3"\n')
    cases["loose-link.toml"] = ("", {}, 'audio.file = "voice.mp3" is a symbolic link')
    drop(root.inbox / "loose-subfolder.toml", job + '[audio]\nfile = "media/voice.mp3"\n')
    cases["loose-subfolder.toml"] = ("", {}, 'audio.file = "media/voice.mp3" is in a subfolder')

    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 1
    assert root.results() == []
    found = errors(root)
    assert set(found) == set(cases)
    for source, (_, _, expected) in cases.items():
        folder, err, text = found[source]
        assert expected in text, f"{source}: {text}"
        assert err["status"] == "invalid" and err["retried"] is False, source
        assert text.startswith(f"This job could not be made: {source}")
    assert (found["loose-link.toml"][0] / "voice.mp3").is_symlink()  # moved as a link, with its job file
    assert good_mp3.read_bytes() == good_bytes  # the links' target untouched
    assert list((root.path / "processing").iterdir()) == [] and leftovers(root) == []


# --- crashes -------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["claimed", "claimed_attachment"])
def test_sigkill_right_after_the_claim_loses_nothing_and_delivers_once(root: Root, tmp_path: Path, point: str) -> None:
    voice = make_audio(tmp_path / "voice.wav", 0.3)
    image = make_image(tmp_path / "first.png")
    toml = f'prompt = "A crash test"\n{SMALL}[image]\nfile = "first.png"\n[audio]\nfile = "voice.wav"\n'
    if point == "claimed":  # a folder job: one rename claims it all
        job_folder(root, "folder", toml, {"first.png": image, "voice.wav": voice})
        source = "folder"
    else:  # a loose job file and two files beside it: killed after the first attachment moved
        shutil.copyfile(image, root.inbox / "first.png")
        shutil.copyfile(voice, root.inbox / "voice.wav")
        drop(root.inbox / "loose.toml", toml)
        source = "loose.toml"
    crashed = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT=point))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    final = root.cli("run", "--once", fake=True)
    assert final.returncode == 0, final.stderr[-3000:]
    [(got, (result, meta))] = by_source(root).items()
    assert got == source and [a["kind"] for a in meta["attachments"]] == ["image", "voice-over"]
    assert_audio_spans_the_video(result / meta["outputs"]["video"])
    assert root.failures() == [] and list((root.path / "processing").iterdir()) == []
    assert leftovers(root) == []


# --- submit ----------------------------------------------------------------------------


def test_submit_stages_a_job_folder_with_its_attachments(root: Root, tmp_path: Path) -> None:
    image = make_image(tmp_path / "first.png")
    voice = make_audio(tmp_path / "voice.mp3", 2.0)
    out = root.cli("submit", "A paper boat", "--duration", "0.5", "--name", "boat", "--image", str(image),
                   "--strength", "0.9", "--audio", str(voice), fake=True)
    assert out.returncode == 0, out.stderr
    folder = root.inbox / "boat"
    assert sorted(p.name for p in folder.iterdir()) == ["boat.toml", "first.png", "voice.mp3"]
    text = (folder / "boat.toml").read_text()
    assert 'file = "first.png"' in text and "strength = 0.9" in text and 'file = "voice.mp3"' in text
    assert not [p for p in (root.inbox / ".incoming").iterdir()]
    # A job file that names files beside it is staged with them.
    own = tmp_path / "own"
    make_image(own / "still.png")
    (own / "lake.toml").write_text(f'prompt = "A lake"\n{SMALL}[image]\nfile = "still.png"\n')
    assert root.cli("submit", str(own / "lake.toml"), fake=True).returncode == 0
    assert sorted(p.name for p in (root.inbox / "lake").iterdir()) == ["lake.toml", "still.png"]
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr
    metas = {s: m for s, (_, m) in by_source(root).items()}
    assert [a["kind"] for a in metas["boat"]["attachments"]] == ["image", "voice-over"]
    assert metas["lake"]["attachments"][0]["name"] == "still.png"


def test_submit_refuses_what_the_daemon_would_and_leaves_nothing_behind(root: Root, tmp_path: Path) -> None:
    fake_mp3 = tmp_path / "voice.mp3"
    make_image(tmp_path / "red.png")
    shutil.copyfile(tmp_path / "red.png", fake_mp3)
    out = root.cli("submit", "A paper boat", "--audio", str(fake_mp3), fake=True)
    assert out.returncode == 2
    assert 'audio.file = "voice.mp3" is not audio: ffmpeg finds a png image' in out.stderr
    missing = root.cli("submit", "A paper boat", "--image", str(tmp_path / "nope.png"), fake=True)
    assert missing.returncode == 2 and "nope.png: no such file" in missing.stderr
    assert leftovers(root) == [] and list((root.inbox / ".incoming").iterdir()) == []


# --- the spool's arrival rule, on a stepped clock ----------------------------------------


def test_the_spool_holds_a_loose_job_file_and_what_it_names_until_all_settled_or_the_wait_ends(
    tmp_path: Path,
) -> None:
    from hotfolder.folders.spool import Spool

    now = [1000.0]
    spool = Spool(Config(root=tmp_path / "r", settle_seconds=1.0, attachment_wait_seconds=10.0), clock=lambda: now[0])
    spool.ensure_folders()
    inbox = spool.config.inbox
    names = {"lake.toml": ("first.png", "voice.wav")}
    last: list = []

    def step(seconds: float) -> list[tuple[str, tuple[str, ...]]]:
        now[0] += seconds
        candidates = spool.inbox.scan()
        ready, _ = spool.inbox.settled(candidates)
        last[:], _ = spool.inbox.arrivals(candidates, ready, lambda c: names.get(c.rel, ()))
        return [(a.candidate.rel, tuple(x.rel for x in a.attachments)) for a in last]

    (inbox / "lake.toml").write_text('prompt = "x"\n')
    (inbox / "voice.wav").write_bytes(b"RIFF")
    assert step(0) == [] and step(1.5) == []  # settled, but first.png has not arrived: it waits
    (inbox / "first.png").write_bytes(b"png")
    assert step(0.1) == []  # first.png is still settling (and never taken alone)
    assert step(1.5) == [("lake.toml", ("first.png", "voice.wav"))]
    job = spool.claim(last[0].candidate, last[0].attachments)
    assert job is not None and job.attachments == ["first.png", "voice.wav"]
    assert sorted(p.name for p in (job.folder / "input").iterdir()) == ["first.png", "lake.toml", "voice.wav"]
    # Never complete: claimed alone after the wait (the job then fails naming what is missing).
    names["pond.toml"] = ("gone.wav",)
    (inbox / "pond.toml").write_text('prompt = "x"\n')
    assert step(0) == [] and step(1.5) == [] and step(5) == []
    assert step(5.1) == [("pond.toml", ())]


def test_only_files_that_could_be_attachments_wait_for_a_job_file(tmp_path: Path) -> None:
    """A .rtf, .docx or .md no job can name is claimed once settled; an image or a sound waits for its job file."""
    from hotfolder.folders.spool import Spool

    now = [1000.0]
    spool = Spool(Config(root=tmp_path / "r", settle_seconds=1.0, attachment_wait_seconds=300.0),
                  clock=lambda: now[0])
    spool.ensure_folders()
    inbox = spool.config.inbox

    def step(seconds: float) -> list[str]:
        now[0] += seconds
        candidates = spool.inbox.scan()
        ready, _ = spool.inbox.settled(candidates)
        arrivals, _ = spool.inbox.arrivals(candidates, ready, lambda c: ())
        assert all(spool.claim(a.candidate) is not None for a in arrivals)
        return sorted(a.candidate.rel for a in arrivals)

    for name in ("notes.rtf", "brief.docx", "prompt.md", "first.png", "voice.MP3", "still.jpeg"):
        (inbox / name).write_bytes(b"x")
    assert step(0) == []  # nothing has settled yet
    assert step(1.5) == ["brief.docx", "notes.rtf", "prompt.md"]  # at once: no job file can name them
    assert step(299) == []  # the image and the sounds wait for a job file that may name them ...
    assert step(1) == ["first.png", "still.jpeg", "voice.MP3"]  # ... 300 s, then fail as not a job


def test_validate_checks_the_files_a_job_names_like_the_daemon(root: Root, tmp_path: Path) -> None:
    folder = tmp_path / "lake"
    folder.mkdir()
    (folder / "lake.toml").write_text(f'prompt = "A lake"\n{SMALL}[image]\nfile = "first.png"\n'
                                      '[audio]\nfile = "voice.mp3"\n')
    make_image(folder / "first.png")
    (folder / "voice.mp3").write_bytes((folder / "first.png").read_bytes())  # a PNG renamed .mp3
    out = root.cli("validate", str(folder))
    assert out.returncode == 2 and "voice.mp3" in out.stdout and "first.png" not in out.stdout
    make_audio(folder / "voice.mp3", 1.0)
    ok = root.cli("validate", str(folder), str(folder / "lake.toml"))
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.count("ok ") == 2
