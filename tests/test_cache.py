"""The result cache: keys, atomic puts, verified gets, delivery, eviction, crash safety.

Real files in tmp_path; LRU order comes from an injected clock, never from sleeping.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import conftest
from hotfolder import fsutil
from hotfolder.cache import (
    CacheEntry,
    ResultCache,
    cache_key,
    derived_name,
    file_sha256,
    model_identity,
    reads_cache,
    writes_cache,
)
from hotfolder.config import BUILTIN_MODELS, ModelInfo
from hotfolder.job.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]
TINY = BUILTIN_MODELS["tiny"]
IDENT = "tiny@builtin"
DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def make_spec(**changes) -> JobSpec:
    lake = {"source": "lake.toml", "name": "lake", "prompt": "A wide aerial shot of a mountain lake at golden hour",
            "negative_prompt": "blurry", "format": "linkedin", "duration": 5.0, "seed": 42, "steps": 10,
            "width": 640, "height": 352, "num_frames": 121, "gif": True, "thumbnail": True}
    return conftest.make_spec(**{**lake, **changes})


def key(spec=None, model=TINY, ident=IDENT, attachments=None, **kw) -> str:
    return cache_key(spec or make_spec(), model, model_identity=ident, attachments=attachments or {}, **kw)


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path, clock) -> ResultCache:
    return ResultCache(tmp_path / "cache", 1 << 30, clock=clock)


def clip(tmp_path: Path, name: str = "clip.mp4", size: int = 300_000, fill: int | None = None) -> Path:
    path = tmp_path / "stage" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size) if fill is None else bytes([fill]) * size)
    return path


def k(n: int) -> str:
    return f"{n:064x}"


# ---------------------------------------------------------------------------- key


def test_same_spec_same_key():
    assert key(make_spec()) == key(make_spec())
    assert len(key()) == 64 and int(key(), 16) >= 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("backend", "mlx"),
        ("prompt", "A wide aerial shot of a mountain lake at golden hour."),
        ("negative_prompt", ""),
        ("width", 704),
        ("height", 384),
        ("num_frames", 129),
        ("fps", 25.0),
        ("steps", 11),
        ("seed", 43),
        ("mode", "production"),
        ("generate_audio", False),
    ],
)
def test_every_spec_field_in_the_key_changes_it(field, value):
    assert key(make_spec(**{field: value})) != key(make_spec())


def test_model_identity_guidance_and_attachments_change_the_key():
    base = key()
    assert key(ident="tiny@builtin-2") != base
    assert key(model=dataclasses.replace(TINY, guidance=3.0)) != base
    assert key(attachments={"image": DIGEST_A}) != base
    assert key(attachments={"image": DIGEST_A}) != key(attachments={"image": DIGEST_B})
    assert key(attachments={"image": DIGEST_A}) != key(attachments={"audio": DIGEST_A})
    assert key(attachments={"image": DIGEST_A}) == key(attachments={"image": DIGEST_A.upper()})
    assert key(extra={"image_strength": 1.0}) != key(extra={"image_strength": 0.5})


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "other-name"),
        ("gif", False),
        ("thumbnail", False),
        ("priority", 9),
        ("source", "tiktok/elsewhere.toml"),
        ("index", 3),
        ("preset", "tiktok"),
        ("format", "custom"),
        ("duration", 5.04),
        ("cache", "refresh"),
        ("seed_random", True),
        ("adjustments", ("width 650 -> 640",)),
        ("model", "an-alias-of-the-same-weights"),
    ],
)
def test_fields_outside_the_key_do_not_change_it(field, value):
    assert key(make_spec(**{field: value})) == key(make_spec())


def test_key_is_canonical_across_number_types_and_audio_less_models():
    assert key(make_spec(fps=24)) == key(make_spec(fps=24.0))
    no_audio = BUILTIN_MODELS["tiny-ltx-video"]
    assert key(make_spec(generate_audio=True), model=no_audio) == key(make_spec(generate_audio=False), model=no_audio)


def test_key_rejects_a_malformed_attachment_digest():
    with pytest.raises(ValueError, match="not a SHA-256"):
        key(attachments={"image": "abc"})


def test_reads_and_writes_cache_follow_the_cache_mode():
    assert reads_cache(make_spec()) and writes_cache(make_spec())
    assert not reads_cache(make_spec(cache="refresh")) and writes_cache(make_spec(cache="refresh"))
    assert not reads_cache(make_spec(cache="off")) and not writes_cache(make_spec(cache="off"))
    assert not reads_cache(make_spec(seed_random=True))


def test_file_sha256(tmp_path):
    p = tmp_path / "img.png"
    p.write_bytes(b"hello")
    assert file_sha256(p) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


# ------------------------------------------------------------------ model identity


def test_model_identity_tiny():
    assert model_identity(TINY, "diffusers") == f"tiny@{TINY.revision}" == "tiny@builtin-1"
    assert model_identity(dataclasses.replace(TINY, revision="builtin-1"), "mlx") == "tiny@builtin-1"


def test_model_identity_hub_reads_the_snapshot_offline(tmp_path):
    hub = tmp_path / "hub"
    sha = "0123456789abcdef0123456789abcdef01234567"
    refs = hub / "models--Lightricks--LTX-2" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(sha)
    model = BUILTIN_MODELS["ltx-2"]
    assert model_identity(model, "diffusers", hub_cache=hub) == f"Lightricks/LTX-2@{sha}"
    # Not in the cache: the revision name stands in.
    assert model_identity(model, "diffusers", hub_cache=tmp_path / "empty") == "Lightricks/LTX-2@main"
    # A pinned commit is its own identity.
    pinned = dataclasses.replace(model, revision="f" * 40)
    assert model_identity(pinned, "diffusers", hub_cache=tmp_path / "empty") == f"Lightricks/LTX-2@{'f' * 40}"
    # MLX: the transformer repo and the text encoder both count.
    enc = hub / "models--mlx-community--gemma-3-12b-it-bf16" / "refs"
    enc.mkdir(parents=True)
    (enc / "main").write_text("e" * 40)
    assert model_identity(model, "mlx", hub_cache=hub) == (
        f"notapalindrome/ltx2-mlx-av@main+mlx-community/gemma-3-12b-it-bf16@{'e' * 40}"
    )
    # A new snapshot of the weights is a new identity.
    (refs / "main").write_text("9" * 40)
    assert model_identity(model, "diffusers", hub_cache=hub) == f"Lightricks/LTX-2@{'9' * 40}"


def test_model_identity_local_folder_is_a_cheap_digest(tmp_path):
    weights = tmp_path / "weights"
    (weights / "transformer").mkdir(parents=True)
    big = weights / "transformer" / "model.safetensors"
    big.write_bytes(b"x" * 1000)
    (weights / "model_index.json").write_text("{}")
    model = ModelInfo(name=str(weights), family="ltx2", local_path=str(weights))
    first = model_identity(model, "diffusers")
    assert first.startswith("local:") and first == model_identity(model, "diffusers")
    (weights / ".DS_Store").write_bytes(b"finder")  # Finder noise does not count
    assert model_identity(model, "diffusers") == first
    st = big.stat()
    big.write_bytes(b"y" * 1000)
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, new mtime
    assert model_identity(model, "diffusers") != first


def test_importing_the_cache_and_keying_imports_no_backend():
    code = (
        "import sys, hotfolder.cache as c\n"
        "from hotfolder.config import BUILTIN_MODELS\n"
        "m = BUILTIN_MODELS['ltx-2']\n"
        "c.model_identity(m, 'diffusers'); c.model_identity(m, 'mlx')\n"
        "bad = [n for n in ('torch', 'diffusers', 'transformers', 'mlx', 'numpy')"
        " if n in sys.modules or any(k.startswith(n + '.') for k in sys.modules)]\n"
        "bad += [n for n in sys.modules if n.startswith('hotfolder.backends.')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------ put, get, deliver


def test_put_then_get_delivers_identical_bytes(cache, tmp_path):
    src = clip(tmp_path)
    entry = cache.put(k(1), src, {"seed": 42, "width": 640, "model": "tiny"})
    assert entry.size == src.stat().st_size and entry.sha256 == file_sha256(src)
    got = cache.get(k(1))
    assert isinstance(got, CacheEntry)
    assert got.meta == {"seed": 42, "width": 640, "model": "tiny"}
    assert got.path == cache.root / k(1)[:2] / k(1)
    dest = tmp_path / "outbox" / "lake.mp4"
    dest.parent.mkdir()
    probe = dest.parent / "clone-probe"  # what this file system gives: a clone (APFS, Btrfs, XFS) or not
    can_clone = fsutil.clone(got.video, probe)
    probe.unlink(missing_ok=True)
    method = cache.deliver(got, dest)
    # Not "any method": a clone where the file system clones, else a hard link to the read-only cache file (a copy
    # only with allow_hardlink=False or across file systems: test_deliver_reports_each_method_...).
    assert method == ("clone" if can_clone else "hardlink")
    assert (os.stat(dest).st_ino == os.stat(got.video).st_ino) is (method == "hardlink")
    assert dest.read_bytes() == src.read_bytes()


def test_cached_files_are_read_only_and_the_callers_file_stays_editable(cache, tmp_path):
    src = clip(tmp_path)
    entry = cache.put(k(1), src, {})
    assert stat.S_IMODE(entry.video.stat().st_mode) == 0o444
    assert os.stat(entry.video).st_ino != os.stat(src).st_ino
    src.write_bytes(b"post-processed in place")  # the staged file is the caller's to edit
    dest = tmp_path / "out.mp4"
    cache.deliver(cache.get(k(1)), dest)
    assert dest.read_bytes() != b"post-processed in place" and file_sha256(dest) == entry.sha256


def test_deliver_reports_each_method_and_never_exposes_the_cache(cache, tmp_path, monkeypatch):
    import hotfolder.cache.store as mod

    src = clip(tmp_path)
    cache.put(k(1), src, {})
    entry = cache.get(k(1))  # first hit: full hash, stamp recorded
    monkeypatch.setattr(fsutil, "clone", lambda s, d: False)  # a filesystem without clones
    linked = tmp_path / "linked.mp4"
    assert cache.deliver(entry, linked) == "hardlink"
    assert os.stat(linked).st_ino == os.stat(entry.video).st_ino
    assert stat.S_IMODE(linked.stat().st_mode) == 0o444  # read-only on both names
    copied = tmp_path / "copied.mp4"
    assert cache.deliver(entry, copied, allow_hardlink=False) == "copy"
    assert copied.read_bytes() == src.read_bytes()
    assert copied.stat().st_mode & stat.S_IWUSR
    # Our own hard link must not cost a full re-hash on the next hit.
    calls = []
    real = mod.hashlib.file_digest
    monkeypatch.setattr(mod.hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    assert cache.get(k(1)) is not None and calls == []
    with pytest.raises(FileExistsError):
        cache.deliver(entry, copied)


@pytest.mark.unprivileged  # root ignores file modes: .ci/run runs it as hotfolder-ci
def test_a_hardlinked_outbox_file_cannot_be_opened_for_writing(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "clone", lambda s, d: False)
    entry = cache.put(k(1), clip(tmp_path), {})
    dest = tmp_path / "linked.mp4"
    assert cache.deliver(entry, dest) == "hardlink"
    with pytest.raises(PermissionError):
        open(dest, "r+b")  # noqa: SIM115


def test_put_with_link_shares_the_inode_and_makes_it_read_only(cache, tmp_path):
    src = clip(tmp_path)
    entry = cache.put(k(1), src, {}, link=True)
    assert os.stat(src).st_ino == os.stat(entry.video).st_ino
    assert stat.S_IMODE(src.stat().st_mode) == 0o444
    assert cache.get(k(1)) is not None


def test_refresh_replaces_an_entry_atomically(cache, tmp_path):
    cache.put(k(1), clip(tmp_path, "a.mp4", fill=1), {"v": 1})
    new = clip(tmp_path, "b.mp4", fill=2)
    cache.put(k(1), new, {"v": 2})
    got = cache.get(k(1))
    assert got.meta == {"v": 2} and got.video.read_bytes() == new.read_bytes()
    assert os.listdir(cache.root / ".tmp") == [] and os.listdir(cache.root / ".trash") == []


def test_refresh_without_an_atomic_swap_still_never_mixes(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)  # an OS without renameat2/renamex_np
    cache.put(k(1), clip(tmp_path, "a.mp4", fill=1), {"v": 1})
    new = clip(tmp_path, "b.mp4", fill=2)
    cache.put(k(1), new, {"v": 2})
    got = cache.get(k(1))
    assert got.meta == {"v": 2} and got.video.read_bytes() == new.read_bytes()
    assert os.listdir(cache.root / ".tmp") == [] and os.listdir(cache.root / ".trash") == []


def test_put_rejects_bad_keys_and_meta(cache, tmp_path):
    with pytest.raises(ValueError):
        cache.put("../../etc", clip(tmp_path), {})
    with pytest.raises(TypeError):
        cache.put(k(1), clip(tmp_path), {"x": object()})
    with pytest.raises(FileNotFoundError):
        cache.put(k(1), tmp_path / "missing.mp4", {})
    assert cache.get(k(1)) is None and os.listdir(cache.root / ".tmp") == []


def test_miss_on_an_unknown_key(cache):
    assert cache.get(k(7)) is None


# ------------------------------------------------------------------------ integrity


def _flip_byte(path: Path, offset: int) -> None:
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime


def _truncate(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(1000)


def _delete_video(path: Path) -> None:
    path.unlink()


def _break_manifest(path: Path) -> None:
    m = path.parent / "manifest.json"
    os.chmod(m, 0o644)
    m.write_text(m.read_text()[:40])


def _tamper_manifest(path: Path) -> None:
    m = path.parent / "manifest.json"
    os.chmod(m, 0o644)
    data = json.loads(m.read_text())
    data["meta"]["seed"] = 7  # valid JSON, wrong content
    m.write_text(json.dumps(data))


def _delete_manifest(path: Path) -> None:
    (path.parent / "manifest.json").unlink()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "bytes"),
        (_delete_video, "missing"),
        (lambda p: _flip_byte(p, 123_456), "content differs"),
        (_break_manifest, "manifest unreadable"),
        (_tamper_manifest, "checksum"),
        (_delete_manifest, "manifest missing"),
    ],
    ids=["truncated", "deleted", "flipped-byte", "broken-manifest", "tampered-manifest", "no-manifest"],
)
def test_a_damaged_entry_is_detected_removed_logged_and_missed(cache, tmp_path, damage, reason):
    entry = cache.put(k(1), clip(tmp_path), {"seed": 42})
    damage(entry.video)  # before the first read: the full hash must catch a same-size, same-mtime flip
    with capture_logs() as logs:
        assert cache.get(k(1)) is None
    assert not entry.path.exists()
    dropped = [e for e in logs if e.get("key") == k(1)]
    assert dropped and reason in dropped[0]["reason"] and dropped[0]["log_level"] == "warning"
    stats = cache.stats()
    assert (stats.misses, stats.dropped, stats.entries) == (1, 1, 0)
    cache.put(k(1), clip(tmp_path, "again.mp4"), {})  # regenerated as a miss, stored again
    assert cache.get(k(1)) is not None


def test_a_flip_after_verification_is_still_caught(cache, tmp_path):
    entry = cache.put(k(1), clip(tmp_path), {})
    assert cache.get(k(1)) is not None  # full hash, stamp recorded
    assert cache.get(k(1)) is not None  # stat-only
    _flip_byte(entry.video, 10)  # size and mtime restored; the ctime moved
    assert cache.get(k(1)) is None


def test_hits_never_rehash_what_the_put_hashed_as_it_landed(cache, tmp_path, monkeypatch):
    """A 200 MB clip is read through once, by the put; no hit reads it (a first hit used to hash it in full)."""
    import hotfolder.cache.store as mod

    calls = []
    real = mod.hashlib.file_digest
    monkeypatch.setattr(mod.hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(fsutil, "clone", lambda s, d: False)  # hard links: the case where the ctime moves
    cache.put(k(1), clip(tmp_path), {})
    put_reads = len(calls)
    for n in range(4):
        entry = cache.get(k(1))
        assert entry is not None
        cache.deliver(entry, tmp_path / f"out{n}.mp4")
    assert len(calls) == put_reads  # stat-only hits, our own links included


def test_a_killed_put_leaves_nothing_that_get_serves(tmp_path):
    root = tmp_path / "cache"
    ResultCache(root, 1 << 30)
    fifo = tmp_path / "video.fifo"  # a source that never ends: the put is mid-copy when killed
    os.mkfifo(fifo)
    wfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # holds both ends open; never blocks
    code = (
        "import sys; from pathlib import Path; from hotfolder.cache import ResultCache\n"
        "ResultCache(Path(sys.argv[1]), 1 << 30).put(sys.argv[2], Path(sys.argv[3]), {})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), k(1), str(fifo)], cwd=REPO)
    try:
        os.write(wfd, os.urandom(60_000))
        deadline = time.monotonic() + 30
        partial = []
        while not partial:
            partial = [p for p in (root / ".tmp").glob("*/video.mp4") if p.stat().st_size > 0]
            assert proc.poll() is None, "the put ended early"
            assert time.monotonic() < deadline, "the put never started writing"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(wfd)
    assert partial[0].exists()  # the half-written put is still on disk
    assert not (root / k(1)[:2] / k(1)).exists()
    cache = ResultCache(root, 1 << 30)  # opening cleans up after the dead writer
    assert cache.get(k(1)) is None
    assert os.listdir(root / ".tmp") == []


def test_prune_removes_a_stale_temp_dir_but_not_a_live_one(tmp_path, cache):
    tmp = cache.root / ".tmp"
    stale = tmp / "99999999-deadbeef"  # no lock file, no such process
    (stale).mkdir()
    (stale / "video.mp4").write_bytes(b"half")
    (stale / "manifest.json").write_text("{}")
    with cache._staging() as live:  # a put in progress in this process
        (live / "video.mp4").write_bytes(b"writing")
        result = cache.prune()
        assert live.exists() and not stale.exists()
        assert result.stale_temps == 1
    assert os.listdir(tmp) == []


# ------------------------------------------------------------------- eviction, stats


def test_size_cap_evicts_the_least_recently_used(tmp_path, clock):
    cache = ResultCache(tmp_path / "cache", 350_000, clock=clock)
    for n in (1, 2, 3):
        clock.t += 10
        cache.put(k(n), clip(tmp_path, f"{n}.mp4", size=100_000), {})
    clock.t += 10
    assert cache.get(k(1)) is not None  # 1 is now the most recent; 2 the least
    clock.t += 10
    cache.put(k(4), clip(tmp_path, "4.mp4", size=100_000), {})
    assert k(2) not in cache and all(k(n) in cache for n in (1, 3, 4))
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes <= 350_000 and stats.evictions == 1


def test_prune_evicts_down_to_a_lowered_cap(tmp_path, clock):
    big = ResultCache(tmp_path / "cache", 1 << 30, clock=clock)
    for n in (5, 4, 3, 2, 1):  # put order differs from key order: LRU follows the clock
        clock.t += 1
        big.put(k(n), clip(tmp_path, f"{n}.mp4", size=50_000), {})
    small = ResultCache(tmp_path / "cache", 120_000, clock=clock)
    result = small.prune()
    assert result.evicted == 3 and result.freed_bytes >= 150_000
    assert [n for n in range(1, 6) if k(n) in small] == [1, 2]


def test_a_put_larger_than_the_cap_is_kept_until_the_next_one(tmp_path, clock):
    cache = ResultCache(tmp_path / "cache", 10_000, clock=clock)
    cache.put(k(1), clip(tmp_path, size=50_000), {})
    assert cache.get(k(1)) is not None
    clock.t += 1
    cache.put(k(2), clip(tmp_path, "2.mp4", size=50_000), {})
    assert k(1) not in cache and k(2) in cache


def test_stats_count_hits_and_misses_across_instances(cache, tmp_path):
    cache.put(k(1), clip(tmp_path), {})
    cache.get(k(1))
    cache.get(k(1))
    cache.get(k(2))
    again = ResultCache(cache.root, cache.max_bytes)
    s = again.stats()
    assert (s.entries, s.hits, s.misses) == (1, 2, 1)
    assert s.hit_rate == pytest.approx(2 / 3)
    assert s.bytes >= 300_000
    (cache.root / "stats.json").write_text("garbage")  # unreadable counters start over, never crash
    assert cache.stats().hits == 0


def test_clear_empties_the_cache(cache, tmp_path):
    for n in (1, 2):
        cache.put(k(n), clip(tmp_path, f"{n}.mp4"), {})
    cache.get(k(1))
    assert cache.clear() == 2
    s = cache.stats()
    assert (s.entries, s.bytes, s.hits, s.misses) == (0, 0, 0, 0)
    assert cache.get(k(1)) is None


def test_a_reader_that_lost_a_race_never_removes_the_replacement(cache, tmp_path):
    old = cache.put(k(1), clip(tmp_path, "a.mp4", fill=1), {"v": 1})
    dfd = os.open(old.path, os.O_RDONLY)  # a reader holding the old entry
    try:
        cache.put(k(1), clip(tmp_path, "b.mp4", fill=2), {"v": 2})  # another writer refreshes it
        cache._drop(k(1), old.path, dfd, "the old files vanished under the reader")
    finally:
        os.close(dfd)
    assert cache.get(k(1)).meta == {"v": 2}


# ----------------------------------------------------------------- derived files: the GIF and the thumbnail


def preview(tmp_path: Path, name: str, fill: int) -> Path:
    path = tmp_path / "stage" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([fill]) * 5000)
    return path


GIF = derived_name("gif", "gif", {"width": 480})
JPG = derived_name("thumbnail", "jpg", {"description": "a lake, seed 42"})


def test_derived_names_follow_every_setting_and_are_safe_names():
    assert derived_name("gif", "gif", {"width": 480}) == GIF
    assert derived_name("gif", "gif", {"width": 320}) != GIF
    assert derived_name("thumbnail", "jpg", {"description": "a lake, seed 43"}) != JPG
    assert GIF.startswith("gif-") and GIF.endswith(".gif") and JPG.endswith(".jpg")
    assert derived_name("gif", "gif", {"b": 1, "a": 2}) == derived_name("gif", "gif", {"a": 2, "b": 1})


def test_a_put_with_previews_delivers_all_three_and_reads_none_of_them_on_a_hit(cache, tmp_path, monkeypatch):
    import hotfolder.cache.store as mod

    src, gif, jpg = clip(tmp_path), preview(tmp_path, "p.gif", 1), preview(tmp_path, "p.jpg", 2)
    cache.put(k(1), src, {"seed": 42}, extras={GIF: gif, JPG: jpg})
    calls = []
    real = mod.hashlib.file_digest
    monkeypatch.setattr(mod.hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(fsutil, "clone", lambda s, d: False)
    entry = cache.get(k(1))
    assert entry.has(GIF) and entry.has(JPG) and not entry.has(derived_name("gif", "gif", {"width": 320}))
    out = tmp_path / "out"
    out.mkdir()
    methods = cache.deliver_many(entry, {"video.mp4": out / "a.mp4", GIF: out / "a.gif", JPG: out / "a.jpg"})
    assert methods == {"video.mp4": "hardlink", GIF: "hardlink", JPG: "hardlink"}
    assert (out / "a.gif").read_bytes() == gif.read_bytes() and (out / "a.jpg").read_bytes() == jpg.read_bytes()
    assert cache.get(k(1)) is not None and calls == []  # our links moved the ctimes; the stamps followed
    assert cache.stats().bytes >= src.stat().st_size + 10_000  # the previews count towards the cap


def test_previews_added_to_an_entry_are_kept_and_the_clip_is_not_read_again(cache, tmp_path, monkeypatch):
    import hotfolder.cache.store as mod

    src = clip(tmp_path)
    cache.put(k(1), src, {"seed": 42})
    entry = cache.get(k(1))
    calls = []
    real = mod.hashlib.file_digest
    monkeypatch.setattr(mod.hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    added = cache.add(entry, {GIF: preview(tmp_path, "p.gif", 1)}, {"note": "previews"})
    assert added.has(GIF) and added.sha256 == entry.sha256 and added.created == entry.created
    assert calls == []  # the clip was linked in, never read through (the GIF was hashed as it was copied)
    again = cache.get(k(1))
    assert again.has(GIF) and again.meta == {"seed": 42, "note": "previews"} and calls == []
    assert again.video.read_bytes() == src.read_bytes()
    assert os.listdir(cache.root / ".tmp") == [] and os.listdir(cache.root / ".trash") == []


def test_adding_to_an_entry_replaced_meanwhile_stores_nothing(cache, tmp_path):
    cache.put(k(1), clip(tmp_path, "a.mp4", fill=1), {"v": 1})
    old = cache.get(k(1))
    cache.put(k(1), clip(tmp_path, "b.mp4", fill=2), {"v": 2})  # a refresh by another process
    with pytest.raises(FileNotFoundError):
        cache.add(old, {GIF: preview(tmp_path, "p.gif", 1)})
    now = cache.get(k(1))
    assert now.meta == {"v": 2} and not now.has(GIF)


def test_a_damaged_preview_drops_the_entry(cache, tmp_path):
    entry = cache.put(k(1), clip(tmp_path), {}, extras={GIF: preview(tmp_path, "p.gif", 1)})
    _flip_byte(entry.path / GIF, 10)
    assert cache.get(k(1)) is None and not entry.path.exists()


def test_derived_names_that_could_clash_with_the_entrys_own_files_are_refused(cache, tmp_path):
    for bad in ("video.mp4", "manifest.json", "used", "verified.json", "../x.gif", ".hidden"):
        with pytest.raises(ValueError):
            cache.put(k(1), clip(tmp_path), {}, extras={bad: preview(tmp_path, "p.gif", 1)})
