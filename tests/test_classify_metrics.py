"""GLUE metrics: hand-computed cases, and equality with scikit-learn / scipy on random inputs."""

import math

import numpy as np
import pytest

from spanqa.classify.glue import DataFormat
from spanqa.classify.metrics import (
    accuracy,
    average_ranks,
    classification_scores,
    f1_binary,
    matthews_correlation,
    pearson,
    spearman,
)


def test_hand_computed_cases():
    p, y = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    # TP=2 FP=1 FN=1 TN=1
    assert accuracy(p, y) == pytest.approx(3 / 5)
    assert f1_binary(p, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_correlation(p, y) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # cov 4 / sqrt(5 * 5)
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)


def test_degenerate_cases_follow_the_references():
    assert f1_binary(np.zeros(4), np.zeros(4)) == 0.0  # sklearn: zero_division -> 0
    assert matthews_correlation(np.ones(4), np.array([0, 1, 0, 1])) == 0.0  # constant prediction
    assert matthews_correlation(np.array([1, 0]), np.array([1, 0])) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # scipy: NaN for a constant input


@pytest.mark.parametrize("seed", range(5))
def test_equal_to_sklearn_and_scipy_on_random_inputs(seed):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
    assert accuracy(p, y) == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert f1_binary(p, y) == pytest.approx(f1_score(y, p), abs=1e-12)
    assert matthews_correlation(p, y) == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
    y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)  # the multi-class generalisation too
    assert matthews_correlation(p3, y3) == pytest.approx(matthews_corrcoef(y3, p3), abs=1e-12)
    a, b = rng.normal(size=n), rng.normal(size=n) * 3 + 1
    assert pearson(a, b) == pytest.approx(pearsonr(a, b)[0], abs=1e-12)
    # STS-B-like scores: many ties, which Spearman averages
    s, t = np.round(rng.uniform(0, 5, n) * 4) / 4, np.round(rng.uniform(0, 5, n) * 4) / 4
    assert spearman(s, t) == pytest.approx(spearmanr(s, t)[0], abs=1e-12)
    assert pearson(s, t) == pytest.approx(pearsonr(s, t)[0], abs=1e-12)


def test_scores_from_logits_per_task():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    gold = np.array([0, 1, 1, 1])
    mrpc = classification_scores(logits, gold, DataFormat("mrpc"))
    assert mrpc["accuracy"] == 0.75 and mrpc["f1"] == pytest.approx(0.8)
    expected_loss = np.mean([np.log1p(np.exp(-2)), np.log1p(np.exp(-1)), np.log1p(np.exp(1)), np.log1p(np.exp(-3))])
    assert mrpc["valid_loss"] == pytest.approx(expected_loss)
    assert set(classification_scores(logits, gold, DataFormat("cola"))) == {"valid_loss", "accuracy",
                                                                            "matthews_correlation"}
    assert set(classification_scores(logits, gold, DataFormat("sst2"))) == {"valid_loss", "accuracy"}
    sts = classification_scores(np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 2.5, 4.0]), DataFormat("stsb"))
    assert sts["valid_loss"] == pytest.approx(0.25 / 3) and sts["spearmanr"] == pytest.approx(1.0)
