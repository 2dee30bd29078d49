"""README promises that had no test, each proved on real folders with real processes (the daemon on the fake
backend, the real CLI), so that each test fails when its promise breaks.

docs/testing.md lists every README promise with the test that holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import wave
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import Root, drop as _drop, needs_tool, wait_until
from hotfolder.folders import status as status_file

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'


def _stop(daemon: subprocess.Popen) -> int:
    if daemon.poll() is None:
        daemon.terminate()
    try:
        return daemon.wait(timeout=60)
    finally:
        if daemon.stdout:
            daemon.stdout.close()


def _alive(root: Root) -> bool:
    return status_file.read(root.path).alive


def _metas(root: Root) -> list[dict]:
    return [root.metadata(r) for r in root.results() if list(r.glob("*.json"))]


def _cache_entries(root: Root) -> list[Path]:
    """The result cache's entries (<cache>/<key[:2]>/<key>/)."""
    cache = root.path.parent / "cache"
    return sorted(p for p in cache.glob("*/*") if re.fullmatch(r"[0-9a-f]{2}", p.parent.name) and p.is_dir())


def _log_events(root: Root, event: str) -> list[dict]:
    """The daemon's JSON log lines (log_dir/hotfolder.log) for one event."""
    path = root.path.parent / "logs" / "hotfolder.log"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [line for line in lines if line.get("event") == event]


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 220 * t) * 0.3 * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


# -- the inbox ----------------------------------------------------------------------------------------------------
def test_a_job_folder_is_taken_only_after_everything_in_it_stopped_changing(root: Root, tmp_path: Path) -> None:
    """The job file is complete from the start; the voice-over it names keeps growing for several settle periods
    (each pause far shorter than settle_seconds). Nothing may be claimed until the last byte is written, and the
    job then uses the whole file."""
    root.write_config(settle_seconds=1.5, rescan_seconds=0.2)
    voice = _wav(tmp_path / "voice.wav", 3.0).read_bytes()
    daemon = root.start(fake=True)
    try:
        wait_until(lambda: _alive(root), what="the daemon")
        folder = root.inbox / "lake"
        folder.mkdir()
        (folder / "lake.toml").write_text(f'prompt = "A mountain lake"\n{SMALL}[audio]\nfile = "voice.wav"\n')
        chunk = len(voice) // 80 + 1
        writing_started = time.monotonic()
        with open(folder / "voice.wav", "wb") as f:
            for i in range(0, len(voice), chunk):
                f.write(voice[i:i + chunk])
                f.flush()
                assert not any((root.path / "processing").iterdir()), f"claimed after {i} of {len(voice)} bytes"
                time.sleep(0.05)
        assert time.monotonic() - writing_started > 2 * 1.5  # it was writing for longer than two settle periods
        wait_until(lambda: root.results() or root.failures(), timeout=60, what="the job")
        assert root.failures() == [], (root.failures()[0] / "error.txt").read_text()
        [meta] = _metas(root)
        [attachment] = meta["attachments"]
        assert attachment["name"] == "voice.wav" and attachment["sha256"] == hashlib.sha256(voice).hexdigest()
        assert meta["audio"] == "voice-over"
    finally:
        assert _stop(daemon) == 0


# -- retries ------------------------------------------------------------------------------------------------------
def test_a_failing_generation_is_retried_after_the_backoff_then_4x_longer(root: Root) -> None:
    """retry_backoff_seconds (5 s by default), then 4x longer each time: the delays the daemon computes, and the
    gaps between the attempts' starts (never shorter; a loaded machine only makes them longer)."""
    from hotfolder.config import Config

    assert Config(root=root.path).retry_backoff_seconds == 5.0 and Config(root=root.path).max_attempts == 2
    root.write_config(max_attempts=3, retry_backoff_seconds=0.5)
    _drop(root, "x.toml", f'prompt = "x"\n{SMALL}')
    run = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_FAIL="2"))  # the first two fail
    assert run.returncode == 0, run.stderr[-3000:]
    assert [m["source"] for m in _metas(root)] == ["x.toml"]
    assert [e["in_s"] for e in _log_events(root, "will retry")] == [0.5, 2.0]
    starts = [_when(e["timestamp"]) for e in _log_events(root, "job started")]
    fails = [_when(e["timestamp"]) for e in _log_events(root, "attempt failed")]
    assert len(starts) == 3 and len(fails) == 2
    assert starts[1] - fails[0] >= 0.5 - 0.01 and starts[2] - fails[1] >= 2.0 - 0.01


