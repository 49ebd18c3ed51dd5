"""How well confidence tracks being right, and where a reader is wrong: reliability bins and expected
calibration error, the coverage curve (answer only above a confidence), question types.

Measures for calibration (`calibration.py` fits the scores) and for the evaluation report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np


# --- reliability, ECE, coverage -----------------------------------------------------------------

@dataclass
class ReliabilityBins:
    """Equal-width confidence bins on [0, 1]: bin i holds confidences in (edges[i], edges[i+1]] (0 in bin 0)."""

    edges: np.ndarray       # (bins + 1,)
    count: np.ndarray       # (bins,)
    confidence: np.ndarray  # (bins,) mean confidence, nan where empty
    accuracy: np.ndarray    # (bins,) share right, nan where empty

    @property
    def ece(self) -> float:
        """sum over bins of |accuracy - confidence| * n_bin / N."""
        total = self.count.sum()
        if total == 0:
            return 0.0
        full = self.count > 0
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float((gap * self.count[full]).sum() / total)


def reliability_bins(confidence: Sequence[float], correct: Sequence[float], bins: int = 15) -> ReliabilityBins:
    """Accuracy and mean confidence per equal-width bin."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    right = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins as in Guo et al. (2017), found against the very edges reported (no float drift
    # between conf * bins and the edges); 0.0 joins the first bin instead of falling out
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / count
        accuracy = np.bincount(index, weights=right, minlength=bins) / count
    return ReliabilityBins(edges, count, mean_conf, accuracy)


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[float], bins: int = 15) -> float:
    """Standard ECE with `bins` equal-width bins."""
    return reliability_bins(confidence, correct, bins).ece


@dataclass
class CoverageCurve:
    """Answering only above each confidence threshold: share answered and mean F1 of those answers."""

    threshold: np.ndarray  # decreasing
    coverage: np.ndarray   # increasing, in (0, 1]
    f1: np.ndarray         # mean F1 of the answers with confidence >= threshold

    def f1_at(self, coverage: float) -> float:
        """F1 of the most confident `coverage` share (the last point not above it)."""
        i = np.searchsorted(self.coverage, coverage, side="right") - 1
        return float(self.f1[max(i, 0)]) if len(self.f1) else float("nan")


def coverage_curve(confidence: Sequence[float], f1: Sequence[float]) -> CoverageCurve:
    """Coverage curve from per-answer confidence and F1 (0-1 or 0-100, kept as given)."""
    conf = np.asarray(confidence, dtype=np.float64)
    scores = np.asarray(f1, dtype=np.float64)
    if len(conf) == 0:
        return CoverageCurve(np.zeros(0), np.zeros(0), np.zeros(0))
    order = np.argsort(-conf, kind="stable")
    conf, scores = conf[order], scores[order]
    answered = np.arange(1, len(conf) + 1)
    mean_f1 = np.cumsum(scores) / answered
    # only the last of equally confident answers is a reachable operating point
    last = np.append(conf[1:] != conf[:-1], True)
    return CoverageCurve(conf[last], answered[last] / len(conf), mean_f1[last])


# --- question types -----------------------------------------------------------------------------

QUESTION_TYPES = ("what", "who", "when", "where", "why", "how", "how many", "which", "other")
_WH = {"what": "what", "who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where",
       "why": "why", "how": "how", "which": "which"}
_WORD = re.compile(r"[a-z]+")


def question_type(question: str) -> str:
    """what/who/when/where/why/how/how many/which/other, from the first wh-word anywhere in the question."""
    words = _WORD.findall(question.lower())
    for i, w in enumerate(words):
        kind = _WH.get(w)
        if kind is None:
            continue
        if kind == "how" and i + 1 < len(words) and words[i + 1] == "many":
            return "how many"  # before plain "how": a count, not a manner
        return kind  # "In what year ..." is a what-question: the first wh-word decides
    return "other"
