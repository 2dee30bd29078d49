"""The login agent: the LaunchAgent plist and the systemd unit as files, and the exact launchctl/systemctl calls.

launchctl and systemctl are replaced by fakes that keep the service manager's state
(loaded or not, bootout finishing late as launchd's does), so install, uninstall and
their idempotence are checked as command lists on any OS. What only a Mac can show
(launchd really starting the job, privacy prompts) is listed in docs/mac.md.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from conftest import Root, needs_tool, wait_until
from hotfolder.commands import agent
from hotfolder.service.host import EXIT_TIMEOUT_S, LABEL, TEMPLATES, Completed, Host, interpreter
from hotfolder.service.launchd import render_plist
from hotfolder.service.privacy import protected_location
from hotfolder.service.quick_action import PBS
from hotfolder.service.systemd import render_unit
from hotfolder.config import Config
from hotfolder.daemon.daemon import STOP_GRACE_S
from hotfolder.errors import HotfolderError, UsageError

UID = 501
PYTHON = Path(os.path.abspath(sys.executable))


class FakeClock:
    """Time that moves only when the code under test sleeps: deadlines without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


class FakeLaunchd:
    """launchctl with the state that matters: which job is loaded, and a bootout that finishes late."""

    def __init__(self, root: Path | None = None, *, linger: int = 2, daemon_writes_status: bool = True):
        self.calls: list[list[str]] = []
        self.loaded = False
        self.linger = linger  # `print` still finds the job this many times after bootout
        self._leaving = 0
        self.root = root
        self.daemon_writes_status = daemon_writes_status
        self.pid = 4242

    def __call__(self, argv: Sequence[str]) -> Completed:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == PBS:
            return Completed(0)
        assert argv[0] == "launchctl", argv
        verb = argv[1]
        if verb == "print":
            assert argv[2] == f"gui/{UID}/{LABEL}"
            if self._leaving:
                self._leaving -= 1
                if self._leaving == 0:
                    self.loaded = False
                return Completed(0, self._print_text("running"))
            if not self.loaded:
                return Completed(113, "", f"Could not find service \"{LABEL}\" in domain for port\n")
            return Completed(0, self._print_text("running"))
        if verb == "bootstrap":
            assert argv[2] == f"gui/{UID}"
            if self.loaded:
                return Completed(5, "", "Bootstrap failed: 5: Input/output error\n")
            plistlib.loads(Path(argv[3]).read_bytes())  # launchd reads the file: it must parse
            self.loaded = True
            self.pid += 1
            if self.daemon_writes_status and self.root is not None:
                _write_status(self.root, self.pid)
            return Completed(0)
        if verb == "bootout":
            if not self.loaded:
                return Completed(3, "", "Boot-out failed: 3: No such process\n")
            self._leaving = self.linger
            if self.linger == 0:
                self.loaded = False
            return Completed(0)
        if verb in ("enable", "kickstart"):
            return Completed(0)
        raise AssertionError(f"unexpected launchctl call {argv}")

    def _print_text(self, state: str) -> str:
        return (f"gui/{UID}/{LABEL} = {{\n\tactive count = 1\n\tpath = /x/{LABEL}.plist\n\ttype = LaunchAgent\n"
                f"\tstate = {state}\n\n\tprogram = {PYTHON}\n\targuments = {{\n\t\t{PYTHON}\n\t\t-m\n\t}}\n\n"
                f"\tpid = {self.pid}\n\tlast exit code = (never exited)\n\tproperties = keepalive | runatload\n}}\n")

    def verbs(self) -> list[list[str]]:
        """The calls that change something (not the `print` polls)."""
        return [c for c in self.calls if c[:2] != ["launchctl", "print"]]


def _write_status(root: Path, pid: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "status.json").write_text(json.dumps(
        {"daemon": {"state": "running", "pid": pid, "heartbeat_unix": time.time()}}))


def _mac(tmp_path: Path, runner, **kw) -> Host:
    clock = FakeClock()
    return Host(home=tmp_path / "home", uid=UID, platform="darwin", python=PYTHON, run=runner,
                env={"HF_HOME": str(tmp_path / "hf")}, clock=clock, sleep=clock.sleep, **kw)


def _config(tmp_path: Path, root: Path | None = None) -> Config:
    return Config(root=root or tmp_path / "home" / "Movies" / "Hotfolder", cache_dir=tmp_path / "cache",
                  log_dir=tmp_path / "logs", state_dir=tmp_path / "state")


