"""Windows: labels map back to the gold answer, long contexts split with overlap, max-context, cache."""

import numpy as np
import pytest
from conftest import CONTEXT, TINY_QAS

from spanqa.data.sources import DataError
from spanqa.qa.squad import Example, ExampleStream, write_jsonl
from spanqa.qa.windows import (
    WindowError,
    WindowSettings,
    build_windows,
    cached_windows,
    check_settings,
    streamed_windows,
)


def examples(context=CONTEXT):
    out = []
    for q in TINY_QAS:
        text = q["answers"][0]["text"]
        out.append(Example(q["id"], q["question"], context, (text,), (context.index(text),)))
    out.append(Example("none", "Who painted it?", context, is_impossible=True))
    return out


def labelled_text(w, i, ex):
    s, e = w.start_positions[i], w.end_positions[i]
    return ex.context[w.offsets[i, s, 0]:w.offsets[i, e, 1]]


@pytest.mark.parametrize("tok_name", ["tokenizer", "roberta_tokenizer"])
def test_labels_decode_to_the_answer(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    exs = examples()
    w = build_windows(exs, tok, WindowSettings(max_seq_length=128, doc_stride=32, max_query_length=32))
    assert len(w) == len(exs)
    for i in range(len(w)):
        ex = exs[w.example_index[i]]
        if ex.has_answer:
            assert labelled_text(w, i, ex).strip().lower() == ex.answer_texts[0].lower()
        else:
            assert w.start_positions[i] == w.end_positions[i] == w.cls_index[i]
    # offsets only on context tokens, attention on real tokens only
    assert (w.offsets[w.attention_mask == 0] == -1).all()
    assert (w.token_type_ids is None) == (tok_name == "roberta_tokenizer")


def test_long_context_windows_overlap_and_label_only_where_the_answer_is(tokenizer):
    filler = " ".join(f"word{i}" for i in range(400))
    context = filler + " The answer is Marie Curie. " + filler
    ex = Example("long", "Who is the answer?", context, ("Marie Curie",), (context.index("Marie Curie"),))
    settings = WindowSettings(max_seq_length=128, doc_stride=48, max_query_length=16)
    w = build_windows([ex], tokenizer, settings)
    assert len(w) > 10
    inside = w.start_positions != w.cls_index
    assert 1 <= inside.sum() <= 3
    for i in np.nonzero(inside)[0]:
        assert labelled_text(w, i, ex) == "Marie Curie"
    # consecutive windows share exactly doc_stride context tokens
    first = set(map(tuple, w.offsets[0][w.offsets[0, :, 0] >= 0]))
    second = set(map(tuple, w.offsets[1][w.offsets[1, :, 0] >= 0]))
    assert len(first & second) == settings.doc_stride
    # every context token is max-context in exactly one window
    tokens = {}
    for i in range(len(w)):
        for t in np.nonzero(w.offsets[i, :, 0] >= 0)[0]:
            tokens.setdefault(tuple(w.offsets[i, t]), []).append(bool(w.max_context[i, t]))
    assert all(sum(flags) == 1 for flags in tokens.values())


def test_max_context_prefers_the_centred_window(tokenizer):
    context = " ".join(f"w{i}" for i in range(300))
    ex = Example("c", "q?", context)
    w = build_windows([ex], tokenizer, WindowSettings(max_seq_length=64, doc_stride=32, max_query_length=8))
    # a token in the overlap of windows 0 and 1, near the end of window 0, belongs to window 1
    ctx0 = np.nonzero(w.offsets[0, :, 0] >= 0)[0]
    last = tuple(w.offsets[0, ctx0[-1]])
    assert not w.max_context[0, ctx0[-1]]
    j = [t for t in range(w.offsets.shape[1]) if tuple(w.offsets[1, t]) == last][0]
    assert w.max_context[1, j]


@pytest.mark.parametrize("tok_name", ["tokenizer", "roberta_tokenizer"])
def test_windows_equal_the_tokenizers_own_overflowing_pairs(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    context = " ".join([CONTEXT] * 6)
    exs = [Example(str(i), q["question"], context) for i, q in enumerate(TINY_QAS)]
    settings = WindowSettings(max_seq_length=96, doc_stride=24, max_query_length=64)
    w = build_windows(exs, tok, settings)
    ref = tok([e.question for e in exs], [e.context for e in exs], truncation="only_second", max_length=96,
              stride=24, return_overflowing_tokens=True, padding="max_length", return_tensors="np")
    assert np.array_equal(w.input_ids, ref["input_ids"])
    assert np.array_equal(w.attention_mask, ref["attention_mask"])
    assert np.array_equal(w.example_index, ref["overflow_to_sample_mapping"])
    if w.token_type_ids is not None:
        assert np.array_equal(w.token_type_ids, ref["token_type_ids"])


def test_word_starts_follow_the_tokenizers_words(tokenizer):
    context = "Thomas Davis had four forced fumbles."
    w = build_windows([Example("a", "How many?", context)], tokenizer, WindowSettings(64, 16, 16))
    ctx = np.nonzero(w.offsets[0, :, 0] >= 0)[0]
    pieces = [(context[a:b], bool(s)) for (a, b), s in zip(w.offsets[0, ctx], w.word_start[0, ctx])]
    words = []
    for piece, starts in pieces:
        words.append(piece) if starts else words.__setitem__(-1, words[-1] + piece)
    assert words == ["Thomas", "Davis", "had", "four", "forced", "fumbles", "."]
    assert not w.word_start[0][w.offsets[0, :, 0] < 0].any()


def test_question_truncated_to_max_query_length(tokenizer):
    ex = Example("q", "why " * 100 + "?", CONTEXT)
    w = build_windows([ex], tokenizer, WindowSettings(max_seq_length=128, doc_stride=16, max_query_length=10))
    first_context = np.argmax(w.offsets[0, :, 0] >= 0)
    assert first_context == 1 + 10 + 1  # [CLS] 10 question tokens [SEP]


def test_bad_settings_are_refused(tokenizer):
    with pytest.raises(WindowError, match="doc_stride"):
        check_settings(tokenizer, WindowSettings(max_seq_length=128, doc_stride=100, max_query_length=64))
    with pytest.raises(WindowError, match="larger than the model allows"):
        check_settings(tokenizer, WindowSettings(max_seq_length=1024))


def test_cache_is_built_once_and_memory_mapped(tokenizer, tmp_path):
    exs = examples() * 1
    settings = WindowSettings(max_seq_length=96, doc_stride=16, max_query_length=16)
    calls = []
    cached_windows(exs, tokenizer, settings, tmp_path, batch_size=2, on_batch=calls.append)
    b = cached_windows(exs, tokenizer, settings, tmp_path, on_batch=calls.append)
    assert isinstance(b.input_ids, np.memmap)
    assert calls == [2, 2, 1, 5]  # built in batches of 2, then reused whole
    ref = build_windows(exs, tokenizer, settings)
    for name in ("input_ids", "offsets", "max_context", "start_positions", "example_index"):
        assert np.array_equal(getattr(b, name), getattr(ref, name))
    assert len(list(tmp_path.iterdir())) == 1
    cached_windows(exs, tokenizer, WindowSettings(max_seq_length=80, doc_stride=16, max_query_length=16), tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # other settings, other key


def test_windows_streamed_from_a_file_equal_those_of_its_examples(tokenizer, tmp_path):
    exs = [e for e in examples() if e.has_answer]
    data = tmp_path / "train.jsonl"
    write_jsonl(exs, data)
    settings = WindowSettings(max_seq_length=96, doc_stride=16, max_query_length=16)
    calls = []
    w, held = streamed_windows(ExampleStream(data), tokenizer, settings, cache_dir=tmp_path / "c", batch_size=2,
                               on_batch=calls.append)
    assert held == {"examples": len(exs), "unanswerable": 0, "version_2": False} and calls == [2, 2]
    ref = build_windows(exs, tokenizer, settings)
    for name in ("input_ids", "offsets", "max_context", "word_start", "start_positions", "example_index"):
        assert np.array_equal(getattr(w, name), getattr(ref, name))
    again, _ = streamed_windows(ExampleStream(data), tokenizer, settings, cache_dir=tmp_path / "c",
                                on_batch=calls.append)
    assert calls == [2, 2, 4] and isinstance(again.input_ids, np.memmap)  # reused whole, the file not read again
    first, _ = streamed_windows(ExampleStream(data), tokenizer, settings, limit=3, cache_dir=tmp_path / "c")
    assert len(set(first.example_index.tolist())) == 3


def test_a_streamed_file_with_problems_caches_nothing(tokenizer, tmp_path):
    exs = examples()
    data = tmp_path / "train.jsonl"
    write_jsonl(exs, data)
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines + [lines[0]]) + "\n")  # the first question again: duplicate id
    with pytest.raises(DataError, match="duplicate id"):
        streamed_windows(ExampleStream(data), tokenizer, WindowSettings(96, 16, 16), cache_dir=tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())
