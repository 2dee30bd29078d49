"""Shared fixtures: a hotfolder root in tmp_path, its config file, and real daemon processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

if TYPE_CHECKING:
    from hotfolder.job.spec import JobSpec

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")  # .ci/run exports CI=true


def needs(ok: object, what: str) -> None:
    """Skip a test whose tool or service is missing here, but fail it in CI, where `.ci/run` installs everything:
    a check CI always skips proves nothing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but {what}: .ci/run installs it, so the CI machine is broken",
                    pytrace=False)
    pytest.skip(what)


def needs_tool(name: str | tuple[str, ...], install_hint: str) -> str:
    """The path of `name` (or the first of several alternatives) on PATH; skips locally and fails in CI without it."""
    names = (name,) if isinstance(name, str) else name
    found = next((path for path in map(shutil.which, names) if path), None)
    needs(found, f"{' or '.join(names)} is not installed here ({install_hint})")
    return found  # type: ignore[return-value]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("unprivileged") and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores file modes: run as an unprivileged user (CI does: .ci/run runs "
                    "`pytest -m unprivileged` through runuser -u hotfolder-ci)")


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Like watchdog's suite: a test must not leave threads running behind it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads leaked: {leaked}")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Poll with a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class Root:
    """A hotfolder root plus its config file, and helpers to run the real daemon on it."""

    def __init__(self, base: Path):
        self.path = base / "root"
        self.home = base / "home"
        self.home.mkdir()
        self.config = base / "config.toml"
        self.write_config()
        for sub in ("inbox", "processing", "outbox", "failed"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def write_config(self, **extra: object) -> None:
        import tomli_w

        data = {
            "settle_seconds": 0.3,
            "rescan_seconds": 0.5,
            "cache_dir": str(self.path.parent / "cache"),
            "log_dir": str(self.path.parent / "logs"),
            "state_dir": str(self.path.parent / "state"),
            "notifications": False,
            **extra,
        }
        self.config.write_text(tomli_w.dumps(data))

    @property
    def inbox(self) -> Path:
        return self.path / "inbox"

    @property
    def outbox(self) -> Path:
        return self.path / "outbox"

    @property
    def failed(self) -> Path:
        return self.path / "failed"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "XDG_"))}
        env.update(HOME=str(self.home), HF_HUB_OFFLINE="1", HF_HOME=str(self.home / "hf"), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def cli(self, *args: str, fake: bool = False, input: str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(TESTS / "run_daemon.py")] if fake else [sys.executable, "-m", "hotfolder"]
        cmd += [args[0], "--root", str(self.path), "--config", str(self.config)]
        if fake and args[0] == "run":
            cmd += ["--backend", "fake"]
        cmd += list(args[1:])
        return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout,
                              env=env or self.env())

    def start(self, *args: str, fake: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(TESTS / "run_daemon.py")] if fake else [sys.executable, "-m", "hotfolder"]
        cmd += ["run", "--root", str(self.path), "--config", str(self.config), *(["--backend", "fake"] if fake else []),
                *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env or self.env())

    def results(self) -> list[Path]:
        return sorted(p for p in self.outbox.iterdir() if p.is_dir())

    def failures(self) -> list[Path]:
        return sorted(p for p in self.failed.iterdir() if p.is_dir())

    def metadata(self, result: Path) -> dict:
        return json.loads(next(p for p in result.glob("*.json")).read_text())


def drop(root: Root, rel: str, data: str | bytes) -> Path:
    """Put a job file into the inbox as a finished copy does: written under a hidden name, then renamed in."""
    path = root.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.rename(tmp, path)
    return path


def make_spec(**changes: object) -> "JobSpec":
    """A fully resolved JobSpec for tests that call backends or the cache directly (no job file)."""
    from hotfolder.job.spec import JobSpec

    fields: dict[str, object] = {
        "source": "fox.toml", "index": 0, "name": "fox", "prompt": "a red fox trotting through fresh snow",
        "negative_prompt": "", "format": "custom", "mode": "preview", "duration": 9 / 24, "fps": 24.0, "seed": 7,
        "seed_random": False, "steps": 2, "width": 64, "height": 64, "num_frames": 9, "priority": 0,
        "cache": "use", "backend": "diffusers", "model": "tiny", "generate_audio": True, "gif": False,
        "thumbnail": False, "preset": None,
    }
    fields.update(changes)
    return JobSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)
