"""Documents from files: .txt, .md, .json (records or SQuAD contexts), .jsonl and PDF, folders walked.

Shared by `spanqa index` (passages to retrieve) and `spanqa pretrain` (a masked-LM corpus).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from spanqa.data.sources import DataError, parse_json, read_json_file


class CollectionError(ValueError):
    """A document or an index that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    path: str
    text: str


def read_documents(paths: Iterable[str | Path], field: str = "text") -> tuple[list[Document], list[str]]:
    """Documents of all files (folders are walked) and notes on what was skipped (empty, duplicate)."""
    docs, notes, seen = [], [], set()
    for doc in iter_documents(paths, field):
        if not doc.text.strip():
            notes.append(f"{doc.path}: document {doc.doc_id!r} is empty; nothing to index")
        elif doc.text in seen:
            notes.append(f"{doc.path}: document {doc.doc_id!r} repeats an earlier text; indexed once")
        else:
            seen.add(doc.text)
            docs.append(doc)
    return docs, notes


def iter_documents(paths: Iterable[str | Path], field: str = "text") -> Iterator[Document]:
    """Every document of the files (folders walked, in name order), one file at a time: a corpus of any
    size streams through in bounded memory (only a single PDF or JSON file is held whole)."""
    for path in document_files(paths):
        yield from _read_file(path, field)


def document_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
        elif p.is_file():
            if not _kind(p):
                raise CollectionError(f"{p}: unsupported file type; use .txt, .md, .json, .json.gz, .jsonl or .pdf")
            yield p
        else:
            raise CollectionError(f"{p}: no such file or folder")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (".txt", ".md", ".jsonl", ".json", ".json.gz", ".pdf"):
        if name.endswith(suffix):
            return suffix
    return None


def _read_file(path: Path, field: str) -> Iterator[Document]:
    kind = _kind(path)
    if kind == ".pdf":
        yield _read_pdf(path)
    elif kind in (".txt", ".md"):
        text = _read_text(path)
        heading = re.match(r"#+\s+(.+)", text.lstrip()) if kind == ".md" else None
        yield Document(path.stem, heading.group(1).strip() if heading else path.stem, str(path), text)
    elif kind == ".jsonl":
        for line_no, line in enumerate(_read_text(path).split("\n"), 1):  # not splitlines: U+2028 is text
            if line.strip():
                try:  # bounded nesting, finite numbers, no lone surrogates
                    record = parse_json(line.encode("utf-8"), f"{path}, line {line_no}", one_line=True)
                except DataError as e:
                    raise CollectionError(str(e)) from None
                yield _record_document(path, record, field, f"line {line_no}", str(line_no))
    else:
        try:
            data = read_json_file(path)
        except DataError as e:
            raise CollectionError(str(e)) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):  # SQuAD: one document a paragraph
            for a, article in enumerate(data["data"]):
                if not isinstance(article, dict) or not isinstance(article.get("paragraphs", []), list):
                    raise CollectionError(f"{path}: data[{a}] is not a SQuAD article (an object with a "
                                          "'paragraphs' list)")
                title = str(article.get("title", ""))
                for p, paragraph in enumerate(article.get("paragraphs", [])):
                    if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context", ""), str):
                        raise CollectionError(f"{path}: data[{a}].paragraphs[{p}]: no string 'context'")
                    yield Document(f"{title}#{p}", title, str(path), paragraph.get("context", ""))
        elif isinstance(data, list):
            for i, record in enumerate(data):
                yield _record_document(path, record, field, f"record {i}", str(i))
        else:
            raise CollectionError(f"{path}: expected a SQuAD file ({{'data': [...]}}) or a list of records")


def _record_document(path: Path, record, field: str, where: str, default_id: str) -> Document:
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise CollectionError(f"{path}, {where}: no string field {field!r}; choose the text field with --field")
    return Document(str(record.get("id", default_id)), str(record.get("title", "")), str(path), record[field])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CollectionError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8 first") from None


def _read_pdf(path: Path) -> Document:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except Exception as e:  # pypdf parses untrusted bytes: any failure of it means an unreadable PDF
        raise CollectionError(f"{path}: cannot read this PDF ({e}); is it damaged or encrypted?") from None
    return Document(path.stem, str(title), str(path), text)
