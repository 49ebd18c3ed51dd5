"""Examples -> model windows: tokenize question + context with a sliding window over long contexts.

Each window keeps a character offset map (-1 outside the context), the max-context flag of every
token (the token's best window, as in the original BERT), and start/end labels (the CLS index when
the answer is absent from the window or the question is unanswerable). Questions and contexts are
tokenized separately by the fast tokenizer (each distinct context once) and cut into overlapping
windows here (`doc_stride` tokens shared, as HF's `return_overflowing_tokens` does); labelling and the
max-context rule are vectorized with numpy rather than the per-token Python loops of HF
`prepare_train_features`.

Windows are produced in batches and written to an on-disk cache of memory-mapped arrays keyed by
data + tokenizer + settings, so peak memory does not grow with the data size.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from spanqa.data.cache import (
    cache_folder,
    cache_summary,
    file_sha256,
    fingerprint_tokenizer,
    is_cached,
    open_cache,
    write_cache,
)
from spanqa.qa.squad import Example, ExampleStream, raise_problems

CACHE_FORMAT = 2  # bump when the cached layout or labelling changes


@dataclass(frozen=True)
class WindowSettings:
    """How question + context become fixed-length model inputs."""

    max_seq_length: int = 384
    doc_stride: int = 128  # tokens shared by consecutive windows (HF `stride`)
    max_query_length: int = 64


@dataclass
class Windows:
    """Model inputs for N windows of length L (numpy arrays, possibly memory-mapped)."""

    input_ids: np.ndarray        # (N, L) int32
    attention_mask: np.ndarray   # (N, L) int8
    token_type_ids: np.ndarray | None  # (N, L) int8, None for models without segments
    offsets: np.ndarray          # (N, L, 2) int32 character span in the context, -1 elsewhere
    max_context: np.ndarray      # (N, L) bool: this window is the token's best window
    example_index: np.ndarray    # (N,) int32 index of the window's example
    start_positions: np.ndarray  # (N,) int32 label, cls_index when no answer in the window
    end_positions: np.ndarray    # (N,) int32
    cls_index: np.ndarray        # (N,) int32 position of the CLS token
    word_start: np.ndarray | None = None  # (N, L) bool: context token starting a word (or the window's context)

    def __len__(self) -> int:
        return len(self.input_ids)

    @staticmethod
    def concat(parts: Sequence["Windows"]) -> "Windows":
        return Windows(**{f.name: None if getattr(parts[0], f.name) is None else
                          np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Windows)})


class WindowError(ValueError):
    """Settings that cannot work with this tokenizer/model."""


def check_settings(tokenizer, settings: WindowSettings, model_max_positions: int | None = None) -> None:
    """Raise `WindowError` for settings that cannot produce valid windows."""
    if not getattr(tokenizer, "is_fast", False):
        raise WindowError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: character "
                          "offsets are needed to map answers; use a model with tokenizer.json")
    limit = model_max_positions or getattr(tokenizer, "model_max_length", None)
    if limit and limit < 100_000 and settings.max_seq_length > limit:
        raise WindowError(f"max_seq_length {settings.max_seq_length} is larger than the model allows ({limit})")
    room = settings.max_seq_length - settings.max_query_length - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= 0:
        raise WindowError(f"max_query_length {settings.max_query_length} leaves no room for the context "
                          f"in max_seq_length {settings.max_seq_length}")
    if not 0 <= settings.doc_stride < room:
        raise WindowError(f"doc_stride {settings.doc_stride} must be >= 0 and < the context room of a window "
                          f"({room} = max_seq_length - max_query_length - special tokens)")


def iter_windows(examples: Iterable[Example], tokenizer, settings: WindowSettings,
                 batch_size: int = 1000, on_batch: Callable[[int], None] | None = None) -> Iterator[Windows]:
    """Yield `Windows` for `examples`, `batch_size` examples at a time (bounded memory)."""
    check_settings(tokenizer, settings)
    encoder = WindowEncoder(tokenizer, settings)
    examples, done = iter(examples), 0
    while batch := list(islice(examples, batch_size)):
        yield encoder(batch, done)
        done += len(batch)
        if on_batch:
            on_batch(len(batch))


def build_windows(examples: Sequence[Example], tokenizer, settings: WindowSettings) -> Windows:
    """All windows of `examples` in memory (for small inputs such as live requests)."""
    return Windows.concat(list(iter_windows(examples, tokenizer, settings)))


def _backend_copy(tokenizer):
    """A private copy of the fast tokenizer's Rust backend, with no truncation or padding."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


