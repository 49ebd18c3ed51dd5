"""Calibration: ECE and bins by hand, round trip through spanqa.json, fitting lowers ECE, coverage, question types."""

import json

import numpy as np
import pytest

from spanqa.qa.calibration import Calibration, fit_calibration, is_right, raw_confidence
from spanqa.qa.reliability import coverage_curve, expected_calibration_error, question_type, reliability_bins
from spanqa.qa.decode import Answer, DecodeSettings, decode
from spanqa.qa.report import StoredPrediction, find_calibration
from spanqa.qa.squad import Example
from spanqa.qa.windows import Windows


def test_reliability_bins_and_ece_by_hand():
    conf = [0.05, 0.1, 0.45, 0.5, 0.95, 1.0]
    right = [0, 0, 1, 0, 1, 1]
    rb = reliability_bins(conf, right, bins=4)  # bins (0, .25], (.25, .5], (.5, .75], (.75, 1]
    assert rb.count.tolist() == [2, 2, 0, 2]
    np.testing.assert_allclose(rb.confidence[[0, 1, 3]], [0.075, 0.475, 0.975])
    np.testing.assert_allclose(rb.accuracy[[0, 1, 3]], [0.0, 0.5, 1.0])
    assert np.isnan(rb.accuracy[2])
    # (2 * .075 + 2 * .025 + 2 * .025) / 6
    assert expected_calibration_error(conf, right, bins=4) == pytest.approx(0.25 / 6)
    # 15 bins: 0.9 twice in (13/15, 14/15] (accuracy .5), 0.25 in (3/15, 4/15]: (2 * .4 + .25) / 3
    assert expected_calibration_error([0.9, 0.9, 0.25], [1, 0, 0]) == pytest.approx(0.35)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0  # both ends land in a bin


def _answers(logits, right):
    texts = ["gold" if right else "wrong"] + [f"other {k}" for k in range(1, len(logits))]
    share = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return [Answer(t, 0, len(t), float(s), float(l)) for t, s, l in zip(texts, share, logits)]


def overconfident(n, seed=0, true_temperature=3.0):
    """Predictions whose softmax share is sharper than their real chance of being right."""
    rng = np.random.default_rng(seed)
    examples, preds = [], []
    for i in range(n):
        logits = np.sort(rng.normal(0, 4, size=5))[::-1]
        p_true = np.exp(logits[0] / true_temperature) / np.exp(logits / true_temperature).sum()
        right = rng.random() < p_true
        examples.append(Example(f"q{i}", "What is it?", "gold", ("gold",), (0,)))
        preds.append(StoredPrediction(f"q{i}", "gold", _answers(logits, right)))
    return examples, preds


def test_fitted_calibration_lowers_ece_on_overconfident_data():
    ex, preds = overconfident(2000)
    cal = fit_calibration(ex[:1000], preds[:1000])
    right = [is_right(e, p.text) for e, p in zip(ex[1000:], preds[1000:])]
    before = expected_calibration_error(raw_confidence(preds[1000:], False), right)
    after = expected_calibration_error(cal.confidence(preds[1000:]), right)
    assert before > 0.1 and after < 0.05 and after < before / 3
    assert cal.fitted["chosen"] in cal.fitted["candidates"]
    assert cal.fitted["heldout_ece_after"] < cal.fitted["heldout_ece_before"]
    if cal.method == "temperature":
        assert 2.0 < cal.temperature < 4.5
    probs = [cal.calibrated_answers(p) for p in preds[:50]]
    assert all(sum(a.score for a in answers) <= 1 + 1e-9 for answers in probs)
    assert all(a.text == b.text for answers, p in zip(probs, preds) for a, b in zip(answers, p.answers))


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_round_trip_through_spanqa_json(tmp_path, method):
    cal = Calibration(method, temperature=2.5, features=("share_logit", "logit") if method == "platt" else (),
                      weights=(0.8, 0.1) if method == "platt" else (), bias=-0.3, version_2=True,
                      null_weight=1.7, null_bias=-0.4, fitted={"examples": 10, "chosen": method})
    reader = tmp_path / "reader"
    (reader / "eval").mkdir(parents=True)
    settings = {"decoding": {"null_threshold": cal.null_threshold}, "calibration": cal.to_dict()}
    (reader / "spanqa.json").write_text(json.dumps(settings))
    back = find_calibration(reader / "eval")  # an eval folder finds its reader's spanqa.json
    assert back == cal
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    assert cal.to_dict()["no_answer"]["null_threshold"] == pytest.approx(0.4 / 1.7)
    logits = np.array([[3.0, 1.0, -np.inf], [-np.inf, -np.inf, -np.inf]])
    null = np.array([0.5, 2.0])
    for a, b in zip(cal.probabilities(logits, null), back.probabilities(logits, null)):
        np.testing.assert_array_equal(a, b)
    spans, p_null = cal.probabilities(logits, null)
    assert p_null[1] == 1.0 and spans[1].sum() == 0.0  # no span possible: certainly no answer
    assert spans[0, 2] == 0.0 and spans[0].sum() + p_null[0] <= 1 + 1e-9
    with pytest.raises(ValueError):
        Calibration.from_dict({**cal.to_dict(), "right": "f1"})


