"""Official SQuAD metrics pinned with hand-computed cases."""

import pytest

from spanqa.qa.metrics import (
    best_threshold,
    exact_match,
    f1_v1,
    f1_v2,
    normalize_answer,
    squad_v1,
    squad_v2,
    token_accuracy,
)


def test_normalize_answer():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert normalize_answer("  ") == ""
    assert normalize_answer("Café «déjà»") == "café «déjà»"  # unicode punctuation is not ASCII punctuation


def test_f1_hand_computed():
    # pred tokens [eiffel, tower, paris], gold [eiffel, tower]: P = 2/3, R = 1, F1 = 0.8
    assert f1_v1("the Eiffel Tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    # repeated tokens count once per occurrence: pred [a1, a1], gold [a1]: P = 1/2, R = 1 -> 2/3
    assert f1_v1("x x", "x") == pytest.approx(2 / 3)
    assert f1_v1("", "") == 0.0          # v1.1: nothing shared -> 0
    assert f1_v2("", "") == 1.0          # v2.0: both empty agree
    assert f1_v2("the", "") == 1.0       # normalizes to empty
    assert f1_v2("Paris", "") == 0.0
    assert exact_match("The Paris.", "paris")


def _data(qas):
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def test_squad_v1_hand_computed():
    data = _data([{"id": "a", "answers": [{"text": "Eiffel Tower"}, {"text": "the tower"}]},
                  {"id": "b", "answers": [{"text": "1889"}]},
                  {"id": "c", "answers": [{"text": "Paris"}]}])
    # a: EM 1 (max over golds); b: EM 0, F1 0.8? pred "in 1889" -> [in, 1889] vs [1889]: P 1/2 R 1 -> 2/3
    # c: missing -> 0
    out = squad_v1(data, {"a": "the Eiffel Tower", "b": "in 1889"})
    assert out == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 * (1 + 2 / 3) / 3)}


def test_squad_v2_hand_computed_with_threshold_sweep():
    data = _data([{"id": "a", "answers": [{"text": "Paris"}]},
                  {"id": "b", "answers": []},
                  {"id": "c", "answers": []},
                  {"id": "d", "answers": [{"text": "big red dog"}]}])
    preds = {"a": "Paris", "b": "", "c": "London", "d": "red dog"}
    out = squad_v2(data, preds)
    # raw exact: a1 b1 c0 d0; f1: a1 b1 c0 d(2/2, 2/3 -> 0.8)
    assert list(out)[:3] == ["exact", "f1", "total"]
    assert out["exact"] == pytest.approx(50.0) and out["f1"] == pytest.approx(100 * 2.8 / 4)
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["HasAns_f1"] == pytest.approx(90.0)
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["NoAns_total"] == 2
    probs = {"a": 0.1, "b": 0.9, "c": 0.8, "d": 0.3}
    out = squad_v2(data, preds, probs)
    # sweep in order a(+1) d(+0.8 f1 / +0 exact) c(-1, predicted text) b(0): start = 2 no-answers
    # exact: 2 -> 3 (a, thresh .1) -> 3 -> 2 -> 2: best 3/4 at 0.1
    assert out["best_exact"] == pytest.approx(75.0) and out["best_exact_thresh"] == 0.1
    # f1: 2 -> 3 -> 3.8 (d, thresh .3) -> 2.8 -> 2.8: best 3.8/4 at 0.3
    assert out["best_f1"] == pytest.approx(95.0) and out["best_f1_thresh"] == 0.3
    # the threshold turns predictions into "no answer": with thresh 0.5, b and c count as no-answer
    out = squad_v2(data, preds, probs, na_prob_thresh=0.5)
    assert out["exact"] == pytest.approx(75.0)


def test_best_threshold_no_gain_keeps_zero():
    assert best_threshold({"a": "x"}, {"a": 0.0}, {"a": 0.5}, {"a": True}) == (0.0, 0.0)


def test_token_accuracy():
    import numpy as np

    start = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    end = np.array([[0.0, 1.0, 5.0], [0.0, 0.0, 4.0]])
    acc = token_accuracy(start, end, np.array([1, 1]), np.array([2, 2]))
    assert acc == {"start_accuracy": 0.5, "end_accuracy": 1.0, "span_accuracy": 0.5, "answer_windows": 1.0,
                   "answer_start_accuracy": 0.5, "answer_end_accuracy": 1.0, "answer_span_accuracy": 0.5}
    # a window without the answer (label 0, [CLS]) counts over all windows only: pointing at [CLS]
    # everywhere is right on it and wrong on the window that holds the answer
    cls = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    acc = token_accuracy(cls, cls, np.array([0, 1]), np.array([0, 2]))
    assert acc == {"start_accuracy": 0.5, "end_accuracy": 0.5, "span_accuracy": 0.5, "answer_windows": 0.5,
                   "answer_start_accuracy": 0.0, "answer_end_accuracy": 0.0, "answer_span_accuracy": 0.0}
    no_answers = token_accuracy(cls, cls, np.array([0, 0]), np.array([0, 0]))
    assert no_answers["start_accuracy"] == 1.0 and "answer_start_accuracy" not in no_answers
