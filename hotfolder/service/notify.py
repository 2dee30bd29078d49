"""Desktop notifications when a job finishes or fails, that open the result when clicked.

People who drop files in Finder never read logs; the notification is where they learn
that the video is ready, and clicking it should show them the video.

- macOS with `terminal-notifier` (`brew install terminal-notifier`): clicking "ready"
  opens the MP4 (QuickTime plays it), clicking "failed" opens its `error.txt`
  (`-open file://...`: a URL, never a shell command).
- macOS without it: `osascript` with the title and text passed as arguments to an
  `on run argv` handler, so no job text ever becomes AppleScript source. Such a
  notification cannot do anything when clicked (it belongs to Script Editor).
- Linux: `notify-send` with an "Open" action (`--action`, libnotify 0.7.9 and newer):
  it waits, on a background thread with a time limit, for the person to click; then
  `xdg-open` opens the MP4 or `error.txt`. A notify-send too old for `--action` is run
  again without it. At most MAX_WAITING notifications wait for a click at once; more are
  sent without the action.
- Elsewhere, or when none of these exist: nothing.

Always an argument list, never a shell; a notification that fails is dropped, never an
error for the job, and it never holds up the daemon.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from hotfolder.config import Config

MAX_BODY = 240
TIMEOUT_S = 10.0  # a notifier that shows and returns
ACTION_WAIT_S = 15 * 60.0  # how long a Linux notification waits for a click before its action is dropped
OPEN_TIMEOUT_S = 30.0  # xdg-open hands the file to an application and returns
MAX_WAITING = 8  # notifications waiting for a click at once (each holds a notify-send and a thread)
ACTIONS = ("--action=default=Open", "--action=open=Open")  # "default": a click on the notification itself
CHOSEN = ("default", "open")  # what notify-send prints when one of them was clicked

# The script is fixed text; title and body arrive as argv items 1 and 2.
APPLESCRIPT = (
    "on run argv",
    "display notification (item 2 of argv) with title (item 1 of argv)",
    "end run",
)

Sender = Callable[[Sequence[str]], object]  # runs a notifier; returns what it printed (str) when it was clicked
Opener = Callable[[str], object]  # opens a file the way a double-click would
Which = Callable[[str], "str | None"]

_waiting = threading.BoundedSemaphore(MAX_WAITING)


def command(title: str, body: str, *, open_path: str | Path | None = None, platform: str = sys.platform,
            which: Which = shutil.which) -> list[str] | None:
    """The argument list that shows this notification here, or None when this machine has no way to.

    With `open_path`, a click opens that file where the notifier can do so.
    """
    body = body if len(body) <= MAX_BODY else body[: MAX_BODY - 1] + "\u2026"
    if platform == "darwin":
        notifier = which("terminal-notifier")
        if notifier:
            argv = [notifier, "-title", title, "-message", _tn_text(body)]
            if open_path is not None:
                argv += ["-open", Path(open_path).absolute().as_uri()]
            return argv
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
        actions = list(ACTIONS) if open_path is not None else []
        return [notify_send, "--app-name=hotfolder", "--icon=video-x-generic", *actions, "--", title, markup]
    return None


def _tn_text(text: str) -> str:
    """terminal-notifier (NSUserDefaults) would read a message that starts with "-" as an option: keep it text."""
    return "\u200b" + text if text.startswith("-") else text


def waits_for_click(argv: Sequence[str]) -> bool:
    """Whether this notify-send command stays until the notification is clicked or closed."""
    return any(a in ACTIONS for a in argv)


def without_actions(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if a not in ACTIONS]


def _run(argv: Sequence[str]) -> str | None:
    """Run a notifier; returns what it printed (the action clicked, for notify-send), None when it failed."""
    waits = waits_for_click(argv)
    try:
        run = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=ACTION_WAIT_S if waits else TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # no notification server, a hung one, a missing binary, nobody clicked: never the job's problem
    if waits and run.returncode != 0 and "Unknown option" in (run.stderr or ""):
        return _run(without_actions(argv))  # a notify-send older than --action: show it without
    return run.stdout


def _open(path: str, *, platform: str = sys.platform, which: Which = shutil.which) -> bool:
    """Open `path` with its application (xdg-open on Linux, open on macOS); False when it could not."""
    tool = which("open" if platform == "darwin" else "xdg-open")
    if not tool:
        return False
    try:
        subprocess.run([tool, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=OPEN_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _deliver(argv: Sequence[str], open_path: str | None, sender: Sender, opener: Opener, held: bool) -> None:
    """Show the notification; when it waits for a click and the click comes, open the file."""
    try:
        answer = sender(argv)
        lines = answer.strip().splitlines() if isinstance(answer, str) else []
        if open_path is not None and waits_for_click(argv) and lines and lines[-1].strip() in CHOSEN:
            opener(open_path)
    except Exception:  # noqa: BLE001 - a notification must never be an error
        pass
    finally:
        if held:
            _waiting.release()


def send(title: str, body: str, *, open_path: str | Path | None = None, sender: Sender = _run,
         opener: Opener = _open, platform: str = sys.platform, which: Which = shutil.which,
         wait: bool = False) -> list[str] | None:
    """Show a notification; returns the command used (None when there is none).

    By default it runs on a daemon thread: a notification server that never answers, or a
    person who never clicks, must not hold up the next job.
    """
    argv = command(title, body, open_path=open_path, platform=platform, which=which)
    if argv is None:
        return None
    held = False
    if waits_for_click(argv):
        held = _waiting.acquire(blocking=False)
        if not held:
            argv = without_actions(argv)  # too many waiting already: this one just shows
    target = str(open_path) if open_path is not None else None
    if wait:
        _deliver(argv, target, sender, opener, held)
    else:
        threading.Thread(target=_deliver, args=(argv, target, sender, opener, held), name="hotfolder-notify",
                         daemon=True).start()
    return argv


def texts(*, name: str, path: str, ok: bool, message: str = "") -> tuple[str, str]:
    """(title, body) for a finished job."""
    if ok:
        return f"Video ready: {name}", message or path
    first = (message.strip().splitlines() or ["the job failed"])[0]
    return f"Video failed: {name}", f"{first} (details: {path})"


def job_finished(config: Config, *, name: str, path: str, ok: bool, message: str = "",
                 sender: Sender = _run, opener: Opener = _open, platform: str = sys.platform,
                 which: Which = shutil.which, wait: bool = False) -> list[str] | None:
    """What the daemon calls once per delivered or failed job (off with `notifications = false`).

    `path` is the MP4 (ready) or the failure's error.txt: a click opens it.
    """
    if not config.notifications:
        return None
    title, body = texts(name=name, path=path, ok=ok, message=message)
    return send(title, body, open_path=path, sender=sender, opener=opener, platform=platform, which=which, wait=wait)
