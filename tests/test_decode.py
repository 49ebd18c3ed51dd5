"""The vectorized decoder agrees with a brute-force reference on random logits and offsets."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanqa.qa.decode import (
    DecodeSettings,
    SpanCandidates,
    _merge_same_text,
    best_spans,
    decode,
)
from spanqa.qa.squad import Example
from spanqa.qa.windows import Windows


def reference_spans(start, end, offsets, max_context, example_index, n_examples, n_best, max_len):
    """Brute force: every (window, i, j) pair, sorted by score."""
    out = []
    for ex in range(n_examples):
        cands = []
        for w in np.nonzero(example_index == ex)[0]:
            for i in range(start.shape[1]):
                for j in range(i, min(i + max_len, start.shape[1])):
                    if offsets[w, i, 0] < 0 or offsets[w, j, 1] < 0:
                        continue
                    if max_context is not None and not max_context[w, i]:
                        continue
                    cands.append(float(np.float32(start[w, i]) + np.float32(end[w, j])))
        out.append(sorted(cands, reverse=True)[:n_best])
    return out


@st.composite
def problems(draw):
    n_examples = draw(st.integers(1, 4))
    example_index = np.array(sorted(draw(st.lists(st.integers(0, n_examples - 1), min_size=1, max_size=8))))
    n_examples = int(example_index.max()) + 1
    length = draw(st.integers(4, 24))
    w = len(example_index)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    start = rng.normal(size=(w, length)).astype(np.float32)
    end = rng.normal(size=(w, length)).astype(np.float32)
    ctx = rng.random((w, length)) < draw(st.floats(0.0, 1.0))
    ctx[:, 0] = False  # CLS
    pos = np.cumsum(rng.integers(1, 4, size=(w, length)), axis=1)
    offsets = np.where(ctx[..., None], np.stack([pos, pos + 1], -1), -1).astype(np.int32)
    max_context = rng.random((w, length)) < 0.8 if draw(st.booleans()) else None
    return start, end, offsets, max_context, example_index, n_examples, draw(st.integers(1, 25)), draw(st.integers(1, 8))


@settings(max_examples=200, deadline=None)
@given(problems())
def test_matches_brute_force(problem):
    start, end, offsets, max_context, example_index, n_examples, n_best, max_len = problem
    cls = np.zeros(len(start), dtype=np.int64)
    got = best_spans(start, end, offsets, max_context, example_index, cls, n_examples, n_best, max_len, chunk=3)
    want = reference_spans(start, end, offsets, max_context, example_index, n_examples, n_best, max_len)
    for ex in range(n_examples):
        scores = got.score[ex][np.isfinite(got.score[ex])]
        np.testing.assert_allclose(scores, want[ex], rtol=1e-6)
        for k in range(len(scores)):  # each returned span is valid and has the score it claims
            w, i, j = got.window[ex, k], got.start_token[ex, k], got.end_token[ex, k]
            assert example_index[w] == ex and 0 <= j - i < max_len
            assert offsets[w, i, 0] >= 0 and offsets[w, j, 1] >= 0
            assert np.isclose(start[w, i] + end[w, j], scores[k])
        rows = np.nonzero(example_index == ex)[0]
        if len(rows):
            assert np.isclose(got.null_score[ex], (start[rows, 0] + end[rows, 0]).min())


def _one_window(context, token_spans, word_start=None):
    """One window [CLS] tokens... [SEP]; token ids are the token texts' ids in a made-up vocabulary."""
    length = len(token_spans) + 2
    offsets = np.full((1, length, 2), -1, np.int32)
    ids = np.zeros((1, length), np.int32)
    vocab = {}
    for t, (a, b) in enumerate(token_spans, start=1):
        offsets[0, t] = (a, b)
        ids[0, t] = vocab.setdefault(context[a:b], len(vocab) + 1)
    starts = None if word_start is None else np.array([[False, *word_start, False]])
    z = np.zeros(1, np.int32)
    return Windows(ids, np.ones_like(ids, np.int8), None, offsets, np.ones((1, length), bool), z, z, z, z, starts)


def test_decode_texts_offsets_and_null_threshold():
    context = "Paris is big"
    w = _one_window(context, [(0, 5), (6, 8), (9, 12)])
    start = np.array([[1.0, 5.0, 0.0, 0.0, -9.0]], np.float32)
    end = np.array([[1.0, 0.0, 0.0, 4.0, -9.0]], np.float32)
    ex = Example("a", "q", context)
    (p,) = decode([ex], w, start, end, DecodeSettings(n_best=3))
    assert (p.text, p.answers[0].start, p.answers[0].end) == ("Paris is big", 0, 12)
    assert p.answers[0].logit == 9.0 and 0.5 < p.answers[0].score <= 1.0
    assert sum(a.score for a in p.answers) <= 1.0 + 1e-6
    # v2: the null score is 2 and the best span 9 -> odds -7: answer unless threshold < -7
    (p,) = decode([ex], w, start, end, DecodeSettings(version_2=True, null_threshold=0.0))
    assert p.null_odds == -7.0 and not p.no_answer and p.text == "Paris is big"
    (p,) = decode([ex], w, start, end, DecodeSettings(version_2=True, null_threshold=-8.0))
    assert p.no_answer and p.text == ""


