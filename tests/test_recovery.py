"""Never lose a job: SIGKILL at 20 moments of a job's life, cancel, retry, order, locks.

The daemon is a real process on the fake backend. Some moments are reached from
outside (poll the folders, then SIGKILL); the ones only microseconds wide (between
staging and delivery, right after the rename) use the daemon's crash points, where
the process SIGKILLs itself (HOTFOLDER_CRASH_AT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import Root, wait_until
from hotfolder.media import probe

SLOW_JOB = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 10\n'


def _drop(root: Root, rel: str, text: str) -> None:
    path = root.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.rename(tmp, path)


def _progress_step(root: Root) -> int:
    """The furthest step a job in processing/ reached; past the last step (decoding on) counts as all of them."""
    steps = []
    for p in (root.path / "processing").glob("*/progress.json"):
        try:
            progress = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        past = progress.get("stage") in ("decoding", "encoding", "delivering")
        steps.append(10**6 if past else progress.get("step", 0))
    return max(steps, default=0)


def _stage(root: Root) -> str | None:
    for p in (root.path / "processing").glob("*/progress.json"):
        try:
            return json.loads(p.read_text()).get("stage")
        except (OSError, ValueError):
            return None
    return None


def _kill_when(root: Root, env: dict[str, str], condition) -> None:
    daemon = root.start(fake=True, env=env)
    try:
        wait_until(lambda: condition() or daemon.poll() is not None, timeout=60, interval=0.002, what="the moment")
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=15)


def _check_exactly_once(root: Root, expected: dict[str, int]) -> None:
    """Every job delivered exactly once, nothing half-written, nothing left behind."""
    delivered: dict[str, int] = {}
    for result in root.results():
        files = {p.name for p in result.iterdir()}
        assert not [f for f in files if f.startswith(".") and f != ".hotfolder-job"], files
        meta = root.metadata(result)
        delivered[meta["source"]] = delivered.get(meta["source"], 0) + 1
        info = probe(result / meta["outputs"]["video"])
        assert info.video is not None and info.video.num_frames == meta["num_frames"]
        for name in meta["outputs"].values():
            assert (result / name).stat().st_size > 0, name
    assert delivered == expected
    assert root.failures() == []
    assert list((root.path / "processing").iterdir()) == []
    assert not [p for p in root.inbox.rglob("*") if p.is_file() and not p.name.startswith(".")]


CRASH_POINTS = ["claimed", "recovered", "encoded", "mid_encode", "cached", "staged", "delivering", "delivered",
                "recorded", "finishing"]


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_a_crash_point_loses_nothing_and_delivers_once(root: Root, point: str) -> None:
    _drop(root, "a.toml", f'prompt = "job a"\n{SLOW_JOB}')
    _drop(root, "pair.toml", f'{SLOW_JOB}[[jobs]]\nprompt = "pair one"\n[[jobs]]\nprompt = "pair two"\n')
    crashed = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT=point))
    if point != "recovered":  # nothing to recover on the first start: that one only bites on a restart
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    if point == "recovered":
        _kill_when(root, root.env(HOTFOLDER_FAKE_STEP_S="0.05"), lambda: _progress_step(root) >= 2)
        again = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT=point))
        assert again.returncode == -signal.SIGKILL
    final = root.cli("run", "--once", fake=True)
    assert final.returncode == 0, final.stderr[-3000:]
    _check_exactly_once(root, {"a.toml": 1, "pair.toml": 2})


MOMENTS = {
    "settling": lambda root: (root.inbox / "a.toml").exists(),
    "right after the claim": lambda root: any((root.path / "processing").glob("*/input/a.toml")),
    "generation step 1": lambda root: _progress_step(root) >= 1,
    "generation step 3": lambda root: _progress_step(root) >= 3,
    "generation step 6": lambda root: _progress_step(root) >= 6,
    "generation step 9": lambda root: _progress_step(root) >= 9,
    "after the first result": lambda root: len(root.results()) >= 1,
    "after two results": lambda root: len(root.results()) >= 2,
    "mid second batch entry": lambda root: len(root.results()) >= 2 and _progress_step(root) >= 2,
    "twice mid-generation": lambda root: _progress_step(root) >= 4,
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_from_outside_at_any_moment_loses_nothing_and_delivers_once(root: Root, moment: str) -> None:
    root.write_config(settle_seconds=1.0 if moment == "settling" else 0.3, rescan_seconds=0.5)
    env = root.env(HOTFOLDER_FAKE_STEP_S="0.05")
    _drop(root, "a.toml", f'prompt = "job a"\n{SLOW_JOB}')
    _drop(root, "b.toml", f'prompt = "job b"\n{SLOW_JOB}')
    _drop(root, "pair.toml", f'{SLOW_JOB}[[jobs]]\nprompt = "pair one"\n[[jobs]]\nprompt = "pair two"\n')
    _kill_when(root, env, lambda: MOMENTS[moment](root))
    if moment == "twice mid-generation":
        _kill_when(root, env, lambda: _progress_step(root) >= 4)
    final = root.cli("run", "--once", fake=True)
    assert final.returncode == 0, final.stderr[-3000:]
    _check_exactly_once(root, {"a.toml": 1, "b.toml": 1, "pair.toml": 2})


@pytest.mark.slow
def test_a_thousand_jobs_at_once_are_delivered_exactly_once_in_priority_then_fifo_order(root: Root) -> None:
    root.write_config(settle_seconds=0.5, rescan_seconds=1.0)
    n = 1000
    base = time.time() - 3600
    for i in range(n):
        path = root.inbox / f"job{i:04d}.toml"
        path.write_text(f'prompt = "job {i}"\nwidth = 64\nheight = 64\nduration = 0.05\nfps = 8\nsteps = 1\n'
                        f'priority = {2 if i % 10 == 0 else 0}\ncache = false\n'
                        '[output]\ngif = false\nthumbnail = false\n')
        os.utime(path, (base + i, base + i))  # arrival order: job0000 first
    run = root.cli("run", "--once", fake=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    metas = [root.metadata(r) for r in root.results()]
    assert sorted(m["source"] for m in metas) == sorted(f"job{i:04d}.toml" for i in range(n))
    order = [int(m["source"][3:7]) for m in sorted(metas, key=lambda m: m["timings"]["started"])]
    high = [i for i in range(n) if i % 10 == 0]
    low = [i for i in range(n) if i % 10]
    assert order == high + low
    assert list((root.path / "processing").iterdir()) == [] and not list(root.inbox.glob("*.toml"))


def test_hotfolder_cancel_stops_a_running_job_and_it_ends_in_failed_as_cancelled(root: Root) -> None:
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.2"))
    try:
        _drop(root, "long.toml", 'prompt = "a long job"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 200\n')
        _drop(root, "next.toml", 'prompt = "the next one"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
        wait_until(lambda: _progress_step(root) >= 1, what="the long job to start")
        out = root.cli("cancel", "long.toml")
        assert out.returncode == 0 and "cancel requested" in out.stdout
        [failed] = wait_until(root.failures, what="the cancelled job in failed/")
        error = json.loads((failed / "error.json").read_text())
        assert error["kind"] == "cancelled" and (failed / "long.toml").is_file()
        wait_until(lambda: root.results(), what="the next job")
        assert root.metadata(root.results()[0])["source"] == "next.toml"
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_removing_a_job_folder_from_processing_cancels_it_silently(root: Root) -> None:
    import shutil

    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.2"))
    try:
        _drop(root, "long.toml", 'prompt = "a long job"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 200\n')
        wait_until(lambda: _progress_step(root) >= 1, what="the long job to start")
        [folder] = (root.path / "processing").iterdir()
        shutil.rmtree(folder)
        _drop(root, "next.toml", 'prompt = "the next one"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
        wait_until(lambda: root.results(), what="the next job")
        assert root.failures() == []
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_cancel_without_a_daemon_and_retry_bring_the_job_back(root: Root) -> None:
    _drop(root, "x.toml", 'prompt = "x"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
    crashed = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT="claimed"))
    assert crashed.returncode == -signal.SIGKILL
    out = root.cli("cancel", "x")
    assert out.returncode == 0 and "cancelled" in out.stdout
    [failed] = root.failures()
    assert json.loads((failed / "error.json").read_text())["kind"] == "cancelled"
    back = root.cli("retry", failed.name)
    assert back.returncode == 0 and (root.inbox / "x.toml").is_file() and root.failures() == []
    assert root.cli("run", "--once", fake=True).returncode == 0
    assert [root.metadata(r)["source"] for r in root.results()] == ["x.toml"]
    assert root.cli("retry", "nothing-like-this").returncode == 2


def test_a_stale_lock_of_a_dead_process_is_taken_over(root: Root) -> None:
    subprocess.run(["true"], check=True)  # its pid is surely gone now
    (root.path / ".hotfolder.lock").write_text("999999\n")
    _drop(root, "x.toml", 'prompt = "x"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr
    assert len(root.results()) == 1


@pytest.mark.slow
def test_sigterm_exits_within_10_s_even_when_one_step_takes_longer(root: Root) -> None:
    env = root.env(HOTFOLDER_FAKE_STEP_S="30")  # a slow Mac at full size: the next step is far away
    _drop(root, "huge.toml", 'prompt = "huge"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 4\n')
    daemon = root.start(fake=True, env=env)
    wait_until(lambda: _stage(root) == "generating", what="the first (30 s) step to begin")
    t0 = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=12) == 0
    assert time.monotonic() - t0 < 10
    assert root.results() == [] and len(list((root.path / "processing").iterdir())) == 1  # kept for the restart


def test_a_second_signal_exits_at_once(root: Root) -> None:
    env = root.env(HOTFOLDER_FAKE_STEP_S="30")
    _drop(root, "huge.toml", 'prompt = "huge"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 4\n')
    daemon = root.start(fake=True, env=env)
    wait_until(lambda: _stage(root) == "generating", what="the first (30 s) step to begin")
    daemon.send_signal(signal.SIGTERM)  # graceful: would wait for the step (up to the 8 s grace)
    t0 = time.monotonic()
    daemon.send_signal(signal.SIGINT)
    assert daemon.wait(timeout=5) != 0  # out at once, not a graceful stop
    assert time.monotonic() - t0 < 2
    assert len(list((root.path / "processing").iterdir())) == 1
    assert root.cli("run", "--once", fake=True).returncode == 0  # and nothing was lost
    assert [root.metadata(r)["source"] for r in root.results()] == ["huge.toml"]


def test_retrying_one_failed_batch_entry_runs_that_entry_alone(root: Root) -> None:
    root.write_config(max_attempts=1)
    _drop(root, "batch.toml", 'width = 64\nheight = 64\nduration = 0.5\nsteps = 2\nseed = 3\n'
                              '[[jobs]]\nprompt = "good shot"\n'
                              '[[jobs]]\nprompt = "bad shot FAIL-ME"\n[jobs.output]\ngif = false\n')
    first = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_FAIL_PROMPT="FAIL-ME"))
    assert first.returncode == 1
    assert [root.metadata(r)["prompt"] for r in root.results()] == ["good shot"]
    [failed] = root.failures()
    assert json.loads((failed / "error.json").read_text())["index"] == 1
    back = root.cli("retry", failed.name)
    assert back.returncode == 0, back.stderr
    retried = (root.inbox / "batch-2.toml").read_text()
    assert "FAIL-ME" in retried and "good shot" not in retried and "seed = 3" in retried
    assert root.failures() == []
    assert root.cli("run", "--once", fake=True).returncode == 0
    metas = sorted((root.metadata(r) for r in root.results()), key=lambda m: m["prompt"])
    assert [m["prompt"] for m in metas] == ["bad shot FAIL-ME", "good shot"]  # the good one was not made again
    assert metas[0]["outputs"]["video"] == "batch-2.mp4" and "gif" not in metas[0]["outputs"]
    assert metas[0]["seed"] == 3


def test_cancel_without_a_daemon_keeps_a_loose_jobs_image_and_retry_makes_the_video(root: Root) -> None:
    """The claim of a loose job file includes the image it names: cancel must move both to failed/."""
    from PIL import Image

    root.write_config(attachment_wait_seconds=2.0)  # a retry without its image would fail fast, not hang
    Image.new("RGB", (96, 64), (220, 30, 30)).save(root.inbox / "red.png")
    _drop(root, "x.toml", 'prompt = "x"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n'
                          '[image]\nfile = "red.png"\n')
    crashed = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT="claimed_attachment"))
    assert crashed.returncode == -signal.SIGKILL
    assert not (root.inbox / "x.toml").exists() and not (root.inbox / "red.png").exists()  # both claimed
    out = root.cli("cancel", "x.toml")
    assert out.returncode == 0 and "cancelled" in out.stdout, out.stderr
    [failed] = root.failures()
    assert sorted(p.name for p in failed.iterdir()) == ["error.json", "error.txt", "red.png", "x.toml"]
    back = root.cli("retry", failed.name)
    assert back.returncode == 0, back.stderr
    assert (root.inbox / "x.toml").is_file() and (root.inbox / "red.png").is_file()
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stdout + run.stderr
    [result] = root.results()
    meta = root.metadata(result)
    assert [a["name"] for a in meta["attachments"]] == ["red.png"]
    with Image.open(result / "x.jpg") as thumb:  # the fake backend paints the image's mean colour
        r, g, b = thumb.convert("RGB").getpixel((32, 32))
    assert r > 150 and g < 90 and b < 90


def _queued_sources(root: Root) -> list[str]:
    try:
        return [q["source"] for q in json.loads((root.path / "status.json").read_text())["queue"]]
    except (OSError, ValueError, KeyError):
        return []


def test_cancelling_a_queued_job_takes_it_off_the_queue_at_once(root: Root) -> None:
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.2"))
    try:
        _drop(root, "long.toml", 'prompt = "a long job"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 200\n')
        wait_until(lambda: _progress_step(root) >= 1, what="the long job to start")
        _drop(root, "queued.toml", 'prompt = "waits its turn"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
        wait_until(lambda: "queued.toml" in _queued_sources(root), what="the second job in the queue")
        out = root.cli("cancel", "queued.toml")
        assert out.returncode == 0, out.stderr
        [failed] = wait_until(root.failures, timeout=15, what="the queued job in failed/, without waiting its turn")
        error = json.loads((failed / "error.json").read_text())
        assert error["kind"] == "cancelled" and error["source"] == "queued.toml" and (failed / "queued.toml").is_file()
        assert _progress_step(root) < 200  # the running job was neither stopped nor waited for
        wait_until(lambda: "queued.toml" not in _queued_sources(root), what="status.json without the cancelled job")
        assert json.loads((root.path / "status.json").read_text())["running"]["source"] == "long.toml"
        assert root.cli("cancel", "long.toml").returncode == 0
        wait_until(lambda: len(root.failures()) == 2, what="the long job cancelled too")
        _drop(root, "next.toml", 'prompt = "the next one"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
        wait_until(root.results, what="the next job")
        assert [root.metadata(r)["source"] for r in root.results()] == ["next.toml"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
