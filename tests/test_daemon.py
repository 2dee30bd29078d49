"""The real daemon process (fake backend): slow writers, bad input, symlinks, locks, signals, submit."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import Root, drop as _drop, wait_until


SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'


def test_a_slow_writer_is_not_claimed_before_the_file_is_complete(root: Root) -> None:
    root.write_config(settle_seconds=2.0)  # each pause (0.1 s) a twentieth of it: a loaded machine cannot close the gap
    daemon = root.start(fake=True)
    try:
        text = f'prompt = "A lighthouse in a storm, waves crashing over the rocks"\n{SMALL}'
        path = root.inbox / "slow.toml"
        with open(path, "w") as f:  # a few bytes at a time, for longer than settle_seconds in all
            for i in range(0, len(text), 4):
                f.write(text[i:i + 4])
                f.flush()
                assert not any((root.path / "processing").iterdir()), f"claimed after {i} bytes"
                time.sleep(0.1)
        wait_until(lambda: root.results() or root.failures(), timeout=30, what="the slow job to finish")
        assert root.failures() == [], (root.failures()[0] / "error.txt").read_text()
        [result] = root.results()
        assert (result / "slow.toml").read_text() == text  # the claim took the whole file
        assert root.metadata(result)["prompt"].endswith("over the rocks")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


BAD_INPUTS: list[tuple[str, bytes, str]] = [
    ("syntax.toml", b'prompt = "a cat"\nduration = \n', "line 2"),
    ("unknown-key.toml", b'prompt = "a cat"\nduraton = 3\n', "did you mean 'duration'"),
    ("wrong-type.toml", b'prompt = "a cat"\nfps = "fast"\n', "fps"),
    ("negative-duration.toml", b'prompt = "a cat"\nduration = -3\n', "duration"),
    ("zero-duration.toml", b'prompt = "a cat"\nduration = 0\n', "duration"),
    ("huge-duration.toml", b'prompt = "a cat"\nduration = 100000\n', "duration"),
    ("zero-fps.toml", b'prompt = "a cat"\nfps = 0\n', "fps"),
    ("huge-fps.toml", b'prompt = "a cat"\nfps = 10000\n', "fps"),
    ("empty-prompt.toml", b'prompt = "   "\n', "prompt"),
    ("zero-bytes.toml", b"", "empty"),
    ("binary.toml", bytes(range(256)) * 4, "text"),
    ("too-big.txt", b"a very long prompt " * 200, "bytes"),
    ("latin1.txt", "Un caf\u00e9 au bord du lac".encode("latin-1"), "UTF-8"),
    ("image.toml", b'prompt = "a cat"\n[image]\nfile = "../cat.png"\n', "leaves the job's folder"),
]


def test_every_bad_input_fails_with_a_message_and_the_daemon_keeps_serving(root: Root) -> None:
    root.write_config(max_prompt_bytes=2000)
    for name, data, _ in BAD_INPUTS:
        _drop(root, name, data)
    (root.path / "target.txt").write_text("a prompt outside the inbox")
    os.symlink(root.path / "target.txt", root.inbox / "link.txt")
    _drop(root, "good.toml", f'prompt = "A good job after all the bad ones"\n{SMALL}')
    run = root.cli("run", "--once", fake=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr  # --once: some jobs failed
    assert [root.metadata(r)["source"] for r in root.results()] == ["good.toml"]
    errors = {}
    for folder in root.failures():
        err = json.loads((folder / "error.json").read_text())
        errors[err["source"]] = (folder, err, (folder / "error.txt").read_text())
    assert set(errors) == {name for name, _, _ in BAD_INPUTS} | {"link.txt"}
    for name, data, expected in BAD_INPUTS:
        folder, err, text = errors[name]
        assert expected.lower() in text.lower(), f"{name}: {text}"
        assert name in text
        assert err["status"] == "invalid" and err["retried"] is False
        assert (folder / name).read_bytes() == data  # the original, untouched
    folder, err, text = errors["link.txt"]
    assert "symbolic link" in text
    assert (folder / "link.txt").is_symlink()  # moved as a link, never followed
    assert (root.path / "target.txt").read_text() == "a prompt outside the inbox"
    assert list((root.path / "processing").iterdir()) == []


def test_syntax_errors_give_line_and_column_in_error_json(root: Root) -> None:
    _drop(root, "broken.toml", 'prompt = "a cat"\nduration = = 3\n')
    root.cli("run", "--once", fake=True)
    [folder] = root.failures()
    [problem] = json.loads((folder / "error.json").read_text())["problems"]
    assert problem["line"] == 2 and problem["column"]


def test_results_with_the_same_name_never_overwrite_each_other(root: Root) -> None:
    for n in range(3):
        _drop(root, f"take{n}.toml", f'prompt = "take {n}"\n{SMALL}seed = {n}\n[output]\nname = "same"\n')
    assert root.cli("run", "--once", fake=True).returncode == 0
    results = root.results()
    assert len(results) == 3 and len({r.name for r in results}) == 3
    assert sorted(root.metadata(r)["prompt"] for r in results) == ["take 0", "take 1", "take 2"]


def test_a_preset_subfolder_applies_its_format(root: Root) -> None:
    _drop(root, "tiktok/dance.txt", "A dancer on a rooftop at sunset")
    root.write_config(defaults={"duration": 0.5, "fps": 8, "mode": "preview"})
    assert root.cli("run", "--once", fake=True).returncode == 0
    [result] = root.results()
    meta = root.metadata(result)
    assert (meta["format"], meta["width"], meta["height"]) == ("tiktok", 352, 640)
    assert meta["source"] == "tiktok/dance.txt"


def test_a_second_daemon_on_the_same_root_is_refused(root: Root) -> None:
    first = root.start(fake=True)
    try:
        wait_until(lambda: (root.path / "status.json").exists(), what="the first daemon's status.json")
        second = root.cli("run", fake=True, timeout=30)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "already running" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=15)


def test_sigterm_mid_job_exits_quickly_and_the_job_finishes_after_restart(root: Root) -> None:
    env = root.env(HOTFOLDER_FAKE_STEP_S="0.5")
    _drop(root, "long.toml", 'prompt = "a long job"\nwidth = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 40\n')
    daemon = root.start(fake=True, env=env)
    progress = lambda: list((root.path / "processing").glob("*/progress.json"))  # noqa: E731
    wait_until(lambda: any(json.loads(p.read_text()).get("step", 0) >= 1 for p in progress()), what="a step")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    # The order of events, not a duration: it stopped mid-job (20 s of steps), at a step, and kept the job.
    [job] = (root.path / "processing").iterdir()
    assert [a.get("outcome") for a in json.loads((job / "job.json").read_text())["attempts"]] == ["stopped"]
    assert json.loads((job / "progress.json").read_text())["step"] < 40 and root.results() == []
    again = root.cli("run", "--once", fake=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [root.metadata(r)["source"] for r in root.results()] == ["long.toml"]


def test_a_backend_failure_is_retried_then_delivered(root: Root) -> None:
    root.write_config(max_attempts=3, retry_backoff_seconds=0.1)
    _drop(root, "flaky.toml", f'prompt = "a flaky job"\n{SMALL}')
    run = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_FAIL="2"))
    assert run.returncode == 0, run.stdout + run.stderr
    [result] = root.results()
    log = next(result.glob("*.log")).read_text()
    assert log.count("attempt failed") == 2 and "will retry" in log and "delivering" in log
    assert root.failures() == []


def test_a_backend_that_keeps_failing_goes_to_failed_with_the_history(root: Root) -> None:
    root.write_config(max_attempts=2, retry_backoff_seconds=0.1)
    _drop(root, "doomed.toml", f'prompt = "a doomed job"\n{SMALL}')
    run = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_FAIL="2"))
    assert run.returncode == 1
    assert root.results() == []
    [folder] = root.failures()
    error = json.loads((folder / "error.json").read_text())
    assert error["kind"] == "backend" and len(error["attempts"]) == 2
    assert all("fake failure" in a["error"] for a in error["attempts"])
    text = (folder / "error.txt").read_text()
    assert "Attempts: 2" in text and "What to do:" in text
    assert (folder / "doomed.toml").is_file()


def test_submit_wait_prints_the_mp4_path_last(root: Root) -> None:
    daemon = root.start(fake=True)
    try:
        out = root.cli("submit", "A paper boat on a rainy street", "--duration", "0.5", "--name", "boat",
                       "--wait", "--timeout", "60", fake=True)
        assert out.returncode == 0, out.stderr
        last = out.stdout.strip().splitlines()[-1]
        assert last.endswith("boat.mp4") and Path(last).is_file()
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_submit_reads_the_prompt_from_stdin_and_rejects_what_the_daemon_would(root: Root) -> None:
    root.write_config(model="tiny")  # no daemon to ask: submit judges by the config, whose model needs no download
    ok = root.cli("submit", "-", "--format", "tiktok", fake=True, input="A fox in the snow\n")
    assert ok.returncode == 0, ok.stderr
    [job] = [p for p in root.inbox.glob("*.toml")]
    assert 'prompt = "A fox in the snow"' in job.read_text() and 'format = "tiktok"' in job.read_text()
    bad = root.cli("submit", "A fox", "--duration", "-1", fake=True)
    assert bad.returncode == 2 and "duration" in bad.stderr
    assert len(list(root.inbox.glob("*.toml"))) == 1


def test_validate_prints_the_daemons_messages_and_exits_2(root: Root, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('prompt = "a cat"\nduration = 5\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('prompt = "a cat"\nformat = "tiktock"\n')
    out = root.cli("validate", str(good), str(bad))
    assert out.returncode == 2
    assert "ok" in out.stdout and "121 frames" in out.stdout and "num_frames 120 -> 121" in out.stdout
    assert "did you mean 'tiktok'" in out.stdout
    assert root.cli("validate", str(good)).returncode == 0


def test_status_says_when_no_daemon_runs(root: Root) -> None:
    out = root.cli("status")
    assert out.returncode == 0 and "No daemon" in out.stdout


def test_the_same_job_twice_generates_once_and_the_hit_never_loads_the_model(root: Root, tmp_path: Path) -> None:
    loads = tmp_path / "loads.txt"
    env = root.env(HOTFOLDER_FAKE_LOADS=str(loads))
    job = f'prompt = "A windmill in a field of tulips"\n{SMALL}'
    _drop(root, "first.toml", job)
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    # Same request, other name, no GIF: post-processing is not in the key.
    _drop(root, "second.toml", job + '[output]\nname = "again"\ngif = false\n')
    second = root.cli("run", "--once", fake=True, env=env)
    assert second.returncode == 0, second.stderr
    metas = {root.metadata(r)["source"]: root.metadata(r) for r in root.results()}
    first_meta, second_meta = metas["first.toml"], metas["second.toml"]
    assert first_meta["cache_hit"] is False and second_meta["cache_hit"] is True
    assert first_meta["cache_key"] == second_meta["cache_key"]
    assert second_meta["timings"]["load_s"] == 0 and second_meta["outputs"]["video"] == "again.mp4"
    assert len(loads.read_text().splitlines()) == 1  # only the first daemon run loaded the model
    # Any change to what makes the pixels misses.
    _drop(root, "third.toml", job.replace("tulips", "roses"))
    assert root.cli("run", "--once", fake=True, env=env).returncode == 0
    assert len(loads.read_text().splitlines()) == 2
    stats = root.cli("cache", "stats", "--json")
    data = json.loads(stats.stdout)
    assert (data["entries"], data["hits"]) == (2, 1)


def test_cache_false_and_refresh_regenerate(root: Root, tmp_path: Path) -> None:
    loads = tmp_path / "loads.txt"
    env = root.env(HOTFOLDER_FAKE_LOADS=str(loads))
    job = f'prompt = "A kite over the beach"\n{SMALL}'
    _drop(root, "a.toml", job)
    root.cli("run", "--once", fake=True, env=env)
    _drop(root, "b.toml", job + "cache = false\n")
    _drop(root, "c.toml", job + 'cache = "refresh"\n')
    root.cli("run", "--once", fake=True, env=env)
    metas = {root.metadata(r)["source"]: root.metadata(r) for r in root.results()}
    assert [metas[s]["cache_hit"] for s in ("a.toml", "b.toml", "c.toml")] == [False, False, False]
    assert len(loads.read_text().splitlines()) == 2


def test_an_idle_daemon_unloads_the_model_and_reloads_for_the_next_job(root: Root, tmp_path: Path) -> None:
    loads = tmp_path / "loads.txt"
    root.write_config(idle_unload_minutes=0.01)  # 0.6 s
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_LOADS=str(loads)))
    try:
        _drop(root, "one.toml", f'prompt = "one"\n{SMALL}')
        wait_until(lambda: len(root.results()) == 1, what="the first job")
        log = root.path.parent / "logs" / "hotfolder.log"  # the unload itself, not a status.json from before it
        wait_until(lambda: "idle: unloading the model" in log.read_text(), what="idle unload")
        status = root.path / "status.json"
        wait_until(lambda: json.loads(status.read_text())["daemon"]["model_loaded"] == [], what="status says so")
        _drop(root, "two.toml", f'prompt = "two"\n{SMALL}')
        wait_until(lambda: len(root.results()) == 2, what="the second job")
        assert len(loads.read_text().splitlines()) == 2  # loaded, unloaded when idle, loaded again
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_two_identical_jobs_in_the_queue_generate_once(root: Root, tmp_path: Path) -> None:
    loads = tmp_path / "loads.txt"
    job = f'prompt = "A lantern on a pier"\n{SMALL}'
    _drop(root, "one.toml", job)
    _drop(root, "two.toml", job)
    assert root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_LOADS=str(loads))).returncode == 0
    hits = sorted(root.metadata(r)["cache_hit"] for r in root.results())
    assert hits == [False, True] and len(loads.read_text().splitlines()) == 1


def test_run_warns_at_start_when_the_default_models_weights_are_not_here(root: Root) -> None:
    # The real model table and an empty Hugging Face cache (HF_HOME in the test's home): nothing is downloaded.
    run = root.cli("run", "--once", "--backend", "diffusers")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "hotfolder models pull ltx-2" in run.stderr and "42" in run.stderr
    tiny = root.cli("run", "--once", "--backend", "diffusers", "--model", "tiny")
    assert tiny.returncode == 0 and "models pull" not in tiny.stderr