@dataclass(frozen=True)
class _Template:
    """Special tokens around the two segments: prefix A middle B suffix (A = question for BERT/RoBERTa)."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    type_ids: tuple[int, ...]  # types of: prefix tokens..., A, middle..., B, suffix...

    @staticmethod
    def of(backend) -> "_Template":
        enc = backend.encode("a", "b", add_special_tokens=True)
        seq = enc.sequence_ids
        first = [i for i, s in enumerate(seq) if s == 0]
        second = [i for i, s in enumerate(seq) if s == 1]
        ids, types = enc.ids, enc.type_ids
        prefix, middle, suffix = ids[:first[0]], ids[first[-1] + 1:second[0]], ids[second[-1] + 1:]
        type_ids = (*types[:first[0]], types[first[0]], *types[first[-1] + 1:second[0]], types[second[0]],
                    *types[second[-1] + 1:])
        return _Template(tuple(prefix), tuple(middle), tuple(suffix), tuple(type_ids))

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


class WindowEncoder:
    """Tokenizes each distinct context and question once, then cuts windows with numpy.

    SQuAD asks ~5 questions per paragraph; tokenizing (question, context) pairs, as HF run_qa does,
    tokenizes every paragraph ~5 times. Segments are tokenized independently by the tokenizer's own
    pair encoding too, so the windows are identical to its `return_overflowing_tokens` output
    (a test checks this); the template of special tokens comes from the tokenizer itself.

    With `cache_contexts` > 0 the encoded contexts of the last that many distinct contexts are
    kept across calls (LRU), so a reader asked question after question about one passage (chat,
    successive `answer_many` calls, server batches) tokenizes it once. A context's encoding
    depends only on the text and this encoder's tokenizer copy, so cached and fresh windows are
    identical. Thread-safe: the server reads from more than one thread.
    """

    def __init__(self, tokenizer, settings: WindowSettings, cache_contexts: int = 0):
        self.tokenizer, self.settings = tokenizer, settings
        self.pad_right = tokenizer.padding_side == "right"
        # copying the backend serializes the whole vocabulary (~50 ms for MiniLM): once per encoder
        self.backend = _backend_copy(tokenizer)
        self.template = _Template.of(self.backend)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names
        self.cache_contexts = cache_contexts
        self._contexts: OrderedDict[str, _EncodedContext] = OrderedDict()
        self._lock = threading.Lock()

    def encode_contexts(self, contexts: Sequence[str]) -> list["_EncodedContext"]:
        """Token ids, character offsets and word starts of each context (from the cache when held)."""
        found: dict[str, _EncodedContext] = {}
        if self.cache_contexts:
            with self._lock:
                for c in contexts:
                    if (hit := self._contexts.get(c)) is not None:
                        self._contexts.move_to_end(c)
                        found[c] = hit
        missing = [c for c in dict.fromkeys(contexts) if c not in found]
        if missing:
            for c, enc in zip(missing, self.backend.encode_batch(missing, add_special_tokens=False)):
                found[c] = _EncodedContext.of(enc)
            if self.cache_contexts:
                with self._lock:
                    self._contexts.update((c, found[c]) for c in missing)
                    while len(self._contexts) > self.cache_contexts:
                        self._contexts.popitem(last=False)
        return [found[c] for c in contexts]

    def clear(self) -> None:
        """Forget the cached contexts."""
        with self._lock:
            self._contexts.clear()

    def __call__(self, batch: Sequence[Example], first_index: int = 0) -> Windows:
        length, stride = self.settings.max_seq_length, self.settings.doc_stride
        contexts = list(dict.fromkeys(e.context for e in batch))
        context_row = {c: i for i, c in enumerate(contexts)}
        encoded = self.encode_contexts(contexts)
        c_ids = [e.ids for e in encoded]
        c_offsets = [e.offsets for e in encoded]
        c_word_start = [e.word_start for e in encoded]
        q_ids = [e.ids[:self.settings.max_query_length] for e in
                 self.backend.encode_batch([e.question.lstrip() for e in batch], add_special_tokens=False)]

        plan = []  # (example, question ids, context row, context token start, end)
        for i, (e, q) in enumerate(zip(batch, q_ids)):
            c = context_row[e.context]
            n_ctx = len(c_ids[c])
            room = length - len(q) - self.template.n_special
            start = 0
            while True:
                plan.append((i, q, c, start, min(start + room, n_ctx)))
                if start + room >= n_ctx:
                    break
                start += room - stride
        return self._assemble(batch, plan, c_ids, c_offsets, c_word_start, first_index)

    def _assemble(self, batch, plan, c_ids, c_offsets, c_word_start, first_index: int) -> Windows:
        length, t = self.settings.max_seq_length, self.template
        n = len(plan)
        input_ids = np.full((n, length), self.pad_id, dtype=np.int32)
        type_ids = np.zeros((n, length), dtype=np.int8)
        attention = np.zeros((n, length), dtype=np.int8)
        offsets = np.full((n, length, 2), -1, dtype=np.int32)
        is_context = np.zeros((n, length), dtype=bool)
        word_start = np.zeros((n, length), dtype=bool)
        sample = np.empty(n, dtype=np.int64)
        for r, (i, q, c, a, b) in enumerate(plan):
            ctx = c_ids[c][a:b]
            first, second = (q, ctx) if self.pad_right else (ctx, q)
            pieces = (t.prefix, first, t.middle, second, t.suffix)
            sizes = [len(p) for p in pieces]
            total = sum(sizes)
            pos = 0 if self.pad_right else length - total  # left padding puts the pad first
            row = np.concatenate([np.asarray(p, dtype=np.int32) for p in pieces])
            input_ids[r, pos:pos + total] = row
            attention[r, pos:pos + total] = 1
            if self.uses_token_types:
                type_ids[r, pos:pos + total] = np.repeat(t.type_ids, _type_repeats(sizes))
            c_at = pos + sizes[0] + (sizes[1] + sizes[2] if self.pad_right else 0)
            offsets[r, c_at:c_at + len(ctx)] = c_offsets[c][a:b]
            is_context[r, c_at:c_at + len(ctx)] = True
            word_start[r, c_at:c_at + len(ctx)] = c_word_start[c][a:b]
            word_start[r, c_at] = len(ctx) > 0  # a word cut by the window edge starts here
            sample[r] = i
        cls_index = _cls_positions(input_ids, self.tokenizer)
        starts, ends = _labels(batch, sample, offsets, is_context, cls_index)
        return Windows(input_ids=input_ids, attention_mask=attention,
                       token_type_ids=type_ids if self.uses_token_types else None, offsets=offsets,
                       max_context=_max_context(sample, offsets, is_context),
                       example_index=(sample + first_index).astype(np.int32),
                       start_positions=starts, end_positions=ends, cls_index=cls_index, word_start=word_start)


@dataclass(frozen=True)
class _EncodedContext:
    """One context's tokens (read-only arrays: cached ones are shared between calls)."""

    ids: np.ndarray         # (T,) int32
    offsets: np.ndarray     # (T, 2) int32 character span of each token
    word_start: np.ndarray  # (T,) bool

    @staticmethod
    def of(encoding) -> "_EncodedContext":
        arrays = (np.array(encoding.ids, dtype=np.int32), np.array(encoding.offsets, dtype=np.int32).reshape(-1, 2),
                  _word_starts(encoding.word_ids))
        for a in arrays:
            a.flags.writeable = False
        return _EncodedContext(*arrays)


