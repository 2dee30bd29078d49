"""Desktop notifications when a job finishes or fails: people who drop files in Finder never read logs.

macOS: `osascript` with the title and text passed as arguments to an `on run argv`
handler, so no job text ever becomes AppleScript source. Linux: `notify-send`.
Elsewhere, or when neither exists: nothing. Always an argument list, never a
shell; a notification that fails is dropped, never an error for the job.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from typing import Callable, Sequence

from hotfolder.config import Config

MAX_BODY = 240
TIMEOUT_S = 10.0

# The script is fixed text; title and body arrive as argv items 1 and 2.
APPLESCRIPT = (
    "on run argv",
    "display notification (item 2 of argv) with title (item 1 of argv)",
    "end run",
)

Sender = Callable[[Sequence[str]], object]


def command(title: str, body: str, *, platform: str = sys.platform,
            which: Callable[[str], str | None] = shutil.which) -> list[str] | None:
    """The argument list that shows this notification here, or None when this machine has no way to."""
    body = body if len(body) <= MAX_BODY else body[: MAX_BODY - 1] + "\u2026"
    if platform == "darwin":
        osascript = which("osascript")
        if osascript:
            script: list[str] = []
            for line in APPLESCRIPT:
                script += ["-e", line]
            return [osascript, *script, title, body]
        return None
    notify_send = which("notify-send")
    if notify_send:
        # notify-send bodies are markup: keep a prompt's "<" and "&" literal.
        markup = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return [notify_send, "--app-name=hotfolder", "--icon=video-x-generic", "--", title, markup]
    return None


def _run(argv: Sequence[str]) -> object:
    try:
        return subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # no notification server, a hung one, a missing binary: never the job's problem


def send(title: str, body: str, *, sender: Sender = _run, platform: str = sys.platform,
         which: Callable[[str], str | None] = shutil.which, wait: bool = False) -> list[str] | None:
    """Show a notification; returns the command used (None when there is none).

    By default it runs on a daemon thread: a notification server that never
    answers must not hold up the next job.
    """
    argv = command(title, body, platform=platform, which=which)
    if argv is None:
        return None
    if wait:
        sender(argv)
    else:
        threading.Thread(target=sender, args=(argv,), name="hotfolder-notify", daemon=True).start()
    return argv


def texts(*, name: str, path: str, ok: bool, message: str = "") -> tuple[str, str]:
    """(title, body) for a finished job."""
    if ok:
        return f"Video ready: {name}", message or path
    first = (message.strip().splitlines() or ["the job failed"])[0]
    return f"Video failed: {name}", f"{first} (details: {path})"


def job_finished(config: Config, *, name: str, path: str, ok: bool, message: str = "",
                 sender: Sender = _run, platform: str = sys.platform,
                 which: Callable[[str], str | None] = shutil.which, wait: bool = False) -> list[str] | None:
    """What the daemon calls once per delivered or failed job (off with `notifications = false`)."""
    if not config.notifications:
        return None
    title, body = texts(name=name, path=path, ok=ok, message=message)
    return send(title, body, sender=sender, platform=platform, which=which, wait=wait)
