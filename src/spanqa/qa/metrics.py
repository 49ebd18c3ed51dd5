"""The official SQuAD metrics, computed offline.

Written from the published definitions of `evaluate-v1.1.py` and `evaluate-v2.0.py`: answer
normalization (lower case, no punctuation, no articles, single spaces), token F1, the max over gold
answers, and (v2.0) the no-answer threshold and its best-threshold sweep. Output keys and their
order are the official scripts'.
"""

from __future__ import annotations

import re
import string
import sys
from collections import Counter
from typing import Mapping

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_v1(prediction: str, gold: str) -> float:
    """Token F1 as in evaluate-v1.1.py (0 when nothing is shared, empty answers included)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    return _f1(pred, ref)


def f1_v2(prediction: str, gold: str) -> float:
    """Token F1 as in evaluate-v2.0.py: two empty answers agree (1), one empty one does not (0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    return _f1(pred, ref)


def _f1(pred: list[str], ref: list[str]) -> float:
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_v1(dataset: list, predictions: Mapping[str, str]) -> dict:
    """{'exact_match', 'f1'} over the `data` list of a SQuAD v1.1 file, as evaluate-v1.1.py."""
    em = f1 = 0.0
    total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
                    continue
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(float(exact_match(pred, g)) for g in golds)
                f1 += max(f1_v1(pred, g) for g in golds)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def squad_v2(dataset: list, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
             na_prob_thresh: float = 1.0) -> dict:
    """The dict evaluate-v2.0.py prints (with `best_*` keys when `na_probs` is given)."""
    has_ans: dict[str, bool] = {}
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                has_ans[qid] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
                if qid not in predictions:
                    print(f"Missing prediction for {qid}", file=sys.stderr)
                    continue
                pred = predictions[qid]
                exact[qid] = max(float(exact_match(pred, g)) for g in golds)
                f1[qid] = max(f1_v2(pred, g) for g in golds)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in predictions}
    exact_t = _apply_na_threshold(exact, probs, has_ans, na_prob_thresh)
    f1_t = _apply_na_threshold(f1, probs, has_ans, na_prob_thresh)
    out = _summary(exact_t, f1_t)
    has = [q for q, h in has_ans.items() if h]
    no = [q for q, h in has_ans.items() if not h]
    if has:
        out.update({f"HasAns_{k}": v for k, v in _summary(exact_t, f1_t, has).items()})
    if no:
        out.update({f"NoAns_{k}": v for k, v in _summary(exact_t, f1_t, no).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(predictions, exact, na_probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(predictions, f1, na_probs, has_ans)
    return out


def _apply_na_threshold(scores: dict, na_probs: Mapping[str, float], has_ans: dict, thresh: float) -> dict:
    return {q: float(not has_ans[q]) if na_probs[q] > thresh else s for q, s in scores.items()}


def _summary(exact: dict, f1: dict, qids: list[str] | None = None) -> dict:
    if qids is None:
        total = len(exact)
        return {"exact": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total,
                "total": total}
    total = len(qids)
    return {"exact": 100.0 * sum(exact.get(q, 0.0) for q in qids) / total,
            "f1": 100.0 * sum(f1.get(q, 0.0) for q in qids) / total, "total": total}


def best_threshold(predictions: Mapping[str, str], scores: dict, na_probs: Mapping[str, float],
                   has_ans: dict) -> tuple[float, float]:
    """Best score (percent) over no-answer thresholds, and that threshold (evaluate-v2.0.py sweep)."""
    current = best = sum(1 for h in has_ans.values() if not h)
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        current += diff
        if current > best:
            best, thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), thresh


def is_version_2(dataset: list) -> bool:
    return any(not qa["answers"] or "is_impossible" in qa
               for a in dataset for p in a["paragraphs"] for qa in p["qas"])


def score(dataset_json: dict, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
          version_2: bool | None = None, na_prob_thresh: float = 1.0) -> dict:
    """Official metrics for a SQuAD JSON object: v1.1 or v2.0 keys according to the data."""
    data = dataset_json["data"]
    if version_2 is None:
        version_2 = str(dataset_json.get("version", "")).lstrip("v").startswith("2") or is_version_2(data)
    return squad_v2(data, predictions, na_probs, na_prob_thresh) if version_2 else squad_v1(data, predictions)


def token_accuracy(start_logits: np.ndarray, end_logits: np.ndarray,
                   start_positions: np.ndarray, end_positions: np.ndarray) -> dict:
    """Share of windows whose argmax start/end token equals the label (the seeds' "valid accuracy"), over
    all windows and over the windows that hold the answer (label not 0, the [CLS] "no answer here").

    Over all windows the number rewards saying "not here": with short windows most of them miss the
    answer (128 tokens on SQuAD dev: 54%), so a model that always points at [CLS] already scores 0.54.
    The `answer_*` figures are the ones that say whether a model finds answers."""
    start_ok = np.argmax(start_logits, axis=1) == start_positions
    end_ok = np.argmax(end_logits, axis=1) == end_positions
    holds = np.asarray(start_positions) != 0
    out = {"start_accuracy": float(start_ok.mean()), "end_accuracy": float(end_ok.mean()),
           "span_accuracy": float((start_ok & end_ok).mean()), "answer_windows": float(holds.mean())}
    if holds.any():
        out.update(answer_start_accuracy=float(start_ok[holds].mean()), answer_end_accuracy=float(end_ok[holds].mean()),
                   answer_span_accuracy=float((start_ok & end_ok)[holds].mean()))
    return out
