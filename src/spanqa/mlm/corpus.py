"""Raw text -> packed sequences for masked-LM training, through the memory-mapped cache.

Documents are tokenized without special tokens and concatenated, a `[SEP]` between documents, then
cut into sequences of `[CLS] + (L - 2) tokens + [SEP]`, packed across document boundaries as BERT
and run_mlm.py do (no padding is wasted). Each token records whether it starts a word, for
whole-word masking. The corpus is read one document at a time and written in batches, so memory
does not grow with it; the cache is keyed by the files' bytes, the tokenizer and the length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from spanqa.data.cache import (cache_folder, cache_summary, file_sha256, fingerprint_tokenizer, is_cached,
                               open_cache, write_cache)
from spanqa.data.documents import CollectionError, document_files, iter_documents

CORPUS_FORMAT = 1  # bump when packing changes


@dataclass
class Sequences:
    """N packed sequences of length L (numpy arrays, possibly memory-mapped)."""

    input_ids: np.ndarray        # (N, L) int32: [CLS] tokens... [SEP] (the last one may be padded)
    attention_mask: np.ndarray   # (N, L) int8
    word_start: np.ndarray       # (N, L) bool: the token starts a word (special tokens: False)
    token_type_ids: np.ndarray | None = None  # always None: one segment; here for `model_inputs`

    def __len__(self) -> int:
        return len(self.input_ids)


def packed_sequences(paths: list[str | Path], tokenizer, max_seq_length: int = 128, field: str = "text",
                     cache_dir: str | Path | None = None, on_document: Callable[[int], None] | None = None
                     ) -> tuple[Sequences, dict]:
    """The corpus packed into sequences (cached), and what it held (`documents`, `tokens`)."""
    if max_seq_length < 8:
        raise ValueError("max_seq_length must be >= 8 for masked-LM sequences")
    files = list(document_files(paths))  # raises CollectionError naming a missing or unsupported file
    identity = [CORPUS_FORMAT, [(str(f), _sha256(f)) for f in files], field,
                fingerprint_tokenizer(tokenizer), max_seq_length]
    final = cache_folder("mlm", identity, cache_dir)
    if not is_cached(final):
        counts = {"documents": 0, "tokens": 0}

        def summary() -> dict:
            if not counts["tokens"]:
                raise CollectionError(f"{', '.join(map(str, paths))}: the corpus has no text to pretrain on")
            return counts

        write_cache(final, Sequences, _pack(iter_documents(files, field), tokenizer, max_seq_length, counts,
                                            on_document), summary)
    return open_cache(final, Sequences), cache_summary(final)


def _pack(documents: Iterable, tokenizer, length: int, counts: dict, on_document, batch_docs: int = 256,
          batch_rows: int = 1024) -> Iterator[Sequences]:
    """Token stream of all documents, cut into rows; yields `Sequences` of up to `batch_rows` rows."""
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls is None or sep is None or pad is None:
        raise CollectionError("the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT-style vocabulary)")
    body = length - 2
    ids_buf: list[np.ndarray] = []
    start_buf: list[np.ndarray] = []
    held = 0
    rows: list[tuple[np.ndarray, np.ndarray]] = []

    def cut(final: bool) -> None:
        nonlocal held, ids_buf, start_buf
        if not held:
            return
        ids, starts = np.concatenate(ids_buf), np.concatenate(start_buf)
        n_full = len(ids) // body
        for r in range(n_full):
            rows.append((ids[r * body:(r + 1) * body], starts[r * body:(r + 1) * body]))
        rest = len(ids) - n_full * body
        ids_buf, start_buf = ([ids[-rest:]], [starts[-rest:]]) if rest else ([], [])
        held = rest
        if final and rest:
            rows.append((ids[-rest:], starts[-rest:]))
            ids_buf, start_buf, held = [], [], 0

    def flush() -> Iterator[Sequences]:
        while len(rows) >= batch_rows:
            yield _rows_to_table(rows[:batch_rows], length, cls, sep, pad)
            del rows[:batch_rows]

    batch: list[str] = []
    for doc in _with_end(documents):
        if doc is not None and doc.text.strip():
            batch.append(doc.text)
        if batch and (doc is None or len(batch) == batch_docs):
            # whole documents, cut into rows below: longer than the model allows is expected here
            encodings = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)
            for i, ids in enumerate(encodings["input_ids"]):
                if not ids:
                    continue
                word_ids = encodings.word_ids(i)
                starts = np.array([w is not None and (j == 0 or word_ids[j - 1] != w) for j, w in enumerate(word_ids)])
                # a [SEP] ends each document, so the model sees where one text stops and the next begins
                ids_buf.append(np.append(np.asarray(ids, dtype=np.int32), sep))
                start_buf.append(np.append(starts, False))
                held += len(ids) + 1
                counts["tokens"] += len(ids)
            counts["documents"] += len(batch)
            if on_document:
                on_document(len(batch))
            batch = []
            if held >= body * 64:
                cut(final=False)
            yield from flush()
    cut(final=True)
    if rows:
        yield _rows_to_table(rows, length, cls, sep, pad)


def _with_end(items: Iterable) -> Iterator:
    yield from items
    yield None


def _rows_to_table(rows: list[tuple[np.ndarray, np.ndarray]], length: int, cls: int, sep: int, pad: int) -> Sequences:
    n = len(rows)
    input_ids = np.full((n, length), pad, dtype=np.int32)
    attention = np.zeros((n, length), dtype=np.int8)
    word_start = np.zeros((n, length), dtype=bool)
    for r, (ids, starts) in enumerate(rows):
        k = len(ids)
        input_ids[r, 0], input_ids[r, 1:k + 1], input_ids[r, k + 1] = cls, ids, sep
        attention[r, :k + 2] = 1
        word_start[r, 1:k + 1] = starts
        word_start[r, 1] = True  # a row cut inside a word: its first token opens the row's first "word"
    return Sequences(input_ids, attention, word_start)


def _sha256(path) -> str:
    """The file's sha256 (the cache key), or a CollectionError naming a file that cannot be read."""
    try:
        return file_sha256(path)
    except OSError as e:
        raise CollectionError(f"{path}: cannot read it ({e.strerror or e}); fix its permissions or leave it out "
                              "of the corpus") from None