# -- the plist -------------------------------------------------------------------------
def test_the_plist_parses_and_carries_every_key_with_the_right_type(tmp_path: Path) -> None:
    host = _mac(tmp_path, FakeLaunchd())
    root = tmp_path / 'home' / 'Movies' / 'My "Videos" & <Co>'  # XML-special characters must survive
    data = plistlib.loads(render_plist(_config(tmp_path, root), host))

    assert data["Label"] == LABEL
    assert data["ProgramArguments"] == [str(PYTHON), "-m", "hotfolder", "run", "--root", str(root)]
    assert Path(data["ProgramArguments"][0]).is_absolute() and os.access(data["ProgramArguments"][0], os.X_OK)
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ProcessType"] == "Standard"  # launchd.plist(5) reserves Interactive for apps
    assert type(data["ThrottleInterval"]) is int and data["ThrottleInterval"] >= 10
    # launchd SIGKILLs ExitTimeOut seconds after SIGTERM: it must outlast the daemon's graceful stop.
    assert type(data["ExitTimeOut"]) is int and data["ExitTimeOut"] == EXIT_TIMEOUT_S > STOP_GRACE_S + 2
    env = data["EnvironmentVariables"]
    assert all(isinstance(v, str) for v in env.values())
    assert env["PATH"].split(":")[:1] == [str(PYTHON.parent)]
    for d in ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin"):
        assert d in env["PATH"].split(":")
    assert env["HF_HOME"] == str(tmp_path / "hf")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert data["WorkingDirectory"] == str(root)
    logs = tmp_path / "home" / "Library" / "Logs" / "hotfolder"
    assert Path(data["StandardOutPath"]).parent == logs and Path(data["StandardErrorPath"]).parent == logs
    assert data["StandardOutPath"] != data["StandardErrorPath"]


def test_the_plist_passes_an_explicit_config_file_by_absolute_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    host = _mac(tmp_path, FakeLaunchd())
    data = plistlib.loads(render_plist(_config(tmp_path), host, config_file=Path("my.toml")))
    assert data["ProgramArguments"][-2:] == ["--config", str(tmp_path / "my.toml")]


def test_hf_home_defaults_to_huggingface_hubs_own_default(tmp_path: Path) -> None:
    host = Host(home=tmp_path, uid=UID, platform="darwin", python=PYTHON, env={})
    data = plistlib.loads(render_plist(_config(tmp_path), host))
    assert data["EnvironmentVariables"]["HF_HOME"] == str(tmp_path / ".cache" / "huggingface")
    assert data["EnvironmentVariables"]["HF_HUB_CACHE"] == str(tmp_path / ".cache" / "huggingface" / "hub")


HF_SHELLS = [  # the installing shell's variables -> (HF_HOME, HF_HUB_CACHE) the agent must get
    ({"HF_HOME": "{t}/hf"}, ("{t}/hf", "{t}/hf/hub")),
    ({"HF_HUB_CACHE": "{t}/big-disk/hub"}, ("{t}/home/.cache/huggingface", "{t}/big-disk/hub")),
    ({"XDG_CACHE_HOME": "{t}/xdg"}, ("{t}/xdg/huggingface", "{t}/xdg/huggingface/hub")),
    ({"HF_HOME": "~/hf-home", "HF_HUB_CACHE": "~/hub"}, ("{t}/home/hf-home", "{t}/home/hub")),
]


@pytest.mark.parametrize("shell, expected", HF_SHELLS)
def test_the_agent_looks_for_weights_where_models_pull_put_them(tmp_path: Path, shell, expected) -> None:
    """The plist and the unit carry the Hugging Face cache that huggingface_hub resolves in the installing
    shell (HF_HOME, HF_HUB_CACHE, XDG_CACHE_HOME), so weights pulled from that shell are found by the agent."""
    env = {k: v.format(t=tmp_path) for k, v in shell.items()}
    home, hub = (v.format(t=tmp_path) for v in expected)
    mac = Host(home=tmp_path / "home", uid=UID, platform="darwin", python=PYTHON, env=env)
    plist_env = plistlib.loads(render_plist(_config(tmp_path), mac))["EnvironmentVariables"]
    assert (plist_env["HF_HOME"], plist_env["HF_HUB_CACHE"], plist_env["HF_HUB_OFFLINE"]) == (home, hub, "1")
    linux = Host(home=tmp_path / "home", uid=1000, platform="linux", python=PYTHON, env=env)
    unit = render_unit(_config(tmp_path), linux)
    assert f'"HF_HOME={home}"' in unit and f'"HF_HUB_CACHE={hub}"' in unit

    # The same place huggingface_hub (and so `models pull`) resolves from that shell.
    probe = "from hotfolder import weights; print(weights.hub_cache())"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_"))}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**clean, "HOME": str(tmp_path / "home"), **env})
    assert out.stdout.strip() == hub, out.stderr


