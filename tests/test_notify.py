"""Notifications: argument lists only (never a shell or AppleScript built from job text), never an error,
never blocking, and a click opens the video (or error.txt)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Root, needs, needs_tool
from hotfolder.config import Config
from hotfolder.service import notify

NASTY = 'fox" & do shell script "touch /tmp/pwned" & "<b>$(rm -rf ~)</b>'


def _which(found: dict[str, str]):
    return lambda name: found.get(name)


# --- the command lines ------------------------------------------------------------------------


def test_macos_passes_title_and_text_as_osascript_arguments_not_as_script() -> None:
    which = _which({"osascript": "/usr/bin/osascript"})
    argv = notify.command("Video ready: fox", NASTY, open_path="/r/fox.mp4", platform="darwin", which=which)
    assert argv is not None
    assert argv[0] == "/usr/bin/osascript"
    script = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert script == list(notify.APPLESCRIPT)  # fixed text: no job text inside the AppleScript source
    assert argv[-2:] == ["Video ready: fox", NASTY]


def test_macos_with_terminal_notifier_opens_the_video_on_click() -> None:
    which = _which({"terminal-notifier": "/opt/homebrew/bin/terminal-notifier", "osascript": "/usr/bin/osascript"})
    argv = notify.command("Video ready: fox", NASTY, open_path="/Users/a/Movies/Hotfolder/outbox/x 1/fox.mp4",
                          platform="darwin", which=which)
    assert argv == ["/opt/homebrew/bin/terminal-notifier", "-title", "Video ready: fox", "-message", NASTY,
                    "-open", "file:///Users/a/Movies/Hotfolder/outbox/x%201/fox.mp4"]
    # A message that looks like an option stays a message.
    odd = notify.command("t", "-execute rm", platform="darwin", which=which)
    assert odd[odd.index("-message") + 1].endswith("-execute rm") and not odd[odd.index("-message") + 1].startswith("-")
    assert "-open" not in notify.command("t", "b", platform="darwin", which=which)


def test_linux_uses_notify_send_with_markup_escaped_and_an_open_action() -> None:
    which = _which({"notify-send": "/usr/bin/notify-send"})
    argv = notify.command("Video failed: fox", "a <b> & c", open_path="/r/failed/x/error.txt", platform="linux",
                          which=which)
    assert argv == ["/usr/bin/notify-send", "--app-name=hotfolder", "--icon=video-x-generic",
                    "--action=default=Open", "--action=open=Open", "--", "Video failed: fox", "a &lt;b&gt; &amp; c"]
    assert notify.command("t", "b", platform="linux", which=which)[3] == "--"  # nothing to open: no action


def test_nothing_happens_where_there_is_no_notifier() -> None:
    assert notify.command("t", "b", platform="darwin", which=_which({})) is None
    assert notify.command("t", "b", platform="linux", which=_which({})) is None
    assert notify.command("t", "b", platform="win32", which=_which({})) is None


# --- clicks, threads, limits ------------------------------------------------------------------


LINUX = {"platform": "linux", "which": _which({"notify-send": "/usr/bin/notify-send"})}


@pytest.mark.parametrize("printed, opens", [("default\n", True), ("open\n", True), ("", False), (None, False),
                                            ("something else\n", False)])
def test_a_click_opens_the_file_and_nothing_else_does(printed: str | None, opens: bool) -> None:
    opened: list[str] = []
    notify.send("Video ready: fox", "/r/fox.mp4", open_path="/r/fox.mp4", sender=lambda argv: printed,
                opener=opened.append, wait=True, **LINUX)
    assert opened == (["/r/fox.mp4"] if opens else [])


def test_sending_never_blocks_the_caller_even_when_nobody_clicks() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    opened: list[str] = []

    def sender(argv):  # a notify-send waiting for a click that comes late
        started.set()
        release.wait(30)
        finished.set()
        return "default\n"

    argv = notify.send("t", "b", open_path="/r/fox.mp4", sender=sender, opener=opened.append, **LINUX)
    # send returned while the notifier still waits for its click: the order of events, not a time
    assert not finished.is_set() and notify.waits_for_click(argv)
    assert started.wait(10)
    assert opened == []
    release.set()
    deadline = time.monotonic() + 10
    while not opened and time.monotonic() < deadline:
        time.sleep(0.01)
    assert finished.is_set() and opened == ["/r/fox.mp4"]


def test_only_a_few_notifications_wait_for_a_click_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "_waiting", threading.BoundedSemaphore(1))
    release = threading.Event()
    first = notify.send("t", "1", open_path="/r/1.mp4", sender=lambda argv: release.wait(10) and "", **LINUX)
    second = notify.send("t", "2", open_path="/r/2.mp4", sender=lambda argv: "", **LINUX)
    assert notify.waits_for_click(first) and not notify.waits_for_click(second)
    release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not notify._waiting.acquire(blocking=False):
        time.sleep(0.01)  # the first one's slot comes back once it ends
    notify._waiting.release()


def test_an_old_notify_send_without_actions_is_run_again_without_them(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    fake = tmp_path / "notify-send"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "if any(a.startswith('--action') for a in sys.argv):\n"
                    "    print('Unknown option --action=default=Open', file=sys.stderr); sys.exit(1)\n")
    fake.chmod(0o755)
    argv = notify.command("t", "b", open_path="/r/fox.mp4", platform="linux", which=_which({"notify-send": str(fake)}))
    assert notify._run(argv) == ""
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 2 and notify.waits_for_click(calls[0]) and not notify.waits_for_click(calls[1])


def test_opening_uses_xdg_open_or_open_with_the_path_as_one_argument(tmp_path: Path) -> None:
    record = tmp_path / "opened"
    fake = tmp_path / "xdg-open"
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(record)!r}, 'w').write(repr(sys.argv[1:]))\n")
    fake.chmod(0o755)
    path = str(tmp_path / "a $(b) & c.mp4")
    assert notify._open(path, platform="linux", which=_which({"xdg-open": str(fake)})) is True
    assert record.read_text() == repr([path])
    assert notify._open(path, platform="linux", which=_which({})) is False


def test_job_finished_is_on_by_default_and_off_in_config(tmp_path: Path) -> None:
    sent: list[list[str]] = []
    on = Config(root=tmp_path)
    assert on.notifications is True
    argv = notify.job_finished(on, name="fox", path="/r/outbox/x/fox.mp4", ok=True, sender=sent.append,
                               wait=True, **LINUX)
    assert sent == [argv] and argv[-2:] == ["Video ready: fox", "/r/outbox/x/fox.mp4"]
    assert notify.waits_for_click(argv)

    sent.clear()
    off = Config(root=tmp_path, notifications=False)
    assert notify.job_finished(off, name="fox", path="p", ok=True, sender=sent.append, wait=True, **LINUX) is None
    assert sent == []


def test_a_failure_names_the_first_line_of_the_error_and_where_the_details_are(tmp_path: Path) -> None:
    title, body = notify.texts(name="fox", path="/r/failed/x/error.txt", ok=False,
                               message="fox.toml: key 'duraton' is not a job key\nsecond line")
    assert title == "Video failed: fox"
    assert body == "fox.toml: key 'duraton' is not a job key (details: /r/failed/x/error.txt)"


def test_a_broken_notifier_never_raises(tmp_path: Path) -> None:
    assert notify._run(["/nonexistent/notify-send", "t", "b"]) is None
    failing = tmp_path / "notify-send"
    failing.write_text("#!/bin/sh\necho 'GDBus.Error: no notification server' >&2\nexit 1\n")
    failing.chmod(0o755)
    assert notify._run([str(failing), "t", "b"]) == ""  # ran, said nothing: never an exception
    long = notify.command("t", "x" * 1000, platform="linux", which=_which({"notify-send": "n"}))
    assert len(long[-1]) == notify.MAX_BODY

    def explode(argv):
        raise RuntimeError("boom")

    assert notify.send("t", "b", open_path="/r/x.mp4", sender=explode, wait=True, **LINUX) is not None


@pytest.mark.parametrize("clicks", [False, True], ids=["shows", "waits-for-a-click"])
def test_a_notifier_that_hangs_is_ended_at_its_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          clicks: bool) -> None:
    """A real process that never returns (a wedged notification server): `_run` ends it at the limit and returns
    None; the process is gone afterwards, nothing raised."""
    monkeypatch.setattr(notify, "ACTION_WAIT_S" if clicks else "TIMEOUT_S", 1.0)
    pid_file = tmp_path / "pid"
    hangs = tmp_path / "notify-send"
    hangs.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    hangs.chmod(0o755)
    argv = notify.command("t", "b", open_path="/r/x.mp4" if clicks else None, platform="linux",
                          which=_which({"notify-send": str(hangs)}))
    assert notify.waits_for_click(argv) is clicks
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(notify._run(argv)))
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and done == [None]
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the hanging notifier (pid {pid}) was left running")


# --- the real notify-send ---------------------------------------------------------------------


SERVER = r'''
import json, sys
from gi.repository import Gio, GLib

XML = """<node><interface name="org.freedesktop.Notifications">
<method name="GetCapabilities"><arg direction="out" type="as"/></method>
<method name="Notify"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="in" type="s"/>
<arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="as"/>
<arg direction="in" type="a{sv}"/><arg direction="in" type="i"/><arg direction="out" type="u"/></method>
<method name="CloseNotification"><arg direction="in" type="u"/></method>
<method name="GetServerInformation"><arg direction="out" type="s"/><arg direction="out" type="s"/>
<arg direction="out" type="s"/><arg direction="out" type="s"/></method>
<signal name="NotificationClosed"><arg type="u"/><arg type="u"/></signal>
<signal name="ActionInvoked"><arg type="u"/><arg type="s"/></signal>
</interface></node>"""
record, click = sys.argv[1], sys.argv[2]  # click: the action to "click" on each notification, "" for none
node = Gio.DBusNodeInfo.new_for_xml(XML)
loop = GLib.MainLoop()
count = [0]
PATH, IFACE = "/org/freedesktop/Notifications", "org.freedesktop.Notifications"

def call(conn, sender, path, iface, method, params, invocation):
    if method == "GetCapabilities":
        invocation.return_value(GLib.Variant("(as)", (["actions", "body"],)))
    elif method == "GetServerInformation":
        invocation.return_value(GLib.Variant("(ssss)", ("fake", "hotfolder tests", "1", "1.2")))
    elif method == "Notify":
        count[0] += 1
        nid = count[0]
        app, _, icon, summary, body, actions, hints, timeout = params.unpack()
        with open(record, "a") as f:
            f.write(json.dumps({"app": app, "summary": summary, "body": body, "actions": actions}) + "\n")
        invocation.return_value(GLib.Variant("(u)", (nid,)))

        def later():
            if click:
                conn.emit_signal(None, PATH, IFACE, "ActionInvoked", GLib.Variant("(us)", (nid, click)))
            conn.emit_signal(None, PATH, IFACE, "NotificationClosed", GLib.Variant("(uu)", (nid, 2 if click else 1)))
            return False

        GLib.timeout_add(300, later)
    else:
        invocation.return_value(None)

def bus(conn, name):
    conn.register_object(PATH, node.interfaces[0], call, None, None)

def named(conn, name):
    open(record + ".ready", "w").close()

Gio.bus_own_name(Gio.BusType.SESSION, IFACE, Gio.BusNameOwnerFlags.NONE, bus, named, lambda *a: loop.quit())
loop.run()
'''


def _system_python_with_gi() -> str | None:
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and subprocess.run([python, "-c", "from gi.repository import Gio"], capture_output=True).returncode == 0:
            return python
    return None


class NotificationServer:
    """A private D-Bus session bus with a notification server that records each notification and then clicks
    it (`click`: the action's name) or dismisses it (`click` empty)."""

    def __init__(self, tmp_path: Path, click: str):
        needs_tool("notify-send", "apt-get install libnotify-bin")
        needs_tool("dbus-daemon", "apt-get install dbus")
        python = _system_python_with_gi()
        needs(python, "no python3 with gi here (apt-get install python3-gi)")
        self.record = tmp_path / "notifications.jsonl"
        self.bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1",
                                     f"--address=unix:path={tmp_path}/bus"], stdout=subprocess.PIPE, text=True)
        self.server: subprocess.Popen | None = None
        try:
            self.address = self.bus.stdout.readline().strip()
            assert self.address.startswith("unix:")
            (tmp_path / "server.py").write_text(SERVER)
            self.server = subprocess.Popen([python, str(tmp_path / "server.py"), str(self.record), click],
                                           env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address})
            deadline = time.monotonic() + 20
            while not Path(f"{self.record}.ready").exists():
                assert time.monotonic() < deadline and self.server.poll() is None, "the notification server did not start"
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def shown(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()] if self.record.exists() else []

    def close(self) -> None:
        for proc in (self.server, self.bus):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
        if self.bus.stdout:
            self.bus.stdout.close()


