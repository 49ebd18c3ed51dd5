"""Atomic file writes: a reader never sees a half-written file; what a killed writer left is cleaned."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any


_TEMPORARY = r"\.tmp(\d+)\.[^./]*\.tmp"  # what atomic_write_bytes names its temporary: .NAME.tmpPID.RANDOM.tmp
# safetensors (0.8) writes model.safetensors through Rust's tempfile crate: .tmp + 6 random characters, no pid
_SAFETENSORS_TEMPORARY = r"\.tmp[A-Za-z0-9]{6}"


def remove_stale_writes(folder: str | Path, older_than: float | None = None) -> list[Path]:
    """Remove the temporaries of atomic writes into `folder` whose writer was killed (any file name): a
    file that is not written again (a finished run's latest.json) would otherwise keep its leftover. With
    `older_than` (a timestamp before which nobody else writes into `folder`), safetensors' temporaries too."""
    folder = Path(folder)
    removed = remove_stale(folder, re.compile(rf"\..+{_TEMPORARY}"))
    if older_than is not None:
        removed += remove_stale(folder, re.compile(_SAFETENSORS_TEMPORARY), older_than=older_than)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`. The file gets the mode a
    plain `open(path, "w")` gives (its old mode, else 0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, re.compile(rf"\.{re.escape(path.name)}{_TEMPORARY}"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp{os.getpid()}.", suffix=".tmp")
    try:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def umask() -> int:
    """The process's umask (read without changing it where /proc says it; set and restored otherwise)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def owner_gone(pid: int, since: float) -> bool:
    """Has the process `pid`, which made something at time `since`, ended? (A live process with that id
    that started later is another one: the id was reused.)"""
    import psutil

    if pid == os.getpid():
        return False
    try:
        return psutil.Process(pid).create_time() > since + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.Error:  # AccessDenied: it exists
        return False


def remove_stale(folder: Path, pattern: re.Pattern, older_than: float | None = None) -> list[Path]:
    """Remove what killed processes left in `folder`: entries whose name matches `pattern` (group 1: the
    owner's pid, if any) whose owner is gone, or which were made before `older_than` (a timestamp)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m:
            continue
        try:
            made = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(m.group(1)) if m.groups() and m.group(1) else None
        stale = (older_than is not None and made < older_than) or (pid is not None and owner_gone(pid, made))
        if stale:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed
