"""Labelled sentences and sentence pairs: GLUE TSV, CSV/TSV with a header, JSONL or a hub dataset.

GLUE files are read exactly as GLUE writes them: one record per line, fields split on tabs with no
CSV quoting (a `"` inside a sentence is text; Python's default CSV quoting merges MRPC and STS-B rows),
a UTF-8 BOM before MRPC's header, no header in CoLA. Every problem names the file, line and field,
and all of a file's problems are reported at once.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanqa.data.sources import (
    DataError,
    Location,
    Problem,
    hub_records,
    looks_like_data_file,
    read_jsonl,
    text_lines,
)


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's TSV keeps its texts and label, and how it is scored."""

    name: str
    folder: str                    # its folder in glue_data/
    columns: tuple[str, ...]       # every column's name (the header, when the file has one)
    has_header: bool
    text: int
    pair: int | None
    label: int
    labels: tuple[str, ...] | None  # the label names in id order; None: a regression score
    metric: str                    # the task's main metric (drawn in the learning curve)


GLUE_TASKS = {t.name: t for t in [
    GlueTask("sst2", "SST-2", ("sentence", "label"), True, 0, None, 1, ("0", "1"), "accuracy"),
    GlueTask("mrpc", "MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), True, 3, 4, 0,
             ("0", "1"), "f1"),
    GlueTask("rte", "RTE", ("index", "sentence1", "sentence2", "label"), True, 1, 2, 3,
             ("entailment", "not_entailment"), "accuracy"),
    GlueTask("cola", "CoLA", ("source", "label", "original judgement", "sentence"), False, 3, None, 1,
             ("0", "1"), "matthews_correlation"),
    GlueTask("stsb", "STS-B", ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                               "sentence1", "sentence2", "score"), True, 7, 8, 9, None, "pearson"),
]}


@dataclass(frozen=True)
class DataFormat:
    """How labelled texts are read: a GLUE task's columns, or named fields of CSV/TSV/JSONL/hub records."""

    task: str | None = None        # a GLUE task name: its TSV columns, label names and metrics
    text_field: str = "text"
    pair_field: str | None = None  # the second text of a pair; None: single sentences
    label_field: str = "label"
    regression: bool = False       # labels are numbers (one output, MSE loss)

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in GLUE_TASKS:
            raise DataError(f"unknown GLUE task {self.task!r}; known: {', '.join(GLUE_TASKS)}")

    @property
    def glue(self) -> GlueTask | None:
        return GLUE_TASKS[self.task] if self.task else None

    @property
    def pairs(self) -> bool:
        return self.glue.pair is not None if self.glue else self.pair_field is not None

    @property
    def is_regression(self) -> bool:
        return self.glue.labels is None if self.glue else self.regression

    @property
    def main_metric(self) -> str:
        if self.glue:
            return self.glue.metric
        return "pearson" if self.regression else "accuracy"

    def names(self) -> tuple[str, str | None, str]:
        """The field names of text, pair and label, as error messages call them."""
        g = self.glue
        if g:
            return g.columns[g.text], None if g.pair is None else g.columns[g.pair], g.columns[g.label]
        return self.text_field, self.pair_field, self.label_field


@dataclass(frozen=True, slots=True)
class TextExample:
    """One sentence or sentence pair with its label (a name, or a score for regression)."""

    text: str
    pair: str | None
    label: str | float | None      # None only where labels are not required (prediction)
    line: int                      # line (or record) number in its file: for messages and predictions


@dataclass
class TextDataset:
    """The validated examples of one file."""

    source: str
    examples: list[TextExample]

    def label_set(self) -> set[str]:
        return {e.label for e in self.examples if isinstance(e.label, str)}


