"""The command line behaves like its peers: real `hotfolder` processes, as a person or a script runs them.

Global options before or after the command, help per command, unknown flags refused,
no traceback on a closed pipe, the root in use said, `status --watch`, `retry --all`,
and submit's generation flags.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Root, wait_until


def hotfolder(root: Root, *args: str, input: str | None = None, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m hotfolder ARGS` exactly as given (root.cli puts --root after the command itself)."""
    return subprocess.run([sys.executable, "-m", "hotfolder", *args], capture_output=True, text=True, input=input,
                          timeout=timeout, env=env or root.env(), cwd=root.path.parent)


@pytest.fixture
def tiny(root: Root) -> Root:
    root.write_config(model="tiny")
    return root


def _jobs(root: Root) -> list[Path]:
    return sorted(p for p in root.inbox.iterdir() if not p.name.startswith(".") and p.is_file())


# -- global options, help, unknown flags --------------------------------------------------------------------------
def test_global_options_go_before_or_after_the_command(tiny: Root) -> None:
    for args in (["--root", str(tiny.path), "--config", str(tiny.config), "status"],
                 ["status", "--root", str(tiny.path), "--config", str(tiny.config)],
                 [f"--root={tiny.path}", "status", f"--config={tiny.config}"]):
        run = hotfolder(tiny, *args)
        assert run.returncode == 0, (args, run.stderr)
        assert f"Root: {tiny.path} (flag --root)" in run.stdout, (args, run.stdout)


def test_options_and_inputs_may_mix_and_a_prompt_may_begin_with_a_dash_after_double_dash(tiny: Root) -> None:
    run = hotfolder(tiny, "--root", str(tiny.path), "submit", "A fox in the snow", "--config", str(tiny.config),
                    "--format", "tiktok", "A hare in the snow")
    assert run.returncode == 0, run.stderr
    assert [p.name for p in _jobs(tiny)] == ["a-fox-in-the-snow.toml", "a-hare-in-the-snow.toml"]
    run = hotfolder(tiny, "submit", "--root", str(tiny.path), "--config", str(tiny.config), "--name", "dash", "--",
                    "-a fox, seen from above")
    assert run.returncode == 0, run.stderr
    assert 'prompt = "-a fox, seen from above"' in (tiny.inbox / "dash.toml").read_text()


def test_each_command_has_its_own_help(tiny: Root) -> None:
    submit = hotfolder(tiny, "submit", "--help")
    assert submit.returncode == 0 and "--tts" in submit.stdout and "--negative-prompt" in submit.stdout
    assert "--root" in submit.stdout and "--quick-action" not in submit.stdout and "--watch" not in submit.stdout
    cancel = hotfolder(tiny, "cancel", "--help")
    assert cancel.returncode == 0 and "--root" in cancel.stdout and "--tts" not in cancel.stdout
    status = hotfolder(tiny, "status", "-h")
    assert "--watch" in status.stdout and "--format" not in status.stdout


def test_unknown_flags_are_refused_with_exit_2(tiny: Root) -> None:
    for args in (["status", "--bogus"], ["submit", "A fox", "--durration", "3"], ["--bogus", "status"]):
        run = hotfolder(tiny, *args, "--root", str(tiny.path))
        assert run.returncode == 2 and "unrecognized arguments" in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    assert _jobs(tiny) == []


