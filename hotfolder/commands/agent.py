"""`hotfolder agent install|uninstall|status|restart`: run the daemon at login.

A launchd LaunchAgent on macOS (hotfolder.service.launchd), a systemd user unit
on Linux (hotfolder.service.systemd), optionally with the Finder Quick Action
(hotfolder.service.quick_action). This module picks the service manager for the
`Host`, checks the root first (hotfolder.service.privacy), and tells the person
what happened. Uninstall removes only what install wrote, never the person's
folders or logs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hotfolder.config import Config
from hotfolder.errors import UsageError
from hotfolder.folders import status as status_file
from hotfolder.service import launchd, systemd
from hotfolder.service.host import UNIT_NAME, Host, interpreter
from hotfolder.service.privacy import check_root_allowed, full_disk_access_hint
from hotfolder.service.quick_action import install_quick_action, remove_quick_action

START_WAIT_S = 15.0  # after install: how long to wait for the daemon's first heartbeat in status.json


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

    unreachable: str | None = None  # why the service manager could not be asked at all

    def describe(self) -> str:
        if self.manager == "none":
            return self.detail
        if self.unreachable:
            where = f"{self.file} is installed" if self.installed else f"{self.file} is not installed"
            return f"not loaded: {self.unreachable}. {where}. {self.detail}".strip()
        if not self.installed and not self.loaded:
            return f"not installed ({self.file} does not exist). Install: hotfolder agent install"
        if self.running:
            return f"installed and running (pid {self.pid}) from {self.file}"
        if self.loaded:
            last = f", last exit {self.last_exit}" if self.last_exit else ""
            return f"installed and loaded but not running{last}. {self.detail}".strip()
        return f"installed ({self.file}) but not loaded. Load it: hotfolder agent install"


def status(host: Host) -> AgentStatus:
    if host.platform == "darwin":
        info = launchd.query(host)
        installed = host.plist_path.exists()
        if info is None:
            return AgentStatus("launchd", host.plist_path, installed, False, False)
        running = info.get("state") == "running"
        detail = "" if running else f"See {host.mac_log_dir}/daemon.err.log."
        return AgentStatus("launchd", host.plist_path, installed, True, running, launchd.job_pid(info),
                           info.get("last exit code"), detail)
    if host.platform.startswith("linux"):
        p = systemd.show(host)
        installed = host.unit_path.exists()
        why = systemd.unreachable(p)
        if why is not None:
            return AgentStatus("systemd", host.unit_path, installed, False, False, unreachable=why,
                               detail=systemd.LINGER_HINT)
        if p.returncode != 0:
            return AgentStatus("systemd", host.unit_path, installed, False, False,
                               detail=f"systemctl --user failed: {p.stderr.strip()}")
        info = systemd.parse_show(p.stdout)
        loaded = info.get("LoadState") == "loaded"
        running = info.get("ActiveState") == "active"
        detail = "" if running else (f"State {info.get('ActiveState')}/{info.get('SubState')}. "
                                     f"See: journalctl --user -u {UNIT_NAME}")
        return AgentStatus("systemd", host.unit_path, installed, loaded, running, systemd.main_pid(info),
                           info.get("ExecMainStatus"), detail)
    return AgentStatus("none", None, False, False, False,
                       detail=f"no agent support on {host.platform}: run `hotfolder run` yourself")


def show_status(host: Host) -> int:
    st = status(host)
    print(f"agent ({st.manager}): {st.describe()}")
    return 0


# -- install, uninstall, restart -------------------------------------------------------
def install(config: Config, host: Host, *, config_file: Path | None = None, fda_confirmed: bool = False,
            quick_action: bool = False, say: Callable[[str], None] = print) -> int:
    """Install (or update) the agent for this root; idempotent."""
    from hotfolder.folders.spool import Spool

    interpreter(str(host.python))  # refuses a shim
    check_root_allowed(config, host, fda_confirmed=fda_confirmed)
    if quick_action and host.platform != "darwin":
        raise UsageError("--quick-action: Finder Quick Actions exist only on macOS.")
    Spool(config).ensure_folders()  # the folders exist before the first login, ready for Finder
    warn_missing_weights(config, host, say)  # before the service manager: said even when that step fails
    if host.platform == "darwin":
        launchd.install(config, host, config_file, say)
    elif host.platform.startswith("linux"):
        systemd.install(config, host, config_file, say)
    else:
        raise UsageError(f"agent: {host.platform} has no supported service manager; run `hotfolder run` yourself.")
    if quick_action:
        install_quick_action(config, host, config_file=config_file, say=say)
    ok = await_start(config, host, say)
    say(f"root: {config.root} (drop prompt files into {config.inbox})")
    submit = shlex.join([str(host.python), "-m", "hotfolder", "submit", "-", "--wait", "--root", str(config.root)])
    say(f"for Shortcuts and scripts: {submit}")
    return 0 if ok else 1


def warn_missing_weights(config: Config, host: Host, say: Callable[[str], None]) -> None:
    """Say before the first drop that jobs would fail for want of the default model's weights,
    looking in the Hugging Face cache the agent will use (the one `models pull` fills from this shell)."""
    from hotfolder.backends.choose import weights_problem

    model = config.model_info(config.model)
    if model is None:
        say(f"warning: the default model {config.model!r} is neither in the model table nor a folder of weights; "
            "jobs that name no model will fail. Set `model` in config.toml (see `hotfolder models list`).")
        return
    problem = weights_problem(model, config, cache=Path(host.hf_hub_cache))
    if problem:
        say(f"warning: {problem} Until then every job that names no other model fails.")


def await_start(config: Config, host: Host, say: Callable[[str], None]) -> bool:
    """Wait (with a deadline) until the agent's daemon writes a heartbeat into the root's status.json.

    This is the test of access from inside the agent: on macOS a root the agent's
    Python may not read shows up here, not in a terminal (which has its own permissions).
    """
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


def uninstall(host: Host, *, say: Callable[[str], None] = print) -> int:
    """Stop and remove the agent (and our Quick Action); the root, its folders and the logs stay."""
    if host.platform == "darwin":
        removed = launchd.remove(host)
        remove_quick_action(host, say=say)
    elif host.platform.startswith("linux"):
        removed = systemd.remove(host, say)
    else:
        raise UsageError(f"agent: {host.platform} has no supported service manager.")
    say("agent removed; your hot folder, its results and the logs are left as they are" if removed
        else "no agent installed; nothing to do")
    return 0


def restart(host: Host) -> int:
    if host.platform == "darwin":
        launchd.restart(host)
    elif host.platform.startswith("linux"):
        systemd.restart(host)
    else:
        raise UsageError(f"agent: {host.platform} has no supported service manager; run `hotfolder run` yourself.")
    print("restarted: a running job was stopped at its next step and is requeued")
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
