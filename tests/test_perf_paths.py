"""The daemon's fast paths, as a user sees them (issue 16, and issue 17 item 1), on the real daemon process.

- A cache hit links (or clones) the clip, the GIF and the thumbnail: no ffmpeg runs at all (a failing
  `ffmpeg` is put where the daemon finds it, through IMAGEIO_FFMPEG_EXE, and must never be called).
- A hit with a voice-over still mixes it (real work) and says so in its timings.
- A cache entry stored without previews gets them on its first hit, and later hits link them.
- The settle clock follows file events: a file still being written is never taken, whatever the scan does.
- `rescan_seconds` is what it says: with file events missing (an inotify-blind inbox), a job is found by the
  rescan when the rescan is due and not before, while the heartbeat keeps status.json fresh on its own timer.

No wall-clock bounds: the order of events is asserted (a heartbeat counted from status.json is the clock).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import Root, TESTS, drop as _drop, wait_until

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'
JOB = f'prompt = "A lighthouse on a cliff at night"\nseed = 5\n{SMALL}'


def _result(root: Root, source: str) -> tuple[Path, dict]:
    for result in root.results():
        meta = root.metadata(result)
        if meta["source"] == source:
            return result, meta
    raise AssertionError(f"no result for {source}: {[p.name for p in root.results()]}")


def _failing_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """An `ffmpeg` that records that it was called and fails: a hit must never run it."""
    called = tmp_path / "ffmpeg-called"
    exe = tmp_path / "ffmpeg"
    exe.write_text(f'#!/bin/sh\necho "$*" >> "{called}"\nexit 1\n')
    exe.chmod(0o755)
    return exe, called


def _description(jpg: Path) -> str:
    with Image.open(jpg) as im:
        value = im.getexif().get(0x010E)
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def test_a_cache_hit_delivers_the_gif_and_the_thumbnail_without_running_ffmpeg(root: Root, tmp_path: Path) -> None:
    _drop(root, "first.toml", JOB)
    assert root.cli("run", "--once", fake=True).returncode == 0
    exe, called = _failing_ffmpeg(tmp_path)
    _drop(root, "again.toml", JOB)  # the same request under another name
    run = root.cli("run", "--once", fake=True, env=root.env(IMAGEIO_FFMPEG_EXE=str(exe)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert not called.exists(), called.read_text()  # no ffmpeg at all: not for the GIF, not for the thumbnail
    first, first_meta = _result(root, "first.toml")
    hit, meta = _result(root, "again.toml")
    assert meta["cache_hit"] is True and first_meta["cache_hit"] is False
    assert set(meta["outputs"]) >= {"video", "gif", "thumbnail"}
    for role in ("video", "gif", "thumbnail"):
        assert (hit / meta["outputs"][role]).read_bytes() == (first / first_meta["outputs"][role]).read_bytes(), role
    assert "soundtrack_s" not in meta["timings"] and "previews_s" not in meta["timings"]
    # The thumbnail carries its own request's prompt and seed (they are in the key, so a hit's is right).
    assert "A lighthouse on a cliff at night" in _description(hit / meta["outputs"]["thumbnail"])
    assert "seed 5" in _description(hit / meta["outputs"]["thumbnail"])
    log = (hit / meta["outputs"]["log"]).read_text()
    assert "cache hit" in log and log.splitlines()[-1].split()[3] == "delivered"


def test_a_hit_with_a_voice_over_mixes_it_and_says_so_in_its_timings(root: Root) -> None:
    from hotfolder import media

    _drop(root, "plain.toml", JOB)
    assert root.cli("run", "--once", fake=True).returncode == 0
    staging = root.inbox / ".voiced"
    staging.mkdir()
    (staging / "voiced.toml").write_text(JOB + '[audio]\nfile = "voice.wav"\n')
    tone = 0.3 * np.sin(2 * np.pi * 330 * np.arange(24000) / 24000)
    media.write_wav(staging / "voice.wav", np.stack([tone, tone]).astype(np.float32), 24000)
    os.rename(staging, root.inbox / "voiced")
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr[-3000:]
    plain, plain_meta = _result(root, "plain.toml")
    voiced, meta = _result(root, "voiced")
    assert meta["cache_hit"] is True and meta["audio"] == "voice-over"
    assert meta["timings"]["soundtrack_s"] > 0 and meta["timings"]["encode_s"] >= meta["timings"]["soundtrack_s"]
    assert (voiced / meta["outputs"]["gif"]).read_bytes() == (plain / plain_meta["outputs"]["gif"]).read_bytes()
    assert (voiced / meta["outputs"]["video"]).read_bytes() != (plain / plain_meta["outputs"]["video"]).read_bytes()


def test_an_entry_stored_without_previews_gets_them_once_and_later_hits_link_them(root: Root, tmp_path: Path) -> None:
    _drop(root, "bare.toml", JOB + "[output]\ngif = false\nthumbnail = false\n")
    assert root.cli("run", "--once", fake=True).returncode == 0
    _drop(root, "second.toml", JOB)  # a hit whose entry has no previews: made from the MP4, then stored
    assert root.cli("run", "--once", fake=True).returncode == 0
    second, second_meta = _result(root, "second.toml")
    assert second_meta["cache_hit"] and second_meta["timings"]["previews_s"] > 0
    exe, called = _failing_ffmpeg(tmp_path)
    _drop(root, "third.toml", JOB)
    run = root.cli("run", "--once", fake=True, env=root.env(IMAGEIO_FFMPEG_EXE=str(exe)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert not called.exists(), called.read_text()
    third, meta = _result(root, "third.toml")
    assert (third / meta["outputs"]["gif"]).read_bytes() == (second / second_meta["outputs"]["gif"]).read_bytes()
    assert (third / meta["outputs"]["thumbnail"]).is_file()


def _heartbeats(root: Root, seen: set[float]) -> int:
    """How many distinct heartbeats of the running daemon status.json has shown so far."""
    try:
        seen.add(json.loads((root.path / "status.json").read_text())["daemon"]["heartbeat_unix"])
    except (OSError, ValueError, KeyError):
        pass
    return len(seen)


def test_a_file_still_being_written_is_not_taken_the_settle_clock_restarts_at_each_change(root: Root) -> None:
    """Written in three parts, each after a heartbeat (2 s apart, less than the 3 s settle window), with no rescan
    (rescan_seconds is an hour): only file events restart its clock, and it is taken whole."""
    root.write_config(settle_seconds=3.0, rescan_seconds=3600.0)
    daemon = root.start(fake=True)
    try:
        seen: set[float] = set()
        wait_until(lambda: _heartbeats(root, seen) >= 1, what="the daemon")
        text = f'prompt = "A lighthouse in a storm, waves crashing over the rocks"\n{SMALL}'
        parts = [text[:20], text[20:50], text[50:]]
        path = root.inbox / "slow.toml"
        with open(path, "w") as f:
            for n, part in enumerate(parts):
                f.write(part)
                f.flush()
                if n < len(parts) - 1:
                    beats = _heartbeats(root, seen)
                    wait_until(lambda b=beats: _heartbeats(root, seen) > b, what="the next heartbeat")
                    assert path.exists(), "taken while it was still being written"
        wait_until(lambda: root.results() or root.failures(), what="the job, once it stopped changing")
        assert root.failures() == []
        [result] = root.results()
        assert (result / "slow.toml").read_text() == text  # the claim took the whole file
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


BLIND = """
import runpy, sys
sys.path.insert(0, {tests!r})
from watchdog.observers.polling import PollingObserver
import hotfolder.folders.watch as watch
# An inotify-blind inbox (as on some network and FUSE volumes): the native observer never reports anything.
watch.Observer = lambda: PollingObserver(timeout=86400)
sys.argv = [{run_daemon!r}, *sys.argv[1:]]
runpy.run_path({run_daemon!r}, run_name="__main__")
"""


def _start_blind(root: Root, tmp_path: Path, *args: str):
    import subprocess

    script = tmp_path / "blind_daemon.py"
    script.write_text(BLIND.format(tests=str(TESTS), run_daemon=str(TESTS / "run_daemon.py")))
    cmd = [sys.executable, str(script), "run", "--root", str(root.path), "--config", str(root.config),
           "--backend", "fake", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=root.env())


def test_without_file_events_the_rescan_finds_the_job_when_it_is_due(root: Root, tmp_path: Path) -> None:
    root.write_config(settle_seconds=0.3, rescan_seconds=1.0)
    daemon = _start_blind(root, tmp_path)
    try:
        seen: set[float] = set()
        wait_until(lambda: _heartbeats(root, seen) >= 1, what="the daemon")
        _drop(root, "unseen.toml", f'prompt = "no event announced me"\n{SMALL}')
        wait_until(root.results, what="the rescan to find the job")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_rescan_seconds_is_as_configured_and_the_heartbeat_keeps_its_own_timer(root: Root, tmp_path: Path) -> None:
    """With no file events and rescan_seconds an hour, three heartbeats come and go and the job is still in the
    inbox: the heartbeat (every 2 s) never rescans. Before, the daemon rescanned every 2 s whatever was set."""
    root.write_config(settle_seconds=0.3, rescan_seconds=3600.0)
    daemon = _start_blind(root, tmp_path)
    try:
        seen: set[float] = set()
        # The start writes status.json once, the scan loop again after its first scan: from then on only a
        # file event or the rescan can make it look at the inbox.
        wait_until(lambda: _heartbeats(root, seen) >= 2, what="the daemon's first scan")
        path = _drop(root, "waiting.toml", f'prompt = "found at the next rescan, in an hour"\n{SMALL}')
        beats = _heartbeats(root, seen)
        wait_until(lambda: _heartbeats(root, seen) >= beats + 3, what="three more heartbeats")
        assert path.exists() and root.results() == []
        status = json.loads((root.path / "status.json").read_text())
        assert status["daemon"]["state"] == "running" and status["daemon"]["pid"] == daemon.pid
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
