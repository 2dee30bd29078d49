"""The spool on real folders with a stepped clock: settle, ignore list, claim, deliver, fail, recover."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hotfolder.config import Config
from hotfolder.folders.spool import Spool, is_ignored


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spool(tmp_path: Path) -> tuple[Spool, Clock]:
    clock = Clock()
    s = Spool(Config(root=tmp_path / "root", settle_seconds=1.0), clock=clock)
    s.ensure_folders()
    return s, clock


@pytest.mark.parametrize(
    "name",
    [".DS_Store", "._lake.toml", ".lake.toml.icloud", ".syncthing.lake.toml.tmp", "lake.toml.tmp", "lake.part",
     "lake.toml.crdownload", "lake.toml.download", "~$lake.toml", ".incoming"],
)
def test_ignored_names_are_never_candidates(spool: tuple[Spool, Clock], name: str) -> None:
    s, _ = spool
    (s.config.inbox / name).write_text("prompt = 'x'\n")
    assert is_ignored(name)
    assert s.inbox.scan() == []


def test_a_file_is_ready_only_after_it_stopped_changing_for_settle_seconds(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "lake.txt"
    f.write_text("A lake")
    ready, waiting = s.inbox.settled(s.inbox.scan())
    assert ready == [] and waiting  # first sight: never trusted
    clock.now += 0.5
    with open(f, "a") as fh:
        fh.write(" at dawn")  # still being written
    ready, waiting = s.inbox.settled(s.inbox.scan())
    assert ready == [] and waiting
    clock.now += 0.9
    ready, _ = s.inbox.settled(s.inbox.scan())
    assert ready == []  # 0.9 s since the last change
    clock.now += 0.2
    ready, waiting = s.inbox.settled(s.inbox.scan())
    assert [c.rel for c in ready] == ["lake.txt"] and not waiting


def test_a_copy_that_keeps_an_old_mtime_still_waits_for_its_size(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "copied.txt"
    f.write_text("A")
    os.utime(f, (1, 1))  # Finder and cp -p keep the source's mtime
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    with open(f, "a") as fh:
        fh.write("BCD")
    os.utime(f, (1, 1))
    ready, _ = s.inbox.settled(s.inbox.scan())
    assert ready == []


def test_claim_rechecks_and_moves_with_one_rename(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "tiktok" / "cat.txt"
    f.write_text("A cat")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    [c] = s.inbox.settled(s.inbox.scan())[0]
    assert c.preset == "tiktok" and c.rel == "tiktok/cat.txt"
    job = s.claim(c)
    assert job is not None and not f.exists()
    assert job.input_path.read_text() == "A cat"
    assert json.loads((job.folder / "job.json").read_text())["source"] == "tiktok/cat.txt"


def test_claim_refuses_a_file_that_changed_after_it_settled(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "lake.txt"
    f.write_text("A lake")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    [c] = s.inbox.settled(s.inbox.scan())[0]
    f.write_text("A lake, longer now")
    assert s.claim(c) is None and f.exists()


def test_claim_of_a_vanished_file_leaves_nothing_behind(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "lake.txt"
    f.write_text("A lake")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    [c] = s.inbox.settled(s.inbox.scan())[0]
    # Another daemon takes it between the settle re-check and the rename.
    def taken_after_the_check(items):
        os.rename(f, s.config.root / "elsewhere.txt")
        return True

    s.inbox.confirm = taken_after_the_check
    assert s.claim(c) is None
    assert list(s.config.processing.iterdir()) == []


def test_deliver_never_overwrites_a_result_with_the_same_name(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    targets = []
    for n in range(3):
        f = s.config.inbox / f"j{n}.txt"
        f.write_text("x")
        s.inbox.settled(s.inbox.scan())
        clock.now += 2
        job = s.claim(s.inbox.settled(s.inbox.scan())[0][0])
        built = job.folder / "stage" / "0"
        built.mkdir(parents=True)
        (built / "same.mp4").write_text(f"video {n}")
        targets.append(s.deliver(job, 0, built, "same"))
    names = [t.name for t in targets]
    assert len(set(names)) == 3
    assert sorted((t / "same.mp4").read_text() for t in targets) == ["video 0", "video 1", "video 2"]


def test_recover_requeues_claims_drops_staging_and_half_claims(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    (s.config.inbox / "a.txt").write_text("a")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    job = s.claim(s.inbox.settled(s.inbox.scan())[0][0])
    (job.stage / "0").mkdir(parents=True)
    (job.stage / "0" / "half.mp4").write_text("partial")
    half = s.config.processing / "20260101-000000-abcdef"
    half.mkdir()
    (half / "job.json").write_text(json.dumps({"job_id": half.name, "source": "gone.txt"}))
    fresh = Spool(s.config)
    [again] = fresh.recover()
    assert again.job_id == job.job_id and again.input_path.read_text() == "a"
    assert not job.stage.exists() and not half.exists()


def test_recover_marks_a_delivery_that_reached_the_outbox_before_a_crash(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    (s.config.inbox / "a.txt").write_text("a")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    job = s.claim(s.inbox.settled(s.inbox.scan())[0][0])
    built = job.stage / "0"
    built.mkdir(parents=True)
    target = s.deliver(job, 0, built, "a")
    # Simulate the crash right after the rename, before job.json recorded it.
    job.done.clear()
    job.save()
    [again] = Spool(s.config).recover()
    assert again.done == {"0": target.name}


def test_fail_moves_the_original_with_error_files(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    (s.config.inbox / "bad.toml").write_text("prompt = ")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    job = s.claim(s.inbox.settled(s.inbox.scan())[0][0])
    target = s.fail(job, {"status": "invalid", "message": "bad.toml: line 1: broken", "hint": "fix it"})
    assert (target / "bad.toml").read_text() == "prompt = "
    assert "broken" in (target / "error.txt").read_text() and "fix it" in (target / "error.txt").read_text()
    assert json.loads((target / "error.json").read_text())["status"] == "invalid"
    assert not job.folder.exists()


def test_fail_keeps_the_input_in_processing_until_its_failed_folder_is_in_place(
        spool: tuple[Spool, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from hotfolder.folders import spool as spool_module

    s, clock = spool
    (s.config.inbox / "bad.toml").write_text("prompt = ")
    s.inbox.settled(s.inbox.scan())
    clock.now += 2
    job = s.claim(s.inbox.settled(s.inbox.scan())[0][0])
    real_move = spool_module.move_to_free_name

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "move_to_free_name", disk_full)
    with pytest.raises(OSError):
        s.fail(job, {"status": "invalid", "message": "bad.toml: line 1: broken"})
    assert job.input_path.read_text() == "prompt = "  # still where a restart finds it
    assert list(s.config.failed.iterdir()) == []
    monkeypatch.setattr(spool_module, "move_to_free_name", real_move)
    [again] = Spool(s.config).recover()  # a restart: the half-built failed/ folder goes, the job stays
    assert again.job_id == job.job_id and not list(job.folder.glob("failed-*"))
    target = s.fail(again, {"status": "invalid", "message": "bad.toml: line 1: broken"})
    assert (target / "bad.toml").read_text() == "prompt = " and not job.folder.exists()
    assert json.loads((target / "error.json").read_text())["job_id"] == job.job_id


# -- the settle clock starts at the file's event, and the daemon wakes when it is due (issue 16) ---------------


def test_the_settle_clock_starts_at_the_files_event_not_at_the_scan(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "lake.txt"
    f.write_text("A lake")
    s.inbox.scan()  # a scan before the event: the event is news to the next one
    s.inbox.settled([])
    s.inbox.note(f, clock.now)  # the watcher saw it written now
    clock.now += 0.4  # the scan comes later (a busy machine)
    ready, waiting = s.inbox.settled(s.inbox.scan())
    assert ready == [] and waiting  # first sight: never claimed at once
    assert s.inbox.next_due() == pytest.approx(1000.0 + 1.0)  # due a settle window after the event, not the sight
    clock.now = 1000.0 + 1.0
    ready, _ = s.inbox.settled(s.inbox.scan())
    assert [c.rel for c in ready] == ["lake.txt"]


def test_an_event_inside_a_job_folder_or_a_preset_folder_belongs_to_its_candidate(tmp_path: Path) -> None:
    clock = Clock()
    s = Spool(Config(root=tmp_path / "root", settle_seconds=1.0, presets={"tiktok": {}}), clock=clock)
    s.ensure_folders()
    (s.config.inbox / "lake").mkdir()
    (s.config.inbox / "lake" / "lake.toml").write_text('prompt = "a lake"\n')
    (s.config.inbox / "tiktok" / "fox.txt").write_text("a fox")
    s.inbox.scan()
    s.inbox.settled([])
    s.inbox.note(s.config.inbox / "lake" / "media" / "voice.mp3", clock.now)
    s.inbox.note(s.config.inbox / "tiktok" / "fox.txt", clock.now)
    s.inbox.note(s.config.inbox / "tiktok", clock.now)  # the preset folder itself is no job
    s.inbox.note(tmp_path / "elsewhere.txt", clock.now)  # outside the inbox: ignored
    clock.now += 0.3
    s.inbox.settled(s.inbox.scan())
    clock.now = 1000.0 + 1.0
    ready, _ = s.inbox.settled(s.inbox.scan())
    assert sorted(c.rel for c in ready) == ["lake", "tiktok/fox.txt"]


def test_a_later_event_restarts_the_clock_and_an_old_one_is_not_trusted(spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    f = s.config.inbox / "slow.txt"
    s.inbox.note(f, clock.now - 5)  # an event from before the previous scan began: maybe not the last change
    f.write_text("A")
    s.inbox.settled(s.inbox.scan())
    s.inbox.settled(s.inbox.scan())
    assert s.inbox.next_due() == pytest.approx(clock.now + 1.0)  # counted from the sight instead
    clock.now += 0.8
    s.inbox.note(f, clock.now)  # touched again (same size: only the event says so)
    clock.now += 0.5
    ready, _ = s.inbox.settled(s.inbox.scan())
    assert ready == []  # 0.5 s since the last event
    assert s.inbox.next_due() == pytest.approx(clock.now - 0.5 + 1.0)
    clock.now += 0.5
    ready, _ = s.inbox.settled(s.inbox.scan())
    assert [c.rel for c in ready] == ["slow.txt"]


def test_nothing_settling_means_no_wake_up_and_a_ready_file_that_waits_never_busy_loops(
        spool: tuple[Spool, Clock]) -> None:
    s, clock = spool
    assert s.inbox.next_due() is None  # an empty inbox: the daemon sleeps until the rescan
    job = s.config.inbox / "lake.toml"
    job.write_text('prompt = "a lake"\n[image]\nfile = "first.png"\n')  # names a file that is not there yet
    s.inbox.settled(s.inbox.scan())
    clock.now += 1.0
    candidates = s.inbox.scan()
    ready, _ = s.inbox.settled(candidates)
    arrivals, waiting = s.inbox.arrivals(candidates, ready, lambda c: ("first.png",))
    assert arrivals == [] and waiting  # settled, but waiting for the image
    due = s.inbox.next_due()
    assert due is not None and due > clock.now  # the end of the wait, never a time already past
    assert due == pytest.approx(1001.0 + s.config.attachment_wait_seconds)