# -- cancel and retry by job id -----------------------------------------------------------------------------------
def test_cancel_and_retry_take_the_job_id(root: Root) -> None:
    _drop(root, "x.toml", f'prompt = "x"\n{SMALL}')
    crashed = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT="claimed"))
    assert crashed.returncode == -signal.SIGKILL
    [folder] = (root.path / "processing").iterdir()
    job_id = folder.name
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", job_id)
    out = root.cli("cancel", job_id)
    assert out.returncode == 0 and f"({job_id})" in out.stdout, out.stdout + out.stderr
    [failed] = root.failures()
    assert json.loads((failed / "error.json").read_text())["job_id"] == job_id
    back = root.cli("retry", job_id)
    assert back.returncode == 0, back.stderr
    assert (root.inbox / "x.toml").is_file() and root.failures() == []
    assert root.cli("cancel", "20000101-000000-abcdef").returncode == 2  # an id nobody has: refused

    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.2"))
    try:
        _drop(root, "long.toml", 'prompt = "a long job"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 200\n')

        def running_id() -> str | None:
            seen = status_file.read(root.path)
            running = (seen.status or {}).get("running") or {}
            return running.get("job_id") if running.get("source") == "long.toml" else None

        long_id = wait_until(running_id, what="the long job running")
        out = root.cli("cancel", str(long_id))
        assert out.returncode == 0 and "cancel requested" in out.stdout, out.stdout + out.stderr
        wait_until(lambda: any(json.loads((f / "error.json").read_text())["source"] == "long.toml"
                               for f in root.failures()), what="the long job cancelled by its id")
    finally:
        assert _stop(daemon) == 0


# -- the heartbeat ------------------------------------------------------------------------------------------------
def test_a_heartbeat_older_than_10_s_means_not_running(root: Root) -> None:
    """A real daemon, frozen (SIGSTOP): its process is there but its heartbeat ages; from 10 s on, `status` says
    no daemon is running. Thawed, it is running again."""
    now = time.time()
    elsewhere = root.path.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "status.json").write_text(json.dumps({"daemon": {"state": "running", "pid": os.getpid(),
                                                                  "heartbeat_unix": now}}))
    assert status_file.read(elsewhere, now=now + 9.9).alive and not status_file.read(elsewhere, now=now + 10.1).alive
    daemon = root.start(fake=True)
    try:
        wait_until(lambda: _alive(root) and status_file.read(root.path).pid == daemon.pid, what="its heartbeat")
        live = json.loads(root.cli("status", "--json").stdout)
        assert live["alive"] is True
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            beat = json.loads((root.path / "status.json").read_text())["daemon"]["heartbeat_unix"]
            wait_until(lambda: time.time() - beat > 10.2, timeout=30, interval=0.2, what="a heartbeat 10 s old")
            frozen = json.loads(root.cli("status", "--json").stdout)
            assert frozen["alive"] is False and frozen["heartbeat_age_s"] > 10, frozen
            text = root.cli("status").stdout
            assert "No daemon running" in text and f"pid {daemon.pid}" in text, text
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        wait_until(lambda: json.loads(root.cli("status", "--json").stdout)["alive"], timeout=30,
                   what="the thawed daemon's heartbeat")
    finally:
        assert _stop(daemon) == 0


# -- submit ---------------------------------------------------------------------------------------------------------
def _inbox_files(root: Root) -> list[str]:
    return sorted(p.relative_to(root.inbox).as_posix() for p in root.inbox.rglob("*") if p.is_file())


def test_submit_of_several_files_is_all_or_nothing(root: Root, tmp_path: Path) -> None:
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    (drafts / "one.toml").write_text(f'prompt = "one"\n{SMALL}')
    (drafts / "two.txt").write_text("two\n")
    (drafts / "bad.toml").write_text('prompt = "bad"\nduraton = 3\n')
    refused = root.cli("submit", str(drafts / "one.toml"), str(drafts / "two.txt"), str(drafts / "bad.toml"),
                       fake=True)
    assert refused.returncode == 2
    assert "bad.toml" in refused.stderr and "duraton" in refused.stderr and "nothing was submitted" in refused.stderr
    assert _inbox_files(root) == []  # not even the two valid ones, nor anything staged
    ok = root.cli("submit", str(drafts / "one.toml"), str(drafts / "two.txt"), fake=True)
    assert ok.returncode == 0, ok.stderr
    assert _inbox_files(root) == ["one.toml", "two.txt"]


