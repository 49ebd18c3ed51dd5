"""Calibrated confidence: answer scores that are the probability that the answer is right.

"Right" is defined once, here (`is_right`): the answer's text exactly matches one of the gold
answers after the official SQuAD normalization (lower case, no punctuation, no articles, single
spaces); for an unanswerable question only the empty answer ("no answer") is right. The
calibration is fitted on the *top* answer of each prediction.

Two families are fitted and the one with the lowest held-out log-loss is kept:

- temperature scaling: P(answer k right) = softmax(logits / T)_k over the n-best span logits;
- Platt scaling: P(answer k right) = sigmoid(w . f_k + b) on 1-3 features of answer k
  (`share_logit`: logit of its softmax share of the n-best, `logit`: its start+end logit,
  `null_gap` (v2 only): null logit - its logit), fitted on top answers; the other answers are
  scaled down to share at most 1 - P(top) (answers with different texts are, nearly always, exclusive).

For v2 (unanswerable questions), P(no answer) = sigmoid(a * null_odds + c) with null_odds = null
logit - top span logit, fitted on whether the question is unanswerable; the span probabilities
above are then fitted on answerable questions only and multiplied by 1 - P(no answer). The reader
answers nothing when P(no answer) > 0.5, i.e. when null_odds > -c / a (`null_threshold`, in the
units of `DecodeSettings.null_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from .metrics import exact_match, f1_v1, f1_v2, normalize_answer
from .reliability import expected_calibration_error

if TYPE_CHECKING:
    from .decode import Answer
    from .squad import Example

RIGHT = "exact_match_top"  # the definition of "right" stored with every calibration
_EPS = 1e-6
_SHARE_CLIP = 1e-6  # share_logit stays finite (a lone answer has share 1)


class PredictionLike(Protocol):
    """What calibration and the report read from a prediction (`decode.Prediction` or `StoredPrediction`)."""

    id: str
    context: str
    no_answer: bool

    @property
    def answers(self) -> "list[Answer]": ...
    @property
    def null_score(self) -> float: ...
    @property
    def text(self) -> str: ...


# --- "right" and per-example scores -------------------------------------------------------------

def gold_texts(example: "Example") -> list[str]:
    """Gold answers as the official v2.0 script sees them ([""] for an unanswerable question)."""
    return [t for t in example.answer_texts if normalize_answer(t)] or [""]


def is_right(example: "Example", text: str) -> bool:
    """THE definition of right: exact match (official normalization) with any gold answer."""
    return any(exact_match(text, g) for g in gold_texts(example))


def example_f1(example: "Example", text: str) -> float:
    """Official token F1 of `text` (v1.1 rule for answerable questions, v2.0 rule otherwise)."""
    if example.has_answer:
        return max(f1_v1(text, g) for g in example.answer_texts)
    return max(f1_v2(text, g) for g in gold_texts(example))


# --- features -----------------------------------------------------------------------------------

def logit_matrix(predictions: Sequence[PredictionLike]) -> tuple[np.ndarray, np.ndarray]:
    """n-best span logits (N, K) padded with -inf, and null logits (N,)."""
    k = max((len(p.answers) for p in predictions), default=0)
    logits = np.full((len(predictions), max(k, 1)), -np.inf)
    for i, p in enumerate(predictions):
        if p.answers:
            logits[i, :len(p.answers)] = [a.logit for a in p.answers]
    null = np.array([p.null_score for p in predictions], dtype=np.float64)
    return logits, null


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
    return np.where(np.isfinite(x), out, -np.inf)  # rows without any answer: -inf, not nan


def _features(logits: np.ndarray, null: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Features (N, K, F) of every answer; entries of missing answers are meaningless (masked later)."""
    share = np.clip(np.exp(_log_softmax(logits)), _SHARE_CLIP, 1 - _SHARE_CLIP)
    finite = np.where(np.isfinite(logits), logits, 0.0)
    columns = {"share_logit": np.log(share) - np.log1p(-share), "logit": finite,
               "null_gap": np.where(np.isfinite(null), null, 0.0)[:, None] - finite}
    return np.stack([columns[n] for n in names], axis=-1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()) if len(y) else 0.0


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iters: int = 100) -> tuple[np.ndarray, float]:
    """Logistic regression by damped Newton steps (no scipy); weights in the raw feature scale."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9  # standardized: Newton is well conditioned
    z = np.column_stack([(x - mu) / sd, np.ones(len(x))])
    penalty = np.full(z.shape[1], ridge)
    penalty[-1] = 0.0  # the bias is not shrunk
    w = np.zeros(z.shape[1])

    def loss(v: np.ndarray) -> float:
        m = z @ v  # log(1 + e^m) - y m, stable
        return float((np.logaddexp(0.0, m) - y * m).sum() + 0.5 * (penalty * v * v).sum())

    current = loss(w)
    for _ in range(iters):
        p = _sigmoid(z @ w)
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while (new := loss(w - t * step)) > current and t > 1e-4:
            t *= 0.5  # backtrack: plain Newton can overshoot on near-separable data
        w, done = w - t * step, current - new < 1e-10
        current = min(current, new)
        if done:
            break
    coef = w[:-1] / sd
    return coef, float(w[-1] - (coef * mu).sum())


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T minimizing the log-loss of the top answer's softmax share: grid, then golden-section on log T."""
    def loss(log_t: float) -> float:
        return _log_loss(np.exp(_log_softmax(logits / np.exp(log_t))[:, 0]), y)

    grid = np.linspace(np.log(0.05), np.log(50.0), 61)
    i = int(np.argmin([loss(g) for g in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


# --- the calibration ----------------------------------------------------------------------------

@dataclass
class Calibration:
    """A fitted map from a prediction's n-best (and null) logits to probabilities of being right."""

    method: str = "temperature"  # "temperature" or "platt"
    temperature: float = 1.0
    features: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    bias: float = 0.0
    version_2: bool = False
    null_weight: float = 1.0  # v2: P(no answer) = sigmoid(null_weight * null_odds + null_bias)
    null_bias: float = 0.0
    fitted: dict = field(default_factory=dict)  # how it was chosen: sizes, held-out log-loss and ECE

    @property
    def null_threshold(self) -> float:
        """null_odds above which P(no answer) > 0.5 (for `DecodeSettings.null_threshold`)."""
        if not self.version_2 or self.null_weight <= 0:
            return float("inf")
        return -self.null_bias / self.null_weight

    def span_probabilities(self, logits: np.ndarray, null: np.ndarray) -> np.ndarray:
        """P(answer k right) (N, K) before the no-answer factor; 0 where there is no answer."""
        valid = np.isfinite(logits)
        if self.method == "temperature":
            prob = np.exp(_log_softmax(logits / self.temperature))
        elif self.method == "platt":
            x = _features(logits, null, self.features)
            prob = _sigmoid(x @ np.asarray(self.weights, dtype=np.float64) + self.bias)
            prob = np.where(valid, prob, 0.0)
            # the top answer's probability is the fitted one; the others (exclusive outcomes) share at
            # most what it leaves, so the n-best never sums to more than 1
            rest = prob[:, 1:].sum(axis=1, keepdims=True)
            prob[:, 1:] *= np.minimum(1.0, (1.0 - prob[:, :1]) / np.maximum(rest, 1e-300))
        else:
            raise ValueError(f"unknown calibration method {self.method!r}")
        return np.where(valid, prob, 0.0)

    def no_answer_probabilities(self, logits: np.ndarray, null: np.ndarray) -> np.ndarray:
        """P(no answer is right) (N,): 0 for v1 readers, 1 where no span is possible."""
        if not self.version_2:
            return np.zeros(len(logits))
        odds = null - logits[:, 0]
        with np.errstate(invalid="ignore"):
            p = _sigmoid(self.null_weight * np.where(np.isfinite(odds), odds, 0.0) + self.null_bias)
        return np.where(np.isfinite(logits[:, 0]), p, 1.0)

    def probabilities(self, logits: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated P(answer k right) (N, K) and P(no answer) (N,) from logit arrays."""
        p_null = self.no_answer_probabilities(logits, null)
        return self.span_probabilities(logits, null) * (1.0 - p_null)[:, None], p_null

    def answer_probabilities(self, prediction: PredictionLike) -> tuple[list[float], float]:
        """Calibrated probability of each of the prediction's answers, and P(no answer)."""
        logits, null = logit_matrix([prediction])
        spans, p_null = self.probabilities(logits, null)
        return spans[0, :len(prediction.answers)].tolist(), float(p_null[0])

    def confidence(self, predictions: Sequence[PredictionLike]) -> np.ndarray:
        """P(the reader's output is right): of the top answer, or of "no answer" when it abstains."""
        logits, null = logit_matrix(predictions)
        spans, p_null = self.probabilities(logits, null)
        abstains = np.array([p.text == "" for p in predictions], dtype=bool)
        return np.where(abstains, p_null if self.version_2 else 0.0, spans[:, 0])

    def calibrated_answers(self, prediction: PredictionLike) -> "list[Answer]":
        """The prediction's answers with `score` = calibrated probability of being right."""
        probs, _ = self.answer_probabilities(prediction)
        return [replace(a, score=p) for a, p in zip(prediction.answers, probs)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored under "calibration" in a reader's spanqa.json."""
        out: dict[str, Any] = {"format": 1, "right": RIGHT, "method": self.method, "version_2": self.version_2,
                               "temperature": self.temperature, "features": list(self.features),
                               "weights": list(self.weights), "bias": self.bias}
        if self.version_2:
            out["no_answer"] = {"weight": self.null_weight, "bias": self.null_bias,
                                "null_threshold": self.null_threshold}
        out["fitted"] = self.fitted
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Inverse of `to_dict` (derived keys such as null_threshold are recomputed, not read)."""
        if d.get("right", RIGHT) != RIGHT:
            raise ValueError(f"calibration for {d['right']!r}, this version knows {RIGHT!r}")
        na = d.get("no_answer") or {}
        return cls(method=d["method"], temperature=float(d.get("temperature", 1.0)),
                   features=tuple(d.get("features", ())), weights=tuple(float(w) for w in d.get("weights", ())),
                   bias=float(d.get("bias", 0.0)), version_2=bool(d.get("version_2", False)),
                   null_weight=float(na.get("weight", 1.0)), null_bias=float(na.get("bias", 0.0)),
                   fitted=dict(d.get("fitted", {})))


def raw_confidence(predictions: Sequence[PredictionLike], version_2: bool) -> np.ndarray:
    """The decoder's own probability of its output (uncalibrated): top answer's score, or the null share."""
    out = np.zeros(len(predictions))
    for i, p in enumerate(predictions):
        if p.text != "":
            out[i] = p.answers[0].score
        elif version_2 and p.answers:  # v2 n-best probabilities and the null share sum to 1
            out[i] = max(0.0, 1.0 - sum(a.score for a in p.answers))
        elif version_2:
            out[i] = 1.0
    return out


def _candidates(version_2: bool) -> dict[str, tuple[str, ...]]:
    names = {"temperature": (), "platt:share_logit": ("share_logit",),
             "platt:share_logit+logit": ("share_logit", "logit")}
    if version_2:
        names["platt:share_logit+logit+null_gap"] = ("share_logit", "logit", "null_gap")
    return names


def _fit_spans(name: str, logits: np.ndarray, null: np.ndarray, y: np.ndarray, version_2: bool) -> Calibration:
    features = _candidates(version_2)[name]
    if not features:
        return Calibration("temperature", temperature=_fit_temperature(logits, y), version_2=version_2)
    x = _features(logits, null, features)[:, 0, :]  # fitted on the top answer (shares over the whole n-best)
    coef, bias = _fit_logistic(x, y)
    return Calibration("platt", features=features, weights=tuple(coef.tolist()), bias=bias, version_2=version_2)


def fit_calibration(examples: Sequence["Example"], predictions: Sequence[PredictionLike],
                    version_2: bool | None = None, heldout: float = 0.3, bins: int = 15,
                    seed: int = 0) -> Calibration:
    """Fit each candidate on a random (1 - heldout) share, keep the lowest held-out log-loss, refit on all."""
    if len(examples) != len(predictions):
        raise ValueError("one prediction per example")
    if version_2 is None:
        version_2 = any(not e.has_answer for e in examples)
    logits, null = logit_matrix(predictions)
    has_span = np.isfinite(logits[:, 0])
    answerable = np.array([e.has_answer for e in examples], dtype=bool)
    top_right = np.array([bool(p.answers) and is_right(e, p.answers[0].text)
                          for e, p in zip(examples, predictions)], dtype=np.float64)
    test = np.zeros(len(examples), dtype=bool)
    test[np.random.default_rng(seed).permutation(len(examples))[:int(round(heldout * len(examples)))]] = True
    # v2: spans are calibrated on answerable questions; whether there is an answer is the null model's job
    span_rows = has_span & (answerable if version_2 else True)
    fit_rows, eval_rows = span_rows & ~test, span_rows & test
    if fit_rows.sum() < 2 or len(np.unique(top_right[fit_rows])) < 2:
        raise ValueError("calibration needs right and wrong top answers among the fitting examples")

    def null_model(rows: np.ndarray) -> tuple[float, float]:
        if not version_2:
            return 1.0, 0.0
        rows = rows & has_span
        odds = (null - logits[:, 0])[rows][:, None]
        (w,), b = _fit_logistic(odds, (~answerable[rows]).astype(np.float64))
        return float(w), b

    held = [predictions[i] for i in np.nonzero(test)[0]]
    held_right = np.array([is_right(examples[i], predictions[i].text) for i in np.nonzero(test)[0]], float)
    raw = raw_confidence(held, version_2)
    null_w, null_b = null_model(~test)
    candidates: dict[str, dict] = {}
    for name in _candidates(version_2):
        cal = replace(_fit_spans(name, logits[fit_rows], null[fit_rows], top_right[fit_rows], version_2),
                      null_weight=null_w, null_bias=null_b)
        p = cal.span_probabilities(logits[eval_rows], null[eval_rows])[:, 0]
        conf = cal.confidence(held)  # of the reader's output: what users see, "no answer" included
        candidates[name] = {"span_log_loss": _log_loss(p, top_right[eval_rows]),
                            "log_loss": _log_loss(conf, held_right),
                            "ece": expected_calibration_error(conf, held_right, bins)}
    best = min(candidates, key=lambda n: candidates[n]["span_log_loss"])  # ties: the simpler, listed first
    null_w, null_b = null_model(np.ones(len(examples), dtype=bool))
    final = _fit_spans(best, logits[span_rows], null[span_rows], top_right[span_rows], version_2)
    fitted = {"examples": len(examples), "heldout_examples": int(test.sum()), "bins": bins, "seed": seed,
              "chosen": best, "candidates": candidates,
              "heldout_ece_before": expected_calibration_error(raw, held_right, bins),
              "heldout_log_loss_before": _log_loss(raw, held_right),
              "heldout_ece_after": candidates[best]["ece"], "heldout_log_loss_after": candidates[best]["log_loss"]}
    return replace(final, null_weight=null_w, null_bias=null_b, fitted=fitted)
