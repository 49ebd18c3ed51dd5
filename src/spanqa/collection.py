"""Retrieve, then read: answers from a document collection, with their sources.

The retrieved passages of all questions are read in one batched pass with the shared decoder.
Answers are ranked across passages by their span logit (start + end logit): unlike a softmax
within one passage, raw logits of the same model are on one scale for all passages. The reported
score is a softmax over all candidate spans of the question, so it is comparable too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .data import Example
from .index import Index
from .metrics import normalize_answer
from .reader import Reader


@dataclass(frozen=True)
class SourcedAnswer:
    text: str
    score: float             # probability over all candidate spans of the question
    logit: float             # start_logit + end_logit
    doc_id: str
    title: str
    path: str
    passage_id: int
    passage: str
    passage_start: int       # answer offsets in the passage text
    passage_end: int
    doc_start: int           # answer offsets in the document text
    retrieval_rank: int      # 0 = the best retrieved passage

    def source(self) -> str:
        return f"{self.title or self.doc_id} ({self.path}, passage {self.passage_id})"

    def to_dict(self) -> dict:
        return asdict(self)


def ask_collection(reader: Reader, index: Index, question: str, top_k: int = 1, passages: int = 5,
                   mode: str = "hybrid") -> list[SourcedAnswer]:
    """The `top_k` best answers to `question` from the `passages` best passages of `index`."""
    return ask_collection_many(reader, index, [question], top_k, passages, mode)[0]


def ask_collection_many(reader: Reader, index: Index, questions: Sequence[str], top_k: int = 1, passages: int = 5,
                        mode: str = "hybrid") -> list[list[SourcedAnswer]]:
    """`ask_collection` for many questions: one retrieval call and one batched reading pass."""
    hits = index.search_many(questions, passages, mode)
    examples = [Example(f"{q}:{r}", question, hit.passage.text)
                for q, (question, row) in enumerate(zip(questions, hits)) for r, hit in enumerate(row)]
    predictions = iter(reader.predict(examples))
    out = []
    for row in hits:
        candidates = []
        for hit in row:
            prediction = next(predictions)
            if prediction.no_answer:  # a v2 reader (or its calibrated threshold) says: not in this passage
                continue
            candidates += [(a, hit) for a in prediction.answers]
        out.append(_best_distinct(candidates, top_k))
    return out


def _best_distinct(candidates: list, top_k: int) -> list[SourcedAnswer]:
    """The top_k spans by logit, one per distinct (normalized) answer text; scores softmaxed over all."""
    if not candidates:
        return []
    logits = np.array([a.logit for a, _ in candidates])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    chosen, seen = [], set()
    for i in np.argsort(-logits, kind="stable"):
        answer, hit = candidates[i]
        key = normalize_answer(answer.text)
        if key in seen:
            continue
        seen.add(key)
        p = hit.passage
        chosen.append(SourcedAnswer(answer.text, float(probs[i]), answer.logit, p.doc_id, p.title, p.path,
                                    p.passage_id, p.text, answer.start, answer.end, p.start + answer.start, hit.rank))
        if len(chosen) == top_k:
            break
    return chosen