def test_submit_tts_and_narrate_become_narration(root: Root) -> None:
    espeak = needs_tool(("say", "espeak-ng", "espeak"), "apt-get install espeak-ng, or brew install espeak-ng")
    assert espeak
    tts = root.cli("submit", "A lighthouse in a storm", "--tts", "Every night, the light came back.",
                   "--name", "told", fake=True)
    narrate = root.cli("submit", "A lighthouse at dawn", "--narrate", "--name", "read", fake=True)
    both = root.cli("submit", "x", "--tts", "a", "--narrate", fake=True)
    assert tts.returncode == 0 and narrate.returncode == 0, tts.stderr + narrate.stderr
    assert both.returncode == 2 and "not both" in both.stderr
    jobs = {p.stem: tomllib.loads(p.read_text()) for p in root.inbox.glob("*.toml")}
    assert jobs["told"]["audio"]["tts"] == "Every night, the light came back." and jobs["read"]["audio"]["tts"] is True
    root.write_config(defaults={"width": 64, "height": 64, "duration": 0.5, "fps": 16, "steps": 2})
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr[-3000:]
    metas = {m["name"] if "name" in m else Path(m["outputs"]["video"]).stem: m for m in _metas(root)}
    assert metas["told"]["audio"] == metas["read"]["audio"] == "generated + narration"
    assert metas["told"]["attachments"][0]["text"] == "Every night, the light came back."
    assert metas["read"]["attachments"][0]["text"] == "A lighthouse at dawn"  # the prompt itself


def test_submit_wait_exits_1_when_the_job_fails_and_timeout_gives_up(root: Root) -> None:
    root.write_config(max_attempts=1, defaults={"width": 64, "height": 64, "duration": 0.5, "fps": 16})
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_FAIL_PROMPT="FAIL-ME", HOTFOLDER_FAKE_STEP_S="0.05"))
    try:
        wait_until(lambda: _alive(root), what="the daemon")
        ok = root.cli("submit", "a good one", "--steps", "2", "--wait", fake=True)
        assert ok.returncode == 0, ok.stderr
        mp4 = Path(ok.stdout.strip().splitlines()[-1])
        assert mp4.suffix == ".mp4" and mp4.is_file()
        bad = root.cli("submit", "a FAIL-ME one", "--steps", "2", "--wait", fake=True)
        assert bad.returncode == 1, bad.stderr
        assert "failed" in bad.stderr and "fake failure for this prompt" in bad.stderr and bad.stdout.strip() == ""
        slow = root.cli("submit", "a slow one", "--steps", "200", "--wait", "--timeout", "1", "--name", "slow",
                        fake=True)
        assert slow.returncode == 1 and "gave up waiting after 1 s" in slow.stderr, slow.stderr
        assert not [f for f in root.failures() if "slow" in f.name]  # giving up waiting does not cancel it
        assert root.cli("cancel", "slow.toml").returncode == 0
    finally:
        assert _stop(daemon) == 0


