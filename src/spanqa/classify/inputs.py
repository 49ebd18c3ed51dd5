"""Examples -> model inputs: sentences (or pairs) tokenized once into a memory-mapped table.

Rows are padded to `max_seq_length` on disk and cut to the columns a batch uses when it is drawn
(`data.batches.model_inputs`), so batches of short sentences stay short (dynamic padding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from spanqa.classify.glue import TextExample
from spanqa.data.cache import (
    cache_folder,
    fingerprint_tokenizer,
    is_cached,
    open_cache,
    write_cache,
)

CACHE_FORMAT = 1  # bump when the cached layout changes


@dataclass
class SentenceTable:
    """Model inputs for N sentences or pairs of length L (numpy arrays, possibly memory-mapped)."""

    input_ids: np.ndarray              # (N, L) int32
    attention_mask: np.ndarray         # (N, L) int8
    token_type_ids: np.ndarray | None  # (N, L) int8, None for models without segments
    labels: np.ndarray | None = None   # (N,) int32 label id, or float32 score (regression)

    def __len__(self) -> int:
        return len(self.input_ids)

    @staticmethod
    def concat(parts: Sequence[SentenceTable]) -> SentenceTable:
        return SentenceTable(**{f.name: None if getattr(parts[0], f.name) is None else
                                np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(SentenceTable)})


def label_array(examples: Sequence[TextExample], labels: list[str], regression: bool) -> np.ndarray | None:
    """Label ids (or scores) of the examples; None when any example has no label."""
    if any(e.label is None for e in examples):
        return None
    if regression:
        return np.array([e.label for e in examples], dtype=np.float32)
    index = {name: i for i, name in enumerate(labels)}
    return np.array([index[e.label] for e in examples], dtype=np.int32)


def iter_tables(examples: Sequence[TextExample], tokenizer, max_seq_length: int, labels: list[str],
                regression: bool, batch_size: int = 1000,
                on_batch: Callable[[int], None] | None = None) -> Iterator[SentenceTable]:
    """`SentenceTable`s of `batch_size` examples at a time (longest-first truncation of pairs)."""
    for lo in range(0, len(examples), batch_size):
        batch = examples[lo:lo + batch_size]
        pairs = [e.pair for e in batch] if batch[0].pair is not None else None
        enc = tokenizer([e.text for e in batch], pairs, truncation=True, max_length=max_seq_length,
                        padding="max_length", return_attention_mask=True)
        yield SentenceTable(np.asarray(enc["input_ids"], dtype=np.int32),
                            np.asarray(enc["attention_mask"], dtype=np.int8),
                            np.asarray(enc["token_type_ids"], dtype=np.int8) if "token_type_ids" in enc else None,
                            label_array(batch, labels, regression))
        if on_batch:
            on_batch(len(batch))


def build_table(examples: Sequence[TextExample], tokenizer, max_seq_length: int, labels: list[str] | None = None,
                regression: bool = False) -> SentenceTable:
    """All rows in memory (for small inputs such as `Classifier.predict`)."""
    return SentenceTable.concat(list(iter_tables(examples, tokenizer, max_seq_length, labels or [], regression)))


def fingerprint_examples(examples: Sequence[TextExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.text, e.pair, e.label], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def cached_table(examples: Sequence[TextExample], tokenizer, max_seq_length: int, labels: list[str],
                 regression: bool, cache_dir: str | Path | None = None,
                 on_batch: Callable[[int], None] | None = None) -> SentenceTable:
    """The memory-mapped table of `examples`, tokenized once and reused while data, labels, tokenizer
    and length match."""
    final = cache_folder("sentences", [CACHE_FORMAT, fingerprint_examples(examples), labels, regression,
                                       fingerprint_tokenizer(tokenizer), max_seq_length], cache_dir)
    if not is_cached(final):
        write_cache(final, SentenceTable, iter_tables(examples, tokenizer, max_seq_length, labels, regression,
                                                      on_batch=on_batch))
    elif on_batch:
        on_batch(len(examples))
    return open_cache(final, SentenceTable)
