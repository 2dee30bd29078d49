"""The store: a content-addressed folder of generated clips, so identical requests skip the model.

Keys come from `cache/key.py`. This module imports no backend (no torch,
diffusers, mlx, not even huggingface_hub): a hit costs a few stats and a clone.
The file primitives it stands on (flocked small files, clones, swaps, fsync) live
in `hotfolder/fsutil.py`.

Layout under the cache root::

    <root>/<key[:2]>/<key>/manifest.json   schema, key, created, files {name: size, sha256}, meta, checksum
                          /video.mp4       the clip with its native audio, mode 0o444
                          /<kind>-<v>.<ext>  derived files (the GIF, the thumbnail), mode 0o444; <v> names
                                           the settings that made them (`cache.key.derived_name`)
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

Derived files: what depends only on the clip's pixels and some settings (the preview
GIF and the thumbnail) is stored in the entry beside the clip, named by those settings,
so a hit links or clones them too and runs no ffmpeg. `put` takes them with the clip;
`add` puts more into an existing entry (an entry stored before, or with other settings):
the entry is assembled anew (the existing files hard-linked in) and swapped in whole.

Verification trade-off: `put` hashes every file as it lands in the cache and records a
stamp of (size, mtime_ns, ctime_ns, inode, device) for each; every hit compares `stat`
only, and hashes in full a file whose stamp no longer matches (or that has none). The ctime is set by the kernel on any write, truncate, chmod, utime or
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import structlog

from hotfolder import fsutil
from hotfolder.fsutil import fcntl

log = structlog.get_logger("hotfolder.cache")

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
_CHUNK = 1024 * 1024
_STALE_UNLOCKED_S = 3600.0  # a temp dir without its lock file (crash between mkdir steps)


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
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # every file: name -> {size, sha256}

    def has(self, name: str) -> bool:
        """Whether the entry holds `name` (the clip, or a derived file such as a preview)."""
        return name in self.files


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

    def put(self, key: str, video: Path, meta: Mapping[str, Any] | None = None, *, link: bool = False,
            extras: Mapping[str, Path] | None = None) -> CacheEntry:
        """Store `video` (the clip before post-processing) under `key`, replacing any entry.

        By default the bytes are cloned (copy-on-write) or copied in, so the caller's
        file stays editable without touching the cache. `link=True` hard-links the
        caller's file instead (no copy) and makes it read-only (0o444) for both.
        `extras`: derived files stored with it, by their names in the entry (`key.derived_name`),
        always cloned or copied in. Every file is hashed as it lands and stamped, so the next
        hits read no file through. Runs LRU eviction afterwards; the new entry itself is never
        evicted by its own put.
        """
        _check_key(key)
        meta = dict(meta or {})
        json.dumps(meta, allow_nan=False)  # fail before any work if meta is not JSON
        extras = {name: Path(path) for name, path in (extras or {}).items()}
        for name in extras:
            _check_name(name)
        with self._staging() as tmp:
            size, digest = _ingest(Path(video), tmp / VIDEO, link=link)
            files: dict[str, dict[str, Any]] = {VIDEO: {"size": size, "sha256": digest}}
            for name, path in extras.items():
                size, digest = _ingest(path, tmp / name, link=False)
                files[name] = {"size": size, "sha256": digest}
            created = float(self.clock())
            self._assemble(tmp, key, files, meta, created)
            final = self._entry_dir(key)
            final.parent.mkdir(exist_ok=True)
            self._install(tmp, final)
        self._evict(protect=key)
        return self._entry(key, final, files, meta, created)

    def add(self, entry: CacheEntry, extras: Mapping[str, Path], meta: Mapping[str, Any] | None = None) -> CacheEntry:
        """Store derived files (`extras`, by name) in an entry `get` returned, and merge `meta` into its meta.

        The entry is assembled anew in .tmp (its files hard-linked in, or copied where links
        cannot be made), and swapped in whole: a reader sees the old entry or the new one.
        Raises FileNotFoundError when the entry was replaced or removed since `get` (nothing
        is stored then). Returns the new entry.
        """
        merged = {**entry.meta, **(meta or {})}
        json.dumps(merged, allow_nan=False)
        extras = {name: Path(path) for name, path in extras.items()}
        for name in extras:
            _check_name(name)
        final = self._entry_dir(entry.key)
        with self._staging() as tmp:
            files: dict[str, dict[str, Any]] = {}
            for name, info in entry.files.items():
                if name not in extras:
                    _carry(entry.path / name, tmp / name, info)
                    files[name] = dict(info)
            for name, path in extras.items():
                size, digest = _ingest(path, tmp / name, link=False)
                files[name] = {"size": size, "sha256": digest}
            stamps = self._assemble(tmp, entry.key, files, merged, entry.created)
            if not self._still(final, entry):
                raise FileNotFoundError(errno.ENOENT, "cache entry replaced or removed since get", str(final))
            self._install(tmp, final)
            fsutil.remove_tree(tmp)  # the old entry: its names go now, before the stamps are made good again
        self._restamp(final, stamps)  # removing the old names moved the shared files' ctime
        self._evict(protect=entry.key)
        return self._entry(entry.key, final, files, merged, entry.created)

    def deliver(self, entry: CacheEntry, dest: Path, *, name: str = VIDEO, allow_hardlink: bool = True,
                fsync: bool = False) -> str:
        """Put the cached file `name` (the clip by default) at `dest` (which must not exist); returns "clone",
        "hardlink" or "copy".

        No delivered file can change the cache's bytes: a clone or a copy is an
        independent file (mode 0o644 less the umask); a hard link is made only when
        the cache file is read-only, and stays 0o444. Pass `allow_hardlink=False`
        when the caller will edit the file in place. `fsync=True` flushes a copy's data.
        Raises FileNotFoundError when the entry vanished since `get` (evicted or
        replaced by another process): treat that as a miss.
        """
        return self.deliver_many(entry, {name: dest}, allow_hardlink=allow_hardlink, fsync=fsync)[name]

    def deliver_many(self, entry: CacheEntry, targets: Mapping[str, Path], *, allow_hardlink: bool = True,
                     fsync: bool = False) -> dict[str, str]:
        """`deliver` for several of the entry's files at once ({name: dest}): one stamp update for all the links.

        On an error the files already delivered stay where they are (the caller's staging folder).
        """
        methods: dict[str, str] = {}
        linked: dict[str, os.stat_result] = {}
        try:
            for name, dest in targets.items():
                if name not in entry.files:
                    raise KeyError(f"the cache entry holds no {name!r}")
                src, dest = entry.path / name, Path(dest)
                if os.path.lexists(dest):
                    raise FileExistsError(errno.EEXIST, "destination exists", str(dest))
                if fsutil.clone(src, dest):
                    methods[name] = "clone"
                    continue
                if allow_hardlink:
                    before = _hardlink(src, dest)
                    if before is not None:
                        linked[name] = before
                        methods[name] = "hardlink"
                        continue
                fsutil.copy_file(src, dest, durable=fsync)
                methods[name] = "copy"
        finally:
            if linked:
                self._restamp_after_links(entry, linked)
        return methods

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
        return self._entry(key, path, files, manifest["meta"], float(manifest["created"]))

    @staticmethod
    def _entry(key: str, path: Path, files: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any],
               created: float) -> CacheEntry:
        video = files[VIDEO]
        return CacheEntry(key=key, path=path, video=path / VIDEO, size=video["size"], sha256=video["sha256"],
                          created=created, meta=meta, files={n: dict(i) for n, i in files.items()})

    def _read_stamps(self, dfd: int) -> dict[str, list]:
        try:
            data = json.loads(fsutil.locked_read(VERIFIED, dir_fd=dfd))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}  # missing or torn: the files are hashed again, never trusted
        return data if isinstance(data, dict) else {}

    def _write_stamps(self, dfd: int, stamps: Mapping[str, list]) -> None:
        try:
            fsutil.locked_update(VERIFIED, lambda _old: json.dumps(stamps).encode(), dir_fd=dfd)
        except OSError as e:  # a read-only cache still serves; it just re-hashes next time
            log.debug("cache stamp not written", error=str(e))

    def _restamp_after_links(self, entry: CacheEntry, linked: Mapping[str, os.stat_result]) -> None:
        """Our own links changed the files' ctime; keep each stamp if nothing else changed."""
        try:
            dfd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            stamps = self._read_stamps(dfd)
            changed = False
            for name, before in linked.items():
                sha = entry.files[name]["sha256"]
                if stamps.get(name) != _stamp(before, sha):
                    continue
                try:
                    after = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if _same_bytes(after, before) and after.st_nlink == before.st_nlink + 1:
                    stamps[name] = _stamp(after, sha)
                    changed = True
            if changed:
                self._write_stamps(dfd, stamps)
        finally:
            os.close(dfd)

    def _restamp(self, path: Path, stamps: Mapping[str, list]) -> None:
        """After our own link changes (no byte written): stamps made before them, made good for the new ctime."""
        try:
            dfd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            current = self._read_stamps(dfd)
            for name, old in stamps.items():
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if current.get(name) == old and [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev] == \
                        [old[0], old[1], old[3], old[4]]:
                    current[name] = _stamp(st, old[5])
            self._write_stamps(dfd, current)
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

    def _assemble(self, tmp: Path, key: str, files: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any],
                  created: float) -> dict[str, list]:
        """Finish an entry in `tmp` whose files are in place: read-only and flushed, then stamped (their hashes
        were taken as they landed), the manifest last; returns the stamps."""
        stamps: dict[str, list] = {}
        for name, info in files.items():
            os.chmod(tmp / name, 0o444)
            fsutil.fsync_path(tmp / name)
            stamps[name] = _stamp(os.stat(tmp / name, follow_symlinks=False), info["sha256"])
        manifest: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA,
            "key": key,
            "created": created,
            "files": {name: {"size": info["size"], "sha256": info["sha256"]} for name, info in files.items()},
            "meta": dict(meta),
        }
        manifest["checksum"] = _manifest_checksum(manifest)
        fsutil.write_new(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), mode=0o444)
        # Neither needs to survive a power loss: a lost last use is an older one, lost stamps mean a re-hash.
        _write_small(tmp / USED, b"")
        _write_small(tmp / VERIFIED, json.dumps(stamps).encode())
        ns = _ns(self.clock())
        os.utime(tmp / USED, ns=(ns, ns))
        fsutil.fsync_path(tmp)
        return stamps

    def _still(self, final: Path, entry: CacheEntry) -> bool:
        """Whether the entry at `final` is still the one `entry` describes (not replaced or removed)."""
        try:
            manifest = json.loads((final / MANIFEST).read_bytes())
        except (OSError, ValueError):
            return False
        return (isinstance(manifest, dict) and manifest.get("created") == entry.created
                and (manifest.get("files") or {}).get(VIDEO, {}).get("sha256") == entry.sha256)

    def _install(self, tmp: Path, final: Path) -> None:
        """Rename the assembled entry into place; swap atomically with an existing one."""
        for _ in range(10):
            try:
                os.rename(tmp, final)  # atomic; replaces nothing but an empty dir
                fsutil.fsync_path(final.parent)
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if fsutil.exchange(tmp, final):  # tmp now holds the old entry, removed by _staging
                fsutil.fsync_path(final.parent)
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
        for prefix in fsutil.listdir(self.root):
            if not _HEX2.fullmatch(prefix):
                continue
            for key in fsutil.listdir(self.root / prefix):
                if not (_HEX64.fullmatch(key) and key.startswith(prefix)):
                    continue
                path = self.root / prefix / key
                size, used = 0, None
                fallback = 0
                for name in fsutil.listdir(path):
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
        names = set(fsutil.listdir(tmpdir))
        for name in names:
            if name.endswith(".lock") or name.startswith("."):
                continue
            lock_name = f"{name}.lock"
            if lock_name in names:
                if not fsutil.lock_is_free(tmpdir / lock_name):
                    continue  # a live writer
            else:
                # The lock file is made before the dir and removed after it, so a dir
                # without one is left from a crash; the age check guards odd clocks.
                try:
                    age = time.time() - os.stat(tmpdir / name, follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if age < _STALE_UNLOCKED_S and _writer_alive(name):
                    continue
            fsutil.remove_tree(tmpdir / name)
            with contextlib.suppress(OSError):
                if lock_name in names and fsutil.lock_is_free(tmpdir / lock_name):
                    os.unlink(tmpdir / lock_name)
            removed += 1
            log.info("cache: removed an abandoned put", temp=name)
        for name in names:  # lock files whose dir is already gone
            if name.endswith(".lock") and name[: -len(".lock")] not in names:
                with contextlib.suppress(OSError):
                    if fsutil.lock_is_free(tmpdir / name):
                        os.unlink(tmpdir / name)
        for name in fsutil.listdir(self.root / TRASH):
            fsutil.remove_tree(self.root / TRASH / name)
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
        fsutil.remove_tree(trash)

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
            return _parse_counters(fsutil.locked_read(self.root / STATS))
        except OSError:
            return _parse_counters(b"")

    def _count(self, *, reset: bool = False, **deltas: int) -> None:
        def update(old: bytes) -> bytes:
            counters = _parse_counters(b"" if reset else old)
            for k, v in deltas.items():
                counters[k] = counters.get(k, 0) + v
            return json.dumps({"v": 1, **counters}).encode()

        try:
            fsutil.locked_update(self.root / STATS, update)
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


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (VIDEO, MANIFEST, USED, VERIFIED):
        raise ValueError(f"not a name for a derived file in a cache entry: {name!r}")


def _write_small(path: Path, data: bytes) -> None:
    """A new small file, not flushed (for what may be lost in a power loss)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _hardlink(src: Path, dest: Path) -> os.stat_result | None:
    """Hard-link a read-only cache file to `dest`; its stat before the link, or None where a link is not right."""
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
    return before


def _carry(src: Path, dst: Path, info: Mapping[str, Any]) -> None:
    """A file of a verified entry into a new one: a hard link (no bytes read), else a copy checked against its hash."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    size, digest = _ingest(src, dst, link=False)
    if (size, digest) != (info["size"], info["sha256"]):
        raise OSError(errno.EIO, f"{src.name} changed while it was being copied", str(src))


def _same_bytes(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_dev) == (b.st_size, b.st_mtime_ns, b.st_ino, b.st_dev)


def _stamp(st: os.stat_result, sha256: str) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, sha256]


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _read_at(dfd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


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
    if fsutil.clone(src, dst):
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


def _writer_alive(temp_name: str) -> bool:
    """Whether the process that named a temp folder "<pid>-<token>" still runs."""
    try:
        return fsutil.pid_alive(int(temp_name.split("-", 1)[0]))
    except ValueError:
        return False
