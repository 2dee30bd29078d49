"""The Linux systemd user unit: its file, and the exact `systemctl --user` calls that enable, restart and remove it.

The unit behaves like the LaunchAgent. Install is idempotent (an unchanged,
running unit is left alone); removal takes away only the unit file install wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hotfolder import fsutil
from hotfolder.config import Config
from hotfolder.service.host import (
    EXIT_TIMEOUT_S, THROTTLE_INTERVAL_S, UNIT_NAME, Completed, Host, check, program_arguments,
)


# -- the unit file -----------------------------------------------------------------
def _systemd_quote(text: str) -> str:
    """One word for a unit file: double-quoted, with specifiers (%) and variables ($) kept literal."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def render_unit(config: Config, host: Host, *, config_file: Path | None = None) -> str:
    """The systemd user unit: the same behaviour as the LaunchAgent."""
    exec_start = " ".join(_systemd_quote(a) for a in program_arguments(config, host, config_file))
    env = {"PATH": host.search_path, **host.hf_env, "PYTHONUNBUFFERED": "1"}
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


# -- what systemd says ----------------------------------------------------------------
def show(host: Host) -> Completed:
    """`systemctl --user show` for the unit, with the properties the agent's status needs."""
    return host.run(["systemctl", "--user", "show", UNIT_NAME,
                     "--property=LoadState,ActiveState,SubState,MainPID,ExecMainStatus"])


def parse_show(text: str) -> dict[str, str]:
    """The `Key=value` lines of `systemctl show`."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def main_pid(info: dict[str, str]) -> int | None:
    pid = info.get("MainPID", "0")
    return int(pid) if pid.isdigit() and pid != "0" else None


# What systemctl says when this login has no user manager to talk to: ssh without a login session,
# `su`, a container, cron. Nothing about the unit is wrong then; the session is.
_NO_BUS = ("failed to connect to bus", "no medium found", "$dbus_session_bus_address", "$xdg_runtime_dir",
           "failed to connect to user scope bus")
LINGER_HINT = ("systemd user services need a user session: log in to a desktop or over ssh with a login session; "
               "`loginctl enable-linger` keeps a user manager running without one (and after logout).")


def unreachable(p: Completed) -> str | None:
    """Why `systemctl --user` could not talk to a user manager at all (None when it could)."""
    if p.returncode == 127:
        return "systemctl is not installed here (no systemd)"
    text = (p.stderr or p.stdout).strip()
    if p.returncode != 0 and any(marker in text.lower() for marker in _NO_BUS):
        return f"there is no systemd user manager for this login (no user bus: {text.splitlines()[0]})"
    return None


# -- enable, restart, remove --------------------------------------------------------------
def install(config: Config, host: Host, config_file: Path | None, say: Callable[[str], None]) -> None:
    """Write the unit and enable it; an unchanged, running unit is left alone, a changed one restarted."""
    changed = fsutil.write_if_changed(host.unit_path, render_unit(config, host, config_file=config_file).encode())
    p = show(host)
    before = parse_show(p.stdout) if p.returncode == 0 else {}
    running = before.get("ActiveState") == "active"
    if not changed and running:
        say(f"already installed and running (pid {main_pid(before)}): {host.unit_path}")
        return
    for argv in (["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]):
        check(host.run(argv), argv, "installing the user unit", LINGER_HINT)
    if changed and running:
        argv = ["systemctl", "--user", "restart", UNIT_NAME]
        check(host.run(argv), argv, "restarting the changed unit")
    say(f"installed {host.unit_path}; logs: journalctl --user -u {UNIT_NAME}")


def restart(host: Host) -> None:
    argv = ["systemctl", "--user", "restart", UNIT_NAME]
    check(host.run(argv), argv, "restarting the agent", "Is it installed? hotfolder agent install")


def remove(host: Host, say: Callable[[str], None] = print) -> bool:
    """Disable and stop the unit and delete its file; whether there was anything to remove.

    The file goes even when no user manager can be reached (no user session): a manager
    that starts later then finds nothing to run, which is what uninstall asked for.
    """
    if not host.unit_path.exists():
        return False
    argv = ["systemctl", "--user", "disable", "--now", UNIT_NAME]
    p = host.run(argv)
    why = unreachable(p)
    if why is None:
        check(p, argv, "stopping the user unit")
    host.unit_path.unlink()
    if why is None:
        host.run(["systemctl", "--user", "daemon-reload"])
    else:
        say(f"removed {host.unit_path}, but could not tell systemd: {why}. A daemon it started earlier "
            "stops at your next logout (or: systemctl --user stop hotfolder.service from a login session).")
    return True
