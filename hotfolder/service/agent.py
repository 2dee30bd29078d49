"""Run the daemon at login: a launchd LaunchAgent on macOS, a systemd user unit on Linux.

Everything that belongs to the machine (home folder, uid, platform, the Python
to run, the command runner, the clock) comes in a `Host`, so rendering and the
exact `launchctl` / `systemctl` argument lists are tested on any OS with the
runner injected. Install is idempotent (an unchanged, loaded agent is left
running); uninstall removes only what install wrote, never the person's folders
or logs.
"""

from __future__ import annotations

import math
import os
import plistlib
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hotfolder import fsutil
from hotfolder.config import Config
from hotfolder.folders.status import STOP_GRACE_S
from hotfolder.errors import HotfolderError, UsageError

LABEL = "com.hotfolder.daemon"
UNIT_NAME = "hotfolder.service"
QUICK_ACTION_TITLE = "Make video with hotfolder"
THROTTLE_INTERVAL_S = 10
# SIGTERM to SIGKILL: the daemon's own graceful stop plus a margin for ffmpeg and status writes.
EXIT_TIMEOUT_S = math.ceil(STOP_GRACE_S) + 7
START_WAIT_S = 15.0  # after install: how long to wait for the daemon's first heartbeat in status.json
# Agents do not read a shell profile: Homebrew (Apple Silicon, then Intel) and the system.
BASE_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
TEMPLATES = Path(__file__).resolve().parents[2] / "launchd"
PBS = "/System/Library/CoreServices/pbs"  # refreshes the Services menu after a Quick Action changes


# -- the machine ------------------------------------------------------------
@dataclass(frozen=True)
class Completed:
    """What a command returned (the part of subprocess.CompletedProcess we use)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[Sequence[str]], Completed]


def run_command(argv: Sequence[str]) -> Completed:
    """Run an argument list (never a shell); a missing program is exit 127, as a shell would say."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Completed(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"{' '.join(argv)}: no answer within 60 s")
    return Completed(p.returncode, p.stdout, p.stderr)