# -- the cache at daemon level ----------------------------------------------------------------------------------
def _generations(path: Path) -> int:
    """How many times the fake backend generated (HOTFOLDER_FAKE_IMAGES gets a line per generate call)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_cache_false_neither_reads_nor_writes_the_cache(root: Root, tmp_path: Path) -> None:
    calls = tmp_path / "generated"
    env = root.env(HOTFOLDER_FAKE_IMAGES=str(calls))
    _drop(root, "a.toml", f'prompt = "a fox"\n{SMALL}cache = false\n')
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    assert _cache_entries(root) == [] and _generations(calls) == 1
    _drop(root, "b.toml", f'prompt = "a fox"\n{SMALL}')  # the same request, cached: it is stored now
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    assert len(_cache_entries(root)) == 1 and _generations(calls) == 2
    _drop(root, "c.toml", f'prompt = "a fox"\n{SMALL}cache = false\n')  # it does not read it either
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    assert _generations(calls) == 3
    metas = {m["source"]: m for m in _metas(root)}
    assert not metas["a.toml"]["cache_hit"] and not metas["c.toml"]["cache_hit"]


def test_a_random_seed_is_stored_under_the_drawn_seed(root: Root, tmp_path: Path) -> None:
    calls = tmp_path / "generated"
    env = root.env(HOTFOLDER_FAKE_IMAGES=str(calls))
    _drop(root, "a.toml", f'prompt = "a fox"\n{SMALL}seed = "random"\n')
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    [first] = _metas(root)
    drawn = first["seed"]
    assert isinstance(drawn, int) and not first["cache_hit"] and len(_cache_entries(root)) == 1
    _drop(root, "b.toml", f'prompt = "a fox"\n{SMALL}seed = {drawn}\n')  # that seed, given: a hit
    _drop(root, "c.toml", f'prompt = "a fox"\n{SMALL}seed = "random"\n')  # random again: never a hit
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    metas = {m["source"]: m for m in _metas(root)}
    assert metas["b.toml"]["cache_hit"] and metas["b.toml"]["cache_key"] == first["cache_key"]
    assert not metas["c.toml"]["cache_hit"] and _generations(calls) == 2


def test_cache_refresh_regenerates_and_replaces_the_entry(root: Root, tmp_path: Path) -> None:
    calls = tmp_path / "generated"
    env = root.env(HOTFOLDER_FAKE_IMAGES=str(calls))
    _drop(root, "a.toml", f'prompt = "a fox"\n{SMALL}')
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    [entry] = _cache_entries(root)
    before = (entry / "manifest.json").read_text()
    _drop(root, "b.toml", f'prompt = "a fox"\n{SMALL}cache = "refresh"\n')
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    assert _generations(calls) == 2  # made again, although the cache had it
    assert _cache_entries(root) == [entry] and (entry / "manifest.json").read_text() != before  # replaced
    _drop(root, "c.toml", f'prompt = "a fox"\n{SMALL}')
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    metas = {m["source"]: m for m in _metas(root)}
    assert not metas["b.toml"]["cache_hit"] and metas["c.toml"]["cache_hit"] and _generations(calls) == 2


def test_cache_prune_and_clear(root: Root) -> None:
    for seed in (1, 2, 3):
        _drop(root, f"s{seed}.toml", f'prompt = "a fox"\n{SMALL}seed = {seed}\n')
        assert root.cli("run", "--once", fake=True).returncode == 0  # one at a time: s3 is the newest entry
    stats = json.loads(root.cli("cache", "stats", "--json", fake=True).stdout)
    assert stats["entries"] == 3
    newest = root.metadata(next(r for r in root.results() if (r / "s3.toml").exists()))["cache_key"]
    root.write_config(cache_max_bytes=stats["bytes"] // 3 + 1024)  # room for one entry
    pruned = root.cli("cache", "prune", fake=True)
    assert pruned.returncode == 0 and "evicted 2 entries" in pruned.stdout, pruned.stdout + pruned.stderr
    assert [p.name for p in _cache_entries(root)] == [newest]  # least recently used went first
    cleared = root.cli("cache", "clear", fake=True)
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stdout
    assert _cache_entries(root) == [] and json.loads(root.cli("cache", "stats", "--json", fake=True).stdout)[
        "entries"] == 0
    for meta, result in zip(_metas(root), root.results()):  # the outbox keeps every video (links, not moves)
        assert (result / meta["outputs"]["video"]).stat().st_size > 0


# -- narration over a cached video, and the ducking measured -------------------------------------------------------
def _tone_level(samples: np.ndarray, rate: int, start: float, end: float, hz: float = 440.0) -> float:
    """The amplitude of the `hz` tone between two times (a projection on one sine; the window is long enough that a
    voice's moving harmonics do not add up)."""
    part = samples[int(start * rate):int(end * rate)]
    t = np.arange(len(part)) / rate
    return float(2 * np.hypot(np.dot(part, np.sin(2 * np.pi * hz * t)), np.dot(part, np.cos(2 * np.pi * hz * t)))
                 / len(part))


def _decoded_sound(video: Path, rate: int = 48000) -> np.ndarray:
    from hotfolder.media import ffmpeg

    done = subprocess.run([ffmpeg.ffmpeg_exe(), "-v", "error", "-i", str(video), "-vn", "-ac", "1", "-ar", str(rate),
                           "-f", "f32le", "-"], capture_output=True, timeout=120, check=True)
    return np.frombuffer(done.stdout, dtype="<f4")


def test_narration_is_added_to_a_cached_video_and_the_soundtrack_ducks_under_it(root: Root, tmp_path: Path) -> None:
    """The second job is a cache hit (the model is not run) and still gets its narration; while the voice speaks,
    the generated sound (the fake backend's 440 Hz tone) is measurably lower than after it."""
    needs_tool(("say", "espeak-ng", "espeak"), "apt-get install espeak-ng, or brew install espeak-ng")
    from hotfolder.media import narration

    calls = tmp_path / "generated"
    env = root.env(HOTFOLDER_FAKE_IMAGES=str(calls))
    long_clip = 'width = 64\nheight = 64\nduration = 3.0\nfps = 8\nsteps = 2\n'  # 25 frames: 3.125 s
    _drop(root, "plain.toml", f'prompt = "A lighthouse"\n{long_clip}')
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    words = "Every night."
    _drop(root, "told.toml", f'prompt = "A lighthouse"\n{long_clip}[audio]\ntts = "{words}"\n')
    run = root.cli("run", "--once", fake=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    metas = {m["source"]: (r, m) for r, m in ((r, root.metadata(r)) for r in root.results())}
    result, meta = metas["told.toml"]
    assert meta["cache_hit"] is True and _generations(calls) == 1  # from the cache: no second generation
    assert meta["audio"] == "generated + narration"
    speech = narration.synthesize(words, tmp_path)
    from hotfolder.media import probe

    spoken = probe(speech).audio.duration
    assert 0.3 < spoken < 2.3, spoken  # room after it, in a 3.125 s clip, for the tone to come back
    rate = 48000
    told = _decoded_sound(result / meta["outputs"]["video"], rate)
    plain = _decoded_sound(metas["plain.toml"][0] / metas["plain.toml"][1]["outputs"]["video"], rate)
    under = _tone_level(told, rate, 0.1, 0.1 + spoken / 2)  # the first half of the speech (the compressor releases
    after = _tone_level(told, rate, spoken + 0.5, 3.0)  # in 350 ms, so the gaps between words rise a little)
    reference = _tone_level(plain, rate, 0.1, 0.1 + spoken / 2)
    assert reference > 0.1  # the tone is there to be ducked
    assert after > 0.6 * reference, (after, reference)  # back (near) full once the voice stops
    assert under < 0.5 * after, (under, after)  # at least 6 dB down while the voice speaks


# -- what a result holds ---------------------------------------------------------------------------------------------
def test_adjustments_are_in_the_results_log(root: Root) -> None:
    _drop(root, "odd.toml", 'prompt = "odd sizes"\nwidth = 100\nheight = 70\nduration = 0.5\nfps = 16\nsteps = 2\n')
    assert root.cli("run", "--once", fake=True).returncode == 0
    [result] = root.results()
    meta = root.metadata(result)
    assert meta["adjustments"] and any(a.startswith("width 100 -> 96") for a in meta["adjustments"])
    log = (result / "odd.log").read_text()
    for change in meta["adjustments"]:
        assert re.search(rf"adjusted\s+change={re.escape(change)}", log), (change, log)


def test_the_outbox_name_is_the_time_and_the_name_and_a_taken_one_gets_2(root: Root) -> None:
    _drop(root, "fox.toml", f'prompt = "a fox"\n{SMALL}')
    before = time.time()
    assert root.cli("run", "--once", fake=True).returncode == 0
    after = time.time()
    [first] = root.results()
    assert re.fullmatch(r"\d{8}-\d{6}_fox", first.name), first.name
    made = time.mktime(time.strptime(first.name[:15], "%Y%m%d-%H%M%S"))
    assert int(before) - 1 <= made <= after + 1  # local time of the delivery
    # Take the name for every second of the next two minutes: the next fox must go to "<time>_fox 2".
    start = int(time.time())
    taken = {time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + "_fox" for t in range(start - 1, start + 120)}
    taken.discard(first.name)
    for name in taken:
        (root.outbox / name).mkdir(exist_ok=True)
    _drop(root, "fox.toml", f'prompt = "a fox"\n{SMALL}seed = 8\n')
    assert root.cli("run", "--once", fake=True).returncode == 0
    [second] = [r for r in root.results() if r.name not in taken and r != first]
    # "<time>_fox" was taken for every second the second job could be delivered in (by the folders made above, or by
    # the first result when both land in the same second): the second one must be "<time>_fox 2".
    assert second.name.endswith("_fox 2") and second.name[:-2] in taken | {first.name}, second.name
    assert all(not any(p.iterdir()) for p in (root.outbox / n for n in taken))  # none was written into


# -- the model's weights: the pull's progress bar ----------------------------------------------------------------------
# (in tests/test_models_pull.py: a local Hugging Face Hub)


# -- configuration and logs ---------------------------------------------------------------------------------------------
def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "XDG_"))}
    return {**env, "HOME": str(home), **extra}


