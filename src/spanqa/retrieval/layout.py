"""An index folder on disk: complete versions and a pointer to the current one, so no kill leaves it unusable.

    DIR/CURRENT          the name of the current version (replaced atomically: the switch)
    DIR/v-<id>/          index.json, passages.jsonl, embeddings.npy of one complete version
    DIR/.lock            held (flock) by the one process writing DIR; the kernel drops it when it dies

A save writes a new version beside the current one (`v-<id>.tmp<pid>` until its files are complete and
synced, then renamed), then rewrites CURRENT, then removes the versions no longer current. A kill at
any point leaves CURRENT naming a complete version: the old one or the new one, never none. What a
killed writer left (its staging folder, an old version, CURRENT's temporary file) is removed by the
next writer, which holds the lock, so it cannot be another live writer's. Readers open the three files
of the version CURRENT names (open files stay readable when a writer removes them) and look again if
a writer removed that version first. An index written before this layout (the three files directly
in DIR) is still read, and the first save moves it into a version.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from spanqa.errors import CollectionError
from spanqa.files import atomic_write_text

CURRENT, LOCK = "CURRENT", ".lock"
FILES = ("index.json", "passages.jsonl", "embeddings.npy")

# (folder, thread) -> depth: the locks this process holds. flock is per open file, so a nested `writing`
# in the same thread reuses its lock instead of waiting for itself; another thread waits like a process.
_held: dict[tuple[Path, int], int] = {}
_held_guard = threading.Lock()


def is_index(folder: Path) -> bool:
    """Does `folder` hold an index (this layout, or the files of the one before: a lone index.json is
    no index, it may be a document)?"""
    try:
        return (folder / CURRENT).is_file() or ((folder / FILES[0]).is_file() and (folder / FILES[2]).is_file())
    except OSError as e:  # pathlib ignores only "no such file"
        raise CollectionError(f"{folder}: cannot look into it ({e.strerror}); check its permissions") from None


def check_target(folder: Path) -> None:
    """Refuse to write an index into a file, or into a folder that holds something other than an index
    (a save removes what it does not keep: a mistyped --out must not cost anyone their files)."""
    try:
        folder.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise CollectionError(f"{folder}: cannot look into it ({e.strerror}); check its permissions") from None
    if not folder.is_dir():
        raise CollectionError(f"{folder}: a file, not an index folder; give --out a folder")
    if not os.access(folder, os.W_OK | os.X_OK):  # before any work, not after the embedding
        raise CollectionError(_cannot_write(folder, "it is read-only, or not yours to write"))
    if not is_index(folder):
        others = sorted(p.name for p in folder.iterdir() if not _ours(p.name))
        if others:
            raise CollectionError(f"{folder}: this folder holds other files ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}), not an index; give --out a new or "
                                  "empty folder")


@contextlib.contextmanager
def writing(folder: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the folder's write lock (waiting for another writer: `on_wait` is told who); re-entrant
    within a process. Two `--add` runs at once would each save their own additions and lose the other's."""
    folder = Path(folder)
    fcntl = _fcntl(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = (folder.resolve(), threading.get_ident())
        with _held_guard:
            if key in _held:
                _held[key] += 1
                fd = None
            else:
                fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:  # a read-only folder or file system, or one this user may not write to
        raise CollectionError(_cannot_write(folder, _reason(e))) from None
    if fd is None:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    on_wait(f"{folder}: another process (pid {holder}) is writing this index; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # ENOLCK, EOPNOTSUPP: a network or FUSE file system without locks
            raise CollectionError(f"{folder}: cannot lock it ({e.strerror}); its file system may not support "
                                  "locks (NFS without lockd, SMB, FUSE): build the index on a local disk, then "
                                  "copy the folder there") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)  # who holds it, for the message above
        except OSError as e:
            raise CollectionError(_cannot_write(folder, _reason(e))) from None
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(fd)  # releases the lock


def current(folder: Path) -> Path:
    """The folder of the current version (DIR itself for the layout before versions); CollectionError when
    there is no index or CURRENT names a version that is not there."""
    folder = Path(folder)
    name = None
    for _ in range(10):
        before, name = name, _pointer(folder)
        if name is None:
            return folder
        if (folder / name).is_dir():
            return folder / name
        if name == before:  # named twice, missing both times: not a writer's switch in between
            break
    raise CollectionError(f"{folder / CURRENT} names version {name!r}, which is not there: the index is damaged; "
                          f"{rebuild_hint(folder)}")


def _pointer(folder: Path) -> str | None:
    """The version CURRENT names; None for the layout before versions."""
    pointer = folder / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if (folder / FILES[0]).is_file():
            return None
        raise CollectionError(_no_index(folder)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CollectionError(f"{pointer}: cannot read it ({e}); {rebuild_hint(folder)}") from None
    if not name.startswith("v-") or "/" in name:
        raise CollectionError(f"{pointer} names {name!r}, not a version: the index is damaged; {rebuild_hint(folder)}")
    return name


def open_files(folder: Path) -> tuple[Path, list[BinaryIO]]:
    """The current version and its files, opened: what they hold stays one version even when a writer
    replaces it meanwhile (the version is looked up again if it went before its files were opened)."""
    for _ in range(10):
        version = current(folder)
        handles: list[BinaryIO] = []
        try:
            for name in FILES:
                handles.append(open(version / name, "rb"))
            return version, handles
        except FileNotFoundError as e:
            for h in handles:
                h.close()
            if current(folder) == version:  # not a writer's switch: the file is missing from the version
                raise CollectionError(f"{e.filename}: missing, the index is damaged; {rebuild_hint(folder)}") from None
        except OSError as e:
            for h in handles:
                h.close()
            raise CollectionError(f"{e.filename}: cannot read it ({e.strerror}); {rebuild_hint(folder)}") from None
    raise CollectionError(f"{folder}: the index kept changing while it was read; try again")


def save_version(folder: Path, write: Callable[[Path], None]) -> Path:
    """Write a new version with `write(staging_folder)` and make it current (see the module docstring);
    the caller's files must be complete when `write` returns (they are synced here)."""
    folder = Path(folder)
    check_target(folder)
    with writing(folder):
        try:
            _sweep(folder)
            name = f"v-{time.time_ns():x}-{os.getpid()}"
            staging = folder / f"{name}.tmp{os.getpid()}"
            staging.mkdir()
            write(staging)
            for f in staging.iterdir():  # on disk before CURRENT names them (a power cut, not only a kill)
                _fsync(f)
            _fsync(staging)
            os.rename(staging, folder / name)
            _fsync(folder)
            atomic_write_text(folder / CURRENT, name + "\n")
            _fsync(folder)
            _sweep(folder)
            _sweep_before_versions(folder)
        except OSError as e:  # the current version is as it was; what was staged goes with the next save
            raise CollectionError(_cannot_write(folder, _reason(e))) from None
    return folder


def _sweep(folder: Path) -> None:
    """Remove what is not the current version: old versions, killed writers' staging folders and
    temporary files, and the files of the layout before versions once CURRENT exists. Only the lock's
    holder calls this, so nothing here belongs to a live writer."""
    try:
        keep = (folder / CURRENT).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        keep = None
    for entry in os.scandir(folder):
        name = entry.name
        if name in (CURRENT, LOCK, keep):
            continue
        if name.startswith("v-") and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif name.startswith(f".{CURRENT}.tmp") or (keep is not None and name in FILES):
            Path(entry.path).unlink(missing_ok=True)


def _sweep_before_versions(folder: Path) -> None:
    """Remove what a killed save of the layout before versions left beside the folder: `.DIR.old` (the
    index it replaced; superseded now) and its staging folders `.DIR.<random>/index` an hour old."""
    stale = time.time() - 3600
    for entry in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        staging = re.fullmatch(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}", entry.name) and (entry / "index").is_dir()
        try:
            if entry.name == f".{folder.name}.old" or (staging and entry.stat().st_mtime < stale):
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _ours(name: str) -> bool:
    """A name this layout makes (an emptied index folder holds only these)."""
    return name in (CURRENT, LOCK, *FILES) or name.startswith(("v-", f".{CURRENT}.tmp"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems (CIFS, some FUSE) cannot sync a folder: nothing more to do there
        if not (e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF) and path.is_dir()):
            raise
    finally:
        os.close(fd)


def _fcntl(folder: Path):
    """The fcntl module, for the write lock; CollectionError where the platform has none (Windows)."""
    try:
        import fcntl
    except ImportError:
        raise CollectionError(f"{folder}: writing an index folder needs file locks (fcntl), which this platform "
                              "lacks; build the index on Linux or macOS (WSL on Windows), then copy it") from None
    return fcntl


def _cannot_write(folder: Path, reason: str) -> str:
    return (f"{folder}: cannot write the index there ({reason}); check that you may write to it and that its "
            "file system is not read-only and has room, or give --out another folder")


def _reason(e: OSError) -> str:
    return f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror or e)


def rebuild_hint(folder: Path, how: str = "rebuild the index") -> str:
    """`how` with the command that builds an index in `folder`, for the end of a message."""
    return f"{how} with `spanqa index DOCS --out {folder}`"


def _no_index(folder: Path) -> str:
    legacy = folder.with_name(f".{folder.name}.old")
    if is_index(legacy):  # what a kill between the two renames of an earlier spanqa left
        return (f"{folder}: no index, but {legacy} holds the one a killed save left; move it back "
                f"(mv {legacy} {folder}) or {rebuild_hint(folder, 'rebuild it')}")
    if not folder.exists():
        return f"{folder}: no such index folder; {rebuild_hint(folder, 'build one')}"
    return f"{folder}: not an index folder (no {CURRENT} or {FILES[0]}); {rebuild_hint(folder, 'build one')}"