def test_the_templates_are_valid_plists_with_placeholders_only_where_filled() -> None:
    import hotfolder

    assert Path(hotfolder.__file__).parent in TEMPLATES.parents  # package data: a wheel carries them
    template = plistlib.loads((TEMPLATES / f"{LABEL}.plist").read_bytes())
    assert template["ProgramArguments"][0] == "@PYTHON@"
    for name in ("Info.plist", "document.wflow"):
        plistlib.loads((TEMPLATES / "quick-action" / name).read_bytes())


def test_a_shim_script_is_refused_as_the_interpreter(tmp_path: Path) -> None:
    shim = tmp_path / "python"
    shim.write_text('#!/usr/bin/env bash\nexec pyenv exec python "$@"\n')
    with pytest.raises(UsageError, match="shim"):
        interpreter(str(shim))
    assert interpreter(sys.executable) == PYTHON  # a venv's python is kept as is, not resolved


# -- launchctl ----------------------------------------------------------------------------
def test_install_bootstraps_with_the_exact_launchctl_calls(tmp_path: Path) -> None:
    config = _config(tmp_path)
    launchd = FakeLaunchd(config.root)
    host = _mac(tmp_path, launchd)
    lines: list[str] = []

    assert agent.install(config, host, say=lines.append) == 0

    plist = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert launchd.verbs() == [
        ["launchctl", "enable", f"gui/{UID}/{LABEL}"],
        ["launchctl", "bootstrap", f"gui/{UID}", str(plist)],
    ]
    assert plistlib.loads(plist.read_bytes())["Label"] == LABEL
    assert (tmp_path / "home" / "Library" / "Logs" / "hotfolder").is_dir()
    assert (config.inbox / "tiktok").is_dir()  # the folders are there for Finder before the first job
    assert any("running" in line and str(launchd.pid) in line for line in lines), lines


def test_install_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    config = _config(tmp_path)
    launchd = FakeLaunchd(config.root)
    host = _mac(tmp_path, launchd)
    agent.install(config, host, say=lambda _: None)
    before = host.plist_path.read_bytes(), host.plist_path.stat().st_mtime_ns, launchd.pid
    launchd.calls.clear()
    lines: list[str] = []

    assert agent.install(config, host, say=lines.append) == 0

    assert launchd.verbs() == []  # no bootout, no bootstrap: the running daemon (and its job) is left alone
    assert (host.plist_path.read_bytes(), host.plist_path.stat().st_mtime_ns, launchd.pid) == before
    assert any("already installed and running" in line for line in lines)


def test_a_changed_agent_is_booted_out_and_bootstrapped_only_once_launchd_has_let_go(tmp_path: Path) -> None:
    config = _config(tmp_path)
    launchd = FakeLaunchd(config.root, linger=3)
    host = _mac(tmp_path, launchd)
    agent.install(config, host, say=lambda _: None)
    launchd.calls.clear()

    agent.install(config, host, config_file=tmp_path / "other.toml", say=lambda _: None)

    service = f"gui/{UID}/{LABEL}"
    calls = launchd.calls
    out = calls.index(["launchctl", "bootout", service])
    boot = calls.index(["launchctl", "bootstrap", f"gui/{UID}", str(host.plist_path)])
    polls = calls[out + 1:boot]
    # launchd still listed it 3 times after bootout; the 4th `print` found it gone, and only then bootstrap.
    assert polls == [["launchctl", "print", service]] * 4 + [["launchctl", "enable", service]]
    assert "--config" in plistlib.loads(host.plist_path.read_bytes())["ProgramArguments"]


def test_bootout_gives_up_at_a_deadline_with_a_clear_message(tmp_path: Path) -> None:
    config = _config(tmp_path)
    launchd = FakeLaunchd(config.root, linger=10**9)
    host = _mac(tmp_path, launchd)
    agent.install(config, host, say=lambda _: None)
    with pytest.raises(HotfolderError, match=r"still lists gui/501/com\.hotfolder\.daemon"):
        agent.uninstall(host, say=lambda _: None)
    assert host.clock() - 1000.0 >= EXIT_TIMEOUT_S  # it waited (in fake time) at least the exit timeout


