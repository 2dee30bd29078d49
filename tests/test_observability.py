"""What a person and a script can see: JSON logs with job ids, status, progress, polling, the corrupt cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import Root, wait_until

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'


def _drop(root: Root, rel: str, text: str) -> None:
    path = root.inbox / rel
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.rename(tmp, path)


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
        [progress_file] = (root.path / "processing").glob("*/progress.json")
        progress = json.loads(progress_file.read_text())
        assert progress["total_steps"] == 60 and 0 < progress["percent"] <= 100 and progress["eta_s"] is not None
        human = root.cli("status")
        assert "Daemon running" in human.stdout and "first.toml" in human.stdout and "urgent.toml" in human.stdout
        as_json = json.loads(root.cli("status", "--json").stdout)
        assert as_json["alive"] is True
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=15) == 0
    after = root.cli("status")
    assert "No daemon running" in after.stdout and "stopped" in after.stdout


def test_polling_mode_finds_jobs_without_file_events(root: Root) -> None:
    root.write_config(rescan_seconds=60.0)  # only the PollingObserver can wake the daemon in time
    daemon = root.start("--poll", fake=True)
    try:
        wait_until(lambda: (root.path / "status.json").exists(), what="the daemon")
        _drop(root, "polled.toml", f'prompt = "polled"\n{SMALL}')
        wait_until(root.results, timeout=20, what="the polled job")
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
