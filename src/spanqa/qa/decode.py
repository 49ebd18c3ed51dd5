"""Start/end logits of all windows -> n-best answer spans per example, and the no-answer decision.

One decoder for evaluation and live requests. A candidate span (start, start + d) with
0 <= d < max_answer_length scores start_logit + end_logit, masked to context tokens (and the start
token's max-context window). The exact top k spans of each window are found without scoring every
pair (`_window_topk`: only the k best starts get their ends scored, a (windows, k, D) band), then
merged per example, vectorized: no Python loop over start x end pairs (HF
`postprocess_qa_predictions` loops over n_best x n_best pairs per window).

By default the candidates are then, as the transformers 4.x question-answering pipeline does,
widened to whole words ("fu" of "fumbles" becomes "fumbles") and candidates with the same text
merged into one answer whose probability is the sum of theirs ("5" and "5½" both read "5½").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from spanqa.qa.squad import Example
from spanqa.qa.windows import Windows


@dataclass(frozen=True)
class DecodeSettings:
    """How spans are chosen."""

    n_best: int = 20
    max_answer_length: int = 30  # in tokens
    null_threshold: float = 0.0  # v2: answer "" when null_score - best_span_score > threshold
    version_2: bool = False
    use_max_context: bool = True
    align_to_words: bool = True  # widen spans to the words they touch
    merge_same_text: bool = True  # one answer per distinct text, probability summed over its spans

    @property
    def pool(self) -> int:
        """Candidates per example before merging: at least 20, so that asking for fewer answers (top_k)
        never changes the best one."""
        return max(self.n_best, MERGE_POOL) if self.merge_same_text else self.n_best


MERGE_POOL = 20


@dataclass
class SpanCandidates:
    """The n best spans of E examples (arrays (E, K); score -inf where fewer than K exist)."""

    window: np.ndarray
    start_token: np.ndarray
    end_token: np.ndarray
    score: np.ndarray
    null_score: np.ndarray  # (E,) min over windows of start_logit[CLS] + end_logit[CLS]

    def first(self, k: int) -> "SpanCandidates":
        return SpanCandidates(self.window[:, :k], self.start_token[:, :k], self.end_token[:, :k],
                              self.score[:, :k], self.null_score)


@dataclass(slots=True)
class Answer:
    """One answer span: character offsets into its context."""

    text: str
    start: int
    end: int
    score: float  # probability (softmax over the n-best, and the null answer for v2)
    logit: float  # start_logit + end_logit (log-sum-exp over the spans merged into this answer)


class Prediction:
    """What the reader says about one example; its n-best `answers` are built on first access."""

    __slots__ = ("id", "context", "_row", "_spans", "no_answer", "_answers")

    def __init__(self, id: str, context: str, row: int, spans: "_Spans", no_answer: bool):
        self.id, self.context, self._row, self._spans, self.no_answer = id, context, row, spans, no_answer
        self._answers: list[Answer] | None = None

    @property
    def null_score(self) -> float:
        return float(self._spans.null_score[self._row])

    @property
    def null_odds(self) -> float:
        """null_score - best span logit; large means "no answer"."""
        return float(self._spans.null_odds[self._row])

    @property
    def null_probability(self) -> float:
        return float(self._spans.null_probability[self._row])

    @property
    def answers(self) -> list[Answer]:
        """n-best spans, best first (empty when no span is possible); built once, on first access."""
        if self._answers is None:
            s, i = self._spans, self._row
            starts, ends = s.char_start[i].tolist(), s.char_end[i].tolist()
            probs, logits = s.probability[i].tolist(), s.logit[i].tolist()
            self._answers = [Answer(self.context[starts[k]:ends[k]], starts[k], ends[k], probs[k], logits[k])
                             for k in range(int(s.count[i]))]
        return self._answers

    @property
    def text(self) -> str:
        """The answer: the best span, or "" for no answer."""
        s, i = self._spans, self._row
        if self.no_answer or s.count[i] == 0:
            return ""
        return self.context[s.char_start[i, 0]:s.char_end[i, 0]]


@dataclass
class _Spans:
    """The decoded n-best of all examples as arrays (E, K)."""

    char_start: np.ndarray
    char_end: np.ndarray
    logit: np.ndarray
    probability: np.ndarray
    count: np.ndarray             # (E,) valid spans per example
    null_score: np.ndarray        # (E,)
    null_odds: np.ndarray         # (E,)
    null_probability: np.ndarray  # (E,)


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
               max_context: np.ndarray | None, example_index: np.ndarray, cls_index: np.ndarray,
               n_examples: int, n_best: int = 20, max_answer_length: int = 30,
               chunk: int = 1024) -> SpanCandidates:
    """Top `n_best` valid spans of each example over all its windows (vectorized)."""
    n_windows, length = start_logits.shape
    k = min(n_best, length * max_answer_length)
    win_score = np.full((n_windows, k), -np.inf, dtype=np.float32)
    win_start = np.zeros((n_windows, k), dtype=np.int64)
    win_end = np.zeros((n_windows, k), dtype=np.int64)
    offsets = np.asarray(offsets)
    is_ctx = offsets[..., 1] >= 0
    last = np.where(is_ctx.any(axis=1), length - 1 - np.argmax(is_ctx[:, ::-1], axis=1), 0)
    order = np.argsort(last, kind="stable")  # chunks of similar extent: columns past it are cut off
    for lo in range(0, n_windows, chunk):
        idx = order[lo:lo + chunk]
        cols = int(last[idx].max()) + 1
        s, st, en = _window_topk(start_logits[idx, :cols], end_logits[idx, :cols], offsets[idx, :cols],
                                 None if max_context is None else np.asarray(max_context)[idx, :cols],
                                 k, max_answer_length)
        got = s.shape[1]
        win_score[idx, :got], win_start[idx, :got], win_end[idx, :got] = s, st, en
    rows = np.arange(n_windows)
    null = start_logits[rows, cls_index] + end_logits[rows, cls_index]
    null_score = np.full(n_examples, np.inf, dtype=np.float32)
    np.minimum.at(null_score, example_index, null.astype(np.float32))
    return _merge_per_example(win_score, win_start, win_end, example_index, n_examples, n_best, null_score)


def _window_topk(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, max_context: np.ndarray | None,
                 k: int, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k spans of each window: scores (W, k) and start/end token indices.

    A span in a window's top k starts at one of the k starts with the best "best span from here"
    score (each better start holds a distinct better span), so only those k starts need their
    max_len ends scored: O(W * L * log D) + O(W * k * D) instead of O(W * L * D).
    """
    s = torch.from_numpy(np.asarray(start, dtype=np.float32))
    e = torch.from_numpy(np.asarray(end, dtype=np.float32))
    offs = torch.from_numpy(offsets)  # callers pass a fresh (fancy-indexed) array, never a read-only memmap
    valid_start = offs[..., 0] >= 0
    if max_context is not None:
        valid_start &= torch.from_numpy(max_context.astype(bool, copy=False))
    s = s.masked_fill(~valid_start, -torch.inf)
    e = e.masked_fill(offs[..., 1] < 0, -torch.inf)
    w, length = s.shape
    e_padded = torch.cat([e, e.new_full((w, max_len - 1), -torch.inf)], dim=1)  # (W, L + D - 1)
    per_start = s + _sliding_max(e_padded, max_len)                               # best span from each start
    k_starts = min(k, length)
    _, starts = per_start.topk(k_starts, dim=1)                                   # (W, k)
    ends = starts[:, :, None] + torch.arange(max_len)                             # (W, k, D)
    band = s.gather(1, starts)[:, :, None] + e_padded.gather(1, ends.reshape(w, -1)).reshape(ends.shape)
    k_out = min(k, k_starts * max_len)
    score, flat = band.reshape(w, -1).topk(k_out, dim=1)                          # sorted, best first
    start_tok = starts.gather(1, flat // max_len)
    end_tok = (start_tok + flat % max_len).clamp(max=length - 1)  # past-the-end only where score is -inf
    return score.numpy(), start_tok.numpy(), end_tok.numpy()


def _sliding_max(x: torch.Tensor, width: int) -> torch.Tensor:
    """m[:, i] = max(x[:, i:i + width]) (doubling: log2(width) passes over x)."""
    m, span = x, 1
    while span * 2 <= width:
        m = torch.maximum(m[:, :-span], m[:, span:])
        span *= 2
    if span < width:
        m = torch.maximum(m[:, :-(width - span)], m[:, width - span:])
    return m


def _merge_per_example(score: np.ndarray, start: np.ndarray, end: np.ndarray, example_index: np.ndarray,
                       n_examples: int, n_best: int, null_score: np.ndarray) -> SpanCandidates:
    """Each example's n best over its windows' top-k lists (sorted merge, no Python loop)."""
    n_windows, k = score.shape
    out = SpanCandidates(window=np.zeros((n_examples, n_best), np.int64),
                         start_token=np.zeros((n_examples, n_best), np.int64),
                         end_token=np.zeros((n_examples, n_best), np.int64),
                         score=np.full((n_examples, n_best), -np.inf, np.float32),
                         null_score=null_score)
    kk = min(k, n_best)
    alone = np.bincount(example_index, minlength=n_examples)[example_index] == 1
    w1 = np.nonzero(alone)[0]  # most examples have one window: its top-k is the example's
    ex1 = example_index[w1]
    out.window[ex1, :kk] = w1[:, None]
    out.start_token[ex1, :kk], out.end_token[ex1, :kk] = start[w1, :kk], end[w1, :kk]
    out.score[ex1, :kk] = score[w1, :kk]
    wm = np.nonzero(~alone)[0]
    if len(wm):
        flat_score = score[wm].ravel()
        flat_example = np.repeat(example_index[wm], k)
        flat_window = np.repeat(wm, k)
        order = np.lexsort((-flat_score, flat_example))  # by example, best first (stable: earlier window wins ties)
        ex_sorted = flat_example[order]
        rank = np.arange(len(order)) - np.searchsorted(ex_sorted, ex_sorted, side="left")
        keep = rank < n_best
        ex, rk, src = ex_sorted[keep], rank[keep], order[keep]
        out.window[ex, rk] = flat_window[src]
        out.start_token[ex, rk] = start[wm].ravel()[src]
        out.end_token[ex, rk] = end[wm].ravel()[src]
        out.score[ex, rk] = flat_score[src]
    return out


def _align_to_words(cand: SpanCandidates, word_start: np.ndarray, offsets: np.ndarray) -> None:
    """Move each span's start back to its word's first token and its end on to its word's last token
    (a few vectorized steps: as many as the longest word has pieces)."""
    w, length = cand.window, word_start.shape[1]
    start = cand.start_token.copy()
    while (move := ~word_start[w, start] & (start > 0)).any():
        start -= move
    end = cand.end_token.copy()
    nxt = np.minimum(end + 1, length - 1)
    while (move := (end < length - 1) & (offsets[w, nxt, 1] >= 0) & ~word_start[w, nxt]).any():
        end += move
        nxt = np.minimum(end + 1, length - 1)
    cand.start_token, cand.end_token = start, end


def _merge_same_text(cand: SpanCandidates, input_ids: np.ndarray) -> None:
    """Candidates of an example with the same token sequence (the same text) become one answer, held
    by the best of them, with logit = logsumexp of theirs (probability = sum); then rank again.

    Vectorized over (E, K, K) pairs: only pairs with equal length and equal first and last token
    have their token sequences compared.
    """
    score = cand.score
    n, k = score.shape
    valid = np.isfinite(score)
    span_len = np.where(valid, cand.end_token - cand.start_token + 1, 0)
    first = np.asarray(input_ids[cand.window, cand.start_token])
    last = np.asarray(input_ids[cand.window, cand.end_token])

    vocab = int(max(first.max(initial=0), last.max(initial=0))) + 1
    summary = (span_len.astype(np.int64) * vocab + first) * vocab + last  # equal text => equal summary
    maybe = (summary[:, :, None] == summary[:, None, :]) & valid[:, :, None] & np.tri(k, k=-1, dtype=bool)
    e, later, earlier = np.nonzero(maybe)  # candidate `later` may repeat the better `earlier`
    same = np.zeros((n, k, k), dtype=bool)
    if len(e):
        offsets = np.arange(span_len[e, later].max())
        length = input_ids.shape[1]

        def tokens(j: np.ndarray) -> np.ndarray:
            at = np.minimum(cand.start_token[e, j][:, None] + offsets, length - 1)
            return np.asarray(input_ids[cand.window[e, j][:, None], at])

        equal = ((tokens(later) == tokens(earlier)) | (offsets >= span_len[e, later][:, None])).all(axis=1)
        same[e[equal], later[equal], earlier[equal]] = True
    holder = np.where(same.any(axis=2), same.argmax(axis=2), np.arange(k))  # the best span with this text
    top = np.where(valid[:, :1], score[:, :1], 0.0).astype(np.float64)
    weight = np.where(valid, np.exp(score - top), 0.0)
    total = (weight[:, :, None] * (holder[:, :, None] == np.arange(k))).sum(axis=1)
    with np.errstate(divide="ignore"):
        merged = np.where(total > 0, np.log(total) + top, -np.inf).astype(np.float32)
    order = np.argsort(-merged, axis=1, kind="stable")
    rows = np.arange(n)[:, None]
    cand.window, cand.start_token, cand.end_token = (a[rows, order] for a in (cand.window, cand.start_token,
                                                                               cand.end_token))
    cand.score = merged[rows, order]


def rescore(predictions: Sequence[Prediction], scores) -> None:
    """Replace the answer and no-answer probabilities of decoded predictions (a calibration):
    `scores(logit (E, K), null_score (E,))` -> (probability (E, K), null_probability (E,)), computed once
    per decoded batch; logits, offsets and the no-answer decision are unchanged."""
    batches = {id(p._spans): p._spans for p in predictions}
    for spans in batches.values():
        probability, null_probability = scores(spans.logit, spans.null_score)
        spans.probability = np.asarray(probability, dtype=np.float64)
        spans.null_probability = np.asarray(null_probability, dtype=np.float64)
    for p in predictions:
        p._answers = None  # built again, with the new scores


def decode(examples: Sequence[Example], windows: Windows, start_logits: np.ndarray, end_logits: np.ndarray,
           settings: DecodeSettings = DecodeSettings()) -> list[Prediction]:
    """Predictions for `examples` from the logits of their `windows` (windows.example_index indexes examples)."""
    offsets = np.asarray(windows.offsets)
    cand = best_spans(start_logits, end_logits, offsets,
                      windows.max_context if settings.use_max_context else None,
                      windows.example_index, windows.cls_index, len(examples),
                      settings.pool, settings.max_answer_length)
    if settings.align_to_words and windows.word_start is not None:
        _align_to_words(cand, np.asarray(windows.word_start), offsets)
    if settings.merge_same_text:
        _merge_same_text(cand, windows.input_ids)
    cand = cand.first(settings.n_best)
    count = np.isfinite(cand.score).sum(axis=1)
    logit = cand.score.astype(np.float64)
    null = cand.null_score.astype(np.float64)
    # probabilities: softmax over the n-best (and the null answer for v2), as HF does
    pool = np.concatenate([logit, null[:, None]], axis=1) if settings.version_2 else logit
    finite = np.isfinite(pool)
    top = np.max(np.where(finite, pool, -np.inf), axis=1, keepdims=True)
    weights = np.where(finite, np.exp(pool - np.where(np.isfinite(top), top, 0.0)), 0.0)
    probability = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)
    null_odds = np.where(count > 0, null - logit[:, 0], -np.inf)
    spans = _Spans(char_start=offsets[cand.window, cand.start_token, 0],
                   char_end=offsets[cand.window, cand.end_token, 1], logit=logit,
                   probability=probability[:, :logit.shape[1]], count=count, null_score=null, null_odds=null_odds,
                   null_probability=probability[:, -1] if settings.version_2 else np.zeros(len(examples)))
    no_answer = settings.version_2 & ((count == 0) | (null_odds > settings.null_threshold))
    return [Prediction(e.id, e.context, i, spans, bool(no_answer[i])) for i, e in enumerate(examples)]