def test_uninstall_boots_out_removes_the_plist_and_leaves_the_folders_and_logs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    launchd = FakeLaunchd(config.root)
    host = _mac(tmp_path, launchd)
    agent.install(config, host, say=lambda _: None)
    (config.outbox / "20260101-000000_fox").mkdir()
    (host.mac_log_dir / "daemon.err.log").write_text("a line\n")
    launchd.calls.clear()

    agent.uninstall(host, say=lambda _: None)

    assert launchd.verbs() == [["launchctl", "bootout", f"gui/{UID}/{LABEL}"]]
    assert not launchd.loaded and not host.plist_path.exists()
    assert (config.outbox / "20260101-000000_fox").is_dir() and (config.inbox / "tiktok").is_dir()
    assert (host.mac_log_dir / "daemon.err.log").read_text() == "a line\n"

    launchd.calls.clear()
    lines: list[str] = []
    agent.uninstall(host, say=lines.append)  # again: nothing to do, no error
    assert launchd.verbs() == [] and lines == ["no agent installed; nothing to do"]


def test_restart_is_kickstart_k(tmp_path: Path) -> None:
    launchd = FakeLaunchd()
    agent.restart(_mac(tmp_path, launchd))
    assert launchd.calls == [["launchctl", "kickstart", "-k", f"gui/{UID}/{LABEL}"]]


def test_status_reads_launchctl_print(tmp_path: Path) -> None:
    launchd = FakeLaunchd()
    host = _mac(tmp_path, launchd)
    assert not agent.status(host).loaded
    launchd.loaded = True
    st = agent.status(host)
    assert (st.loaded, st.running, st.pid, st.last_exit) == (True, True, 4242, "(never exited)")


def test_install_says_so_when_the_daemon_never_comes_up(tmp_path: Path) -> None:
    config = _config(tmp_path)
    host = _mac(tmp_path, FakeLaunchd(config.root, daemon_writes_status=False))
    lines: list[str] = []
    assert agent.install(config, host, say=lines.append) == 1
    warning = next(line for line in lines if line.startswith("warning") and "did not come up" in line)
    assert "daemon.err.log" in warning and "Full Disk Access" in warning and str(os.path.realpath(PYTHON)) in warning


# -- macOS privacy ---------------------------------------------------------------------------
@pytest.mark.parametrize("place", ["Desktop", "Documents", "Downloads", "Library/Mobile Documents/com~apple~CloudDocs",
                                   "Library/CloudStorage/Dropbox"])
def test_a_protected_root_is_refused_until_full_disk_access_is_confirmed(tmp_path: Path, place: str) -> None:
    config = _config(tmp_path, tmp_path / "home" / place / "Hotfolder")
    launchd = FakeLaunchd(config.root)
    host = _mac(tmp_path, launchd)
    with pytest.raises(UsageError) as e:
        agent.install(config, host, say=lambda _: None)
    message = str(e.value)
    assert str(os.path.realpath(PYTHON)) in message  # the exact binary to grant
    assert "Full Disk Access" in message and "--i-granted-full-disk-access" in message
    assert launchd.calls == [] and not host.plist_path.exists()

    assert agent.install(config, host, fda_confirmed=True, say=lambda _: None) == 0
    assert launchd.loaded


def test_a_protected_root_through_a_symlink_is_still_refused(tmp_path: Path) -> None:
    docs = tmp_path / "home" / "Documents" / "Hotfolder"
    docs.mkdir(parents=True)
    link = tmp_path / "home" / "Movies"
    link.mkdir(parents=True)
    os.symlink(docs, link / "Hotfolder")
    assert protected_location(link / "Hotfolder", tmp_path / "home") == "your Documents folder"
    assert protected_location(tmp_path / "home" / "Movies" / "Other", tmp_path / "home") is None


def test_linux_has_no_privacy_refusal(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "home" / "Documents" / "Hotfolder")
    host = _linux(tmp_path, FakeSystemd(config.root))
    assert agent.install(config, host, say=lambda _: None) == 0