def test_max_answer_length_is_honoured():
    context = "a b c d"
    w = _one_window(context, [(0, 1), (2, 3), (4, 5), (6, 7)])
    start = np.array([[0, 9, 0, 0, 0, 0]], np.float32)
    end = np.array([[0, 0, 0, 0, 9, 0]], np.float32)
    (p,) = decode([Example("a", "q", context)], w, start, end, DecodeSettings(max_answer_length=2))
    assert len(p.text.split()) <= 2


def test_spans_widen_to_whole_words():
    context = "forced fumbles now"
    tokens = [(0, 6), (7, 9), (9, 14), (15, 18)]  # forced fu ##mbles now
    w = _one_window(context, tokens, word_start=[True, True, False, True])
    start = np.array([[0, 0, 0, 9, 0, 0]], np.float32)  # best span: "mbles" alone
    end = np.array([[0, 0, 0, 9, 0, 0]], np.float32)
    (p,) = decode([Example("a", "q", context)], w, start, end, DecodeSettings())
    assert (p.text, p.answers[0].start, p.answers[0].end) == ("fumbles", 7, 14)
    (p,) = decode([Example("a", "q", context)], w, start, end, DecodeSettings(align_to_words=False))
    assert p.text == "mbles"


def test_spans_with_the_same_text_are_one_answer_with_the_summed_probability():
    context = "four sacks and four fumbles"
    tokens = [(0, 4), (5, 10), (11, 14), (15, 19), (20, 27)]
    w = _one_window(context, tokens)
    # "sacks" is the single best span, but "four" twice together outweighs it
    start = np.array([[0, 2.0, 2.2, -9, 2.0, -9, -9]], np.float32)
    end = np.array([[0, 2.0, 2.2, -9, 2.0, -9, -9]], np.float32)
    ex = Example("a", "q", context)
    (plain,) = decode([ex], w, start, end, DecodeSettings(merge_same_text=False))
    assert plain.text == "sacks"
    (p,) = decode([ex], w, start, end, DecodeSettings())
    assert p.text == "four" and (p.answers[0].start, p.answers[0].end) == (0, 4)  # the better-ranked occurrence
    fours = [a.score for a in plain.answers if a.text == "four"]
    assert p.answers[0].score == pytest.approx(sum(fours), rel=1e-5)
    assert p.answers[0].logit == pytest.approx(np.logaddexp(4.0, 4.0), rel=1e-6)
    assert len({a.text for a in p.answers}) == len(p.answers)  # each text once
    # the best answer does not depend on how many answers are asked for
    (top1,) = decode([ex], w, start, end, DecodeSettings(n_best=1))
    assert top1.text == "four" and len(top1.answers) == 1


@settings(max_examples=200, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1))
def test_merging_matches_a_dictionary_of_texts(problem, seed):
    start, end, offsets, max_context, example_index, n_examples, n_best, max_len = problem
    ids = np.random.default_rng(seed).integers(1, 4, size=start.shape)  # 3 token ids: many repeated texts
    cand = best_spans(start, end, offsets, max_context, example_index, np.zeros(len(start), np.int64),
                      n_examples, n_best, max_len)
    want = []
    for ex in range(n_examples):
        merged = {}
        for k in np.nonzero(np.isfinite(cand.score[ex]))[0]:
            w, i, j = cand.window[ex, k], cand.start_token[ex, k], cand.end_token[ex, k]
            text = tuple(ids[w, i:j + 1])
            merged[text] = np.logaddexp(merged.get(text, -np.inf), float(cand.score[ex, k]))
        want.append(merged)
    got = SpanCandidates(cand.window.copy(), cand.start_token.copy(), cand.end_token.copy(), cand.score.copy(),
                         cand.null_score)
    _merge_same_text(got, ids)
    for ex in range(n_examples):
        finite = np.isfinite(got.score[ex])
        texts = [tuple(ids[got.window[ex, k], got.start_token[ex, k]:got.end_token[ex, k] + 1])
                 for k in np.nonzero(finite)[0]]
        assert sorted(texts) == sorted(want[ex]) and finite[:len(texts)].all()  # each text once, valid first
        np.testing.assert_allclose(got.score[ex][finite], [want[ex][t] for t in texts], rtol=1e-5)
        assert (np.diff(got.score[ex][finite]) <= 0).all()
