"""Notifications: argument lists only (never a shell or AppleScript built from job text), and never an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hotfolder.service import notify
from hotfolder.config import Config

NASTY = 'fox" & do shell script "touch /tmp/pwned" & "<b>$(rm -rf ~)</b>'


def _which(found: dict[str, str]):
    return lambda name: found.get(name)


def test_macos_passes_title_and_text_as_osascript_arguments_not_as_script() -> None:
    which = _which({"osascript": "/usr/bin/osascript"})
    argv = notify.command("Video ready: fox", NASTY, platform="darwin", which=which)
    assert argv is not None
    assert argv[0] == "/usr/bin/osascript"
    script = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert script == list(notify.APPLESCRIPT)  # fixed text: no job text inside the AppleScript source
    assert argv[-2:] == ["Video ready: fox", NASTY]


def test_linux_uses_notify_send_with_markup_escaped() -> None:
    which = _which({"notify-send": "/usr/bin/notify-send"})
    argv = notify.command("Video failed: fox", "a <b> & c", platform="linux", which=which)
    assert argv == ["/usr/bin/notify-send", "--app-name=hotfolder", "--icon=video-x-generic", "--",
                    "Video failed: fox", "a &lt;b&gt; &amp; c"]


def test_nothing_happens_where_there_is_no_notifier() -> None:
    assert notify.command("t", "b", platform="darwin", which=_which({})) is None
    assert notify.command("t", "b", platform="linux", which=_which({})) is None
    assert notify.command("t", "b", platform="win32", which=_which({})) is None


def test_job_finished_is_on_by_default_and_off_in_config(tmp_path: Path) -> None:
    sent: list[list[str]] = []
    which = _which({"notify-send": "/usr/bin/notify-send"})
    on = Config(root=tmp_path)
    assert on.notifications is True
    argv = notify.job_finished(on, name="fox", path="/r/outbox/x/fox.mp4", ok=True, sender=sent.append,
                               platform="linux", which=which, wait=True)
    assert sent == [argv] and argv[-2:] == ["Video ready: fox", "/r/outbox/x/fox.mp4"]

    sent.clear()
    off = Config(root=tmp_path, notifications=False)
    assert notify.job_finished(off, name="fox", path="p", ok=True, sender=sent.append, platform="linux",
                               which=which, wait=True) is None
    assert sent == []


def test_a_failure_names_the_first_line_of_the_error_and_where_the_details_are(tmp_path: Path) -> None:
    title, body = notify.texts(name="fox", path="/r/failed/x/error.txt", ok=False,
                               message="fox.toml: key 'duraton' is not a job key\nsecond line")
    assert title == "Video failed: fox"
    assert body == "fox.toml: key 'duraton' is not a job key (details: /r/failed/x/error.txt)"


def test_a_broken_or_hanging_notifier_never_raises(tmp_path: Path) -> None:
    assert notify._run(["/nonexistent/notify-send", "t", "b"]) is None
    long = notify.command("t", "x" * 1000, platform="linux", which=_which({"notify-send": "n"}))
    assert len(long[-1]) == notify.MAX_BODY


@pytest.mark.skipif(shutil.which("notify-send") is None, reason="notify-send is not installed here")
def test_the_real_notify_send_accepts_the_arguments() -> None:
    argv = notify.command("hotfolder test", "a <b> & c", platform="linux")
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    # Without a notification server it fails, but on the D-Bus connection, never on the arguments.
    assert run.returncode == 0 or "Unknown option" not in run.stderr


def test_the_daemon_notifies_when_a_job_is_delivered_and_when_one_fails(tmp_path: Path) -> None:
    """The real daemon with a fake `notify-send` first on PATH that records its arguments."""
    import sys

    from conftest import Root, wait_until

    if sys.platform == "darwin":
        pytest.skip("on macOS the daemon uses osascript: this test fakes notify-send")
    root = Root(tmp_path)
    root.write_config(notifications=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "notifications.jsonl"
    fake = bin_dir / "notify-send"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    daemon = root.start(fake=True, env=root.env(PATH=f"{bin_dir}:{os.environ['PATH']}"))
    try:
        (root.inbox / "fox.toml").write_text('prompt = "A red fox"\nwidth = 64\nheight = 64\nduration = 0.5\n'
                                             'fps = 16\nsteps = 2\n')
        (root.inbox / "bad.toml").write_text('prompt = "x"\nduraton = 3\n')

        def notes() -> list[list[str]]:
            return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

        wait_until(lambda: len(notes()) >= 2, timeout=60, what="two notifications")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    titles = sorted(n[-2] for n in notes())
    assert titles == ["Video failed: bad", "Video ready: fox"]
    ready = next(n for n in notes() if n[-2] == "Video ready: fox")
    assert ready[-1].endswith("fox.mp4") and Path(ready[-1]).is_file()
    failed = next(n for n in notes() if n[-2] == "Video failed: bad")
    assert "duraton" in failed[-1] and "error.txt" in failed[-1]