# -- the Finder Quick Action ----------------------------------------------------------------------
def test_the_quick_action_bundle_is_valid_and_runs_submit_with_the_selected_files(tmp_path: Path) -> None:
    config = _config(tmp_path)
    launchd = FakeLaunchd(config.root)
    host = _mac(tmp_path, launchd)
    config_file = tmp_path / "config.toml"
    config_file.write_text('model = "tiny"\n')  # built-in weights: submit's weights check passes anywhere
    agent.install(config, host, quick_action=True, config_file=config_file, say=lambda _: None)

    bundle = tmp_path / "home" / "Library" / "Services" / "Make video with hotfolder.workflow"
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "Contents/Info.plist", "Contents/document.wflow"]
    info = plistlib.loads((bundle / "Contents" / "Info.plist").read_bytes())
    [service] = info["NSServices"]
    assert service["NSMessage"] == "runWorkflowAsService"
    assert service["NSMenuItem"]["default"] == "Make video with hotfolder"
    assert service["NSRequiredContext"]["NSApplicationIdentifier"] == "com.apple.finder"
    assert service["NSSendFileTypes"] == ["public.item"]
    wflow = plistlib.loads((bundle / "Contents" / "document.wflow").read_bytes())
    assert wflow["workflowMetaData"]["workflowTypeIdentifier"] == "com.apple.Automator.servicesMenu"
    assert wflow["workflowMetaData"]["serviceInputTypeIdentifier"] == "com.apple.Automator.fileSystemObject"
    [action] = wflow["actions"]
    params = action["action"]["ActionParameters"]
    assert action["action"]["BundleIdentifier"] == "com.apple.RunShellScript"
    assert params["inputMethod"] == 1  # the selection arrives as arguments: "$@"
    assert params["shell"] == "/bin/zsh"
    assert f"-m hotfolder submit --root {config.root} --config {config_file}" in params["COMMAND_STRING"]
    assert [PBS, "-flush"] in launchd.calls

    # The script itself, run by the shell the workflow names (zsh, on a Mac; a POSIX sh where there is none)
    # with awkward file names as "$@": each becomes a job.
    shell = params["shell"] if Path(params["shell"]).is_file() else "/bin/sh"
    prompts = tmp_path / "picked"
    prompts.mkdir()
    names = ["fox in snow.txt", "it's $HOME; `rm -rf x`.txt"]
    for name in names:
        (prompts / name).write_text("A red fox in fresh snow, slow motion\n")
    run = subprocess.run([shell, "-c", params["COMMAND_STRING"], "automator", *(str(prompts / n) for n in names)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in config.inbox.iterdir() if p.is_file()) == sorted(names)
    assert (prompts / names[0]).exists()  # submit copies: the person's file stays where it was

    # An image asks for its prompt (osascript's dialog, faked here) and becomes an image-to-video job folder.
    from PIL import Image

    image = prompts / "harbour at dawn.png"
    Image.new("RGB", (96, 64), (20, 40, 200)).save(image)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "osascript").write_text('#!/bin/sh\necho "Boats rocking gently in the harbour"\n')
    (fake_bin / "osascript").chmod(0o755)
    run = subprocess.run([shell, "-c", params["COMMAND_STRING"], "automator", str(image)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": str(tmp_path / "home"), "PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    folder = config.inbox / "harbour at dawn"
    assert (folder / "harbour at dawn.png").read_bytes() == image.read_bytes()
    [job] = folder.glob("*.toml")
    assert "Boats rocking gently in the harbour" in job.read_text() and "[image]" in job.read_text()

    # A typed prompt is text, whatever it begins with: a dash is not an option, a slash not a path.
    (fake_bin / "osascript").write_text('#!/bin/sh\necho "--narrate"\n')  # typed text that is a flag's name
    run = subprocess.run([shell, "-c", params["COMMAND_STRING"], "automator", str(image)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": str(tmp_path / "home"), "PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    [job] = (config.inbox / "harbour at dawn 2").glob("*.toml")
    assert 'prompt = "--narrate"' in job.read_text() and "tts" not in job.read_text()


def test_uninstall_removes_our_quick_action_but_not_someone_elses(tmp_path: Path) -> None:
    config = _config(tmp_path)
    host = _mac(tmp_path, FakeLaunchd(config.root))
    agent.install(config, host, quick_action=True, say=lambda _: None)
    agent.uninstall(host, say=lambda _: None)
    assert not host.quick_action_path.exists()

    (host.quick_action_path / "Contents").mkdir(parents=True)
    (host.quick_action_path / "Contents" / "Info.plist").write_bytes(plistlib.dumps({"CFBundleIdentifier": "me.mine"}))
    agent.uninstall(host, say=lambda _: None)
    assert host.quick_action_path.exists()


def test_the_cli_refuses_a_quick_action_off_macos(root: Root) -> None:
    if sys.platform == "darwin":
        pytest.skip("on macOS the Quick Action is real")
    run = root.cli("agent", "install", "--quick-action")
    assert run.returncode == 2 and "only on macOS" in run.stderr


# -- systemd ------------------------------------------------------------------------------------
class FakeSystemd:
    def __init__(self, root: Path | None = None):
        self.calls: list[list[str]] = []
        self.active = False
        self.pid = 7000
        self.root = root

    def __call__(self, argv: Sequence[str]) -> Completed:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[:2] == ["systemctl", "--user"], argv
        verb = argv[2]
        if verb == "show":
            state = "active" if self.active else "inactive"
            return Completed(0, f"LoadState=loaded\nActiveState={state}\nSubState=running\n"
                                f"MainPID={self.pid if self.active else 0}\nExecMainStatus=0\n")
        if verb in ("enable", "restart"):
            self.active = True
            self.pid += 1
            if self.root is not None:
                _write_status(self.root, self.pid)
        elif verb == "disable":
            self.active = False
        return Completed(0)

    def verbs(self) -> list[list[str]]:
        return [c for c in self.calls if c[2] != "show"]


def _linux(tmp_path: Path, runner) -> Host:
    clock = FakeClock()
    return Host(home=tmp_path / "home", uid=1000, platform="linux", python=PYTHON, run=runner,
                env={"HF_HOME": str(tmp_path / "hf")}, clock=clock, sleep=clock.sleep)


def test_the_systemd_unit_has_the_agents_behaviour_and_quotes_awkward_paths(tmp_path: Path) -> None:
    root = tmp_path / 'My 100% "real" $HOME'
    unit = render_unit(_config(tmp_path, root), _linux(tmp_path, FakeSystemd()))
    lines = unit.splitlines()
    assert f'ExecStart="{PYTHON}" "-m" "hotfolder" "run" "--root" "{tmp_path}/My 100%% \\"real\\" $$HOME"' in lines
    for line in ("Restart=on-failure", f"TimeoutStopSec={EXIT_TIMEOUT_S}", "KillSignal=SIGTERM", "KillMode=mixed",
                 "WantedBy=default.target", "Type=exec"):
        assert line in lines
    env = next(line for line in lines if line.startswith("Environment="))
    assert f'"HF_HOME={tmp_path}/hf"' in env and "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin" in env


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = needs_tool("systemd-analyze", "apt-get install systemd; only this check needs it")
    root = tmp_path / "My Videos" / "Hot folder"
    root.mkdir(parents=True)
    unit = tmp_path / "hotfolder.service"
    unit.write_text(render_unit(_config(tmp_path, root), _linux(tmp_path, FakeSystemd()),
                                      config_file=tmp_path / "a config.toml"))
    run = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for some mistakes it only warns about: no line may name our unit.
    problems = [line for line in (run.stdout + run.stderr).splitlines() if "hotfolder.service" in line]
    assert run.returncode == 0 and problems == [], run.stdout + run.stderr


def test_systemd_install_enables_once_and_is_idempotent_and_uninstall_disables(tmp_path: Path) -> None:
    config = _config(tmp_path)
    systemd = FakeSystemd(config.root)
    host = _linux(tmp_path, systemd)
    assert agent.install(config, host, say=lambda _: None) == 0
    assert systemd.verbs() == [["systemctl", "--user", "daemon-reload"],
                               ["systemctl", "--user", "enable", "--now", "hotfolder.service"]]
    assert host.unit_path == tmp_path / "home" / ".config" / "systemd" / "user" / "hotfolder.service"

    systemd.calls.clear()
    agent.install(config, host, say=lambda _: None)
    assert systemd.verbs() == []

    agent.install(config, host, config_file=tmp_path / "c.toml", say=lambda _: None)  # changed: reload + restart
    assert systemd.verbs() == [["systemctl", "--user", "daemon-reload"],
                               ["systemctl", "--user", "enable", "--now", "hotfolder.service"],
                               ["systemctl", "--user", "restart", "hotfolder.service"]]

    systemd.calls.clear()
    agent.uninstall(host, say=lambda _: None)
    assert systemd.verbs() == [["systemctl", "--user", "disable", "--now", "hotfolder.service"],
                               ["systemctl", "--user", "daemon-reload"]]
    assert not host.unit_path.exists() and config.inbox.is_dir()


# -- Shortcuts: the command `agent install` prints for a "Run Shell Script" action -------------------
def test_the_shortcuts_command_reads_stdin_and_prints_the_mp4_path_last(root: Root) -> None:
    root.write_config(model="tiny")
    daemon = root.start(fake=True)
    try:
        run = root.cli("submit", "-", "--wait", "--timeout", "60", input="A lighthouse in a storm\n", fake=True,
                       timeout=90)
        assert run.returncode == 0, run.stderr
        mp4 = Path(run.stdout.strip().splitlines()[-1])
        assert mp4.suffix == ".mp4" and mp4.is_file() and mp4.parent.parent == root.outbox
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    wait_until(lambda: daemon.returncode is not None, what="the daemon to stop")


# -- the examples ----------------------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_every_preset_example_is_a_valid_job_in_its_preset_folder(tmp_path: Path) -> None:
    from hotfolder.job.spec import parse

    config = _config(tmp_path)
    found = 0
    for folder in sorted(p for p in (EXAMPLES / "presets").iterdir() if p.is_dir()):
        assert folder.name in config.presets, f"examples/presets/{folder.name} is not a preset"
        for job in sorted(folder.glob("*.t[xo]*")):
            specs = parse(job, config, preset=folder.name)
            found += 1
            assert specs and all(s.prompt for s in specs)
    assert found >= 6


def test_the_shortcuts_script_returns_the_mp4_path_and_fails_with_the_error(root: Root) -> None:
    script = (EXAMPLES / "shortcuts" / "make-video.sh").read_text()
    root.write_config(model="tiny")
    env = root.env(HOTFOLDER_PYTHON=sys.executable, HOTFOLDER_ROOT=str(root.path))
    # The script passes no --config: it reads the user's config file, which says model = "tiny" here.
    where = subprocess.run([sys.executable, "-c", "from hotfolder.config import default_config_file as f; print(f())"],
                           capture_output=True, text=True, timeout=60, env=env).stdout.strip()
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    Path(where).write_text(root.config.read_text())
    daemon = root.start(fake=True)
    try:
        ok = subprocess.run(["/bin/sh", "-c", script], input='A fox says "hi" for $5 `now`\n', capture_output=True,
                            text=True, timeout=120, env=env)
        assert ok.returncode == 0, ok.stderr
        mp4 = Path(ok.stdout.strip())
        assert mp4.suffix == ".mp4" and mp4.is_file()
        assert root.metadata(mp4.parent)["prompt"] == 'A fox says "hi" for $5 `now`'  # exactly as typed
        bad = subprocess.run(["/bin/sh", "-c", script], input="", capture_output=True, text=True, timeout=60, env=env)
        assert bad.returncode == 2 and "nothing on standard input" in bad.stderr
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def _applescript_shell_command(script: str, values: dict[str, str]) -> str:
    """What the script's `do shell script` would hand to /bin/sh, evaluated as AppleScript does it: string
    literals, `&` joins, `quoted form of NAME` (single quotes, a ' written as '\\''), and a bare NAME as its raw
    value (which is what an unquoted value would give: the test then sees the shell parse it)."""
    text = script[script.index("do shell script") + len("do shell script"):]
    expression = []
    for line in text.splitlines():
        expression.append(line.rstrip().rstrip("\u00ac"))
        if not line.rstrip().endswith("\u00ac"):  # a line ending in the continuation sign goes on
            break
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\(quoted form of \w+\)|\w+|&', " ".join(expression))
    out = []
    for token in tokens:
        if token == "&":
            continue
        if token.startswith('"'):
            out.append(token[1:-1].replace('\\"', '"').replace("\\\\", "\\"))
        elif token.startswith("(quoted form of"):
            value = values[token[len("(quoted form of "):-1]]
            out.append("'" + value.replace("'", "'\\''") + "'")
        else:
            out.append(values[token])
    return "".join(out)


def test_the_folder_action_script_submits_each_file_with_quoted_arguments(tmp_path: Path) -> None:
    """The Folder Action's shell command, rendered as AppleScript would render it for an awkward file name, run by
    /bin/sh (what `do shell script` uses) with the real hotfolder: the file lands in the inbox, nothing else runs."""
    script = (EXAMPLES / "folder-action" / "hotfolder-submit.applescript").read_text()
    assert "on adding folder items to thisFolder after receiving addedItems" in script
    assert set(re.findall(r'itemPath ends with "([^"]+)"', script)) == {".txt", ".toml"}  # only job files
    root = tmp_path / "Hotfolder"
    home = tmp_path / "home"
    (home / ".config" / "hotfolder").mkdir(parents=True)
    (home / ".config" / "hotfolder" / "config.toml").write_text('model = "tiny"\n')  # no weights to check
    dropped = tmp_path / "Drop Folder"
    dropped.mkdir()
    pwned = tmp_path / "pwned"  # what the name's commands would create, run in tmp_path
    item = dropped / "it's $(touch pwned) `touch pwned`; \"fox\" & a\\b.txt"
    item.write_text("A red fox in fresh snow\n")
    command = _applescript_shell_command(script, {"hotfolderPython": str(PYTHON), "hotfolderRoot": str(root),
                                                  "itemPath": str(item)})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "XDG_"))}
    run = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**env, "HOME": str(home), "HF_HOME": str(tmp_path / "hf")})
    assert run.returncode == 0, (command, run.stderr)
    assert [p.name for p in (root / "inbox").iterdir() if p.is_file()] == [item.name]
    assert (root / "inbox" / item.name).read_text() == item.read_text()
    assert not pwned.exists()  # no part of the name was run


