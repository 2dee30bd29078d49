"""`hotfolder submit` and `validate` as a person runs them: real CLI processes on a real root.

Submit checks a job with the daemon's own rules (parser, attached files, speech engine,
weights) and places it with one rename that never overwrites, so what it drops is what
the daemon will run, and nothing it accepted is ever lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Root, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PRESETS = ("linkedin", "tiktok", "instagram")
SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'


@pytest.fixture
def tiny(root: Root) -> Root:
    """A root whose default model is the built-in tiny one: its weights are always here."""
    root.write_config(model="tiny")
    return root


def _jobs(root: Root) -> list[str]:
    """What the inbox holds (files and folders, in preset folders too), as inbox-relative names."""
    found = []
    for p in sorted(root.inbox.rglob("*")):
        rel = p.relative_to(root.inbox)
        if rel.parts[0].startswith(".") or (p.is_dir() and len(rel.parts) == 1 and rel.parts[0] in PRESETS):
            continue
        found.append(rel.as_posix())
    return found


def _staged(root: Root) -> list[str]:
    """What submit left half-made in inbox/.incoming/ (must be nothing)."""
    incoming = root.inbox / ".incoming"
    return sorted(p.name for p in incoming.iterdir()) if incoming.is_dir() else []


def _unread(pipe) -> int:
    """Bytes written to a pipe that its reader has not read yet (0 where the system cannot tell)."""
    import fcntl
    import struct
    import termios

    try:
        return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _no_traceback(run: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr


# -- 12.6: submit never overwrites ---------------------------------------------------------------------
def test_twenty_submits_of_the_same_name_at_the_same_moment_give_twenty_jobs(tiny: Root) -> None:
    """Twenty processes wait on their standard input, then all get it at once: twenty jobs, none lost."""
    cmd = [sys.executable, "-m", "hotfolder", "submit", "-", "--name", "same", "--root", str(tiny.path),
           "--config", str(tiny.config)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=tiny.env()) for _ in range(20)]
    try:
        # Each one reads standard input before it stages anything, to its end: once every pipe is
        # drained, all twenty are blocked on the end of input, and closing the pipes starts them together.
        for p in procs:
            p.stdin.write("A lighthouse in a storm\n")
            p.stdin.flush()
        wait_until(lambda: all(_unread(p.stdin) == 0 for p in procs), timeout=60, what="all twenty to read stdin")
        for p in procs:
            p.stdin.close()
        results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
    assert [code for code, _, _ in results] == [0] * 20, [err for _, _, err in results if err]
    names = _jobs(tiny)
    assert len(names) == 20 and names[0] == "same 10.toml" and "same.toml" in names, names
    # Every job file is a whole job, and each says where it went.
    for name in names:
        assert 'prompt = "A lighthouse in a storm"' in (tiny.inbox / name).read_text()
    printed = sorted(out.split("submitted ", 1)[1].split(" (")[0] for _, out, _ in results)
    assert printed == sorted(str(tiny.inbox / n) for n in names)


def test_retry_never_overwrites_a_job_that_took_the_name_meanwhile(tiny: Root) -> None:
    (tiny.inbox / "fox.toml").write_text('prompt = "x"\nduraton = 3\n')
    assert tiny.cli("run", "--once", fake=True).returncode == 1
    [failed] = tiny.failures()
    (tiny.inbox / "fox.toml").write_text('prompt = "a newer fox"\n')  # someone dropped a new fox.toml meanwhile
    run = tiny.cli("retry", "fox.toml")
    assert run.returncode == 0, run.stderr
    assert (tiny.inbox / "fox.toml").read_text() == 'prompt = "a newer fox"\n'
    assert "duraton" in (tiny.inbox / "fox 2.toml").read_text()


# -- 12.11: names are made safe or refused, never a traceback -------------------------------------------------
def test_a_name_with_a_slash_is_made_safe(tiny: Root) -> None:
    run = tiny.cli("submit", "A fox in the snow", "--name", "a/b")
    _no_traceback(run)
    assert run.returncode == 0, run.stderr
    assert _jobs(tiny) == ["a_b.toml"]


@pytest.mark.parametrize("name", [".hidden", "draft.tmp", "~$lock"])
def test_a_name_the_daemon_would_never_read_is_refused(tiny: Root, name: str) -> None:
    run = tiny.cli("submit", "A fox in the snow", "--name", name, "--image", str(_image(tiny.path.parent)))
    _no_traceback(run)
    assert run.returncode == 2 and "--name" in run.stderr and "never reads" in run.stderr, run.stderr
    assert _jobs(tiny) == [] and _staged(tiny) == []


def _image(folder: Path) -> Path:
    from PIL import Image

    path = folder / "still.png"
    Image.new("RGB", (64, 64), (200, 40, 20)).save(path)
    return path


# -- 11.1: a folder is a job folder; a missing path is an error, not a prompt ---------------------------------------
def test_a_folder_is_submitted_whole_after_the_daemons_checks(tiny: Root, tmp_path: Path) -> None:
    harbour = tmp_path / "inbox-drafts" / "harbour"
    harbour.mkdir(parents=True)
    _image(harbour)
    (harbour / "harbour.toml").write_text(f'prompt = "Boats in a harbour"\n{SMALL}[image]\nfile = "still.png"\n')
    run = tiny.cli("submit", str(harbour))
    assert run.returncode == 0, run.stderr
    assert _jobs(tiny) == ["harbour", "harbour/harbour.toml", "harbour/still.png"]
    assert (harbour / "harbour.toml").is_file()  # the person's folder stays as it was

    broken = tmp_path / "inbox-drafts" / "broken"
    broken.mkdir()
    (broken / "broken.toml").write_text(f'prompt = "Boats"\n{SMALL}[image]\nfile = "missing.png"\n')
    run = tiny.cli("submit", str(broken))
    assert run.returncode == 2 and 'image.file = "missing.png" is not in the job\'s folder' in run.stderr, run.stderr
    assert "broken" not in _jobs(tiny) and _staged(tiny) == []


def test_a_path_that_does_not_exist_is_an_error_unless_p_says_it_is_a_prompt(tiny: Root, tmp_path: Path) -> None:
    for given in ("inbox-drafts/harbour", str(tmp_path / "nowhere" / "lake.toml"), "lake.toml"):
        run = tiny.cli("submit", given)
        _no_traceback(run)
        assert run.returncode == 2 and "no such file or folder" in run.stderr and "-p" in run.stderr, run.stderr
    assert _jobs(tiny) == []
    run = tiny.cli("submit", "-p", "inbox-drafts/harbour")
    assert run.returncode == 0, run.stderr
    [job] = _jobs(tiny)
    assert 'prompt = "inbox-drafts/harbour"' in (tiny.inbox / job).read_text()


def test_a_prompt_of_ordinary_words_is_still_a_prompt(tiny: Root) -> None:
    run = tiny.cli("submit", "24/7 city lights at night, rain")
    assert run.returncode == 0, run.stderr
    [job] = _jobs(tiny)
    assert 'prompt = "24/7 city lights at night, rain"' in (tiny.inbox / job).read_text()


# -- 11.3: submit checks what validate checks, single-file jobs too -----------------------------------------------
def test_narration_without_a_speech_engine_is_refused_with_validates_message(tiny: Root, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = tiny.env(PATH=str(empty))  # no say, no espeak-ng, nothing
    run = tiny.cli("submit", "A lighthouse in a storm", "--tts", "Every night, the light came back.", env=env)
    _no_traceback(run)
    assert run.returncode == 2, run.stderr
    assert _jobs(tiny) == [] and _staged(tiny) == []

    job = tmp_path / "lighthouse.toml"
    job.write_text('prompt = "A lighthouse in a storm"\n[audio]\ntts = "Every night, the light came back."\n')
    check = tiny.cli("validate", str(job), env=env)
    assert check.returncode == 2
    said = [line.split(": ", 1)[1] for line in check.stdout.splitlines() if "audio.tts" in line]
    assert said and said[0] in run.stderr and "espeak-ng" in said[0]


# -- 11.4: missing weights are said before the first drop -------------------------------------------------------------
def test_a_job_whose_weights_are_missing_is_refused_with_the_pull_command_and_size(root: Root) -> None:
    run = root.cli("submit", "A paper boat on a rainy street")  # the default model, ltx-2, is not downloaded
    _no_traceback(run)
    assert run.returncode == 2, run.stderr
    assert "hotfolder models pull ltx-2" in run.stderr and "42 GB" in run.stderr
    assert str(root.home / "hf" / "hub") in run.stderr  # where it looked: HF_HOME of this shell
    assert _jobs(root) == []


def test_models_the_daemon_serves_without_downloads_are_accepted(root: Root, tmp_path: Path) -> None:
    assert root.cli("submit", "A paper boat", "--model", "tiny").returncode == 0
    weights = tmp_path / "my-weights"
    weights.mkdir()
    run = root.cli("submit", "A paper boat", "--model", str(weights))
    assert run.returncode == 0, run.stderr
    assert len(_jobs(root)) == 2


# -- 11.5: presets outside the inbox -------------------------------------------------------------------------------
def test_a_file_in_a_folder_named_after_a_preset_gets_that_preset(tiny: Root) -> None:
    example = EXAMPLES / "presets" / "tiktok" / "skate-trick.txt"
    check = tiny.cli("validate", str(example))
    assert check.returncode == 0, check.stdout
    assert "applying preset tiktok (from the folder name)" in check.stdout
    assert "352x640" in check.stdout  # 9:16 at half size (preview), not linkedin's 640x352

    run = tiny.cli("submit", str(example))
    assert run.returncode == 0, run.stderr
    assert "applying preset tiktok (from the folder name)" in run.stderr
    assert _jobs(tiny) == ["tiktok/skate-trick.txt"]  # the daemon applies inbox/tiktok/ as it always has


def test_submit_preset_drops_into_the_preset_folder_and_refuses_an_unknown_one(tiny: Root) -> None:
    run = tiny.cli("submit", "A cup of coffee on a table", "--preset", "instagram")
    assert run.returncode == 0, run.stderr
    assert _jobs(tiny) == ["instagram/a-cup-of-coffee-on-a.toml"]
    bad = tiny.cli("submit", "A cup of coffee", "--preset", "instagarm")
    assert bad.returncode == 2 and "did you mean 'instagram'" in bad.stderr, bad.stderr
    assert len(_jobs(tiny)) == 1


def test_the_preset_flag_wins_over_the_folder_name(tiny: Root) -> None:
    example = EXAMPLES / "presets" / "tiktok" / "skate-trick.txt"
    check = tiny.cli("validate", str(example), "--preset", "instagram")
    assert check.returncode == 0 and "applying preset instagram (--preset)" in check.stdout and "352x352" in check.stdout


# -- 11.12: jobs from standard input are named after the prompt ----------------------------------------------------------
def test_a_job_from_stdin_is_named_from_the_prompts_first_words(tiny: Root) -> None:
    run = tiny.cli("submit", "-", input="A lighthouse in a storm, waves crashing\n")
    assert run.returncode == 0, run.stderr
    assert _jobs(tiny) == ["a-lighthouse-in-a-storm-waves.toml"]


# -- 11.7: --wait shows the daemon's real stages -------------------------------------------------------------------------
def test_wait_prints_one_plain_line_per_stage_when_not_a_terminal(tiny: Root) -> None:
    """A first job keeps the daemon busy, so the second is seen queued, then running; then the MP4."""
    daemon = tiny.start(fake=True, env=tiny.env(HOTFOLDER_FAKE_STEP_S="0.15"))
    try:
        (tiny.inbox / "first.toml").write_text(f'prompt = "A first job"\n{SMALL.replace("steps = 2", "steps = 12")}')
        wait_until(lambda: (json.loads((tiny.path / "status.json").read_text()).get("running")
                            if (tiny.path / "status.json").exists() else None), timeout=60, what="the first job")
        job = tiny.path.parent / "a-second-job.toml"
        job.write_text(f'prompt = "A second job"\n{SMALL.replace("steps = 2", "steps = 6")}')
        run = tiny.cli("submit", str(job), "--wait", "--timeout", "90", fake=True, timeout=120)
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip().splitlines()[-1]).suffix == ".mp4"
    lines = [line for line in run.stderr.splitlines() if "a-second-job.toml:" in line]
    assert "\r" not in run.stderr
    assert any("queued" in line and "position 1" in line for line in lines), run.stderr
    assert any("step" in line and "/6" in line for line in lines) or any("generat" in line for line in lines), lines
    assert len(lines) == len(set(lines)) and len(lines) <= 12, lines  # a line per change, not per poll


def test_wait_draws_a_tqdm_bar_on_a_terminal(tiny: Root) -> None:
    """stderr a terminal (a pty here): one bar redrawn in place, with the steps and the time left."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    from conftest import TESTS

    daemon = tiny.start(fake=True, env=tiny.env(HOTFOLDER_FAKE_STEP_S="0.2"))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    job = tiny.path.parent / "a-lantern-on-a-pier.toml"
    job.write_text(f'prompt = "A lantern on a pier"\n{SMALL.replace("steps = 2", "steps = 6")}')
    cmd = [sys.executable, str(TESTS / "run_daemon.py"), "submit", "--root", str(tiny.path), "--config",
           str(tiny.config), str(job), "--wait", "--timeout", "90"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, text=True, env=tiny.env())
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        out = proc.communicate(timeout=30)[0]
    finally:
        os.close(master)
        daemon.terminate()
        daemon.wait(timeout=15)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert Path(out.strip().splitlines()[-1]).suffix == ".mp4"
    text = seen.decode(errors="replace")
    assert "\r" in text and "a-lantern-on-a-pier.toml: generating:" in text and "%|" in text and "/6 [" in text, text


def test_a_live_daemon_that_says_it_serves_another_model_is_believed(root: Root) -> None:
    """`hotfolder run --model tiny` by hand: jobs that name no model get tiny there, whatever config.toml says."""
    (root.path / "status.json").write_text(json.dumps({"daemon": {
        "state": "running", "pid": os.getpid(), "heartbeat_unix": time.time() + 30, "model": "tiny",
        "backend": "auto"}, "queue": [], "running": None, "recent": []}))
    run = root.cli("submit", "A paper boat")
    assert run.returncode == 0, run.stderr
    (root.path / "status.json").unlink()
    assert root.cli("submit", "A paper boat").returncode == 2  # no daemon: the config's ltx-2 is judged
