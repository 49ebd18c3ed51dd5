"""Documents from files: .txt, .md, .json (records or SQuAD contexts), .jsonl and PDF, folders walked.

Shared by `spanqa index` (passages to retrieve) and `spanqa pretrain` (a masked-LM corpus).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from spanqa.data.sources import DataError, parse_json, read_json_file
from spanqa.errors import CollectionError  # defined apart so that retrieval.layout needs nothing from here
from spanqa.retrieval import layout


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    path: str
    text: str


def read_documents(paths: Iterable[str | Path], field: str = "text",
                   unreadable: list[str] | None = None) -> tuple[list[Document], list[str]]:
    """Documents of all files (folders are walked) and notes on what was skipped (empty, duplicate, links
    out of a folder). A file that cannot be read is listed in `unreadable` (with the reason) and the rest
    are read; without that list, every unreadable file is named in one CollectionError."""
    docs, notes, seen, problems = [], [], set(), [] if unreadable is None else unreadable
    for path in document_files(paths, notes, problems):
        try:
            found = read_file(path, field)
        except CollectionError as e:
            problems.append(str(e))
            continue
        docs += keep_documents(found, seen, notes)
    if unreadable is None and problems:
        raise CollectionError(f"{len(problems)} file(s) cannot be read: " + "; ".join(problems))
    return docs, notes


def keep_documents(docs: Iterable[Document], seen: set[str], notes: list[str]) -> list[Document]:
    """The documents with text not seen before (their texts added to `seen`); notes on the others."""
    kept = []
    for doc in docs:
        if not doc.text.strip():
            notes.append(f"{doc.path}: document {doc.doc_id!r} is empty; nothing to index")
        elif doc.text in seen:
            notes.append(f"{doc.path}: document {doc.doc_id!r} repeats an earlier text; indexed once")
        else:
            seen.add(doc.text)
            kept.append(doc)
    return kept


def iter_documents(paths: Iterable[str | Path], field: str = "text") -> Iterator[Document]:
    """Every document of the files (folders walked, in name order), one file at a time: a corpus of any
    size streams through in bounded memory (only a single PDF or JSON file is held whole). A file that
    cannot be read (damaged, not UTF-8, permission denied, ...) stops it with CollectionError naming the
    file: a corpus is read whole, never silently in part."""
    for path in document_files(paths):
        yield from _checked(path, field)


def read_file(path: Path, field: str = "text") -> list[Document]:
    """All documents of one file, or CollectionError naming it and the reason (damaged, not UTF-8,
    permission denied, ...): a file is indexed whole or not at all."""
    return list(_checked(path, field))


def _checked(path: Path, field: str) -> Iterator[Document]:
    """The documents of `_read_file`, an OSError (permission denied, ...) raised as CollectionError naming the file."""
    try:
        yield from _read_file(path, field)
    except OSError as e:
        raise CollectionError(f"{path}: cannot read it ({e.strerror or e}); check that it exists and that "
                              "you may read it") from None


def document_files(paths: Iterable[str | Path], notes: list[str] | None = None,
                   unreadable: list[str] | None = None) -> Iterator[Path]:
    """The supported files under `paths` as resolved real paths (their identity: ./a.txt, a.txt and a link
    to it are one file), each once, folders walked in name order. Links in a folder that lead out of it
    are not followed (a link to /etc/passwd is never read): noted in `notes`. A folder that cannot be
    listed goes to `unreadable` (raised when it is None). Missing or unsupported arguments are refused
    before anything is read, all of them named."""
    given = [Path(p) for p in paths]
    problems = [_argument_problem(p) for p in given]
    if any(problems):
        raise CollectionError("; ".join(p for p in problems if p))
    seen: set[Path] = set()
    for p in given:
        real = p.resolve()
        for f in _walk(real, notes, unreadable) if real.is_dir() else [real]:
            if f not in seen:
                seen.add(f)
                yield f


def _argument_problem(path: Path) -> str | None:
    try:
        real = path.resolve()
        real.stat()
    except FileNotFoundError:
        pass
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"{path}: cannot follow this path ({getattr(e, 'strerror', None) or e}); check its permissions"
    if real.is_dir():
        return None
    if not real.exists():
        return f"{path}: no such file or folder" + (f" (a link to {real})" if path.is_symlink() else "")
    if not real.is_file():
        return f"{path}: not a regular file (a pipe or device); give files or folders"
    if not _kind(real):
        return f"{path}: unsupported file type; use .txt, .md, .json, .json.gz, .jsonl or .pdf"
    return None


def _walk(root: Path, notes: list[str] | None, unreadable: list[str] | None) -> list[Path]:
    """Supported regular files under the real folder `root`, in name order, resolved; links that leave
    `root` are skipped with a note (links inside it lead to files the walk finds anyway)."""
    def cannot_list(e: OSError) -> None:
        message = f"{e.filename}: cannot list this folder ({e.strerror}); its files are not indexed"
        if unreadable is None:
            raise CollectionError(message)
        unreadable.append(message)

    def note(message: str) -> None:
        if notes is not None:
            notes.append(message)

    found: list[tuple[Path, Path]] = []  # (the name in the walk, the real file)
    for folder, dirs, files in os.walk(root, onerror=cannot_list):  # links to folders are not descended
        for name in sorted(dirs):
            sub = Path(folder) / name
            if sub.is_symlink() and not _inside(sub, root):
                note(f"{sub}: a link to a folder outside {root}; not followed")
            elif _is_index_folder(sub):  # an index kept beside its documents: its files are no documents
                dirs.remove(name)
        for name in files:
            path = Path(folder) / name
            if not _kind(path):
                continue
            try:
                real = path.resolve()
            except (OSError, RuntimeError):
                note(f"{path}: a link that cannot be followed (a loop?); skipped")
                continue
            if path.is_symlink() and not _inside(path, root):
                note(f"{path}: a link to {real}, outside {root}; not followed")
            elif not real.exists():
                note(f"{path}: a link to {real}, which does not exist; skipped")
            elif not real.is_file():
                note(f"{path}: not a regular file (a pipe or device); skipped")
            elif _kind(real):
                found.append((path, real))
    return [real for _, real in sorted(found)]


def _is_index_folder(folder: Path) -> bool:
    """A `spanqa index` folder (see `layout.is_index`); False for one that cannot be looked into (os.walk
    then names it as unreadable)."""
    try:
        return layout.is_index(folder)
    except CollectionError:
        return False


def _inside(link: Path, root: Path) -> bool:
    try:
        return link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


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
