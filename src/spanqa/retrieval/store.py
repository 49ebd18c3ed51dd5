"""The document-store interface: what every passage store (in-process index, PostgreSQL) offers.

Reading files, splitting passages and embedding stay in spanqa; a store owns persistence and search.
A document is named by its key (path, doc_id), as `spanqa index --add` already names it.

Scores, the same in every store (so a store can be swapped without changing any number):
  - text:   BM25 (Lucene variant, k1 = 1.5, b = 0.75, bm25s tokens: lowercased, English stop words
            removed, Snowball-stemmed) over the passage's title and text;
  - dense:  cosine similarity of unit-length embeddings;
  - hybrid: the equal-weight mean of each retriever's min-max normalised score over its pool of
            HYBRID_POOL passages (a passage outside one pool gets 0 from it), in [0, 1].
`Hit.relevance` is the one scale answer ranking uses, whatever the store and mode: in [0, 1], the
hybrid score itself, or the min-max normalised text or dense score over the returned hits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from spanqa.errors import CollectionError

from .passages import Passage, PassageSettings

MODES = ("bm25", "dense", "hybrid")
HYBRID_POOL = 100  # passages each retriever contributes to hybrid ranking
BM25_K1, BM25_B = 1.5, 0.75  # bm25s defaults, which the in-process index uses

DocKey = tuple[str, str]  # (path, doc_id)


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float       # the mode's own score (BM25, cosine or hybrid), see the module docstring
    rank: int          # 0 = best
    relevance: float   # in [0, 1], comparable across stores and modes


class EmbedderLike(Protocol):
    """What a store needs of an embedding model: its identity (Embedder has these)."""

    name: str
    fingerprint: str
    max_length: int


@runtime_checkable
class DocumentStore(Protocol):
    """Passages with their embeddings; text, dense and hybrid search; writes are atomic."""

    def info(self) -> dict:
        """embedding_model, embedding_fingerprint, embedding_max_length, passages (settings), documents,
        passage_count; only the last two while the store is empty."""
        ...

    def count(self) -> int:
        """Number of passages."""
        ...

    def documents(self) -> set[DocKey]:
        """Keys of the documents in the store."""
        ...

    def check_embedder(self, embedder: EmbedderLike) -> None:
        """Raise CollectionError unless `embedder` is the model whose vectors the store holds."""
        ...

    def add(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
            settings: PassageSettings | None = None) -> None:
        """Add new documents' passages (row i of `embeddings` is passage i's); all or nothing.
        A document already in the store is refused (use `update`)."""
        ...

    def update(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
               settings: PassageSettings | None = None) -> None:
        """Replace the documents of `passages` (added when new) in one atomic step."""
        ...

    def delete(self, keys: Iterable[DocKey]) -> int:
        """Remove these documents atomically; the number of passages removed."""
        ...

    def retrieve(self, queries: Sequence[str], vectors: np.ndarray | None, k: int = 5,
                 mode: str = "hybrid") -> list[list[Hit]]:
        """The k best passages of each query, best first; `vectors` (Q, dim) are the queries'
        embeddings, needed by dense and hybrid."""
        ...

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
        """`retrieve` with the queries embedded by the store's own embedding model (checked against
        the recorded fingerprint when first loaded)."""
        ...

    def describe(self) -> dict:
        """passages, documents, embedding_model: what /health shows."""
        ...


def check_mode(mode: str) -> None:
    """Raise CollectionError for an unknown search mode."""
    if mode not in MODES:
        raise CollectionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def check_vectors(mode: str, vectors: np.ndarray | None, queries: Sequence[str]) -> None:
    """Raise CollectionError when dense or hybrid search lacks one query vector per query."""
    if mode != "bm25" and (vectors is None or len(vectors) != len(queries)):
        raise CollectionError(f"{mode} search needs one query vector per query")


def relevance(scores: Sequence[float], mode: str, floor: float | None = None) -> list[float]:
    """Scores on [0, 1]: hybrid scores already are; BM25 and cosine scores are min-max scaled (from
    `floor` instead of the lowest score when given)."""
    if mode == "hybrid" or not scores:
        return [float(s) for s in scores]
    lo, hi = min(scores) if floor is None else floor, max(scores)
    return [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]


def hits(passages: Sequence[Passage], scores: Sequence[float], mode: str, floor: float | None = None) -> list[Hit]:
    """Hits of one query, best first, with their relevance."""
    rel = relevance(scores, mode, floor)
    return [Hit(p, float(s), r, v) for r, (p, s, v) in enumerate(zip(passages, scores, rel))]


def embedding_mismatch(name: str, fingerprint: str, embedder: EmbedderLike, what: str = "index") -> str:
    """The message for a store asked to mix vectors of two models (the file index says the same)."""
    return (f"this {what} was built with embedding model {name!r} (weights {fingerprint}), "
            f"not {embedder.name!r} (weights {embedder.fingerprint}): dense search would "
            f"compare unrelated vectors; use {name!r} or rebuild the {what}")
