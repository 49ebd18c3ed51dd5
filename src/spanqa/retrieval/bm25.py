"""BM25 text relevance with bm25s: one tokenizer for the in-process index and the PostgreSQL store."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def bm25_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The BM25 tokens of each text (bm25s with English stop words and stems): the index's and the
    PostgreSQL store's, so that both match the same words."""
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


def bm25_retrieve(retriever, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Passage ids and scores (Q, k) of the k best BM25 matches of each query."""
    return retriever.retrieve(bm25_tokens(queries), k=k, show_progress=False, n_threads=0)


def bm25_index(texts: list[str]):
    """A bm25s index of the passages (built at load time: seconds for 10k passages, nothing to keep in sync)."""
    import bm25s

    retriever = bm25s.BM25()
    if texts:
        retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False),
                        show_progress=False)
    return retriever
