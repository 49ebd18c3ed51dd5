"""Retrieve, then read: answers from a document collection, with their sources.

The retrieved passages of all questions are read in one batched pass with the shared decoder.
Answers are ranked across passages by span logit minus the passage's no-answer logit (a reader
trained with retrieved wrong passages as unanswerable examples, `spanqa train --negatives N`
after Clark & Gardner 2018, learns to raise that no-answer score on passages without the answer;
a softmax within each passage would put every passage on its own scale) plus RETRIEVAL_WEIGHT x
the passage's retrieval relevance in [0, 1] (BERTserini-style fusion: the retriever knows which
passage is on topic better than a small reader does). The reported score is a softmax of that
ranking score over all candidate spans of the question, so it is comparable across passages.

A reader with a calibration (`spanqa evaluate --calibrate`) instead ranks answers across passages by
their calibrated probability of being right (each passage read on its own: P(exact match) of the span,
times 1 - P(no answer) for v2 readers), and that probability is the reported score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from spanqa.qa.metrics import normalize_answer
from spanqa.qa.reader import Reader
from spanqa.qa.squad import Example
from spanqa.retrieval.bm25 import bm25_index, bm25_retrieve
from spanqa.retrieval.store import DocumentStore

# The best of 0/1/2/4/8/16 on dev-v1.1 questions 5000-5499 (F1 of retrieve+read with
# runs/open-reader: 44.6, 47.8, 49.3, 51.6, 53.8, 53.9); bench/open_squad.py reports questions 0-999.
RETRIEVAL_WEIGHT = 16.0


@dataclass(frozen=True)
class SourcedAnswer:
    text: str
    score: float             # calibrated P(right) if the reader has a calibration, else a softmax over all candidates
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


def ask_collection(reader: Reader, index: DocumentStore, question: str, top_k: int = 1, passages: int = 5,
                   mode: str = "hybrid", allow_no_answer: bool = True) -> list[SourcedAnswer]:
    """The `top_k` best answers to `question` from the `passages` best passages of `index` (any
    DocumentStore: an index folder loaded in process, or PostgreSQL);
    [] when a v2 reader says no passage holds an answer (unless `allow_no_answer` is False)."""
    return ask_collection_many(reader, index, [question], top_k, passages, mode, allow_no_answer)[0]


def ask_collection_many(reader: Reader, index: DocumentStore, questions: Sequence[str], top_k: int = 1, passages: int = 5,
                        mode: str = "hybrid", allow_no_answer: bool = True) -> list[list[SourcedAnswer]]:
    """`ask_collection` for many questions: one retrieval call and one batched reading pass."""
    hits = index.search_many(questions, passages, mode)
    examples = [Example(f"{q}:{r}", question, hit.passage.text)
                for q, (question, row) in enumerate(zip(questions, hits)) for r, hit in enumerate(row)]
    predictions = iter(reader.predict(examples))
    out = []
    for row in hits:
        read = [(next(predictions), hit) for hit in row]
        if allow_no_answer and read and all(p.no_answer for p, _ in read):
            out.append([])  # a v2 reader (or its calibrated threshold) finds the answer in no passage
            continue
        if reader.settings.calibration is not None:  # scores are already P(right), comparable across passages
            out.append(_best_distinct([(a, a.score, hit) for p, hit in read for a in p.answers], top_k, True))
            continue
        # hit.relevance: the store's [0, 1] scale, the same for every store and mode
        out.append(_best_distinct([(a, a.logit - p.null_score + RETRIEVAL_WEIGHT * hit.relevance, hit)
                                   for p, hit in read for a in p.answers], top_k))
    return out


def hard_negatives(examples: Sequence[Example], per_question: int = 1) -> list[Example]:
    """For each question, the best BM25 matches among the other contexts that do not contain any of its
    answers, as unanswerable examples: what a reader of retrieved passages must learn to reject."""
    contexts = list(dict.fromkeys(e.context for e in examples))
    if len(contexts) < 2:
        return []
    ids, _ = bm25_retrieve(bm25_index(contexts), [e.question for e in examples], min(len(contexts), per_question + 5))
    out = []
    for e, row in zip(examples, ids):
        wrong = [contexts[i] for i in row if contexts[i] != e.context
                 and not any(t and t in contexts[i] for t in e.answer_texts)]
        out += [Example(f"{e.id}-neg{k}", e.question, c, title=e.title, is_impossible=True)
                for k, c in enumerate(wrong[:per_question])]
    return out


def _best_distinct(candidates: list, top_k: int, probabilities: bool = False) -> list[SourcedAnswer]:
    """The top_k (answer, ranking score, hit) candidates, one per distinct (normalized) answer text;
    scores softmaxed over all candidates (kept as they are when they already are `probabilities`)."""
    if not candidates:
        return []
    logits = np.array([score for _, score, _ in candidates])
    if probabilities:
        probs = logits
    else:
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
    chosen, seen = [], set()
    for i in np.argsort(-logits, kind="stable"):
        answer, _, hit = candidates[i]
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
