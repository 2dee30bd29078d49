"""The machine the login agent is installed on, and what the launchd and systemd files share.

Everything that belongs to the machine (home folder, uid, platform, the Python
to run, the command runner, the clock) comes in a `Host`, so rendering and the
exact `launchctl` / `systemctl` argument lists are tested on any OS with the
runner injected.
"""

from __future__ import annotations

import math
import os
import plistlib
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hotfolder.config import Config
from hotfolder.errors import HotfolderError, UsageError
from hotfolder.folders.status import STOP_GRACE_S

LABEL = "com.hotfolder.daemon"
UNIT_NAME = "hotfolder.service"
QUICK_ACTION_TITLE = "Make video with hotfolder"
THROTTLE_INTERVAL_S = 10
# SIGTERM to SIGKILL: the daemon's own graceful stop plus a margin for ffmpeg and status writes.
EXIT_TIMEOUT_S = math.ceil(STOP_GRACE_S) + 7
# Agents do not read a shell profile: Homebrew (Apple Silicon, then Intel) and the system.
BASE_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
# The plist and Quick Action templates: package data (pyproject.toml), so an installed wheel has them.
TEMPLATES = Path(__file__).resolve().parent / "templates"
RUN_TIMEOUT_S = 60.0


# -- running commands ------------------------------------------------------------
@dataclass(frozen=True)
class Completed:
    """What a command returned (the part of subprocess.CompletedProcess we use)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[Sequence[str]], Completed]


def run_command(argv: Sequence[str], timeout: float = RUN_TIMEOUT_S) -> Completed:
    """Run an argument list (never a shell); a missing program is exit 127, as a shell would say."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Completed(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"{' '.join(argv)}: no answer within {timeout:g} s")
    return Completed(p.returncode, p.stdout, p.stderr)


def check(p: Completed, argv: Sequence[str], what: str, hint: str = "") -> None:
    """Raise a HotfolderError naming the command when it failed."""
    if p.returncode != 0:
        out = (p.stderr or p.stdout).strip()
        raise HotfolderError(f"{what}: `{shlex.join(argv)}` exited {p.returncode}: {out}. {hint}".strip())


# -- the machine ------------------------------------------------------------
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
    def current(cls, run: Runner = run_command) -> Host:
        return cls(home=Path.home(), uid=os.getuid(), platform=sys.platform,
                   python=Path(os.path.abspath(sys.executable)), run=run, env=dict(os.environ))

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

    # The Hugging Face cache, resolved from this shell's environment exactly as huggingface_hub does
    # (`weights.hub_cache`), so the agent looks where `hotfolder models pull` put the weights.
    def _path(self, value: str) -> str:
        if value == "~" or value.startswith("~/"):
            value = str(self.home) + value[1:]
        return os.path.expandvars(value)

    @property
    def hf_home(self) -> str:
        """HF_HOME for the agent: the one set now, else `$XDG_CACHE_HOME/huggingface`, else ~/.cache/huggingface."""
        if self.env.get("HF_HOME"):
            return self._path(self.env["HF_HOME"])
        cache = self._path(self.env["XDG_CACHE_HOME"]) if self.env.get("XDG_CACHE_HOME") else str(self.home / ".cache")
        return os.path.join(cache, "huggingface")

    @property
    def hf_hub_cache(self) -> str:
        """HF_HUB_CACHE for the agent: the one set now (or the legacy HUGGINGFACE_HUB_CACHE), else HF_HOME/hub."""
        given = self.env.get("HF_HUB_CACHE") or self.env.get("HUGGINGFACE_HUB_CACHE")
        return self._path(given) if given else os.path.join(self.hf_home, "hub")

    @property
    def hf_env(self) -> dict[str, str]:
        """The Hugging Face variables the agent runs with: the cache this shell uses, and never the network."""
        return {"HF_HOME": self.hf_home, "HF_HUB_CACHE": self.hf_hub_cache, "HF_HUB_OFFLINE": "1"}

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


# -- what the agent runs, and the templates ----------------------------------------
def program_arguments(config: Config, host: Host, config_file: Path | None) -> list[str]:
    """The daemon's command line, the same in the plist and the unit."""
    args = [str(host.python), "-m", "hotfolder", "run", "--root", str(config.root)]
    if config_file is not None:
        args += ["--config", str(Path(config_file).absolute())]
    return args


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
            f"template {path} is missing: this hotfolder installation is incomplete (the templates are package "
            "data in hotfolder/service/templates/). Reinstall it: pip install --force-reinstall hotfolder"
        ) from None


def template(name: str, values: Mapping[str, str]) -> Any:
    """A plist template from hotfolder/service/templates/, loaded, with its @NAME@ placeholders filled."""
    return _fill(_template(name), values)