# -- Linux without a user session (ssh, su, a container): no user bus ---------------------------------------
class NoUserBus(FakeSystemd):
    """systemctl --user where this login has no user manager: every call fails on the bus."""

    def __call__(self, argv: Sequence[str]) -> Completed:
        self.calls.append(list(argv))
        return Completed(1, "", "Failed to connect to bus: No medium found\n")


def test_without_a_user_bus_install_gives_the_linger_hint(tmp_path: Path) -> None:
    host = _linux(tmp_path, NoUserBus())
    with pytest.raises(HotfolderError, match="loginctl enable-linger"):
        agent.install(_config(tmp_path), host, say=lambda _: None)


def test_without_a_user_bus_status_says_why_instead_of_install_again(tmp_path: Path) -> None:
    host = _linux(tmp_path, NoUserBus())
    host.unit_path.parent.mkdir(parents=True)
    host.unit_path.write_text("[Unit]\n")
    text = agent.status(host).describe()
    assert "no user bus" in text and "No medium found" in text and "loginctl enable-linger" in text, text
    assert "hotfolder agent install" not in text and "installed" in text


def test_without_a_user_bus_uninstall_still_removes_the_unit_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    host = _linux(tmp_path, FakeSystemd(config.root))
    agent.install(config, host, say=lambda _: None)
    assert host.unit_path.is_file()
    gone = Host(home=host.home, uid=1000, platform="linux", python=PYTHON, run=NoUserBus(), env=dict(host.env))
    lines: list[str] = []
    assert agent.uninstall(gone, say=lines.append) == 0
    assert not host.unit_path.exists()
    assert any("could not tell systemd" in line for line in lines) and "agent removed" in lines[-1], lines


