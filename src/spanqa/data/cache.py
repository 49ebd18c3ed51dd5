"""A memory-mapped on-disk cache for tables of arrays (QA windows, packed masked-LM sequences, ...).

A table is a dataclass whose fields are numpy arrays with the row as first axis (or None). It is
written batch by batch into one raw file per field, so peak memory does not grow with the data, then
renamed into place atomically: a half-built cache is never used. The folder name is a hash of what
the table was made from (data, tokenizer, settings), so a change of any of them builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np

from spanqa.files import remove_stale

T = TypeVar("T")


def fingerprint_tokenizer(tokenizer) -> str:
    """What identifies a fast tokenizer's behaviour (vocabulary, normalizer, ...), not call-time settings."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None), state.pop("padding", None)  # call-time settings, not identity
    h.update(json.dumps(state, sort_keys=True).encode("utf-8"))
    h.update(tokenizer.padding_side.encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$SPANQA_CACHE, else ~/.cache/spanqa."""
    return Path(os.environ.get("SPANQA_CACHE", Path.home() / ".cache" / "spanqa"))


def cache_folder(kind: str, identity: list, cache_dir: str | Path | None = None) -> Path:
    """The folder for a table of `kind` made from `identity` (JSON-serializable)."""
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    return (Path(cache_dir) if cache_dir else default_cache_dir() / kind) / key


def write_cache(final: Path, table_type: type, batches: Iterator, summary: Callable[[], dict] | None = None) -> None:
    """Write the batches (instances of `table_type`) to `final` atomically; `summary()`, called once they
    are all written, may raise to abandon the cache or return what to record with it."""
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    if final.parent.is_dir():  # what killed writers left (their process is gone)
        remove_stale(final.parent, re.compile(r"[0-9a-f]+\.tmp(\d+)"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, object] = {}
    meta: dict[str, object] = {"n": 0, "dtypes": {}, "shapes": {}}
    try:
        for batch in batches:
            for f in fields(table_type):
                arr = getattr(batch, f.name)
                if arr is None:
                    continue
                if f.name not in files:
                    files[f.name] = open(tmp / f"{f.name}.bin", "wb")
                    meta["dtypes"][f.name] = arr.dtype.str
                    meta["shapes"][f.name] = list(arr.shape[1:])
                files[f.name].write(np.ascontiguousarray(arr).tobytes())
            meta["n"] += len(batch)
        if summary:
            meta["summary"] = summary()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for fh in files.values():
            fh.close()
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, final)  # atomic: a half-built cache is never used
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def is_cached(folder: Path) -> bool:
    return (folder / "meta.json").exists()


def cache_summary(folder: Path) -> dict:
    """What `summary()` returned when the cache was written."""
    return json.loads((folder / "meta.json").read_text()).get("summary", {})


def open_cache(folder: Path, table_type: type[T]) -> T:
    """The table in `folder`, its arrays memory-mapped read-only."""
    meta = json.loads((folder / "meta.json").read_text())
    n = meta["n"]
    arrays = {}
    for f in fields(table_type):
        if f.name not in meta["dtypes"]:
            arrays[f.name] = None
        elif n == 0:
            arrays[f.name] = np.zeros([0, *meta["shapes"][f.name]], dtype=meta["dtypes"][f.name])
        else:
            arrays[f.name] = np.memmap(folder / f"{f.name}.bin", mode="r", dtype=meta["dtypes"][f.name],
                                       shape=(n, *meta["shapes"][f.name]))
    return table_type(**arrays)
