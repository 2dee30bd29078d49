"""A root inside Dropbox, iCloud Drive or Syncthing: what docs/mac.md ("Sync folders") promises, on the real daemon.

The guide promises, and these tests check, exactly this:
1. A prompt a sync client saves (a temporary name, often hidden, then a rename; often
   with the sender's old modification time) is processed once, never while half-written.
2. An iCloud placeholder (`.NAME.icloud`) is ignored; the job starts when the real file arrives.
3. A file iCloud has not downloaded yet (dataless) is not read until it has been.
4. Conflict copies (Dropbox "conflicted copy", Syncthing ".sync-conflict-", iCloud "NAME 2")
   are separate jobs, each processed once, each logged under its own name.
5. The outbox only ever holds complete results: a sync client uploading it never sees half a file.
"""

from __future__ import annotations

import json
import os
import plistlib
import stat
import time
from pathlib import Path

import pytest

from conftest import Root, wait_until
from hotfolder.folders import arrivals as arrivals_module
from hotfolder.job import names
from hotfolder.config import Config
from hotfolder.folders.spool import Spool

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'
DAY = 86400


def _job(prompt: str) -> bytes:
    return f'prompt = "{prompt}"\n{SMALL}'.encode()


def _daemon_up(root: Root) -> None:
    wait_until(lambda: (root.path / "status.json").exists(), timeout=30, what="the daemon's first status.json")


def _heartbeat(root: Root) -> float:
    try:
        return float(json.loads((root.path / "status.json").read_text())["daemon"]["heartbeat_unix"])
    except (OSError, ValueError, KeyError):
        return 0.0


def _daemon_has_looked_since(root: Root, t: float) -> None:
    """Wait for a heartbeat written more than a rescan interval after `t`: the inbox was scanned since `t`."""
    wait_until(lambda: _heartbeat(root) > t + 1.0, timeout=30, what="a rescan after the change")


def _sync_save(final: Path, data: bytes, temp_name: str, *, old_mtime: bool = True) -> Path:
    """What a sync client does: write a temporary file, set the sender's mtime, rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / temp_name
    tmp.write_bytes(data)
    if old_mtime:
        t = time.time() - DAY
        os.utime(tmp, (t, t))
    os.rename(tmp, final)
    return final


def _sources(root: Root) -> list[str]:
    return sorted(root.metadata(r)["source"] for r in root.results())


def _stop(daemon) -> None:
    daemon.terminate()
    daemon.wait(timeout=15)


# -- 1. a sync client's temporary name, then a rename -------------------------------------------
@pytest.mark.parametrize("client, rel, temp_name", [
    ("Syncthing", "lake.toml", ".syncthing.lake.toml.tmp"),
    ("a hidden temporary (Dropbox, rsync, Resilio)", "lake.toml", ".lake.toml.Xy12Ab"),
    ("a .part download", "lake.toml", "lake.toml.part"),
    ("Syncthing into a preset folder", "tiktok/lake.toml", ".syncthing.lake.toml.tmp"),
])
def test_a_prompt_saved_by_a_sync_client_is_processed_once(root: Root, client: str, rel: str, temp_name: str) -> None:
    daemon = root.start(fake=True)
    try:
        _daemon_up(root)
        final = root.inbox / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / temp_name
        data = _job("A mountain lake at golden hour, camera slowly descending")
        tmp.write_bytes(data[: len(data) // 2])  # half-written: invalid TOML if anyone read it
        t = time.time()
        _daemon_has_looked_since(root, t)
        assert tmp.exists() and root.results() == [] and root.failures() == []  # the temp name was left alone

        with open(tmp, "ab") as f:
            f.write(data[len(data) // 2:])
        old = time.time() - DAY
        os.utime(tmp, (old, old))  # Syncthing and Dropbox set the sender's modification time
        os.rename(tmp, final)

        wait_until(lambda: root.results() or root.failures(), timeout=60, what=f"the job saved by {client}")
        t = time.time()
        _daemon_has_looked_since(root, t)
        assert root.failures() == [], (root.failures()[0] / "error.txt").read_text()
        [result] = root.results()
        meta = root.metadata(result)
        assert meta["source"] == rel and meta["prompt"].endswith("slowly descending")
        assert not final.exists() and not tmp.exists()
    finally:
        _stop(daemon)


# -- 2. iCloud placeholders --------------------------------------------------------------------
def test_an_icloud_placeholder_is_ignored_until_the_real_file_arrives(root: Root) -> None:
    placeholder = root.inbox / ".lake.toml.icloud"  # what iCloud Drive leaves for a file not downloaded
    placeholder.write_bytes(plistlib.dumps({"NSURLNameKey": "lake.toml", "NSURLFileSizeKey": 120,
                                            "NSURLFileResourceTypeKey": "NSURLFileResourceTypeRegular"},
                                           fmt=plistlib.FMT_BINARY))
    daemon = root.start(fake=True)
    try:
        _daemon_up(root)
        _daemon_has_looked_since(root, time.time())
        assert placeholder.exists() and root.results() == [] and root.failures() == []

        # The download: iCloud writes the real file, then removes the placeholder.
        _sync_save(root.inbox / "lake.toml", _job("A lake under the northern lights"), ".lake.toml.sb-1234")
        placeholder.unlink()
        wait_until(root.results, timeout=60, what="the downloaded job")
        _daemon_has_looked_since(root, time.time())
        assert _sources(root) == ["lake.toml"] and root.failures() == []
    finally:
        _stop(daemon)


# -- 3. dataless files (iCloud "Optimise Mac Storage") -----------------------------------------------
def test_a_dataless_file_is_not_a_candidate_until_it_is_downloaded(tmp_path: Path, monkeypatch) -> None:
    """macOS marks a file whose data is still in iCloud with SF_DATALESS; Linux has no such flag, so it is faked."""
    config = Config(root=tmp_path / "root", settle_seconds=1.0)
    spool = Spool(config)
    spool.ensure_folders()
    f = config.inbox / "lake.toml"
    f.write_bytes(_job("A lake"))
    dataless = {f.stat().st_ino}
    monkeypatch.setattr(arrivals_module, "is_dataless", lambda st: st.st_ino in dataless)
    assert spool.inbox.scan() == []
    dataless.clear()  # downloaded
    assert [c.rel for c in spool.inbox.scan()] == ["lake.toml"]


def test_the_dataless_flag_is_macos_sf_dataless() -> None:
    assert names.UF_DATALESS == getattr(stat, "SF_DATALESS", 0x40000000)
    fake = os.stat_result((0o100644, 1, 1, 1, 0, 0, 10, 0, 0, 0))
    assert not names.is_dataless(fake)  # no st_flags (Linux): never dataless


# -- 4. conflict copies ----------------------------------------------------------------------------
CONFLICT_COPIES = {
    "lake.toml": "A lake at dawn",
    "lake (Jane's conflicted copy 2026-05-01).toml": "A lake at dusk",  # Dropbox
    "lake.sync-conflict-20260501-101500-ABCDEF7.toml": "A lake in the rain",  # Syncthing
    "lake 2.toml": "A lake in the snow",  # iCloud Drive
}


def test_conflict_copies_are_separate_jobs_each_processed_once_and_logged(root: Root) -> None:
    daemon = root.start(fake=True)
    try:
        _daemon_up(root)
        for name, prompt in CONFLICT_COPIES.items():
            _sync_save(root.inbox / name, _job(prompt), f".syncthing.{name}.tmp")
        wait_until(lambda: len(root.results()) + len(root.failures()) >= len(CONFLICT_COPIES), timeout=90,
                   what="all four copies")
        _daemon_has_looked_since(root, time.time())
    finally:
        _stop(daemon)
    assert root.failures() == []
    assert _sources(root) == sorted(CONFLICT_COPIES)
    prompts = {root.metadata(r)["source"]: root.metadata(r)["prompt"] for r in root.results()}
    assert prompts == CONFLICT_COPIES
    assert len({r.name for r in root.results()}) == 4  # four result folders, none overwritten

    log = root.path.parent / "logs" / "hotfolder.log"
    claimed = [json.loads(line) for line in log.read_text().splitlines() if '"claimed"' in line]
    assert sorted(e["source"] for e in claimed if e.get("event") == "claimed") == sorted(CONFLICT_COPIES)


def test_conflict_copies_are_logged_as_conflicts(root: Root) -> None:
    assert names.sync_conflict_of("lake (Jane's conflicted copy 2026-05-01).toml") == "lake.toml"
    assert names.sync_conflict_of("lake.sync-conflict-20260501-101500-ABCDEF7.toml") == "lake.toml"
    assert names.sync_conflict_of("lake 2.toml") is None  # iCloud's "NAME 2" is also a normal name
    assert names.sync_conflict_of("lake.toml") is None
    daemon = root.start(fake=True)
    try:
        _daemon_up(root)
        _sync_save(root.inbox / "lake (Jane's conflicted copy 2026-05-01).toml", _job("A lake"), ".x.tmp")
        wait_until(root.results, timeout=60, what="the conflict copy's result")
    finally:
        _stop(daemon)
    log = (root.path.parent / "logs" / "hotfolder.log").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    assert any(e.get("original") == "lake.toml" and "conflict" in e.get("event", "") for e in events)


# -- 5. the outbox never shows half a result --------------------------------------------------------
def test_a_sync_client_watching_the_outbox_only_ever_sees_complete_results(root: Root) -> None:
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.05"))
    seen: list[dict[str, int]] = []
    try:
        _daemon_up(root)
        (root.inbox / "lake.toml").write_bytes(_job("A lake") .replace(b"steps = 2", b"steps = 20"))

        def look() -> bool:  # what a sync client's scanner sees each time it looks
            for folder in root.results():
                seen.append({str(p.relative_to(root.outbox)): p.stat().st_size for p in folder.rglob("*")})
            return bool(root.results()) and len(seen) > 20

        wait_until(look, timeout=60, interval=0.005, what="the result")
    finally:
        _stop(daemon)
    [result] = root.results()
    final = {str(p.relative_to(root.outbox)): p.stat().st_size for p in result.rglob("*")}
    assert any(n.endswith(".mp4") for n in final) and any(n.endswith(".json") for n in final)
    assert all(snapshot == final for snapshot in seen), "a half-written result was visible in the outbox"
    assert not [n for n in final if n.endswith((".tmp", ".part"))]