def test_the_real_systemctl_without_a_user_bus_is_reported_not_raised(tmp_path: Path) -> None:
    """This machine's own systemctl, with the user bus variables pointing nowhere."""
    needs_tool("systemctl", "apt-get install systemd")
    from hotfolder.service.host import run_command

    env = {"XDG_RUNTIME_DIR": str(tmp_path / "no-runtime"), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/none"}

    def runner(argv: Sequence[str]) -> Completed:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env={**os.environ, **env})
        return Completed(p.returncode, p.stdout, p.stderr)

    assert run_command(["systemctl", "--version"]).returncode == 0
    st = agent.status(Host(home=tmp_path, uid=os.getuid(), platform="linux", python=PYTHON, run=runner, env={}))
    assert not st.loaded and st.unreachable, st


# -- missing weights said at install -----------------------------------------------------------------------
def test_install_warns_when_the_default_models_weights_are_missing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    lines: list[str] = []
    assert agent.install(config, _mac(tmp_path, FakeLaunchd(config.root)), say=lines.append) == 0
    warning = next(line for line in lines if "weights" in line)
    assert warning.startswith("warning:") and "hotfolder models pull ltx-2" in warning and "42 GB" in warning
    assert str(tmp_path / "hf" / "hub") in warning  # looked where the agent will look

    tiny = Config(root=config.root, model="tiny", cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs",
                  state_dir=tmp_path / "state")
    lines.clear()
    agent.install(tiny, _linux(tmp_path, FakeSystemd(config.root)), say=lines.append)
    assert not any("weights" in line for line in lines), lines