def test_a_closed_pipe_ends_quietly(tiny: Root) -> None:
    """`hotfolder config show | head -1`: the reader is gone before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "hotfolder", "config", "show", "--root", str(tiny.path),
                               "--config", str(tiny.config)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=tiny.env())
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr


def test_head_reads_the_first_line_and_nothing_complains(tiny: Root) -> None:
    shell = f'"{sys.executable}" -m hotfolder config show --root "{tiny.path}" --config "{tiny.config}" | head -1'
    run = subprocess.run(["/bin/sh", "-c", shell], capture_output=True, text=True, timeout=60, env=tiny.env())
    assert run.returncode == 0 and run.stdout.startswith("# config file:") and run.stderr == "", run.stderr


# -- submit's output and flags -------------------------------------------------------------------------------------------
def test_submit_prints_the_job_id_and_the_path(tiny: Root) -> None:
    run = tiny.cli("submit", "A paper boat", "--name", "boat")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"submitted {tiny.inbox / 'boat.toml'} (job boat.toml)"


def test_the_generation_flags_become_job_keys(tiny: Root) -> None:
    run = tiny.cli("submit", "A fox", "--name", "fox", "--negative-prompt", "blurry, text", "--steps", "4", "--fps",
                   "12", "--width", "256", "--height", "128", "--seed", "7")
    assert run.returncode == 0, run.stderr
    import tomllib

    job = tomllib.loads((tiny.inbox / "fox.toml").read_text())
    assert job == {"prompt": "A fox", "negative_prompt": "blurry, text", "steps": 4, "fps": 12, "width": 256,
                   "height": 128, "seed": 7, "output": {"name": "fox"}}
    for bad, says in ((["--steps", "500"], "steps = 500 is not allowed"),
                      (["--fps", "0"], "must be greater than 0"),
                      (["--width", "256"], "--width and --height together"),
                      (["--guidance", "3"], "guidance is not a job key")):
        run = tiny.cli("submit", "A fox", *bad)
        assert run.returncode == 2 and says in run.stderr, (bad, run.stderr)
    assert [p.name for p in _jobs(tiny)] == ["fox.toml"]


# -- the root in use ---------------------------------------------------------------------------------------------------------
def test_config_path_and_status_say_which_root_is_used(root: Root) -> None:
    env = root.env()
    env.pop("HOTFOLDER_ROOT", None)
    run = subprocess.run([sys.executable, "-m", "hotfolder", "config", "path", "--config", str(root.config)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()[:2]
    assert first == str(root.config)
    default = "Movies" if sys.platform == "darwin" else "Videos"
    assert second.startswith(f"root: {root.home / default / 'Hotfolder'} (the default on ")
    run = subprocess.run([sys.executable, "-m", "hotfolder", "status", "--config", str(root.config)],
                         capture_output=True, text=True, timeout=60, env={**env, "HOTFOLDER_ROOT": str(root.path)})
    assert run.stdout.splitlines()[0] == f"Root: {root.path} (env HOTFOLDER_ROOT)"


# -- status: never a dead daemon's job as running; --watch --------------------------------------------------------------------
def test_status_never_shows_a_dead_daemons_job_as_running(tiny: Root) -> None:
    claimed = tiny.path / "processing" / "20260101-000000-abc123"
    claimed.mkdir(parents=True)
    (claimed / "job.json").write_text(json.dumps({"job_id": "20260101-000000-abc123", "source": "fox.toml"}))
    (tiny.path / "status.json").write_text(json.dumps({
        "daemon": {"state": "running", "pid": 999999, "heartbeat_unix": time.time() - 600,
                   "heartbeat": "2026-01-01T00:00:00"},
        "running": {"job_id": "20260101-000000-abc123", "source": "fox.toml",
                    "progress": {"stage": "generating", "step": 3, "total_steps": 10}},
        "queue": [{"position": 1, "job_id": "x", "source": "hare.toml", "priority": 0}],
        "recent": []}))
    run = tiny.cli("status")
    assert run.returncode == 0
    assert "Running:" not in run.stdout and "Queue:" not in run.stdout, run.stdout
    assert "probably crashed" in run.stdout and "fox.toml (20260101-000000-abc123)" in run.stdout
    assert "they resume when one starts" in run.stdout


def test_status_shows_the_running_jobs_stage_and_step(tiny: Root) -> None:
    daemon = tiny.start(fake=True, env=tiny.env(HOTFOLDER_FAKE_STEP_S="0.3"))
    try:
        (tiny.inbox / "slow.toml").write_text('prompt = "slow"\nwidth = 64\nheight = 64\nduration = 0.5\nfps = 16\n'
                                              'steps = 20\n')
        out = wait_until(lambda: (lambda r: r.stdout if "step " in r.stdout else None)(tiny.cli("status")),
                         timeout=60, interval=0.2, what="status to show a step")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    line = next(line for line in out.splitlines() if line.startswith("Running:"))
    assert "slow.toml" in line and "/20" in line, out


def test_status_watch_refreshes_until_interrupted(tiny: Root, tmp_path: Path) -> None:
    daemon = tiny.start(fake=True)
    out_file = tmp_path / "watch.txt"
    try:
        with out_file.open("w") as out:
            watch = subprocess.Popen([sys.executable, "-m", "hotfolder", "status", "--watch", "--interval", "0.2",
                                      "--root", str(tiny.path), "--config", str(tiny.config)],
                                     stdout=out, stderr=subprocess.PIPE, text=True, env=tiny.env())
        try:
            wait_until(lambda: out_file.read_text().count("Daemon running") >= 2, timeout=60,
                       what="two refreshes that see the daemon")
            (tiny.inbox / "fox.toml").write_text('prompt = "fox"\nwidth = 64\nheight = 64\nduration = 0.5\nsteps = 2\n')
            wait_until(lambda: "done   fox.toml" in out_file.read_text(), timeout=60, what="the result in the watch")
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        assert "Traceback" not in watch.stderr.read()
        watch.stderr.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_status_watch_into_a_pipe_ends_when_the_reader_goes(tiny: Root) -> None:
    """`hotfolder status --watch | head -3`: the report does not change, yet the watch ends with the pipe."""
    read_end, write_end = os.pipe()
    watch = subprocess.Popen([sys.executable, "-m", "hotfolder", "status", "--watch", "--interval", "0.1",
                              "--root", str(tiny.path), "--config", str(tiny.config)],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, env=tiny.env())
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            assert b"Root: " in reader.read1(4096)
        assert watch.wait(timeout=30) == 141
        assert watch.stderr.read() == ""
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        watch.stderr.close()


# -- retry --all ----------------------------------------------------------------------------------------------------------------
def test_retry_all_moves_every_failed_job_back(tiny: Root) -> None:
    for name in ("a", "b", "c"):
        (tiny.inbox / f"{name}.toml").write_text(f'prompt = "{name}"\nduraton = 3\n')
    assert tiny.cli("run", "--once", fake=True).returncode == 1
    assert len(tiny.failures()) == 3
    run = tiny.cli("retry", "--all")
    assert run.returncode == 0, run.stderr
    assert [p.name for p in _jobs(tiny)] == ["a.toml", "b.toml", "c.toml"] and tiny.failures() == []
    assert tiny.cli("retry").returncode == 2
    nothing = tiny.cli("retry", "--all")
    assert nothing.returncode == 0 and "no failed jobs" in nothing.stdout


# -- demo ------------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_ends_with_the_path_of_an_mp4(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTFOLDER_")}
    env.update(HOME=str(tmp_path), HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "hotfolder", "demo"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    last = Path(out.stdout.strip().splitlines()[-1])
    assert last.suffix == ".mp4" and last.is_file()


# -- packaging: a wheel in a fresh venv ------------------------------------------------------------------------------
RENDER = r"""
import json, sys
from pathlib import Path
import hotfolder
from hotfolder.config import Config
from hotfolder.service.host import Completed, Host
from hotfolder.service.launchd import render_plist
from hotfolder.service.quick_action import install_quick_action
import plistlib

