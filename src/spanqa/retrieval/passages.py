"""Passages: the pieces of documents that a store holds and search returns, and the text search sees of each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from spanqa.data.documents import Document
from spanqa.errors import CollectionError


@dataclass(frozen=True)
class Passage:
    """A piece of a document: text == document text[start:start + len(text)]."""

    doc_id: str
    title: str
    path: str
    passage_id: int
    start: int
    text: str


@dataclass(frozen=True)
class PassageSettings:
    max_words: int = 200
    overlap_words: int = 50

    def __post_init__(self) -> None:
        if self.max_words < 1 or not 0 <= self.overlap_words < self.max_words:
            raise CollectionError("passages need max_words >= 1 and 0 <= overlap_words < max_words")


def split_passages(doc: Document, settings: PassageSettings) -> list[Passage]:
    """Paragraph-aware passages: whole paragraphs packed up to max_words; longer paragraphs cut into
    windows of max_words overlapping by overlap_words. Offsets point into the document text."""
    pieces: list[tuple[int, int]] = []  # (start, end) character ranges, each at most max_words words
    for para in re.finditer(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", doc.text, flags=re.S):
        words = [m.span() for m in re.finditer(r"\S+", para.group())]
        step = settings.max_words - settings.overlap_words
        for lo in range(0, max(len(words) - settings.overlap_words, 1), step):
            chunk = words[lo:lo + settings.max_words]
            pieces.append((para.start() + chunk[0][0], para.start() + chunk[-1][1]))
    passages, group, group_words = [], [], 0
    for start, end in pieces:
        n = len(doc.text[start:end].split())
        if group and group_words + n > settings.max_words:
            passages.append(group)
            group, group_words = [], 0
        group.append((start, end))
        group_words += n
    if group:
        passages.append(group)
    return [Passage(doc.doc_id, doc.title, doc.path, i, g[0][0], doc.text[g[0][0]:g[-1][1]])
            for i, g in enumerate(passages)]


def indexed_text(p: Passage) -> str:
    """What search sees of a passage: its document title, then its text (as DPR indexes Wikipedia)."""
    return f"{p.title.replace('_', ' ')}\n{p.text}" if p.title else p.text
