"""What a person and a script can see: JSON logs with job ids, status, progress, polling, the corrupt cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import Root, drop as _drop, wait_until

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'


def test_the_log_file_has_json_lines_and_every_line_of_a_job_carries_its_id(root: Root) -> None:
    _drop(root, "a.toml", f'prompt = "a"\n{SMALL}')
    _drop(root, "b.toml", f'prompt = "b"\n{SMALL}')
    assert root.cli("run", "--once", fake=True).returncode == 0
    lines = [json.loads(line) for line in (root.path.parent / "logs" / "hotfolder.log").read_text().splitlines()]
    events = {line["event"] for line in lines}
    assert {"daemon started", "claimed", "job started", "generated", "delivered", "daemon stopped"} <= events
    job_lines = [line for line in lines if line["event"] in ("job started", "generated", "encoded", "delivered")]
    ids = {line.get("job_id") for line in job_lines}
    assert None not in ids and len(ids) == 2
    for result in root.results():
        meta = root.metadata(result)
        log = (result / f"{Path(meta['outputs']['video']).stem}.log").read_text()
        assert "job started" in log and meta["prompt"] in log
        other = "b" if meta["prompt"] == "a" else "a"
        assert f"prompt={other}\n" not in log and f"prompt={other} " not in log  # only its own lines


def test_status_json_and_progress_json_show_the_queue_and_the_running_job(root: Root) -> None:
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.1"))
    try:
        _drop(root, "first.toml", 'prompt = "first"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 60\n')
        wait_until(lambda: list((root.path / "processing").glob("*/progress.json")), what="progress.json")
        _drop(root, "second.toml", f'prompt = "second"\n{SMALL}')
        _drop(root, "urgent.toml", f'prompt = "urgent"\npriority = 5\n{SMALL}')

        def running_and_queued() -> dict | None:
            status = json.loads((root.path / "status.json").read_text())
            ok = status["running"] and status["running"]["progress"].get("step", 0) >= 2 and len(status["queue"]) == 2
            return status if ok else None

        status = wait_until(running_and_queued, what="a running job and two queued")
        assert status["daemon"]["pid"] == daemon.pid
        assert status["running"]["source"] == "first.toml"
        assert [q["source"] for q in status["queue"]] == ["urgent.toml", "second.toml"]  # priority first
        progress_file = root.path / "processing" / status["running"]["job_id"] / "progress.json"
        progress = json.loads(progress_file.read_text())
        assert progress["stage"] == "generating"
        assert progress["total_steps"] == 60 and 0 < progress["percent"] <= 100 and progress["eta_s"] is not None
        for queued in status["queue"]:  # the others say so in their own folders
            assert json.loads((root.path / "processing" / queued["job_id"] / "progress.json").read_text())["stage"] \
                == "queued"
        human = root.cli("status")
        assert "Daemon running" in human.stdout and "first.toml" in human.stdout and "urgent.toml" in human.stdout
        as_json = json.loads(root.cli("status", "--json").stdout)
        assert as_json["alive"] is True
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=15) == 0
    after = root.cli("status")
    assert "No daemon running" in after.stdout and "stopped" in after.stdout


# An inotify-blind inbox (some network and FUSE volumes): the native observer never reports anything, so
# only watchdog's PollingObserver (`--poll`, `polling = true`) can see a file arrive.
BLIND = """
import runpy, sys
sys.path.insert(0, {tests!r})
from watchdog.observers.polling import PollingObserver
import hotfolder.folders.watch as watch
watch.Observer = lambda: PollingObserver(timeout=86400)
sys.argv = [{run_daemon!r}, *sys.argv[1:]]
runpy.run_path({run_daemon!r}, run_name="__main__")
"""


def test_polling_mode_finds_jobs_without_file_events(root: Root, tmp_path: Path) -> None:
    """The inbox sends no events and the rescan is an hour away: only the PollingObserver can find the job
    (before issue 17 the daemon rescanned every 2 s whatever rescan_seconds said, so this could not fail)."""
    import subprocess
    import sys

    from conftest import TESTS

    root.write_config(rescan_seconds=3600.0)
    script = tmp_path / "blind_daemon.py"
    script.write_text(BLIND.format(tests=str(TESTS), run_daemon=str(TESTS / "run_daemon.py")))
    daemon = subprocess.Popen([sys.executable, str(script), "run", "--root", str(root.path), "--config",
                               str(root.config), "--backend", "fake", "--poll"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=root.env())
    try:
        wait_until(lambda: (root.path / "status.json").exists(), what="the daemon")
        _drop(root, "polled.toml", f'prompt = "polled"\n{SMALL}')
        wait_until(root.results, timeout=30, what="the polled job")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_a_corrupted_cache_entry_is_dropped_and_the_job_regenerates(root: Root, tmp_path: Path) -> None:
    loads = tmp_path / "loads.txt"
    env = root.env(HOTFOLDER_FAKE_LOADS=str(loads))
    job = f'prompt = "A windmill"\n{SMALL}'
    _drop(root, "one.toml", job)
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    [video] = (root.path.parent / "cache").glob("*/*/video.mp4")
    os.chmod(video, 0o644)
    with open(video, "r+b") as f:  # flip bytes in the middle, same size
        f.seek(video.stat().st_size // 2)
        f.write(b"\x00\xff\x00\xff")
    _drop(root, "two.toml", job)
    run = root.cli("run", "--once", fake=True, env=env)
    assert run.returncode == 0
    metas = {root.metadata(r)["source"]: root.metadata(r) for r in root.results()}
    assert metas["two.toml"]["cache_hit"] is False  # the damaged entry was not served
    assert len(loads.read_text().splitlines()) == 2
    log = (root.path.parent / "logs" / "hotfolder.log").read_text()
    assert "corrupt" in log.lower() or "dropped" in log.lower()


STAGES = ["queued", "starting", "loading", "generating", "decoding", "encoding", "delivering"]


def _status(root: Root) -> dict:
    try:
        return json.loads((root.path / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_status_shows_the_stages_in_order_and_never_zero_of_zero(root: Root) -> None:
    env = root.env(HOTFOLDER_FAKE_LOAD_S="1", HOTFOLDER_FAKE_STEP_S="0.3", HOTFOLDER_FAKE_DECODE_S="1")
    _drop(root, "first.toml", 'prompt = "first"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 4\n')
    _drop(root, "second.toml", f'prompt = "second"\n{SMALL}')
    daemon = root.start(fake=True, env=env)
    views: dict[str, list[dict]] = {"status.json": [], "progress.json": []}  # each as it changed
    queued: list[dict] = []
    try:
        def note(view: str, progress: dict) -> None:
            if progress and (not views[view] or views[view][-1] != progress):
                views[view].append(progress)

        def watch() -> bool:
            status = _status(root)
            running = status.get("running") or {}
            if running.get("source") == "first.toml":
                note("status.json", running.get("progress") or {})
                try:
                    note("progress.json",
                         json.loads((root.path / "processing" / running["job_id"] / "progress.json").read_text()))
                except (OSError, ValueError):
                    pass
            queued.extend(q for q in status.get("queue") or [] if q.get("source") == "second.toml")
            return len(root.results()) == 2

        wait_until(watch, interval=0.01, what="both jobs")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    for view, seen in views.items():
        stages = [p["stage"] for p in seen]
        order = [STAGES.index(s) for s in stages]  # an unknown stage fails here
        assert order == sorted(order), (view, stages)
    seen = views["status.json"] + views["progress.json"]
    assert {"loading", "generating", "decoding"} <= {p["stage"] for p in seen}, seen
    stepped = [p for p in seen if p.get("total_steps")]
    assert stepped and all(p["stage"] == "generating" and 1 <= p["step"] <= p["total_steps"] == 4 for p in stepped)
    assert not [p for p in seen if "total_steps" in p and not p["total_steps"]]  # never "loading 0/0", "encoding 0/0"
    assert queued and all(q["stage"] == "queued" and q["position"] == 1 for q in queued)


def test_after_a_crash_status_never_shows_the_dead_job_as_running(root: Root) -> None:
    _drop(root, "a.toml", 'prompt = "a"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 50\n')
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.1"))
    try:
        wait_until(lambda: ((_status(root).get("running") or {}).get("progress") or {}).get("step", 0) >= 3,
                   what="the job running at step 3")
    finally:
        daemon.kill()
        daemon.wait(timeout=15)
    # The next daemon dies right after it recovered the job: what it left must not say "running".
    again = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_CRASH_AT="recovered"))
    assert again.returncode == -9
    status = _status(root)
    assert status["daemon"]["pid"] != daemon.pid and status["running"] is None
    [progress] = (root.path / "processing").glob("*/progress.json")
    assert json.loads(progress.read_text())["stage"] == "queued"
    assert "Running:" not in root.cli("status").stdout
    assert root.cli("run", "--once", fake=True).returncode == 0
    assert [root.metadata(r)["source"] for r in root.results()] == ["a.toml"]


def test_log_lines_omit_empty_fields_carry_a_time_zone_and_a_results_log_ends_delivered(root: Root) -> None:
    import re

    _drop(root, "a.toml", f'prompt = "a"\n{SMALL}')
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "=None" not in run.stderr and "load_s=0.0" not in run.stderr, run.stderr
    offset = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$")
    lines = [json.loads(line) for line in (root.path.parent / "logs" / "hotfolder.log").read_text().splitlines()]
    assert lines and all(offset.match(line["timestamp"]) for line in lines), lines[0]["timestamp"]
    assert not [line for line in lines if None in line.values()]
    [result] = root.results()
    last = (result / "a.log").read_text().splitlines()[-1]
    assert "delivered" in last and str(result / "a.mp4") in last, last