tmp = Path(sys.argv[1])
calls = []
host = Host(home=tmp / "home", uid=501, platform="darwin", python=Path(sys.executable),
            run=lambda argv: calls.append(list(argv)) or Completed(0), env={})
config = Config(root=tmp / "home" / "Movies" / "Hotfolder")
plist = plistlib.loads(render_plist(config, host))
bundle = install_quick_action(config, host, say=lambda _: None)
print(json.dumps({"package": hotfolder.__file__, "process_type": plist["ProcessType"],
                  "bundle": sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())}))
"""


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_has_its_templates_and_runs_doctor_and_demo(tmp_path: Path) -> None:
    """Built as a user would get it (no checkout around it): templates are package data, not repository files."""
    import shutil
    import site

    project = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(project / name, src / name)
    shutil.copytree(project / "hotfolder", src / "hotfolder", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                            str(dist), str(src)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    [wheel] = dist.glob("hotfolder-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=300)
    python = venv / "bin" / "python"
    # The project venv's packages (torch, diffusers...) without downloads: its site-packages as plain paths,
    # after the fresh venv's own (its .pth files, and so the checkout's editable hotfolder, are not read).
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(purelib, "zz-project-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "PYTHONPATH"))}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    (tmp_path / "home").mkdir()
    exe = venv / "bin" / "hotfolder"

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=tmp_path)

    rendered = subprocess.run([str(python), "-c", RENDER, str(tmp_path)], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    info = json.loads(rendered.stdout.strip().splitlines()[-1])
    assert info["package"].startswith(str(venv)), info  # the wheel's hotfolder, not the checkout's
    assert info["process_type"] == "Standard"
    assert info["bundle"] == ["Contents/Info.plist", "Contents/document.wflow"]

    doctor = run("doctor", "--root", str(tmp_path / "root"))
    assert doctor.returncode in (0, 1) and "Traceback" not in doctor.stderr, doctor.stderr
    for name in ("python", "packages", "backend", "ffmpeg", "root", "agent"):
        assert f" {name} " in doctor.stdout, doctor.stdout
    assert "template" not in doctor.stdout

    demo = run("demo", timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    last = Path(demo.stdout.strip().splitlines()[-1])
    assert last.suffix == ".mp4" and last.is_file()