def test_the_real_notify_send_accepts_the_arguments(tmp_path: Path) -> None:
    """The exact argument list, run by this machine's notify-send against a real notification server."""
    server = NotificationServer(tmp_path, click="")
    try:
        argv = notify.command("hotfolder test", "a <b> & c", open_path="/tmp/x.mp4", platform="linux")
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": server.address})
        assert run.returncode == 0 and run.stderr == "", run.stderr
        [shown] = server.shown()
        assert shown["app"] == "hotfolder" and shown["summary"] == "hotfolder test"
        assert shown["body"] == "a &lt;b&gt; &amp; c"  # markup escaped: the server shows "a <b> & c"
        assert shown["actions"] == ["default", "Open", "open", "Open"]
    finally:
        server.close()


@pytest.mark.parametrize("click", ["default", ""], ids=["clicked", "dismissed"])
def test_the_real_notify_send_opens_the_video_when_the_notification_is_clicked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, click: str) -> None:
    """notify-send against a notification server on a private D-Bus that clicks (or dismisses) each notification."""
    server = NotificationServer(tmp_path, click)
    try:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", server.address)
        opened: list[str] = []
        mp4 = tmp_path / "outbox" / "x" / "fox.mp4"
        notify.send("Video ready: fox", str(mp4), open_path=mp4, opener=opened.append, platform="linux", wait=True)
        [shown] = server.shown()
        assert shown["app"] == "hotfolder" and shown["summary"] == "Video ready: fox" and shown["body"] == str(mp4)
        assert shown["actions"] == ["default", "Open", "open", "Open"]
        assert opened == ([str(mp4)] if click else [])
    finally:
        server.close()