def test_the_default_config_file_and_root_per_os(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    linux = subprocess.run([sys.executable, "-m", "hotfolder", "config", "path"], capture_output=True, text=True,
                           timeout=120, env=_clean_env(home))
    assert linux.returncode == 0, linux.stderr
    lines = linux.stdout.splitlines()
    if sys.platform.startswith("linux"):
        assert lines[0] == str(home / ".config" / "hotfolder" / "config.toml")
        assert str(home / "Videos" / "Hotfolder") in lines[1]
        moved = subprocess.run([sys.executable, "-m", "hotfolder", "config", "path"], capture_output=True, text=True,
                               timeout=120, env=_clean_env(home, XDG_CONFIG_HOME=str(tmp_path / "xdg")))
        assert moved.stdout.splitlines()[0] == str(tmp_path / "xdg" / "hotfolder" / "config.toml")
    # macOS, injected: platformdirs and the rest decide by sys.platform when they are imported.
    mac = ("import sys\nsys.platform = 'darwin'\nfrom hotfolder.config import default_config_file, default_root\n"
           "print(default_config_file())\nprint(default_root())\n")
    done = subprocess.run([sys.executable, "-c", mac], capture_output=True, text=True, timeout=120,
                          env=_clean_env(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(home / "Library" / "Application Support" / "hotfolder" / "config.toml"),
                                        str(home / "Movies" / "Hotfolder")]


def test_the_terminal_gets_readable_lines_and_the_file_json(root: Root) -> None:
    _drop(root, "fox.toml", f'prompt = "a fox"\n{SMALL}')
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    started = next(line for line in lines if "daemon started" in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[info +\] daemon started ", started), started  # local time
    assert f"root={root.path}" in started and "=None" not in run.stderr  # key=value, empty fields left out
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)  # not JSON: that is for the file
    [event] = _log_events(root, "daemon started")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", event["timestamp"]), event
    assert f"{event['timestamp'][:10]} {event['timestamp'][11:19]}" == started[:19]  # the same moment, local time


def test_only_the_bundled_ffmpeg_ever_runs(root: Root, tmp_path: Path) -> None:
    """An ffmpeg and an ffprobe first on PATH that only leave a mark and fail: every job still works (encoding,
    GIF, thumbnail, a voice-over's checks and mix), and they never ran."""
    import imageio_ffmpeg

    from hotfolder.media import ffmpeg

    assert Path(ffmpeg.ffmpeg_exe()).resolve() == Path(imageio_ffmpeg.get_ffmpeg_exe()).resolve()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marks = tmp_path / "ran"
    for tool in ("ffmpeg", "ffprobe", "avconv"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{marks}"\nexit 1\n')
        (bin_dir / tool).chmod(0o755)
    folder = root.inbox / "voiced"
    folder.mkdir()
    _wav(folder / "voice.wav", 1.0)
    (folder / "voiced.toml").write_text(f'prompt = "A voice"\n{SMALL}[audio]\nfile = "voice.wav"\n')
    _drop(root, "plain.toml", f'prompt = "Plain"\n{SMALL}')
    env = {k: v for k, v in root.env(PATH=f"{bin_dir}:{os.environ['PATH']}").items() if k != "IMAGEIO_FFMPEG_EXE"}
    run = root.cli("run", "--once", fake=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(m["source"] for m in _metas(root)) == ["plain.toml", "voiced"]
    assert all({"video", "gif", "thumbnail"} <= set(m["outputs"]) for m in _metas(root))
    assert not marks.exists(), marks.read_text()