def load_texts(source: str | Path, fmt: DataFormat, *, labels: tuple[str, ...] | list[str] | None = None,
               require_labels: bool = True, split: str = "train") -> TextDataset:
    """Read and validate a file; `DataError` listing every problem (file, line, field) if it is invalid.

    `labels` (else a GLUE task's own) are the only label names allowed; `require_labels=False` lets
    records come without one (prediction).
    """
    source = str(source)
    known = tuple(labels) if labels is not None else (fmt.glue.labels if fmt.glue else None)
    problems: list[Problem] = []
    records = _records(source, fmt, split, problems)
    examples = [e for e in _checked(source, records, fmt, known, require_labels, problems) if e is not None]
    if problems:
        raise DataError(f"{source}: {len(problems)} problem(s)", problems)
    if not examples:
        raise DataError(f"{source}: no examples found")
    return TextDataset(source, examples)


def label_names(dataset: TextDataset, fmt: DataFormat) -> list[str]:
    """Label names in id order: a GLUE task's own, else the training set's, sorted (numerically if all are integers)."""
    if fmt.is_regression:
        return []
    if fmt.glue:
        return list(fmt.glue.labels)
    names = dataset.label_set()
    if all(_is_int(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_same_labels(train: TextDataset, dev: TextDataset, fmt: DataFormat) -> None:
    """`DataError` when dev holds a label that train lacks (naming its lines) or lacks one train has."""
    if fmt.is_regression:
        return
    extra = dev.label_set() - train.label_set()
    missing = train.label_set() - dev.label_set()
    if not extra and not missing:
        return
    label_name = fmt.names()[2]
    problems = [Problem(Location(dev.source, line=e.line), label_name, f"label {e.label!r} is not in the training set")
                for e in dev.examples if e.label in extra]
    parts = [f"labels {sorted(extra)} not in {train.source}"] if extra else []
    if missing:
        parts.append(f"no example of training label(s) {sorted(missing)}")
    raise DataError(f"{dev.source}: the label set differs from the training set's: {'; '.join(parts)}", problems)


def glue_data_dir() -> Path:
    """Where GLUE task folders live: $SPANQA_GLUE_DATA, else ../shared/data/glue beside the project."""
    env = os.environ.get("SPANQA_GLUE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data" / "glue"


def default_glue_file(task: str, split: str) -> str:
    """The train or dev TSV of a GLUE task in the GLUE data folder."""
    folder = glue_data_dir() / GLUE_TASKS[task].folder
    for name in (f"{split}.tsv", f"{split}.tsv.gz"):
        if (folder / name).exists():
            return str(folder / name)
    raise DataError(f"no {split}.tsv(.gz) in {folder}; set SPANQA_GLUE_DATA or pass --{split}-file")


# --- records -----------------------------------------------------------------------------------

Record = tuple[int, dict[str, Any]]  # (line, {field name: raw value})


def _records(source: str, fmt: DataFormat, split: str, problems: list[Problem]) -> Iterator[Record]:
    path = Path(source).expanduser()
    if not path.is_file():
        if looks_like_data_file(source) or path.suffix.lower() in (".tsv", ".csv"):
            raise DataError(f"{source}: no such file")
        if fmt.glue:
            raise DataError(f"{source}: no such file (--task {fmt.task} reads GLUE .tsv files)")
        for where, record in hub_records(source, "validation" if split == "dev" else split):
            yield where.line, dict(record)
        return
    name = path.name.lower().removesuffix(".gz")
    if fmt.glue:
        yield from _glue_rows(path, fmt.glue, problems)
    elif name.endswith(".jsonl"):
        for where, record in read_jsonl(path):
            if not isinstance(record, dict):
                problems.append(Problem(where, "record", f"expected a JSON object, got {type(record).__name__}"))
                continue
            yield where.line, record
    elif name.endswith((".csv", ".tsv")):
        yield from _header_rows(path, "\t" if name.endswith(".tsv") else ",", fmt, problems)
    else:
        raise DataError(f"{source}: unknown format; use .tsv with --task, or .csv, .tsv or .jsonl "
                        "(optionally .gz) with --text-field/--pair-field/--label-field")


def _glue_rows(path: Path, task: GlueTask, problems: list[Problem]) -> Iterator[Record]:
    """A GLUE TSV's rows split on tabs, no quoting; the header (after MRPC's BOM) checked, not returned."""
    for lineno, raw in text_lines(path):
        line = raw.rstrip("\r\n")
        if lineno == 1:
            line = line.removeprefix("\ufeff")
            if task.has_header:
                if tuple(line.split("\t")) != task.columns:
                    raise DataError(f"{path}, line 1: header {line[:120]!r} is not {task.name.upper()}'s "
                                    f"({chr(9).join(task.columns)!r}); is this the right --task?")
                continue
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(task.columns):
            problems.append(Problem(Location(str(path), line=lineno), "columns",
                                    f"{len(cells)} tab-separated columns, expected {len(task.columns)} "
                                    f"({', '.join(task.columns)})"))
            continue
        yield lineno, dict(zip(task.columns, cells))


def _header_rows(path: Path, delimiter: str, fmt: DataFormat, problems: list[Problem]) -> Iterator[Record]:
    """Rows of a CSV (standard quoting) or TSV (no quoting, as GLUE) with a header naming the fields."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader((line for _, line in text_lines(path)), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if header is None:
            return
        if not header:  # csv reads a blank first line as a row of no cells
            raise DataError(f"{path}, line 1: empty; the first line must be the header naming the columns "
                            "(e.g. text,label)")
        header = [header[0].removeprefix("\ufeff"), *header[1:]]
        wanted = [n for n in (fmt.text_field, fmt.pair_field) if n]
        absent = [n for n in wanted if n not in header]
        if absent:
            raise DataError(f"{path}, line 1: no column {', '.join(map(repr, absent))} in the header "
                            f"({', '.join(header)}); pick columns with --text-field/--pair-field/--label-field")
        line = 1
        for cells in reader:
            start, line = line + 1, reader.line_num  # a quoted CSV field may span lines: name the first
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                problems.append(Problem(Location(str(path), line=start), "columns",
                                        f"{len(cells)} columns, expected {len(header)} ({', '.join(header)})"))
                continue
            yield start, dict(zip(header, cells))
    except csv.Error as e:  # e.g. a field longer than csv's limit (131,072 characters)
        raise DataError(f"{path}, line {reader.line_num}: cannot read this {'CSV' if delimiter == ',' else 'TSV'} "
                        f"row ({e}); is the file damaged or in another format?") from None


def _checked(source: str, records: Iterator[Record], fmt: DataFormat, known: tuple[str, ...] | None,
             require_labels: bool, problems: list[Problem]) -> Iterator[TextExample | None]:
    """Each record as an example, or None (after noting its problems)."""
    text_name, pair_name, label_name = fmt.names()
    for line, record in records:
        where = Location(source, line=line)
        before = len(problems)
        text = _text(record, text_name, where, problems)
        pair = _text(record, pair_name, where, problems) if pair_name else None
        label = _label(record.get(label_name), label_name, where, fmt.is_regression, known, require_labels, problems)
        yield TextExample(text, pair, label, line) if len(problems) == before else None


def _text(record: dict, name: str, where: Location, problems: list[Problem]) -> str:
    value = record.get(name)
    if value is None:
        problems.append(Problem(where, name, "missing"))
    elif not isinstance(value, str):
        problems.append(Problem(where, name, f"expected text, got {type(value).__name__}"))
    elif not value.strip():
        problems.append(Problem(where, name, "empty text"))
    else:
        return value.strip()  # SST-2 ends every sentence with a space
    return ""


def _label(value: Any, name: str, where: Location, regression: bool, known: tuple[str, ...] | None,
           require_labels: bool, problems: list[Problem]) -> str | float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if require_labels:
            problems.append(Problem(where, name, "missing label"))
        return None
    if regression:
        try:
            score = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond a double
            score = math.nan
        if isinstance(value, bool) or not math.isfinite(score):
            problems.append(Problem(where, name, f"expected a number, got {value!r}"))
        return score
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 from a JSON number means the label 1
    if isinstance(value, (dict, list)):
        problems.append(Problem(where, name, f"expected a label name, got {type(value).__name__}"))
        return None
    label = str(value).strip()
    if known is not None and label not in known:
        problems.append(Problem(where, name, f"unknown label {label!r} (labels: {', '.join(known)})"))
    return label


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False
