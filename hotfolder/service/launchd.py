"""The macOS LaunchAgent: its plist, and the exact `launchctl` calls that load, stop and restart it.

Install is idempotent (an unchanged, loaded agent is left running); removal takes
away only the plist install wrote, never the person's folders or logs.
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path
from typing import Callable

from hotfolder import fsutil
from hotfolder.config import Config
from hotfolder.errors import HotfolderError
from hotfolder.service.host import (
    EXIT_TIMEOUT_S, LABEL, THROTTLE_INTERVAL_S, Completed, Host, check, program_arguments, template,
)


# -- the plist ----------------------------------------------------------------------
def render_plist(config: Config, host: Host, *, config_file: Path | None = None) -> bytes:
    """The LaunchAgent plist (XML) for this root, from templates/com.hotfolder.daemon.plist."""
    data = template(
        f"{LABEL}.plist",
        {
            "@LABEL@": LABEL,
            "@PYTHON@": str(host.python),
            "@ROOT@": str(config.root),
            "@PATH@": host.search_path,
            "@HF_HOME@": host.hf_home,
            "@HF_HUB_CACHE@": host.hf_hub_cache,
            "@LOG_DIR@": str(host.mac_log_dir),
        },
    )
    data["ProgramArguments"] = program_arguments(config, host, config_file)
    data["ExitTimeOut"] = EXIT_TIMEOUT_S
    data["ThrottleInterval"] = THROTTLE_INTERVAL_S
    return plistlib.dumps(data, sort_keys=False)


# -- what launchd says ------------------------------------------------------------------
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


def query(host: Host) -> dict[str, str] | None:
    """launchd's view of the job (the keys of `launchctl print`), or None when it is not loaded."""
    p = _launchd_print(host)
    if p.returncode != 0:
        return None
    return parse_launchctl_print(p.stdout)


def job_pid(info: dict[str, str]) -> int | None:
    return int(info["pid"]) if info.get("pid", "").isdigit() else None


# -- load, stop, restart ------------------------------------------------------------------
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


def bootout(host: Host) -> None:
    """Stop and unload the job, and wait until launchd has let go of it."""
    argv = ["launchctl", "bootout", host.service]
    p = host.run(argv)
    if p.returncode not in (0, 3, 113):  # 3 / 113: no such process / service: already gone
        check(p, argv, "stopping the agent")
    _wait_until_gone(host)


def install(config: Config, host: Host, config_file: Path | None, say: Callable[[str], None]) -> None:
    """Write the plist and load it; an unchanged, running agent is left alone."""
    host.mac_log_dir.mkdir(parents=True, exist_ok=True)
    data = render_plist(config, host, config_file=config_file)
    plistlib.loads(data)  # never write a file launchd would reject
    loaded = _launchd_print(host).returncode == 0
    changed = fsutil.write_if_changed(host.plist_path, data)
    if loaded and not changed:
        info = query(host) or {}
        if info.get("state") == "running":
            say(f"already installed and running (pid {job_pid(info)}): {host.plist_path}")
            return
        argv = ["launchctl", "kickstart", host.service]
        check(host.run(argv), argv, "starting the agent")
        say(f"already installed; started it again: {host.plist_path}")
        return
    if loaded:
        say("the agent changed: stopping the old one (its running job is requeued)")
        bootout(host)
    host.run(["launchctl", "enable", host.service])  # clears an earlier `launchctl disable`
    argv = ["launchctl", "bootstrap", host.domain, str(host.plist_path)]
    check(host.run(argv), argv, "loading the agent",
          "If it says 'Input/output error', the agent may be switched off in System Settings > General > "
          "Login Items (Allow in the Background): switch hotfolder on and run this again.")
    say(f"installed {host.plist_path}; logs in {host.mac_log_dir}")


def restart(host: Host) -> None:
    """Kill the running daemon and start it again (`kickstart -k`)."""
    argv = ["launchctl", "kickstart", "-k", host.service]
    check(host.run(argv), argv, "restarting the agent", "Is it installed? hotfolder agent install")


def remove(host: Host) -> bool:
    """Stop the job and delete the plist; whether there was anything to remove."""
    removed = False
    if _launchd_print(host).returncode == 0:
        bootout(host)
        removed = True
    if host.plist_path.exists():
        host.plist_path.unlink()
        removed = True
    return removed
