"""Start/end logits of all windows -> n-best answer spans per example, and the no-answer decision.

One decoder for evaluation and live requests. Every candidate span (start, start + d) with
0 <= d < max_answer_length is scored at once as start_logit + end_logit over a (windows, L, D)
band tensor, masked to context tokens (and the start token's max-context window), then reduced with
top-k per window and a vectorized merge per example: no Python loop over start x end pairs
(HF `postprocess_qa_predictions` loops over n_best x n_best pairs per window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .data import Example
from .windows import Windows


@dataclass(frozen=True)
class DecodeSettings:
    """How spans are chosen."""

    n_best: int = 20
    max_answer_length: int = 30  # in tokens
    null_threshold: float = 0.0  # v2: answer "" when null_score - best_span_score > threshold
    version_2: bool = False
    use_max_context: bool = True


@dataclass
class SpanCandidates:
    """The n best spans of E examples (arrays (E, K); score -inf where fewer than K exist)."""

    window: np.ndarray
    start_token: np.ndarray
    end_token: np.ndarray
    score: np.ndarray
    null_score: np.ndarray  # (E,) min over windows of start_logit[CLS] + end_logit[CLS]


@dataclass
class Answer:
    """One answer span: character offsets into its context."""

    text: str
    start: int
    end: int
    score: float  # probability (softmax over the n-best, and the null answer for v2)
    logit: float  # start_logit + end_logit


@dataclass
class Prediction:
    """What the reader says about one example."""

    id: str
    answers: list[Answer]  # n-best, best first (empty when no span is possible)
    null_score: float
    null_odds: float  # null_score - best span logit; large means "no answer"
    no_answer: bool = False
    null_probability: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "" if self.no_answer or not self.answers else self.answers[0].text


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
    for lo in range(0, n_windows, chunk):
        hi = min(lo + chunk, n_windows)
        s, st, en = _window_topk(start_logits[lo:hi], end_logits[lo:hi], offsets[lo:hi],
                                 None if max_context is None else max_context[lo:hi], k, max_answer_length)
        win_score[lo:hi], win_start[lo:hi], win_end[lo:hi] = s, st, en
    rows = np.arange(n_windows)
    null = start_logits[rows, cls_index] + end_logits[rows, cls_index]
    null_score = np.full(n_examples, np.inf, dtype=np.float32)
    np.minimum.at(null_score, example_index, null.astype(np.float32))
    return _merge_per_example(win_score, win_start, win_end, example_index, n_examples, n_best, null_score)


def _window_topk(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, max_context: np.ndarray | None,
                 k: int, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k spans of each window: scores (W, k) and start/end token indices."""
    s = torch.from_numpy(np.asarray(start, dtype=np.float32))
    e = torch.from_numpy(np.asarray(end, dtype=np.float32))
    offs = torch.from_numpy(np.array(offsets))  # a copy: memory-mapped caches are read-only
    valid_start = offs[..., 0] >= 0
    if max_context is not None:
        valid_start &= torch.from_numpy(np.array(max_context, dtype=bool))
    s = s.masked_fill(~valid_start, -torch.inf)
    e = e.masked_fill(offs[..., 1] < 0, -torch.inf)
    w, length = s.shape
    e_padded = torch.cat([e, e.new_full((w, max_len - 1), -torch.inf)], dim=1)
    band = s[:, :, None] + e_padded.unfold(1, max_len, 1)  # (W, L, D): span (i, i + d)
    score, flat = band.reshape(w, -1).topk(k, dim=1)        # sorted, best first
    start_tok = flat // max_len
    return score.numpy(), start_tok.numpy(), (start_tok + flat % max_len).numpy()


def _merge_per_example(score: np.ndarray, start: np.ndarray, end: np.ndarray, example_index: np.ndarray,
                       n_examples: int, n_best: int, null_score: np.ndarray) -> SpanCandidates:
    n_windows, k = score.shape
    flat_score = score.ravel()
    flat_example = np.repeat(example_index, k)
    flat_window = np.repeat(np.arange(n_windows), k)
    order = np.lexsort((-flat_score, flat_example))  # by example, best first (stable: earlier window wins ties)
    ex_sorted = flat_example[order]
    group_start = np.searchsorted(ex_sorted, ex_sorted, side="left")
    rank = np.arange(len(order)) - group_start
    keep = rank < n_best
    ex, rk, src = ex_sorted[keep], rank[keep], order[keep]
    out = SpanCandidates(window=np.zeros((n_examples, n_best), np.int64),
                         start_token=np.zeros((n_examples, n_best), np.int64),
                         end_token=np.zeros((n_examples, n_best), np.int64),
                         score=np.full((n_examples, n_best), -np.inf, np.float32),
                         null_score=null_score)
    out.window[ex, rk] = flat_window[src]
    out.start_token[ex, rk] = start.ravel()[src]
    out.end_token[ex, rk] = end.ravel()[src]
    out.score[ex, rk] = flat_score[src]
    return out


def decode(examples: Sequence[Example], windows: Windows, start_logits: np.ndarray, end_logits: np.ndarray,
           settings: DecodeSettings = DecodeSettings()) -> list[Prediction]:
    """Predictions for `examples` from the logits of their `windows` (windows.example_index indexes examples)."""
    cand = best_spans(start_logits, end_logits, windows.offsets,
                      windows.max_context if settings.use_max_context else None,
                      windows.example_index, windows.cls_index, len(examples),
                      settings.n_best, settings.max_answer_length)
    return [_prediction(e, i, cand, windows.offsets, settings) for i, e in enumerate(examples)]


def _prediction(example: Example, i: int, cand: SpanCandidates, offsets: np.ndarray,
                settings: DecodeSettings) -> Prediction:
    scores = cand.score[i]
    n = int(np.isfinite(scores).sum())
    null = float(cand.null_score[i])
    logits = scores[:n].astype(np.float64)
    pool = np.append(logits, null) if settings.version_2 and np.isfinite(null) else logits
    probs = np.exp(pool - pool.max()) / np.exp(pool - pool.max()).sum() if len(pool) else pool
    answers = []
    for j in range(n):
        w, st, en = cand.window[i, j], cand.start_token[i, j], cand.end_token[i, j]
        c0, c1 = int(offsets[w, st, 0]), int(offsets[w, en, 1])
        answers.append(Answer(example.context[c0:c1], c0, c1, float(probs[j]), float(logits[j])))
    best = float(logits[0]) if n else -np.inf
    odds = null - best if np.isfinite(null) else -np.inf
    no_answer = settings.version_2 and (n == 0 or odds > settings.null_threshold)
    null_prob = float(probs[-1]) if settings.version_2 and len(pool) > n else 0.0
    return Prediction(example.id, answers, null, float(odds), no_answer, null_prob)
