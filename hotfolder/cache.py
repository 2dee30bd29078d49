"""A content-addressed store of generated clips: identical requests skip the model.

The key (`cache_key`) is a SHA-256 over a canonical, versioned JSON encoding of
everything that changes the pixels or samples (spec section 5). Post-processing
(external audio, TTS, GIF, thumbnail, output name) is not in it: a hit stores the
clip *before* post-processing, and the daemon post-processes the delivered copy.

This module imports no backend (no torch, diffusers, mlx, not even
huggingface_hub): a hit costs a few stats and a clone.

Layout under the cache root::

    <root>/<key[:2]>/<key>/manifest.json   schema, key, created, files {name: size, sha256}, meta, checksum
                          /video.mp4       the clip with its native audio, mode 0o444
                          /used            empty; its mtime is the last use (LRU), set from the clock
                          /verified.json   stamps (size, mtime_ns, ctime_ns, ino, dev, sha256) of checked files
    <root>/.tmp/<id>.lock, <id>/          puts in progress (the lock is flock'ed by the writer)
    <root>/.trash/                        entries being removed
    <root>/.lock                          serialises eviction
    <root>/stats.json                     hits, misses, evictions, dropped

`stats.json` and `verified.json` are tiny and rewritten in place under their own
flock (readers take it shared), not by rename: creating a file per lookup would cost
more than the rest of a hit. A torn file (power loss) reads as zeros / no stamps,
which is safe: counters restart, files are hashed again.

Atomicity: an entry is assembled in `.tmp/<id>/` (files fsynced, manifest last),
then renamed into place in one step; a replacement (`cache = "refresh"`) swaps the
directories atomically where the OS can (Linux `renameat2(RENAME_EXCHANGE)`, macOS
`renamex_np(RENAME_SWAP)`), else moves the old one aside and renames the new one in
(a reader then sees a miss for a moment, never a mix). A writer killed at any point
leaves only `.tmp/<id>`, which `get` never reads and which is removed at open and by
`prune` once its writer's lock is gone.

Verification trade-off: the first `get` of an entry hashes every file in full and
records a stamp of (size, mtime_ns, ctime_ns, inode, device); later hits compare
`stat` only. The ctime is set by the kernel on any write, truncate, chmod, utime or
link, and cannot be set back by a user, so an in-place edit (even one that restores
size and mtime) forces a full re-hash on the next hit. What a stat-only hit cannot
catch is silent media corruption (bit rot) after the first verification; the
filesystem's own checksums (APFS metadata, btrfs/ZFS) are the line there. A hard
link made or removed elsewhere also changes the ctime, so after a user deletes a
hard-linked outbox file the next hit re-hashes once (clones do not have this cost).

Delivery (`deliver`): a copy-on-write clone where the filesystem allows (Linux
`FICLONE`, macOS `clonefile`): instant, and the result is an independent file the
user may edit. Else a hard link, only when the cached file is read-only: the result
is then the cache's own inode, mode 0o444; an edit needs a deliberate chmod first,
and even then the next `get` sees the ctime change, re-hashes and drops the entry
rather than serving the edited bytes. Else a plain copy (`copy_file_range`, which
lets a kernel do a server-side or reflink copy, then `shutil.copyfile`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import structlog

if TYPE_CHECKING:  # attribute access only: a hit imports neither (nor what they import)
    from hotfolder.config import ModelInfo
    from hotfolder.spec import JobSpec

try:
    import fcntl
except ImportError:  # pragma: no cover - not a supported platform (no flock, no FICLONE)
    fcntl = None  # type: ignore[assignment]

log = structlog.get_logger("hotfolder.cache")

KEY_SCHEMA = 2  # bump when the key's encoding, its fields, or what a mode generates changes (2: two-stage production)
MANIFEST_SCHEMA = 1
VIDEO = "video.mp4"
MANIFEST = "manifest.json"
USED = "used"
VERIFIED = "verified.json"
STATS = "stats.json"
LOCK = ".lock"
TMP = ".tmp"
TRASH = ".trash"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1024 * 1024
_FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_STALE_UNLOCKED_S = 3600.0  # a temp dir without its lock file (crash between mkdir steps)


# --------------------------------------------------------------------------- key


def cache_key(
    spec: JobSpec,
    model: ModelInfo,
    *,
    model_identity: str,
    attachments: Mapping[str, str] = {},  # noqa: B006 - read only
    extra: Mapping[str, Any] = {},  # noqa: B006 - read only
) -> str:
    """The SHA-256 hex key of everything in `spec` that changes the pixels or samples.

    `model_identity` comes from `model_identity()` (weights revision or digest);
    `attachments` maps each conditioning attachment's role (e.g. "image", "audio")
    to the SHA-256 hex of its bytes (`file_sha256`); `extra` carries any other
    generation input the JobSpec grows (e.g. {"image_strength": 1.0}), JSON scalars.
    Not in the key: output name, gif, thumbnail, priority, source, preset, format
    and duration (their effect is in width/height/num_frames), external audio / TTS.
    """
    digests: dict[str, str] = {}
    for name, digest in attachments.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise ValueError(f"attachment {name!r}: {digest!r} is not a SHA-256 hex digest")
        digests[str(name)] = digest.lower()
    for name, value in extra.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise TypeError(f"extra {name!r}: {value!r} is not a JSON scalar")
    payload = {
        "v": KEY_SCHEMA,
        "backend": spec.backend,
        "model": model_identity,
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "width": int(spec.width),
        "height": int(spec.height),
        "num_frames": int(spec.num_frames),
        "fps": float(spec.fps),  # 24 and 24.0 are one key
        "steps": int(spec.steps),
        "guidance": float(model.guidance),
        "seed": int(spec.seed),
        "mode": spec.mode,
        # A model without an audio branch makes the same clip either way.
        "generate_audio": bool(spec.generate_audio and model.has_audio),
        "attachments": digests,
        "extra": {str(k): (float(v) if isinstance(v, float) else v) for k, v in extra.items()},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def reads_cache(spec: JobSpec) -> bool:
    """Whether a job may be served from the cache (a drawn "random" seed never is)."""
    return spec.cache == "use" and not spec.seed_random


def writes_cache(spec: JobSpec) -> bool:
    """Whether a job's result is stored ("refresh" replaces the entry)."""
    return spec.cache != "off"


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file's bytes (for conditioning attachments)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_identity(model: ModelInfo, backend: str, *, hub_cache: Path | None = None) -> str:
    """What identifies the weights `backend` will load for `model`; offline, never downloads.

    - tiny: `name@revision` (`builtin` when the table gives none; bump the revision
      whenever the code that builds the tiny weights changes).
    - a local folder: `local:<digest>` of its files' relative paths, sizes and mtimes
      (hidden names such as .DS_Store and .cache/ skipped; no file is read).
    - a hub model: `repo@<commit>` as the local Hugging Face cache resolves the
      revision (`refs/<revision>`); falls back to `repo@<revision or main>` when the
      repo is not in the cache. For MLX the text-encoder repo is appended with `+`.
    """
    if model.tiny:
        return f"{model.name}@{model.revision or 'builtin'}"
    if model.local_path:
        return f"local:{_folder_digest(Path(model.local_path).expanduser())}"
    repos = [model.mlx_repo, model.mlx_text_encoder_repo] if backend == "mlx" else [model.diffusers_repo]
    repos = [r for r in repos if r]
    if not repos:
        return f"{model.name}@{model.revision or 'main'}"
    cache = hub_cache if hub_cache is not None else hub_cache_dir()
    parts = []
    for i, repo in enumerate(repos):
        revision = model.revision if i == 0 else None  # the revision pins the main repo only
        parts.append(f"{repo}@{_hub_snapshot(cache, repo, revision)}")
    return "+".join(parts)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub does (without importing it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _hub_snapshot(cache: Path, repo: str, revision: str | None) -> str:
    revision = revision or "main"
    if _COMMIT.fullmatch(revision):
        return revision
    ref = cache / ("models--" + repo.replace("/", "--")) / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return revision
    return commit if _COMMIT.fullmatch(commit) else revision


def _folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                st = os.stat(path)  # follows links: an HF snapshot folder is links to blobs
                rows.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                rows.append(f"{rel}\0broken")
    for row in sorted(rows):
        h.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------------- store


@dataclass(frozen=True)
class CacheEntry:
    """A verified entry, as `get` or `put` returns it."""

    key: str
    path: Path  # the entry's folder
    video: Path  # the cached clip (read-only); hand it to `deliver`, never edit it
    size: int
    sha256: str
    created: float
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    hit_rate: float  # hits / (hits + misses), 0.0 before any lookup
    evictions: int = 0
    dropped: int = 0  # corrupt entries found and removed
    max_bytes: int = 0


@dataclass(frozen=True)
class PruneResult:
    evicted: int  # entries removed to get under max_bytes
    freed_bytes: int
    stale_temps: int  # abandoned puts removed


@dataclass(frozen=True)
class _Scan:
    key: str
    path: Path
    size: int
    last_used_ns: int


class _Corrupt(Exception):
    """An entry failed verification; the message says what was wrong."""


class ResultCache:
    """The store. Safe to share between threads and processes on one machine.

    `clock` (seconds since the epoch) stamps creation and last use, so tests can set
    the LRU order without sleeping.
    """

    def __init__(self, root: Path, max_bytes: int, *, clock: Callable[[], float] = time.time):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        (self.root / TMP).mkdir(parents=True, exist_ok=True)
        (self.root / TRASH).mkdir(exist_ok=True)
        self._cleanup()

    # ---- public API

    def get(self, key: str) -> CacheEntry | None:
        """The verified entry for `key`, or None (a miss). A corrupt entry is logged, removed, and a miss."""
        _check_key(key)
        path = self._entry_dir(key)
        try:
            dfd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (FileNotFoundError, NotADirectoryError):
            self._count(misses=1)
            return None
        try:
            try:
                entry = self._verify(key, path, dfd)
            except _Corrupt as e:
                self._drop(key, path, dfd, str(e))
                self._count(misses=1, dropped=1)
                return None
            self._touch(dfd, USED)
        finally:
            os.close(dfd)
        self._count(hits=1)
        return entry

    def put(self, key: str, video: Path, meta: Mapping[str, Any] | None = None, *, link: bool = False) -> CacheEntry:
        """Store `video` (the clip before post-processing) under `key`, replacing any entry.

        By default the bytes are cloned (copy-on-write) or copied in, so the caller's
        file stays editable without touching the cache. `link=True` hard-links the
        caller's file instead (no copy) and makes it read-only (0o444) for both.
        Runs LRU eviction afterwards; the new entry itself is never evicted by its own put.
        """
        _check_key(key)
        meta = dict(meta or {})
        json.dumps(meta, allow_nan=False)  # fail before any work if meta is not JSON
        with self._staging() as tmp:
            dst = tmp / VIDEO
            size, digest = _ingest(Path(video), dst, link=link)
            os.chmod(dst, 0o444)
            _fsync_path(dst)
            created = float(self.clock())
            manifest: dict[str, Any] = {
                "schema": MANIFEST_SCHEMA,
                "key": key,
                "created": created,
                "files": {VIDEO: {"size": size, "sha256": digest}},
                "meta": meta,
            }
            manifest["checksum"] = _manifest_checksum(manifest)
            _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), mode=0o444)
            _write_file(tmp / USED, b"", mode=0o644)
            _write_file(tmp / VERIFIED, b"", mode=0o644)  # stamps, filled in by the first get
            ns = _ns(created)
            os.utime(tmp / USED, ns=(ns, ns))
            _fsync_path(tmp)
            final = self._entry_dir(key)
            final.parent.mkdir(exist_ok=True)
            self._install(tmp, final)
        self._evict(protect=key)
        return CacheEntry(key, final, final / VIDEO, size, digest, created, meta)

    def deliver(self, entry: CacheEntry, dest: Path, *, allow_hardlink: bool = True, fsync: bool = False) -> str:
        """Put the cached clip at `dest` (which must not exist); returns "clone", "hardlink" or "copy".

        No delivered file can change the cache's bytes: a clone or a copy is an
        independent file (mode 0o644 less the umask); a hard link is made only when
        the cache file is read-only, and stays 0o444. Pass `allow_hardlink=False`
        when the caller will edit the file in place. `fsync=True` flushes a copy's data.
        Raises FileNotFoundError when the entry vanished since `get` (evicted or
        replaced by another process): treat that as a miss.
        """
        src = Path(entry.video)
        dest = Path(dest)
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "destination exists", str(dest))
        if _clone(src, dest):
            return "clone"
        if allow_hardlink:
            method = self._hardlink(entry, src, dest)
            if method:
                return method
        _copy(src, dest, fsync=fsync)
        return "copy"

    def prune(self) -> PruneResult:
        """Remove abandoned puts and evict least-recently-used entries above max_bytes."""
        stale = self._cleanup()
        evicted, freed = self._evict(protect=None)
        return PruneResult(evicted, freed, stale)

    def stats(self) -> CacheStats:
        scans = self._scan()
        counters = self._read_counters()
        hits, misses = counters["hits"], counters["misses"]
        return CacheStats(
            entries=len(scans),
            bytes=sum(s.size for s in scans),
            hits=hits,
            misses=misses,
            hit_rate=hits / (hits + misses) if hits + misses else 0.0,
            evictions=counters["evictions"],
            dropped=counters["dropped"],
            max_bytes=self.max_bytes,
        )

    def clear(self) -> int:
        """Remove every entry and abandoned put, and reset the counters; returns the entries removed.

        A put in progress in another process is left alone and lands afterwards.
        """
        with self._lock():
            scans = self._scan()
            for s in scans:
                self._remove_dir(s.path)
            self._count(reset=True)
        self._cleanup()
        return len(scans)

    def __contains__(self, key: str) -> bool:
        """Whether an entry folder exists (unverified; counts nothing)."""
        return _HEX64.fullmatch(key or "") is not None and (self._entry_dir(key) / MANIFEST).exists()

    # ---- verification

    def _verify(self, key: str, path: Path, dfd: int) -> CacheEntry:
        try:
            raw = _read_at(dfd, MANIFEST)
        except FileNotFoundError:
            raise _Corrupt("manifest missing") from None
        try:
            manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _Corrupt(f"manifest unreadable: {e}") from None
        files = _check_manifest(manifest, key)
        stamps = self._read_stamps(dfd)
        new_stamps = dict(stamps)
        for name, want in files.items():
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise _Corrupt(f"{name} missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise _Corrupt(f"{name} is not a regular file")
            if st.st_size != want["size"]:
                raise _Corrupt(f"{name} has {st.st_size} bytes, the manifest says {want['size']}")
            stamp = _stamp(st, want["sha256"])
            if stamps.get(name) == stamp:
                continue  # hashed before, untouched since (ctime included: see module doc)
            fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                got = hashlib.file_digest(f, "sha256").hexdigest()
                after = os.fstat(f.fileno())
            if got != want["sha256"]:
                raise _Corrupt(f"{name} content differs: sha256 {got}, the manifest says {want['sha256']}")
            new_stamps[name] = _stamp(after, want["sha256"])
        if new_stamps != stamps:
            self._write_stamps(dfd, new_stamps)
        video = files.get(VIDEO)
        if video is None:
            raise _Corrupt(f"manifest lists no {VIDEO}")
        return CacheEntry(
            key=key,
            path=path,
            video=path / VIDEO,
            size=video["size"],
            sha256=video["sha256"],
            created=float(manifest["created"]),
            meta=manifest["meta"],
        )

    def _read_stamps(self, dfd: int) -> dict[str, list]:
        try:
            data = json.loads(_locked_read(VERIFIED, dir_fd=dfd))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}  # missing or torn: the files are hashed again, never trusted
        return data if isinstance(data, dict) else {}

    def _write_stamps(self, dfd: int, stamps: Mapping[str, list]) -> None:
        try:
            _locked_update(VERIFIED, lambda _old: json.dumps(stamps).encode(), dir_fd=dfd)
        except OSError as e:  # a read-only cache still serves; it just re-hashes next time
            log.debug("cache stamp not written", error=str(e))

    def _hardlink(self, entry: CacheEntry, src: Path, dest: Path) -> str | None:
        try:
            before = os.stat(src, follow_symlinks=False)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "cache entry vanished since get", str(src)) from None
        if before.st_mode & 0o222:
            return None  # writable: a link would let the outbox edit the cache
        try:
            os.link(src, dest, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                return None
            raise
        self._restamp_after_link(entry, src, before)
        return "hardlink"

    def _restamp_after_link(self, entry: CacheEntry, src: Path, before: os.stat_result) -> None:
        """Our own link changed the ctime; keep the stamp if nothing else changed."""
        try:
            dfd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            stamps = self._read_stamps(dfd)
            if stamps.get(VIDEO) != _stamp(before, entry.sha256):
                return
            after = os.stat(src, follow_symlinks=False)
            same = (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev) == (
                before.st_size,
                before.st_mtime_ns,
                before.st_ino,
                before.st_dev,
            )
            if same and after.st_nlink == before.st_nlink + 1:
                stamps[VIDEO] = _stamp(after, entry.sha256)
                self._write_stamps(dfd, stamps)
        finally:
            os.close(dfd)

    def _drop(self, key: str, path: Path, dfd: int, reason: str) -> None:
        log.warning("cache entry corrupt, removed", key=key, reason=reason, path=str(path))
        try:
            here, ours = os.stat(path, follow_symlinks=False), os.fstat(dfd)
        except OSError:
            return
        if (here.st_ino, here.st_dev) == (ours.st_ino, ours.st_dev):  # not replaced meanwhile
            self._remove_dir(path)

    # ---- writing

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh temp dir under .tmp/, flock'ed (through its .lock file) while we work in it."""
        if fcntl is None:  # pragma: no cover
            raise OSError("the result cache needs fcntl (macOS or Linux)")
        name = f"{os.getpid()}-{secrets.token_hex(8)}"
        tmpdir = self.root / TMP
        tmpdir.mkdir(parents=True, exist_ok=True)
        lock_path = tmpdir / f"{name}.lock"
        lfd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(lfd, fcntl.LOCK_EX)
            work = tmpdir / name
            work.mkdir()
            try:
                yield work
            finally:
                if os.path.lexists(work):  # failed before (or after) the rename: leftovers
                    shutil.rmtree(work, ignore_errors=True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            os.close(lfd)

    def _install(self, tmp: Path, final: Path) -> None:
        """Rename the assembled entry into place; swap atomically with an existing one."""
        for _ in range(10):
            try:
                os.rename(tmp, final)  # atomic; replaces nothing but an empty dir
                _fsync_path(final.parent)
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if _exchange(tmp, final):  # tmp now holds the old entry, removed by _staging
                _fsync_path(final.parent)
                return
            self._remove_dir(final)  # no atomic swap here: a brief miss, never a mix
        raise OSError(errno.EBUSY, "cache entry kept being replaced by another writer", str(final))

    # ---- eviction and housekeeping

    def _evict(self, protect: str | None) -> tuple[int, int]:
        with self._lock():
            scans = self._scan()
            total = sum(s.size for s in scans)
            if total <= self.max_bytes:
                return 0, 0
            evicted = freed = 0
            for s in sorted(scans, key=lambda s: (s.last_used_ns, s.key)):
                if total <= self.max_bytes:
                    break
                if s.key == protect:
                    continue
                self._remove_dir(s.path)
                total -= s.size
                freed += s.size
                evicted += 1
                log.info("cache entry evicted", key=s.key, bytes=s.size)
            if evicted:
                self._count(evictions=evicted)
            return evicted, freed

    def _scan(self) -> list[_Scan]:
        out = []
        for prefix in _listdir(self.root):
            if not _HEX2.fullmatch(prefix):
                continue
            for key in _listdir(self.root / prefix):
                if not (_HEX64.fullmatch(key) and key.startswith(prefix)):
                    continue
                path = self.root / prefix / key
                size, used = 0, None
                fallback = 0
                for name in _listdir(path):
                    try:
                        st = os.stat(path / name, follow_symlinks=False)
                    except OSError:
                        continue
                    size += st.st_size if stat.S_ISREG(st.st_mode) else 0
                    if name == USED:
                        used = st.st_mtime_ns
                    elif name == MANIFEST:
                        fallback = st.st_mtime_ns
                out.append(_Scan(key, path, size, used if used is not None else fallback))
        return out

    def _cleanup(self) -> int:
        """Remove puts whose writer is gone (its flock released) and anything left in .trash."""
        tmpdir = self.root / TMP
        removed = 0
        names = set(_listdir(tmpdir))
        for name in names:
            if name.endswith(".lock") or name.startswith("."):
                continue
            lock_name = f"{name}.lock"
            if lock_name in names:
                if not _lock_is_free(tmpdir / lock_name):
                    continue  # a live writer
            else:
                # The lock file is made before the dir and removed after it, so a dir
                # without one is left from a crash; the age check guards odd clocks.
                try:
                    age = time.time() - os.stat(tmpdir / name, follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if age < _STALE_UNLOCKED_S and _pid_alive(name):
                    continue
            _rmtree(tmpdir / name)
            with contextlib.suppress(OSError):
                if lock_name in names and _lock_is_free(tmpdir / lock_name):
                    os.unlink(tmpdir / lock_name)
            removed += 1
            log.info("cache: removed an abandoned put", temp=name)
        for name in names:  # lock files whose dir is already gone
            if name.endswith(".lock") and name[: -len(".lock")] not in names:
                with contextlib.suppress(OSError):
                    if _lock_is_free(tmpdir / name):
                        os.unlink(tmpdir / name)
        for name in _listdir(self.root / TRASH):
            _rmtree(self.root / TRASH / name)
        return removed

    def _remove_dir(self, path: Path) -> None:
        """Take `path` out of the namespace in one rename, then delete it."""
        trash = self.root / TRASH / f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = path
        _rmtree(trash)

    def _entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    # ---- counters

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    # The counters live in one small JSON file, rewritten in place under its own
    # flock: readers take the shared lock, so none sees a half-written record. A
    # rename-based rewrite would create a file per lookup, which costs more than the
    # rest of a hit (about 0.3 ms on ext4); a torn file after power loss reads as zeros.

    def _read_counters(self) -> dict[str, int]:
        try:
            return _parse_counters(_locked_read(self.root / STATS))
        except OSError:
            return _parse_counters(b"")

    def _count(self, *, reset: bool = False, **deltas: int) -> None:
        def update(old: bytes) -> bytes:
            counters = _parse_counters(b"" if reset else old)
            for k, v in deltas.items():
                counters[k] = counters.get(k, 0) + v
            return json.dumps({"v": 1, **counters}).encode()

        try:
            _locked_update(self.root / STATS, update)
        except OSError as e:
            log.debug("cache stats not written", error=str(e))

    def _touch(self, dfd: int, name: str) -> None:
        ns = _ns(self.clock())
        try:
            try:
                os.utime(name, ns=(ns, ns), dir_fd=dfd)
            except FileNotFoundError:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd))
                os.utime(name, ns=(ns, ns), dir_fd=dfd)
        except OSError as e:  # a read-only cache still serves; LRU order just goes stale
            log.debug("cache last-use not recorded", error=str(e))


# ---------------------------------------------------------------------- helpers


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _HEX64.fullmatch(key):
        raise ValueError(f"cache key must be 64 lowercase hex digits, not {key!r}")


def _manifest_checksum(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_manifest(manifest: Any, key: str) -> dict[str, dict[str, Any]]:
    if not isinstance(manifest, dict):
        raise _Corrupt("manifest is not a JSON object")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise _Corrupt(f"manifest schema {manifest.get('schema')!r}, expected {MANIFEST_SCHEMA}")
    if manifest.get("checksum") != _manifest_checksum(manifest):
        raise _Corrupt("manifest checksum does not match its contents")
    if manifest.get("key") != key:
        raise _Corrupt(f"manifest is for key {manifest.get('key')!r}")
    if not isinstance(manifest.get("created"), (int, float)) or not isinstance(manifest.get("meta"), dict):
        raise _Corrupt("manifest lacks created/meta")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise _Corrupt("manifest lists no files")
    for name, info in files.items():
        if not _SAFE_NAME.fullmatch(name) or name in (MANIFEST, USED, VERIFIED):
            raise _Corrupt(f"manifest names an unsafe file {name!r}")
        if not (
            isinstance(info, dict)
            and isinstance(info.get("size"), int)
            and isinstance(info.get("sha256"), str)
            and _HEX64.fullmatch(info["sha256"])
        ):
            raise _Corrupt(f"manifest entry for {name!r} is malformed")
    return files


def _parse_counters(raw: bytes) -> dict[str, int]:
    out = {"hits": 0, "misses": 0, "evictions": 0, "dropped": 0}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return out
    if isinstance(data, dict):
        for k in out:
            v = data.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                out[k] = v
    return out


def _locked_read(path: Path | str, *, dir_fd: int | None = None) -> bytes:
    """A small file's bytes, read under a shared flock (see `_locked_update`)."""
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        chunks = []
        offset = 0
        while chunk := os.pread(fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _locked_update(path: Path | str, update: Callable[[bytes], bytes], *, dir_fd: int | None = None) -> None:
    """Rewrite a small file in place under an exclusive flock: no new file per write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=dir_fd)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        old = b""
        while chunk := os.pread(fd, 65536, len(old)):
            old += chunk
        new = update(old)
        view = memoryview(new)
        offset = 0
        while offset < len(new):
            offset += os.pwrite(fd, view[offset:], offset)
        if len(old) != len(new):
            os.ftruncate(fd, len(new))
    finally:
        os.close(fd)


def _stamp(st: os.stat_result, sha256: str) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, sha256]


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _read_at(dfd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _rmtree(path: Path) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _lock_is_free(path: Path) -> bool:
    """True when nobody holds the flock on `path` (its writer exited or was killed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    finally:
        os.close(fd)


def _pid_alive(name: str) -> bool:
    try:
        pid = int(name.split("-", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    full = getattr(fcntl, "F_FULLFSYNC", None) if fcntl else None
    if full is not None:  # macOS: fsync alone does not flush the drive's cache
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass
    os.fsync(fd)


def _write_file(path: Path, data: bytes, *, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        _fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _ingest(src: Path, dst: Path, *, link: bool) -> tuple[int, str]:
    """Bring `src` into the cache at `dst`; returns (size, sha256) of what is at `dst`."""
    if link:
        try:
            os.link(src, dst)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            link = False  # another filesystem (or no links there): clone or copy instead
        else:
            os.chmod(dst, 0o444)
            with open(dst, "rb") as f:
                return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()
    if _clone(src, dst):
        with open(dst, "rb") as f:  # hash what landed in the cache
            return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            written = 0
            while written < n:
                written += fout.write(view[written:n])
            size += n
    return size, h.hexdigest()


def _clone(src: Path, dst: Path) -> bool:
    """A copy-on-write clone of `src` at a new `dst`; False (and nothing at `dst`) where unsupported."""
    if sys.platform == "darwin":
        return _clonefile(src, dst)
    if fcntl is None or not sys.platform.startswith("linux"):
        return False
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", str(src)) from None
    try:
        sst = os.fstat(sfd)
        if not stat.S_ISREG(sst.st_mode):
            return False
        pair = (sst.st_dev, os.stat(dst.parent).st_dev)
        if pair in _NO_CLONE_PAIRS:
            return False  # known: this filesystem (pair) cannot clone; skip the create/unlink
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            fcntl.ioctl(dfd, _FICLONE, sfd)
        except OSError as e:
            os.close(dfd)
            os.unlink(dst)
            if e.errno in _NO_CLONE:
                _NO_CLONE_PAIRS.add(pair)
                return False
            raise
        os.close(dfd)
        return True
    finally:
        os.close(sfd)


_NO_CLONE_PAIRS: set[tuple[int, int]] = set()  # (source device, destination device)


_NO_CLONE = {
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.EBADF,
    errno.ENOSYS,
    errno.EPERM,
}

_libsystem: Any = None


def _clonefile(src: Path, dst: Path) -> bool:
    import ctypes

    global _libsystem
    try:
        if _libsystem is None:
            _libsystem = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
        fn = _libsystem.clonefile
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
    fn.restype = ctypes.c_int
    if fn(os.fsencode(src), os.fsencode(dst), 0x0001) == 0:  # CLONE_NOFOLLOW
        os.chmod(dst, 0o666 & ~_umask())  # clonefile copies the source's 0o444
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    if err == errno.ENOENT and not os.path.exists(src):
        raise FileNotFoundError(err, os.strerror(err), str(src))
    return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _copy(src: Path, dst: Path, *, fsync: bool) -> None:
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            done = False
            if hasattr(os, "copy_file_range"):
                try:
                    while os.copy_file_range(sfd, dfd, 1 << 30):
                        pass
                    done = True
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                        raise
                    os.ftruncate(dfd, 0)
                    os.lseek(sfd, 0, os.SEEK_SET)
                    os.lseek(dfd, 0, os.SEEK_SET)
            if not done:
                with open(sfd, "rb", closefd=False) as fin, open(dfd, "wb", closefd=False) as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
            if fsync:
                _fsync(dfd)
        except BaseException:
            os.close(dfd)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(dfd)
    finally:
        os.close(sfd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the OS cannot."""
    import ctypes

    try:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            at_fdcwd, rename_exchange = -100, 2
            ok = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
        elif sys.platform == "darwin":
            libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
            fn = libc.renamex_np
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            ok = fn(os.fsencode(a), os.fsencode(b), 0x2) == 0  # RENAME_SWAP
        else:
            return False
    except (OSError, AttributeError):
        return False
    return ok  # on failure (unsupported, or the old entry went away) the caller falls back