def _word_starts(word_ids: list[int | None]) -> np.ndarray:
    """True at each token whose word (the tokenizer's pre-tokenized word) differs from the previous token's."""
    ids = np.array([-1 if w is None else w for w in word_ids], dtype=np.int64)
    return np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, dtype=bool)


def _type_repeats(sizes: list[int]) -> list[int]:
    """Repeat counts matching `_Template.type_ids`: 1 per special token, segment sizes for A and B."""
    prefix, a, middle, b, suffix = sizes
    return [1] * prefix + [a] + [1] * middle + [b] + [1] * suffix


def _cls_positions(input_ids: np.ndarray, tokenizer) -> np.ndarray:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    is_cls = input_ids == cls_id
    return np.where(is_cls.any(axis=1), is_cls.argmax(axis=1), 0).astype(np.int32)


def _labels(batch: Sequence[Example], sample: np.ndarray, offsets: np.ndarray,
            is_context: np.ndarray, cls_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start/end token of the first gold answer in each window; CLS when it is not inside."""
    has = np.array([e.has_answer for e in batch], dtype=bool)[sample]
    s_char = np.array([e.answer_starts[0] if e.has_answer else -1 for e in batch], dtype=np.int64)[sample]
    e_char = np.array([e.answer_starts[0] + len(e.answer_texts[0]) if e.has_answer else -1
                       for e in batch], dtype=np.int64)[sample]
    tok_start, tok_end = offsets[..., 0], offsets[..., 1]
    length = offsets.shape[1]
    # The answer is inside the window when the window's context spans [s_char, e_char).
    ctx_lo = np.where(is_context, tok_start, np.iinfo(np.int32).max).min(axis=1)
    ctx_hi = np.where(is_context, tok_end, -1).max(axis=1)
    inside = has & (ctx_lo <= s_char) & (ctx_hi >= e_char)
    # start: last context token starting at or before s_char; end: first context token ending at or after e_char.
    starts_ok = is_context & (tok_start <= s_char[:, None])
    last_start = length - 1 - np.argmax(starts_ok[:, ::-1], axis=1)
    first_end = np.argmax(is_context & (tok_end >= e_char[:, None]), axis=1)
    starts = np.where(inside, last_start, cls_index).astype(np.int32)
    ends = np.where(inside, first_end, cls_index).astype(np.int32)
    return starts, ends


def _max_context(sample: np.ndarray, offsets: np.ndarray, is_context: np.ndarray) -> np.ndarray:
    """(N, L) True where the window is the token's best window among the windows sharing it.

    The score of a token in a window is min(left context, right context) + 0.01 * window context
    length (original BERT `_check_is_max_context`); ties go to the earlier window.
    """
    out = is_context.copy()  # a token seen by one window only is max-context there
    shared = np.bincount(sample)[sample] > 1
    if not shared.any():
        return out
    out[shared] = False
    n_ctx = is_context.sum(axis=1)
    left = np.cumsum(is_context, axis=1) - 1
    score = np.minimum(left, n_ctx[:, None] - 1 - left) + 0.01 * n_ctx[:, None]
    w, t = np.nonzero(is_context & shared[:, None])
    ex, cs, ce = sample[w], offsets[w, t, 0], offsets[w, t, 1]
    order = np.lexsort((w, -score[w, t], ce, cs, ex))  # group by token, best window first
    key = np.stack([ex[order], cs[order], ce[order]], axis=1)
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (key[1:] != key[:-1]).any(axis=1)
    group = np.cumsum(new_group) - 1
    best_window = w[order][new_group][group]
    sel = w[order] == best_window
    out[w[order][sel], t[order][sel]] = True
    return out


# --- on-disk cache -----------------------------------------------------------------------------

def fingerprint_examples(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.question, e.context, e.answer_texts, e.answer_starts],
                            ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def cached_windows(examples: Sequence[Example], tokenizer, settings: WindowSettings,
                   cache_dir: str | Path | None = None, batch_size: int = 1000,
                   on_batch: Callable[[int], None] | None = None) -> Windows:
    """Memory-mapped windows of `examples`, built once and reused while data/tokenizer/settings match."""
    final = cache_folder("windows", [CACHE_FORMAT, fingerprint_examples(examples), fingerprint_tokenizer(tokenizer),
                                     asdict(settings)], cache_dir)
    if not is_cached(final):
        write_cache(final, Windows, iter_windows(examples, tokenizer, settings, batch_size, on_batch))
    elif on_batch:
        on_batch(len(examples))
    return open_cache(final, Windows)


def streamed_windows(stream: ExampleStream, tokenizer, settings: WindowSettings, limit: int | None = None,
                     cache_dir: str | Path | None = None, batch_size: int = 1000,
                     on_batch: Callable[[int], None] | None = None) -> tuple[Windows, dict[str, Any]]:
    """Windows of a data file's first `limit` (default: all) valid examples, and what the file held
    (`examples`, `unanswerable`, `version_2`).

    The file is read, validated and windowed one batch at a time, so memory does not grow with its
    size; the windows are cached under the file's bytes + loader options + tokenizer + settings. A file
    with problems raises `DataError` and caches nothing.
    """
    final = cache_folder("windows", [CACHE_FORMAT, file_sha256(stream.path), stream.check.fix_offsets,
                                     stream.check.require_answers, limit, fingerprint_tokenizer(tokenizer),
                                     asdict(settings)], cache_dir)
    built = not is_cached(final)
    if built:
        def summary() -> dict[str, Any]:
            raise_problems(stream.source, stream.problems)
            return {"examples": stream.count, "unanswerable": stream.unanswerable, "version_2": stream.version_2}

        write_cache(final, Windows, iter_windows(islice(stream, limit), tokenizer, settings, batch_size, on_batch),
                    summary)
    held = cache_summary(final)
    if on_batch and not built:
        on_batch(held["examples"])
    return open_cache(final, Windows), held
