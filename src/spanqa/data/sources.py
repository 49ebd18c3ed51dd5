"""Reading data files: plain or gzipped JSON, JSONL and hub datasets, with locations for errors.

Every task's loader (SQuAD questions, GLUE sentences, masked-LM corpora) reports problems through
`Location`/`Problem`/`DataError`, so messages always name the file, record and field.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


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


def looks_like_path(source: str) -> bool:
    return source.endswith((".json", ".gz", ".jsonl")) or source.startswith((".", "/", "~"))


def open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_json_file(path: str | Path) -> Any:
    """Parse a .json or .json.gz file; `DataError` with line and column when it is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return _read_json(path)


def _read_json(path: Path) -> Any:
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_jsonl(path: Path) -> Iterator[tuple[Location, Any]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Location(str(path), line=lineno), json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON on line {lineno}, column {e.colno}: {e.msg}") from None


def hub_records(name: str, split: str) -> Iterator[tuple[Location, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, ...: say how to use a local file instead
        raise DataError(
            f"could not load hub dataset {name!r} (split {split!r}): {type(e).__name__}: {e}\n"
            "Offline? Pass a local file instead, e.g. --train-file data/train-v1.1.json "
            "(SQuAD nested .json/.json.gz or flat .jsonl)") from None
    for i, record in enumerate(ds):
        yield Location(f"hub:{name}[{split}]", line=i + 1), record


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