def test_v2_no_answer_probability_and_threshold():
    rng = np.random.default_rng(1)
    examples, preds = [], []
    for i in range(1500):
        logits = np.sort(rng.normal(0, 2, size=4))[::-1]
        odds = rng.normal(0, 3)
        unanswerable = rng.random() < 1 / (1 + np.exp(-(2.0 * odds - 1.0)))  # true threshold 0.5
        right = not unanswerable and rng.random() < 0.7
        answers = _answers(logits, right)
        examples.append(Example(f"q{i}", "Who?", "gold", () if unanswerable else ("gold",),
                                () if unanswerable else (0,), is_impossible=unanswerable))
        preds.append(StoredPrediction(f"q{i}", "gold", answers, odds + logits[0], no_answer=odds > 0.5))
    cal = fit_calibration(examples, preds)
    assert cal.version_2 and abs(cal.null_threshold - 0.5) < 0.3 and 1.4 < cal.null_weight < 2.8
    probs, p_null = cal.answer_probabilities(preds[0])
    assert 0 <= p_null <= 1 and sum(probs) + p_null <= 1 + 1e-9
    conf = cal.confidence(preds)
    right = [is_right(e, p.text) for e, p in zip(examples, preds)]
    assert expected_calibration_error(conf, right) < 0.06


def test_real_prediction_from_decode_is_calibrated():
    context = "Paris is big"
    offsets = np.full((1, 5, 2), -1, np.int32)
    offsets[0, 1:4] = [(0, 5), (6, 8), (9, 12)]
    z = np.zeros(1, np.int32)
    w = Windows(np.arange(5, dtype=np.int32)[None], np.ones((1, 5), np.int8), None, offsets,
                np.ones((1, 5), bool), z, z, z, z)
    start = np.array([[1.0, 5.0, 0.0, 0.0, -9.0]], np.float32)
    end = np.array([[1.0, 0.0, 0.0, 4.0, -9.0]], np.float32)
    (p,) = decode([Example("a", "q", context)], w, start, end, DecodeSettings(n_best=3, version_2=True))
    cal = Calibration("temperature", temperature=2.0, version_2=True, null_weight=1.0, null_bias=0.0)
    probs, p_null = cal.answer_probabilities(p)
    assert len(probs) == len(p.answers) and sum(probs) + p_null <= 1 + 1e-9
    assert p_null == pytest.approx(1 / (1 + np.exp(-p.null_odds)))
    assert cal.confidence([p])[0] == pytest.approx(probs[0] if p.text else p_null)


def test_coverage_curve_monotone_and_by_hand():
    conf = [0.9, 0.2, 0.9, 0.5]
    f1 = [1.0, 0.0, 0.5, 1.0]
    c = coverage_curve(conf, f1)
    np.testing.assert_allclose(c.threshold, [0.9, 0.5, 0.2])   # the tied 0.9s are one operating point
    np.testing.assert_allclose(c.coverage, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(c.f1, [0.75, 2.5 / 3, 0.625])
    rng = np.random.default_rng(0)
    conf = rng.integers(0, 20, size=500) / 20
    f1 = rng.random(500)
    c = coverage_curve(conf, f1)
    assert np.all(np.diff(c.coverage) > 0) and np.all(np.diff(c.threshold) < 0)
    assert c.coverage[-1] == 1.0 and c.f1[-1] == pytest.approx(f1.mean())


@pytest.mark.parametrize("question,kind", [
    ("What is the capital of France?", "what"),
    ("In what year was the tower completed?", "what"),
    ("who designed the tower?", "who"),
    ("To whom was the letter sent?", "who"),
    ("Whose idea was it?", "who"),
    ("When was it built?", "when"),
    ("Where is the Eiffel Tower?", "where"),
    ("Why did it rain?", "why"),
    ("How tall is the tower?", "how"),
    ("How many people visit it each year?", "how many"),
    ("For how many years was it the tallest?", "how many"),
    ("Which company designed it?", "which"),
    ("The tower was designed by whom?", "who"),
    ("What's the name of the river?", "what"),
    ("Name the architect of the tower.", "other"),
    ("However, somewhere, anyhow?", "other"),
    ("", "other"),
])
def test_question_type(question, kind):
    assert question_type(question) == kind
