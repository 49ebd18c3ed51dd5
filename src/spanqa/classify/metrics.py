"""GLUE metrics, offline and in numpy: accuracy, F1, Matthews correlation, Pearson and Spearman.

Each equals the definition GLUE's scorer uses (scikit-learn's `accuracy_score`, `f1_score`,
`matthews_corrcoef`; scipy's `pearsonr`, `spearmanr`), degenerate cases included: F1 and MCC are 0
when undefined, the correlations NaN (a constant input has none). The tests compare them.
"""

from __future__ import annotations

import numpy as np

from spanqa.classify.glue import DataFormat


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of predictions equal to their label."""
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_binary(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the `positive` class: 2TP / (2TP + FP + FN); 0 when there is no positive at all."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp, fp, fn = np.sum(p & y), np.sum(p & ~y), np.sum(~p & y)
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K, as scikit-learn); 0 when undefined."""
    y, p = np.asarray(labels), np.asarray(predictions)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    confusion = np.bincount(codes[:len(y)] * k + codes[len(y):], minlength=k * k).reshape(k, k).astype(np.float64)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # true and predicted counts per class
    n, correct = confusion.sum(), np.trace(confusion)
    cov_yp = correct * n - t @ q
    cov_pp = n * n - q @ q
    cov_yy = n * n - t @ t
    if cov_pp * cov_yy == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either input is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    # normalise first, as scipy does: no overflow for large values, and r stays within [-1, 1]
    nx, ny = np.linalg.norm(dx), np.linalg.norm(dy)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(np.clip(np.dot(dx / nx, dy / ny), -1.0, 1.0))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (scipy's `rankdata(method="average")`)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    new_value = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(new_value) - 1
    starts = np.flatnonzero(new_value)
    ends = np.append(starts[1:], len(x))  # exclusive
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # the mean of ranks start+1 .. end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def classification_scores(logits: np.ndarray, labels: np.ndarray, fmt: DataFormat) -> dict[str, float]:
    """The task's metrics and mean loss from (N, C) logits (cross-entropy) or (N, 1) scores (MSE)."""
    logits = np.asarray(logits, dtype=np.float64)
    if fmt.is_regression:
        scores, gold = logits[:, 0], np.asarray(labels, dtype=np.float64)
        return {"valid_loss": float(np.mean((scores - gold) ** 2)), "pearson": pearson(scores, gold),
                "spearmanr": spearman(scores, gold)}
    gold = np.asarray(labels, dtype=np.int64)
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    predictions = logits.argmax(axis=1)
    out = {"valid_loss": float(-log_probs[np.arange(len(gold)), gold].mean()),
           "accuracy": accuracy(predictions, gold)}
    if fmt.task == "mrpc":
        out["f1"] = f1_binary(predictions, gold)  # label "1" (paraphrase) is id 1
    if fmt.task == "cola":
        out["matthews_correlation"] = matthews_correlation(predictions, gold)
    return out
