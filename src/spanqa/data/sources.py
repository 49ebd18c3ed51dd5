"""Reading data files: plain or gzipped JSON, JSONL and hub datasets, with locations for errors.

Every task's loader (SQuAD questions, GLUE sentences, masked-LM corpora) reports problems through
`Location`/`Problem`/`DataError`, so messages always name the file, record and field.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from spanqa.data import strict_json


@dataclass(frozen=True, slots=True)
class Location:
    """Where a record lives in its file."""

    file: str
    title: str | None = None
    paragraph: int | None = None
    qid: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.title is not None:
            parts.append(f"article {self.title!r}")
        if self.paragraph is not None:
            parts.append(f"paragraph {self.paragraph}")
        if self.qid is not None:
            parts.append(f"question {self.qid!r}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Problem:
    """A validation problem: where, which field, what is wrong and how to fix it."""

    where: Location
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: field {self.field!r}: {self.message}"


class DataError(ValueError):
    """Raised when a data file cannot be used; the message lists every problem."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        self.problems = problems or []
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems[:50])
            more = len(self.problems) - 50
            message += f"\n{shown}" + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(message)


def looks_like_data_file(source: str) -> bool:
    """A data file's path rather than a hub dataset name (models.looks_like_path decides for models)."""
    return source.endswith((".json", ".gz", ".jsonl")) or source.startswith((".", "/", "~"))


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) of a UTF-8 text file; `DataError` naming the line that is not UTF-8."""
    with io.BufferedReader(open_binary(path), 1 << 16) as f:
        for lineno, raw in enumerate(f, 1):
            yield lineno, _decode(raw, f"{path}, line {lineno}")


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                        "convert the file to UTF-8") from None


def read_json_file(path: str | Path) -> Any:
    """Parse a .json or .json.gz file; `DataError` with line and column when it is not JSON, or naming
    the value JSON does not allow (NaN, integers beyond 64 bits), the nesting or the escape spanqa refuses."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open_binary(path, scan_json=True) as f:
        chunks = []
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    return parse_json(b"".join(chunks), str(path), scanned=True)


def parse_json(data: bytes, where: str, scanned: bool = False, one_line: bool = False) -> Any:
    """One JSON text (a file, or with `one_line` a JSONL line) as a value, or `DataError` starting with `where`."""
    try:
        if not scanned:
            strict_json.check_bytes(data)
        return strict_json.loads(_decode(data, where))
    except strict_json.JsonProblem as e:
        raise DataError(_located(where, e, one_line)) from None


def _located(where: str, e: strict_json.JsonProblem, one_line: bool = False) -> str:
    position = e.where()
    if one_line and e.line is not None:  # `where` names the line already
        position = f"column {e.column}" if e.column is not None else ""
    return f"{where}{', ' + position if position else ''}: {e}"


def read_jsonl(path: Path) -> Iterator[tuple[Location, Any]]:
    with io.BufferedReader(open_binary(path), 1 << 16) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield Location(str(path), line=lineno), parse_json(line, f"{path}, line {lineno}", one_line=True)


def hub_records(name: str, split: str) -> Iterator[tuple[Location, Any]]:
    from spanqa.models import hub_reachable

    offline = not hub_reachable()  # then the cache only: datasets would retry for ~25 s before failing
    try:
        import datasets
        import huggingface_hub.constants

        saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
        if offline:
            datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
        try:
            ds = datasets.load_dataset(name, split=split)
        finally:
            datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
    except Exception as e:  # offline, unknown name, ...: say how to use a local file instead
        raise DataError(
            f"could not load hub dataset {name!r} (split {split!r}"
            f"{'; the hub cannot be reached and it is not cached' if offline else ''}): {type(e).__name__}: {e}\n"
            "Offline? Pass a local file instead, e.g. --train-file data/train-v1.1.json "
            "(SQuAD nested .json/.json.gz or flat .jsonl)") from None
    for i, record in enumerate(ds):
        yield Location(f"hub:{name}[{split}]", line=i + 1), record


def open_binary(path: Path, scan_json: bool = False) -> GuardedFile:
    """A data file's bytes (gunzipped when named .gz); a damaged, cut or mislabelled gzip file becomes a
    `DataError` naming it. With `scan_json`, the bytes are scanned as they are read (`strict_json.JsonScanner`:
    bounded nesting, no lone surrogate escapes), so no parser ever sees a file that would exhaust it."""
    with open(path, "rb") as f:
        head = f.read(2)
    gzipped = path.name.lower().endswith(".gz")
    if gzipped and head != b"\x1f\x8b":
        raise DataError(f"{path}: named .gz but not gzip-compressed (it starts with {head!r}); "
                        f"rename it to {path.name[:-3]} (or compress it with gzip)")
    if not gzipped and head == b"\x1f\x8b":
        raise DataError(f"{path}: gzip-compressed but not named .gz; rename it to {path.name}.gz")
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    return GuardedFile(raw, path, strict_json.JsonScanner() if scan_json else None)


class GuardedFile(io.RawIOBase):
    """Reads through to a (gzip) file, turning damage into `DataError` and, with a scanner, refusing JSON
    nested too deeply or holding a lone surrogate escape, with the line and column."""

    def __init__(self, raw, path: Path, scanner: strict_json.JsonScanner | None = None):
        self.raw, self.path, self.scanner = raw, path, scanner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not len(buffer):
            return 0
        try:
            data = self.raw.read(len(buffer))
        except EOFError as e:
            raise DataError(f"{self.path}: the gzip file is cut short ({e}); copy or download it again") from None
        except (OSError, zlib.error) as e:
            raise DataError(f"{self.path}: damaged gzip file ({e}); copy or download it again") from None
        if self.scanner is not None:
            try:
                self.scanner.feed(data, final=not data)
            except strict_json.JsonProblem as e:
                raise DataError(_located(str(self.path), e)) from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def held_out_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held out) of `n` training records when no dev set is given: a seeded random `fraction`
    (at least one record) is held out for evaluation; both lists keep the file's order."""
    order = np.random.default_rng(seed).permutation(n)
    n_dev = max(1, int(n * fraction))
    return np.sort(order[n_dev:]).tolist(), np.sort(order[:n_dev]).tolist()
