"""Writing files so that a crash or a reader never sees half of one: the one home for it.

Every writer in hotfolder that must survive a crash goes through here: the journal
(`processing/<job>/job.json`), error records, the cache's manifests, the agent's
plist and unit, the config file, submitted jobs. `durable` writes are fsynced with
`F_FULLFSYNC` on macOS (plain fsync there does not flush the drive's cache) and the
folder is synced after the rename; status and progress files, rewritten constantly
and rebuilt after a crash, skip that.

Also here: small files rewritten in place under a flock (`locked_read`,
`locked_update`), copy-on-write clones (`clone`), a kernel-assisted copy
(`copy_file`), an atomic swap of two paths (`exchange`), and removal helpers.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - not a supported platform (no flock, no FICLONE)
    fcntl = None  # type: ignore[assignment]

_CHUNK = 1024 * 1024
_FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h


# --------------------------------------------------------------- atomic writes


def write_atomic(path: Path, data: bytes, *, durable: bool = True, mode: int | None = None) -> None:
    """Replace `path` with `data` in one rename: a reader sees the old file or the new one, never half.

    `durable` fsyncs the data before the rename and the folder after it, so the new
    file survives a power loss (the journal, error records, config, service files).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):
            fsync_path(path.parent)


def write_if_changed(path: Path, data: bytes) -> bool:
    """`write_atomic` (durable, parents made) unless `path` already holds exactly `data`; True if it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except (FileNotFoundError, IsADirectoryError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return True


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """`write_atomic` for JSON (indented, UTF-8, one trailing newline)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    write_atomic(path, text.encode("utf-8"), durable=durable)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------- exclusive placement


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move `src` to `dst` in one step, failing with FileExistsError if anything is at `dst` (never overwrites).

    Linux `renameat2(RENAME_NOREPLACE)`, macOS `renamex_np(RENAME_EXCL)`; elsewhere (or on a
    filesystem without them) a hard link then unlink for a file, an exclusive mkdir then a
    rename onto that empty placeholder for a folder. Two processes placing the same name at
    the same moment: one wins, the other gets FileExistsError and tries the next name.
    """
    if _rename_excl(src, dst):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)  # exclusive: FileExistsError if another got there first
        try:
            os.rename(src, dst)  # replaces only our own empty placeholder
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(dst)
            raise
        return
    os.link(src, dst, follow_symlinks=False)  # exclusive: FileExistsError if taken
    os.unlink(src)


_RENAME_EXCL_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def _rename_excl(src: Path, dst: Path) -> bool:
    """The OS's own no-replace rename; False where it has none (the caller falls back)."""
    err = _flagged_rename(src, dst, linux_flag=1, darwin_flag=0x4)  # RENAME_NOREPLACE, RENAME_EXCL
    if err is None or err in _RENAME_EXCL_UNSUPPORTED:
        return False
    if err == 0:
        return True
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(dst))


@functools.cache
def _flagged_rename_call() -> tuple[Any, bool] | None:
    """(the C function, whether it is Linux's renameat2) for a rename with flags; None where the OS has none."""
    import ctypes

    try:
        if sys.platform.startswith("linux"):
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            return fn, True
        if sys.platform == "darwin":
            fn = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True).renamex_np
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            return fn, False
    except (OSError, AttributeError):
        pass
    return None


def _flagged_rename(src: Path, dst: Path, *, linux_flag: int, darwin_flag: int) -> int | None:
    """Linux `renameat2(AT_FDCWD, src, AT_FDCWD, dst, linux_flag)` or macOS `renamex_np(src, dst, darwin_flag)`:
    0 when done, the errno when the OS refused, None where the OS has no such call."""
    import ctypes

    call = _flagged_rename_call()
    if call is None:
        return None
    fn, linux = call
    a, b = os.fsencode(src), os.fsencode(dst)
    ok = (fn(-100, a, -100, b, linux_flag) if linux else fn(a, b, darwin_flag)) == 0
    return 0 if ok else ctypes.get_errno()


# ----------------------------------------------------------- the primitives


def locked_read(path: Path | str, *, dir_fd: int | None = None) -> bytes:
    """A small file's bytes, read under a shared flock (see `locked_update`)."""
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


def locked_update(path: Path | str, update: Callable[[bytes], bytes], *, dir_fd: int | None = None) -> None:
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


def listdir(path: Path) -> list[str]:
    """A folder's names; [] when it is missing or not a folder."""
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_tree(path: Path) -> None:
    """Remove a file, a link or a whole folder; nothing there is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def lock_is_free(path: Path) -> bool:
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a folder: so that a rename in it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path, folders: list[Path]) -> None:
    """Flush `folders` (files, subfolders, entries) to the disk: Linux's syncfs flushes the whole filesystem
    `path` is on in one call, however many files there are; elsewhere each file and folder is flushed."""
    if _syncfs(path):
        return
    for folder in folders:
        sync_folder(folder)


def _syncfs(path: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if fn(fd) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def sync_folder(path: Path) -> None:
    """Flush a folder's files (and folders within, and their entries) to the disk; what vanished is skipped."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue  # gone, or a link: nothing of ours to flush
            try:
                os.fsync(fd)  # the data; the folders' F_FULLFSYNC (macOS) after it flushes the drive's cache
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            fsync_path(Path(dirpath))


def fsync(fd: int) -> None:
    """Flush a file to the disk itself: F_FULLFSYNC on macOS, fsync elsewhere."""
    full = getattr(fcntl, "F_FULLFSYNC", None) if fcntl else None
    if full is not None:  # macOS: fsync alone does not flush the drive's cache
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass
    os.fsync(fd)


def write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create `path` (it must not exist) with `data`, fsynced, then give it `mode`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def clone(src: Path, dst: Path) -> bool:
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


def copy_file(src: Path, dst: Path, *, durable: bool = False) -> None:
    """Copy `src` to a new `dst` (never overwrites): `copy_file_range` first (server-side or reflink
    copies where the kernel can), else a plain copy; `durable` fsyncs the data."""
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
            if durable:
                fsync(dfd)
        except BaseException:
            os.close(dfd)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(dfd)
    finally:
        os.close(sfd)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the OS cannot (unsupported, or the old entry went away): the caller
    falls back."""
    return _flagged_rename(a, b, linux_flag=2, darwin_flag=0x2) == 0  # RENAME_EXCHANGE, RENAME_SWAP