@dataclass(frozen=True)
class Host:
    """This machine, as the agent code sees it. Tests build one with a fake home, uid and runner."""

    home: Path
    uid: int
    platform: str  # sys.platform: "darwin" or "linux"
    python: Path  # the interpreter the agent will run
    run: Runner = run_command
    env: Mapping[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def current(cls) -> Host:
        return cls(home=Path.home(), uid=os.getuid(), platform=sys.platform,
                   python=Path(os.path.abspath(sys.executable)), env=dict(os.environ))

    # macOS
    @property
    def plist_path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def mac_log_dir(self) -> Path:
        return self.home / "Library" / "Logs" / "hotfolder"

    @property
    def quick_action_path(self) -> Path:
        return self.home / "Library" / "Services" / f"{QUICK_ACTION_TITLE}.workflow"

    @property
    def domain(self) -> str:
        return f"gui/{self.uid}"

    @property
    def service(self) -> str:
        return f"gui/{self.uid}/{LABEL}"

    # Linux
    @property
    def unit_path(self) -> Path:
        base = Path(self.env["XDG_CONFIG_HOME"]) if self.env.get("XDG_CONFIG_HOME") else self.home / ".config"
        return base / "systemd" / "user" / UNIT_NAME

    @property
    def hf_home(self) -> str:
        """What the agent's HF_HOME will be: the one set now, else huggingface_hub's default."""
        return self.env.get("HF_HOME") or str(self.home / ".cache" / "huggingface")

    @property
    def search_path(self) -> str:
        """PATH for the agent: the venv's bin first (its tools), then Homebrew and the system."""
        parts = [str(self.python.parent), *BASE_PATH]
        return ":".join(dict.fromkeys(parts))


def interpreter(executable: str | None = None) -> Path:
    """The absolute path of the Python to put in the agent.

    Kept as the venv's own `bin/python`, not resolved to the base interpreter
    (that would lose the venv's packages). A pyenv/asdf shim is refused: it is a
    shell script that needs your shell's environment, which an agent lacks.
    """
    path = Path(os.path.abspath(executable or sys.executable))
    if _is_script(path):
        raise UsageError(
            f"{path} is a shim script, not a Python interpreter; launchd and systemd cannot run it reliably. "
            "Run it with the venv's python instead: `.venv/bin/python -m hotfolder agent install`."
        )
    return path


def _is_script(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def real_binary(python: Path) -> Path:
    """The binary macOS privacy settings see: the venv link resolved to the real interpreter."""
    return Path(os.path.realpath(python))


# -- macOS privacy (TCC) ---------------------------------------------------------
def protected_location(root: Path, home: Path) -> str | None:
    """Which privacy-protected place `root` lies in (macOS gates listing and reading there), or None."""
    places = [
        (home / "Desktop", "your Desktop folder"),
        (home / "Documents", "your Documents folder"),
        (home / "Downloads", "your Downloads folder"),
        (home / "Library" / "Mobile Documents", "iCloud Drive"),
        (home / "Library" / "CloudStorage", "a cloud storage folder (Dropbox, OneDrive, Google Drive, ...)"),
        (Path("/Volumes"), "a removable or network volume"),
    ]
    real_root = Path(os.path.realpath(root))
    for place, what in places:
        for candidate in {place, Path(os.path.realpath(place))}:
            if real_root == candidate or candidate in real_root.parents:
                return what
    return None


def full_disk_access_hint(python: Path) -> str:
    """Where to grant Full Disk Access, naming the exact binaries."""
    real = real_binary(python)
    names = [str(real)]
    app = _framework_app(real)
    if app is not None:
        names.append(str(app))
    listed = " and ".join(names)
    return (
        f"Open System Settings > Privacy & Security > Full Disk Access, click +, press Cmd-Shift-G, "
        f"paste {listed}, and switch it on (the agent runs {python}, which is a link to it)."
    )


def _framework_app(real: Path) -> Path | None:
    """python.org and Homebrew framework builds re-exec into Python.app: that binary needs access too."""
    parts = real.parts
    if "Python.framework" in parts and "Versions" in parts:
        version_dir = Path(*parts[: parts.index("Versions") + 2])
        app = version_dir / "Resources" / "Python.app" / "Contents" / "MacOS" / "Python"
        if app.exists():
            return app
    return None


def check_root_allowed(config: Config, host: Host, *, fda_confirmed: bool) -> None:
    """Refuse a root macOS will hide from the agent, unless the person says they granted access."""
    if host.platform != "darwin" or fda_confirmed:
        return
    where = protected_location(config.root, host.home)
    if where is None:
        return
    raise UsageError(
        f"the root {config.root} is inside {where}, which macOS hides from background agents "
        f"unless their Python has Full Disk Access. {full_disk_access_hint(host.python)} "
        "Then run this again with --i-granted-full-disk-access. "
        "Or keep the default root ~/Movies/Hotfolder, which needs no permission."
    )


# -- rendering ---------------------------------------------------------------
def _fill(value: Any, values: Mapping[str, str]) -> Any:
    """Replace @NAME@ placeholders in every string of a loaded plist."""
    if isinstance(value, str):
        for k, v in values.items():
            value = value.replace(k, v)
        return value
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def _template(name: str) -> Any:
    path = TEMPLATES / name
    try:
        return plistlib.loads(path.read_bytes())
    except FileNotFoundError:
        raise HotfolderError(
            f"template {path} is missing: hotfolder's agent templates live in the `launchd/` folder of its "
            "checkout. Install hotfolder from a checkout (`pip install -e .`, as `make` does)."
        ) from None


def program_arguments(config: Config, host: Host, config_file: Path | None) -> list[str]:
    args = [str(host.python), "-m", "hotfolder", "run", "--root", str(config.root)]
    if config_file is not None:
        args += ["--config", str(Path(config_file).absolute())]
    return args


def render_plist(config: Config, host: Host, *, config_file: Path | None = None) -> bytes:
    """The LaunchAgent plist (XML) for this root, from launchd/com.hotfolder.daemon.plist."""
    data = _fill(
        _template(f"{LABEL}.plist"),
        {
            "@LABEL@": LABEL,
            "@PYTHON@": str(host.python),
            "@ROOT@": str(config.root),
            "@PATH@": host.search_path,
            "@HF_HOME@": host.hf_home,
            "@LOG_DIR@": str(host.mac_log_dir),
        },
    )
    data["ProgramArguments"] = program_arguments(config, host, config_file)
    data["ExitTimeOut"] = EXIT_TIMEOUT_S
    data["ThrottleInterval"] = THROTTLE_INTERVAL_S
    return plistlib.dumps(data, sort_keys=False)


def _systemd_quote(text: str) -> str:
    """One word for a unit file: double-quoted, with specifiers (%) and variables ($) kept literal."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def render_unit(config: Config, host: Host, *, config_file: Path | None = None) -> str:
    """The systemd user unit: the same behaviour as the LaunchAgent."""
    exec_start = " ".join(_systemd_quote(a) for a in program_arguments(config, host, config_file))
    env = {"PATH": host.search_path, "HF_HOME": host.hf_home, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    environment = " ".join(_systemd_quote(f"{k}={v}") for k, v in env.items())
    return f"""\
# Written by `hotfolder agent install`; `hotfolder agent uninstall` removes it.
[Unit]
Description=hotfolder daemon: prompt files in {str(config.root).replace('%', '%%')}/inbox become videos

[Service]
Type=exec
ExecStart={exec_start}
WorkingDirectory={str(config.root).replace('%', '%%')}
Environment={environment}
# Restart after a crash, not after a clean exit; at most every {THROTTLE_INTERVAL_S} s.
Restart=on-failure
RestartSec={THROTTLE_INTERVAL_S}
# SIGTERM to the daemon only (mixed): it stops its own ffmpeg and requeues the running job.
# A SIGTERM to every process in the group would kill ffmpeg mid-encode and fail that job.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={EXIT_TIMEOUT_S}

[Install]
WantedBy=default.target
"""


def quick_action_command(config: Config, host: Host, config_file: Path | None = None) -> str:
    """The Run Shell Script body (POSIX sh): the selected files arrive only as "$@", never in the script text.

    A prompt or job file becomes a job as it is. An image asks (a dialog) for the prompt of a video that
    starts from it, and goes in as `--image`: "Make video from this prompt / with this image".
    """
    args = [str(host.python), "-m", "hotfolder", "submit", "--root", str(config.root)]
    if config_file is not None:
        args += ["--config", str(Path(config_file).absolute())]
    ask = ("osascript -e 'on run argv' -e 'text returned of (display dialog (\"Describe the video that starts "
           "from \" & item 1 of argv) default answer \"\" with title \"hotfolder\")' -e 'end run'")
    return (
        "# hotfolder Quick Action: hands the files selected in Finder to the hot folder.\n"
        "# Written by `hotfolder agent install --quick-action`.\n"
        f"submit() {{ {shlex.join(args)} \"$@\"; }}\n"
        "status=0\n"
        'for f in "$@"; do\n'
        '  name=${f##*/}\n'
        '  case "$(printf %s "$name" | tr "[:upper:]" "[:lower:]")" in\n'
        "    *.png|*.jpg|*.jpeg|*.webp)\n"
        f'      prompt=$({ask} "$name") || continue\n'
        '      [ -n "$prompt" ] || continue\n'
        '      submit "$prompt" --image "$f" --name "${name%.*}" || status=1 ;;\n'
        '    *) submit "$f" || status=1 ;;\n'
        "  esac\n"
        "done\n"
        "exit $status\n"
    )


def render_quick_action(config: Config, host: Host, config_file: Path | None = None) -> dict[str, bytes]:
    """The bundle's files, relative to the .workflow folder."""
    info = _fill(_template("quick-action/Info.plist"), {"@MENU_TITLE@": QUICK_ACTION_TITLE})
    wflow = _fill(_template("quick-action/document.wflow"),
                  {"@COMMAND@": quick_action_command(config, host, config_file)})
    return {
        "Contents/Info.plist": plistlib.dumps(info, sort_keys=False),
        "Contents/document.wflow": plistlib.dumps(wflow, sort_keys=False),
    }


# -- files ---------------------------------------------------------------------
# -- status ----------------------------------------------------------------------
@dataclass(frozen=True)
class AgentStatus:
    """What the service manager says about the agent."""

    manager: str  # "launchd" | "systemd" | "none"
    file: Path | None
    installed: bool  # the plist / unit file exists
    loaded: bool  # the service manager knows the job
    running: bool
    pid: int | None = None
    last_exit: str | None = None
    detail: str = ""

    def describe(self) -> str:
        if self.manager == "none":
            return self.detail
        if not self.installed and not self.loaded:
            return f"not installed ({self.file} does not exist). Install: hotfolder agent install"
        if self.running:
            return f"installed and running (pid {self.pid}) from {self.file}"
        if self.loaded:
            last = f", last exit {self.last_exit}" if self.last_exit else ""
            return f"installed and loaded but not running{last}. {self.detail}".strip()
        return f"installed ({self.file}) but not loaded. Load it: hotfolder agent install"


def _launchd_print(host: Host) -> Completed:
    return host.run(["launchctl", "print", host.service])


def parse_launchctl_print(text: str) -> dict[str, str]:
    """The top-level `key = value` lines of `launchctl print` (state, pid, last exit code, ...)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\t([a-z][a-z ]*?) = (.*)$", line)  # one tab: the service's own keys, not nested ones
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip()
    return found


def status(host: Host) -> AgentStatus:
    if host.platform == "darwin":
        p = _launchd_print(host)
        installed = host.plist_path.exists()
        if p.returncode != 0:
            return AgentStatus("launchd", host.plist_path, installed, False, False)
        info = parse_launchctl_print(p.stdout)
        pid = int(info["pid"]) if info.get("pid", "").isdigit() else None
        running = info.get("state") == "running"
        detail = "" if running else f"See {host.mac_log_dir}/daemon.err.log."
        return AgentStatus("launchd", host.plist_path, installed, True, running, pid,
                           info.get("last exit code"), detail)
    if host.platform.startswith("linux"):
        p = host.run(["systemctl", "--user", "show", UNIT_NAME,
                      "--property=LoadState,ActiveState,SubState,MainPID,ExecMainStatus"])
        installed = host.unit_path.exists()
        if p.returncode != 0:
            return AgentStatus("systemd", host.unit_path, installed, False, False,
                               detail=f"systemctl --user failed: {p.stderr.strip()}")
        info = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
        loaded = info.get("LoadState") == "loaded"
        running = info.get("ActiveState") == "active"
        main_pid = info.get("MainPID", "0")
        pid = int(main_pid) if main_pid.isdigit() and main_pid != "0" else None
        detail = "" if running else (f"State {info.get('ActiveState')}/{info.get('SubState')}. "
                                     f"See: journalctl --user -u {UNIT_NAME}")
        return AgentStatus("systemd", host.unit_path, installed, loaded, running, pid,
                           info.get("ExecMainStatus"), detail)
    return AgentStatus("none", None, False, False, False,
                       detail=f"no agent support on {host.platform}: run `hotfolder run` yourself")


# -- launchd -------------------------------------------------------------------
def _check(p: Completed, argv: Sequence[str], what: str, hint: str = "") -> None:
    if p.returncode != 0:
        out = (p.stderr or p.stdout).strip()
        raise HotfolderError(f"{what}: `{shlex.join(argv)}` exited {p.returncode}: {out}. {hint}".strip())


def _wait_until_gone(host: Host) -> None:
    """`bootout` returns before the job is gone; bootstrapping again too early fails. Poll with a deadline."""
    deadline = host.clock() + EXIT_TIMEOUT_S + 5
    while _launchd_print(host).returncode == 0:
        if host.clock() > deadline:
            raise HotfolderError(
                f"launchd still lists {host.service} {EXIT_TIMEOUT_S + 5} s after bootout. "
                f"Look at `launchctl print {host.service}`; try again in a minute."
            )
        host.sleep(0.2)


def _bootout(host: Host) -> None:
    argv = ["launchctl", "bootout", host.service]
    p = host.run(argv)
    if p.returncode not in (0, 3, 113):  # 3 / 113: no such process / service: already gone
        _check(p, argv, "stopping the agent")
    _wait_until_gone(host)


def _install_launchd(config: Config, host: Host, config_file: Path | None, say: Callable[[str], None]) -> None:
    host.mac_log_dir.mkdir(parents=True, exist_ok=True)
    data = render_plist(config, host, config_file=config_file)
    plistlib.loads(data)  # never write a file launchd would reject
    loaded = _launchd_print(host).returncode == 0
    changed = fsutil.write_if_changed(host.plist_path, data)
    if loaded and not changed:
        st = status(host)
        if st.running:
            say(f"already installed and running (pid {st.pid}): {host.plist_path}")
            return
        argv = ["launchctl", "kickstart", host.service]
        _check(host.run(argv), argv, "starting the agent")
        say(f"already installed; started it again: {host.plist_path}")
        return
    if loaded:
        say("the agent changed: stopping the old one (its running job is requeued)")
        _bootout(host)
    host.run(["launchctl", "enable", host.service])  # clears an earlier `launchctl disable`
    argv = ["launchctl", "bootstrap", host.domain, str(host.plist_path)]
    _check(host.run(argv), argv, "loading the agent",
           "If it says 'Input/output error', the agent may be switched off in System Settings > General > "
           "Login Items (Allow in the Background): switch hotfolder on and run this again.")
    say(f"installed {host.plist_path}; logs in {host.mac_log_dir}")


def restart(host: Host) -> int:
    if host.platform == "darwin":
        argv = ["launchctl", "kickstart", "-k", host.service]
        _check(host.run(argv), argv, "restarting the agent", "Is it installed? hotfolder agent install")
    elif host.platform.startswith("linux"):
        argv = ["systemctl", "--user", "restart", UNIT_NAME]
        _check(host.run(argv), argv, "restarting the agent", "Is it installed? hotfolder agent install")
    else:
        raise UsageError(f"agent: {host.platform} has no supported service manager; run `hotfolder run` yourself.")
    print("restarted: a running job was stopped at its next step and is requeued")
    return 0


# -- systemd -----------------------------------------------------------------------
def _install_systemd(config: Config, host: Host, config_file: Path | None, say: Callable[[str], None]) -> None:
    changed = fsutil.write_if_changed(host.unit_path, render_unit(config, host, config_file=config_file).encode())
    before = status(host)
    if not changed and before.running:
        say(f"already installed and running (pid {before.pid}): {host.unit_path}")
        return
    for argv in (["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]):
        _check(host.run(argv), argv, "installing the user unit",
               "systemd user services need a login session (`loginctl enable-linger` keeps them after logout).")
    if changed and before.running:
        argv = ["systemctl", "--user", "restart", UNIT_NAME]
        _check(host.run(argv), argv, "restarting the changed unit")
    say(f"installed {host.unit_path}; logs: journalctl --user -u {UNIT_NAME}")


# -- the commands ------------------------------------------------------------------
def install(config: Config, host: Host, *, config_file: Path | None = None, fda_confirmed: bool = False,
            quick_action: bool = False, say: Callable[[str], None] = print) -> int:
    """Install (or update) the agent for this root; idempotent."""
    from hotfolder.folders.spool import Spool

    interpreter(str(host.python))  # refuses a shim
    check_root_allowed(config, host, fda_confirmed=fda_confirmed)
    if quick_action and host.platform != "darwin":
        raise UsageError("--quick-action: Finder Quick Actions exist only on macOS.")
    Spool(config).ensure_folders()  # the folders exist before the first login, ready for Finder
    if host.platform == "darwin":
        _install_launchd(config, host, config_file, say)
    elif host.platform.startswith("linux"):
        _install_systemd(config, host, config_file, say)
    else:
        raise UsageError(f"agent: {host.platform} has no supported service manager; run `hotfolder run` yourself.")
    if quick_action:
        install_quick_action(config, host, config_file=config_file, say=say)
    ok = await_start(config, host, say)
    say(f"root: {config.root} (drop prompt files into {config.inbox})")
    submit = shlex.join([str(host.python), "-m", "hotfolder", "submit", "-", "--wait", "--root", str(config.root)])
    say(f"for Shortcuts and scripts: {submit}")
    return 0 if ok else 1


def await_start(config: Config, host: Host, say: Callable[[str], None]) -> bool:
    """Wait (with a deadline) until the agent's daemon writes a heartbeat into the root's status.json.

    This is the test of access from inside the agent: on macOS a root the agent's
    Python may not read shows up here, not in a terminal (which has its own permissions).
    """
    from hotfolder.folders import status as status_file

    deadline = host.clock() + START_WAIT_S
    while True:
        st = status(host)
        seen = status_file.read(config.root)
        daemon, fresh = seen.daemon, seen.alive
        if st.running and fresh and daemon.get("pid") == st.pid:
            say(f"the daemon is running (pid {st.pid}) and serving {config.root}")
            return True
        if host.clock() > deadline:
            break
        host.sleep(0.25)
    if fresh and daemon.get("pid") != st.pid:
        say(f"another hotfolder daemon (pid {daemon.get('pid')}) is serving {config.root}; "
            "the agent takes over when it stops.")
        return True
    logs = f"{host.mac_log_dir}/daemon.err.log" if host.platform == "darwin" else f"journalctl --user -u {UNIT_NAME}"
    why = (f"agent {st.describe()}" if not st.running
           else f"it runs (pid {st.pid}) but has not written {config.status_file}")
    hint = ""
    if host.platform == "darwin":
        hint = (" If the log says 'Operation not permitted', macOS privacy blocks it: "
                + full_disk_access_hint(host.python))
    say(f"warning: the daemon did not come up within {START_WAIT_S:.0f} s: {why}. Look at {logs}.{hint}")
    return False


def install_quick_action(config: Config, host: Host, *, config_file: Path | None = None,
                         say: Callable[[str], None] = print) -> Path:
    """Write the Finder Quick Action bundle to ~/Library/Services (replacing an older one of ours)."""
    bundle = host.quick_action_path
    files = render_quick_action(config, host, config_file)
    tmp = bundle.with_name(f".{bundle.name}.{secrets.token_hex(4)}")
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    if bundle.exists():
        shutil.rmtree(bundle)
    os.rename(tmp, bundle)
    if host.platform == "darwin":
        host.run([PBS, "-flush"])  # best effort: the menu also refreshes at the next login
    say(f"Quick Action installed: right-click a prompt file in Finder > Quick Actions > {QUICK_ACTION_TITLE}")
    return bundle


def uninstall(host: Host, *, say: Callable[[str], None] = print) -> int:
    """Stop and remove the agent (and our Quick Action); the root, its folders and the logs stay."""
    removed = False
    if host.platform == "darwin":
        if _launchd_print(host).returncode == 0:
            _bootout(host)
            removed = True
        if host.plist_path.exists():
            host.plist_path.unlink()
            removed = True
        bundle = host.quick_action_path
        if (bundle / "Contents" / "Info.plist").is_file():
            info = plistlib.loads((bundle / "Contents" / "Info.plist").read_bytes())
            if info.get("CFBundleIdentifier") == "com.hotfolder.quick-action":
                shutil.rmtree(bundle)
                host.run([PBS, "-flush"])
                say(f"removed the Quick Action {bundle}")
    elif host.platform.startswith("linux"):
        if host.unit_path.exists():
            argv = ["systemctl", "--user", "disable", "--now", UNIT_NAME]
            _check(host.run(argv), argv, "stopping the user unit")
            host.unit_path.unlink()
            host.run(["systemctl", "--user", "daemon-reload"])
            removed = True
    else:
        raise UsageError(f"agent: {host.platform} has no supported service manager.")
    say("agent removed; your hot folder, its results and the logs are left as they are" if removed
        else "no agent installed; nothing to do")
    return 0


def show_status(host: Host) -> int:
    st = status(host)
    print(f"agent ({st.manager}): {st.describe()}")
    return 0


def main(config: Config, action: str, *, config_file: Path | None = None, quick_action: bool = False,
         fda_confirmed: bool = False, host: Host | None = None) -> int:
    """`hotfolder agent ACTION`."""
    host = host or Host.current()
    if action == "install":
        return install(config, host, config_file=config_file, fda_confirmed=fda_confirmed, quick_action=quick_action)
    if action == "uninstall":
        return uninstall(host)
    if action == "restart":
        return restart(host)
    return show_status(host)