# --- in the daemon ----------------------------------------------------------------------------


def _daemon_with_tools(tmp_path: Path, tools: dict[str, str]) -> tuple[Root, subprocess.Popen]:
    """A root with notifications on, and the real daemon (fake backend) with these scripts first on its PATH
    (name -> script text). The daemon uses notify-send on Linux only: elsewhere the test has nothing to fake."""
    if sys.platform == "darwin":
        pytest.skip("on macOS the daemon uses terminal-notifier or osascript: this test fakes notify-send")
    root = Root(tmp_path)
    root.write_config(notifications=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in tools.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    return root, root.start(fake=True, env=root.env(PATH=f"{bin_dir}:{os.environ['PATH']}"))


def test_the_daemon_notifies_and_a_click_opens_the_video_or_the_error(tmp_path: Path) -> None:
    """The real daemon with a fake `notify-send` (which records its arguments and "clicks") and a fake
    `xdg-open` (which records what it was asked to open) first on PATH."""
    from conftest import wait_until

    record, opened = tmp_path / "notifications.jsonl", tmp_path / "opened.jsonl"
    root, daemon = _daemon_with_tools(tmp_path, {
        "notify-send": f"#!{sys.executable}\nimport json, sys\n"
                       f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                       "if '--action=default=Open' in sys.argv: print('default')\n",
        "xdg-open": f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(opened)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n",
    })
    try:
        (root.inbox / "fox.toml").write_text('prompt = "A red fox"\nwidth = 64\nheight = 64\nduration = 0.5\n'
                                             'fps = 16\nsteps = 2\n')
        (root.inbox / "bad.toml").write_text('prompt = "x"\nduraton = 3\n')

        def lines(path: Path) -> list[list[str]]:
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        wait_until(lambda: len(lines(record)) >= 2 and len(lines(opened)) >= 2, timeout=60,
                   what="two notifications, both clicked")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    notes = lines(record)
    assert sorted(n[-2] for n in notes) == ["Video failed: bad", "Video ready: fox"]
    assert all(notify.waits_for_click(n) for n in notes)
    ready = next(n for n in notes if n[-2] == "Video ready: fox")
    assert ready[-1].endswith("fox.mp4") and Path(ready[-1]).is_file()
    failed = next(n for n in notes if n[-2] == "Video failed: bad")
    assert "duraton" in failed[-1] and "error.txt" in failed[-1]
    targets = sorted(o[0] for o in lines(opened))
    assert [Path(t).name for t in targets] == ["error.txt", "fox.mp4"] and all(Path(t).is_file() for t in targets)


def test_a_notifier_that_never_returns_does_not_hold_up_the_daemon(tmp_path: Path) -> None:
    """Each notification's notify-send hangs (a wedged notification server): the daemon still makes the next job,
    and still stops gracefully."""
    from conftest import wait_until

    pids = tmp_path / "pids"
    root, daemon = _daemon_with_tools(tmp_path, {"notify-send": f'#!/bin/sh\necho $$ >> "{pids}"\nexec sleep 600\n'})
    try:
        job = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'
        (root.inbox / "first.toml").write_text(f'prompt = "first"\n{job}')
        wait_until(lambda: pids.exists() and len(pids.read_text().split()) >= 1, timeout=60,
                   what="the first notification, which never returns")
        (root.inbox / "second.toml").write_text(f'prompt = "second"\n{job}')
        wait_until(lambda: len(root.results()) == 2 and len(pids.read_text().split()) >= 2, timeout=60,
                   what="the second job made and notified while the first notification still hangs")
        first = int(pids.read_text().split()[0])
        os.kill(first, 0)  # still hanging
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=15)
        for pid in (pids.read_text().split() if pids.exists() else []):
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
