"""SQuAD-style data: nested JSON (v1.1/v2.0), flat JSONL and hub datasets -> validated `Example`s.

Every problem is reported with its location (file, article title, paragraph index, question id,
field); nothing is dropped or changed silently. `--fix-offsets` repairs `answer_start` values that
are off by a few characters and reports each repair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from spanqa.data.sources import (
    DataError,
    Location,
    Problem,
    hub_records,
    looks_like_data_file,
    open_binary,
    read_json_file,
    read_jsonl,
)

OFFSET_REPAIR_RADIUS = 32  # how far (characters) --fix-offsets looks for the answer text


@dataclass(frozen=True, slots=True)
class Example:
    """One question about one context, with its gold answers (empty when unanswerable)."""

    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    title: str = ""
    is_impossible: bool = False

    @property
    def has_answer(self) -> bool:
        return bool(self.answer_texts)


@dataclass
class Dataset:
    """Examples of one file plus what validation found."""

    source: str
    examples: list[Example]
    version_2: bool
    problems: list[Problem] = field(default_factory=list)
    repairs: list[Problem] = field(default_factory=list)


def load_dataset(source: str | Path, *, fix_offsets: bool = False, split: str = "train",
                 require_answers: bool = True) -> Dataset:
    """Read and validate a dataset; raise `DataError` listing every problem if it is invalid.

    With `require_answers=False` (prediction), questions may come without answers.
    """
    dataset = check_dataset(source, fix_offsets=fix_offsets, split=split, require_answers=require_answers)
    raise_problems(dataset.source, dataset.problems)
    if not dataset.examples:
        raise DataError(f"{source}: no questions found")
    return dataset


def raise_problems(source: str, problems: list[Problem]) -> None:
    if problems:
        raise DataError(f"{source}: {len(problems)} problem(s); run `spanqa data check {source}`"
                        " for the full list (`--fix-offsets` repairs slightly-off answer_start values)", problems)


def check_dataset(source: str | Path, *, fix_offsets: bool = False, split: str = "train",
                  require_answers: bool = True) -> Dataset:
    """Read a dataset and collect all validation problems (raises only for unreadable files)."""
    stream = ExampleStream(source, fix_offsets=fix_offsets, split=split, require_answers=require_answers)
    examples = list(stream)
    return Dataset(stream.source, examples, stream.version_2, stream.problems, stream.repairs)


class ExampleStream:
    """The valid examples of a file (or hub dataset), read one record at a time: memory does not grow
    with the file. Problems, repairs and counts accumulate while it is consumed (iterate it once);
    unreadable files raise `DataError`."""

    def __init__(self, source: str | Path, *, fix_offsets: bool = False, split: str = "train",
                 require_answers: bool = True):
        self.path: Path | None = Path(source)
        self.check = _Checker(fix_offsets, require_answers)
        self.count = 0          # examples yielded so far
        self.unanswerable = 0
        if self.path.exists():
            if self.path.is_dir():
                raise DataError(f"{self.path} is a folder; pass a .json, .json.gz or .jsonl file")
            self.source = str(self.path)
        elif looks_like_data_file(str(source)):
            raise DataError(f"{source}: no such file")
        else:
            self.path, self.hub_name, self.split = None, str(source), split
            self.source = f"hub:{source}[{split}]"

    @property
    def problems(self) -> list[Problem]:
        return self.check.problems

    @property
    def repairs(self) -> list[Problem]:
        return self.check.repairs

    @property
    def version_2(self) -> bool:
        return self.check.version_2

    def __iter__(self) -> Iterator[Example]:
        if self.path is None:
            examples = _record_examples(hub_records(self.hub_name, self.split), self.check)
        elif self.path.name.lower().endswith((".jsonl", ".jsonl.gz")):
            examples = _record_examples(read_jsonl(self.path), self.check)
        else:
            examples = _nested_examples(self.path, self.check)
        for example in examples:
            self.count += 1
            self.unanswerable += not example.has_answer
            yield example


class _Checker:
    """Accumulates problems and repairs while records are converted to `Example`s."""

    def __init__(self, fix_offsets: bool, require_answers: bool = True):
        self.fix_offsets = fix_offsets
        self.require_answers = require_answers
        self.problems: list[Problem] = []
        self.repairs: list[Problem] = []
        self.seen_ids: set[str] = set()  # ids only (no locations): the one thing that grows with the file
        self.version_2 = False  # v2.0 data: seen "is_impossible", a "2.x" version or an unanswerable record

    def problem(self, where: Location, field_name: str, message: str) -> None:
        self.problems.append(Problem(where, field_name, message))

    def text(self, where: Location, record: dict, key: str) -> str | None:
        value = record.get(key)
        if value is None:
            self.problem(where, key, "missing")
        elif not isinstance(value, str):
            self.problem(where, key, f"must be a string, got {type(value).__name__}")
        elif not value.strip():
            self.problem(where, key, "empty (or only whitespace)")
        else:
            return value
        return None

    def qid(self, where: Location, record: dict) -> str | None:
        qid = record.get("id")
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid:
            self.problem(where, "id", "missing or not a string")
            return None
        if qid in self.seen_ids:
            self.problem(where, "id", "duplicate id: an earlier question has the same id")
            return None
        self.seen_ids.add(qid)
        return qid

    def answers(self, where: Location, context: str | None, texts: Any, starts: Any,
                field_name: str) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
        ok = True
        out_texts, out_starts = [], []
        for i, (text, start) in enumerate(zip(texts, starts)):
            f = f"{field_name}[{i}]"
            if not isinstance(text, str) or not text:
                self.problem(where, f + ".text", "must be a non-empty string")
                ok = False
                continue
            if not text.strip():  # would train on the neighbouring words
                self.problem(where, f + ".text", "answer text is only whitespace; give the words of the answer")
                ok = False
                continue
            if not isinstance(start, int) or isinstance(start, bool):
                self.problem(where, f + ".answer_start", f"must be an integer, got {start!r}")
                ok = False
                continue
            if context is None:
                continue
            fixed = self._offset(where, f, context, text, start)
            if fixed is None:
                ok = False
                continue
            out_texts.append(text)
            out_starts.append(fixed)
        return (tuple(out_texts), tuple(out_starts)) if ok else None

    def _offset(self, where: Location, f: str, context: str, text: str, start: int) -> int | None:
        if start < 0:
            self.problem(where, f + ".answer_start", f"negative ({start})")
            return None
        if start + len(text) > len(context):
            if not self.fix_offsets:
                self.problem(where, f + ".answer_start",
                             f"{start} + len(text) {len(text)} runs past the end of the context "
                             f"({len(context)} characters)")
                return None
        elif context[start:start + len(text)] == text:
            return start
        found = _nearest_occurrence(context, text, start)
        if self.fix_offsets and found is not None and abs(found - start) <= OFFSET_REPAIR_RADIUS:
            self.repairs.append(Problem(where, f + ".answer_start", f"repaired {start} -> {found}"))
            return found
        hint = f" (text found at {found}; --fix-offsets repairs this)" if found is not None else \
            " (text does not occur in the context)"
        self.problem(where, f + ".answer_start",
                     f"context[{start}:{start + len(text)}] is {context[start:start + len(text)]!r}, "
                     f"not the answer text {text!r}{hint}")
        return None


def _nearest_occurrence(context: str, text: str, start: int) -> int | None:
    best = None
    i = context.find(text)
    while i != -1:
        if best is None or abs(i - start) < abs(best - start):
            best = i
        i = context.find(text, i + 1)
    return best


def _nested_examples(path: Path, check: _Checker) -> Iterator[Example]:
    """SQuAD nested JSON {"version", "data": [{"title", "paragraphs": [{"context", "qas"}]}]}, streamed
    one article at a time with ijson (json.load would hold the whole file as Python objects)."""
    import ijson

    source, articles = str(path), 0
    try:
        # scanned while read (bounded nesting, no lone surrogates): ijson never sees a hostile file
        with open_binary(path, scan_json=True) as f:
            for a, article in enumerate(ijson.items(f, "data.item", use_float=True)):
                articles += 1
                yield from _article_examples(source, a, article, check)
        if not articles:  # an empty "data" list, or not SQuAD JSON at all: look at the whole (small) file
            data = read_json_file(path)
            if not isinstance(data, dict) or not isinstance(data.get("data"), list):
                raise DataError(f"{source}: not SQuAD JSON: expected an object with a 'data' list "
                                "(for flat records use .jsonl)")
        if not check.version_2:  # "version" comes after "data" in the official files: a second, cheap pass
            with open_binary(path) as f:  # (scanned already by the first)
                check.version_2 = any(str(v).lstrip("v").startswith("2") for v in ijson.items(f, "version"))
    except ijson.JSONError as e:
        read_json_file(path)  # DataError with the line and column, or the path of a number JSON forbids
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__  # what yajl refuses and json takes
        raise DataError(f"{source}: not readable as JSON ({detail}); check the file with a JSON validator") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert the file to UTF-8") from None


def _article_examples(source: str, a: int, article: Any, check: _Checker) -> Iterator[Example]:
    if not isinstance(article, dict):
        check.problem(Location(source), f"data[{a}]", "must be an object")
        return
    title = article.get("title", f"#{a}")
    title = title if isinstance(title, str) else str(title)
    paragraphs = article.get("paragraphs")
    if not isinstance(paragraphs, list):
        check.problem(Location(source, title), "paragraphs", "missing or not a list")
        return
    for p, paragraph in enumerate(paragraphs):
        where_p = Location(source, title, p)
        if not isinstance(paragraph, dict):
            check.problem(where_p, "paragraph", "must be an object")
            continue
        context = check.text(where_p, paragraph, "context")
        qas = paragraph.get("qas")
        if not isinstance(qas, list):
            check.problem(where_p, "qas", "missing or not a list")
            continue
        check.version_2 |= any(isinstance(qa, dict) and "is_impossible" in qa for qa in qas)
        for q, qa in enumerate(qas):
            if not isinstance(qa, dict):
                check.problem(where_p, f"qas[{q}]", "must be an object")
                continue
            example = _nested_example(check, source, title, p, q, qa, context)
            if example is not None:
                yield example


def _nested_example(check: _Checker, source: str, title: str, p: int, q: int, qa: dict,
                    context: str | None) -> Example | None:
    where = Location(source, title, p, str(qa.get("id", f"qas[{q}]")))
    qid = check.qid(where, qa)
    question = check.text(where, qa, "question")
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        check.problem(where, "is_impossible", f"must be true or false, got {impossible!r}")
        return None
    answers = qa.get("answers", None if check.require_answers else [])
    if not isinstance(answers, list):
        check.problem(where, "answers", "missing or not a list")
        return None
    if any(not isinstance(a, dict) for a in answers):
        check.problem(where, "answers", "each answer must be an object with 'text' and 'answer_start'")
        return None
    if impossible and answers:
        check.problem(where, "answers", "is_impossible is true but answers are given "
                      "(v2.0 keeps those under 'plausible_answers')")
        return None
    if not answers and not impossible and check.require_answers:
        hint = "mark it \"is_impossible\": true (v2.0)" if check.version_2 else \
            "v1.1 questions need at least one answer; remove the question or use a v2.0 file"
        check.problem(where, "answers", f"no answers and not marked is_impossible: {hint}")
        return None
    spans = check.answers(where, context, [a.get("text") for a in answers],
                          [a.get("answer_start") for a in answers], "answers")
    if qid is None or question is None or context is None or spans is None:
        return None
    return Example(qid, question, context, spans[0], spans[1], title, impossible)


def _record_examples(records: Iterable[tuple[Location, Any]], check: _Checker) -> Iterator[Example]:
    """Flat records as the hub's `squad` uses: id, title, context, question, answers{text, answer_start}."""
    previous_context = ""  # flat files repeat each context for its questions: keep one string for them
    for where, record in records:
        if not isinstance(record, dict):
            check.problem(where, "record", "must be a JSON object")
            continue
        where = Location(where.file, record.get("title") if isinstance(record.get("title"), str) else None,
                         line=where.line, qid=str(record.get("id")))
        qid = check.qid(where, record)
        question = check.text(where, record, "question")
        context = check.text(where, record, "context")
        answers = record.get("answers", None if check.require_answers else {"text": [], "answer_start": []})
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
                or not isinstance(answers.get("answer_start"), list):
            check.problem(where, "answers", 'must be {"text": [...], "answer_start": [...]}')
            continue
        texts, starts = answers["text"], answers["answer_start"]
        if len(texts) != len(starts):
            check.problem(where, "answers", f"{len(texts)} texts but {len(starts)} answer_start values")
            continue
        spans = check.answers(where, context, texts, starts, "answers")
        if qid is None or question is None or context is None or spans is None:
            continue
        check.version_2 |= not spans[0]
        if context == previous_context:
            context = previous_context
        previous_context = context
        yield Example(qid, question, context, spans[0], spans[1], record.get("title") or "", not spans[0])


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples as flat JSONL records (the hub's `squad` layout)."""
    from spanqa.files import atomic_write_text

    lines = (json.dumps({"id": e.id, "title": e.title, "context": e.context, "question": e.question,
                         "answers": {"text": list(e.answer_texts),
                                     "answer_start": list(e.answer_starts)}}, ensure_ascii=False)
             for e in examples)
    atomic_write_text(path, "\n".join(lines) + "\n")
