"""Many questions about one context: the reader tokenizes a context once across calls, same answers."""

from __future__ import annotations

import asyncio
from dataclasses import fields

import numpy as np
import pytest
from test_reader import reader_folder

import spanqa.qa.windows as windows_module
from spanqa.qa.reader import Reader
from spanqa.qa.squad import Example
from spanqa.qa.windows import Windows, build_windows
from spanqa.server import MicroBatcher, answering

# several windows at the test settings (128/32): the context cache matters most for long passages
CONTEXT = " ".join(f"Sentence {i} says that {name} lives in {city}." for i, (name, city) in
                   enumerate(zip(["Ann", "Bo", "Cy", "Di", "Ed", "Flo"] * 8, ["Oslo", "Rome", "Lima", "Kyiv"] * 12)))
QUESTIONS = ["Where does Ann live?", "Who lives in Rome?", "Where does Flo live?", "Which city?",
             "Who lives in Lima according to sentence 30?", "Where?"]


class CountingBackend:
    """The tokenizer backend, recording every list of texts given to `encode_batch`."""

    def __init__(self, backend, calls: list[list[str]]):
        self.backend, self.calls = backend, calls

    def encode_batch(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.backend.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.fixture
def encode_calls(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = windows_module._backend_copy
    monkeypatch.setattr(windows_module, "_backend_copy", lambda tokenizer: CountingBackend(real(tokenizer), calls))
    return calls


def times_tokenized(calls: list[list[str]], text: str) -> int:
    return sum(batch.count(text) for batch in calls)


def test_one_by_one_questions_tokenize_the_context_once_with_identical_answers(tiny_model, tmp_path, encode_calls):
    folder = reader_folder(tiny_model, tmp_path)
    cached, uncached = Reader.load(folder), Reader.load(folder, cache_contexts=0)
    assert len(cached.windows([Example("0", QUESTIONS[0], CONTEXT)])) > 3  # a long context
    encode_calls.clear()
    one_by_one = [cached.answer(q, CONTEXT, top_k=3) for q in QUESTIONS]
    assert times_tokenized(encode_calls, CONTEXT) == 0  # already encoded by the windows() call above
    many = cached.answer_many([(q, CONTEXT) for q in QUESTIONS], top_k=3)
    assert times_tokenized(encode_calls, CONTEXT) == 0

    today = [uncached.answer(q, CONTEXT, top_k=3) for q in QUESTIONS]
    assert times_tokenized(encode_calls, CONTEXT) == len(QUESTIONS)  # the path without a cache
    assert one_by_one == today  # same windows, so the very same logits and scores
    # one batched pass: same answers; scores only differ by float rounding of other batch shapes
    assert [[(a.text, a.start, a.end) for a in r] for r in many] == [[(a.text, a.start, a.end) for a in r]
                                                                     for r in today]
    assert np.allclose([a.score for r in many for a in r], [a.score for r in today for a in r], atol=1e-5)


def test_cached_windows_equal_fresh_windows(tiny_model, tmp_path):
    reader = Reader.load(reader_folder(tiny_model, tmp_path))
    examples = [Example(str(i), q, CONTEXT if i % 2 else "Ann lives in Oslo.") for i, q in enumerate(QUESTIONS)]
    reader.windows(examples[:2])  # fills the cache
    cached, fresh = reader.windows(examples), build_windows(examples, reader.tokenizer, reader.settings.windows)
    for f in fields(Windows):
        a, b = getattr(cached, f.name), getattr(fresh, f.name)
        assert (a is None and b is None) or np.array_equal(a, b), f.name


def test_cache_is_bounded_and_follows_settings(tiny_model, tmp_path, encode_calls):
    from spanqa.qa.windows import WindowSettings

    reader = Reader.load(reader_folder(tiny_model, tmp_path), cache_contexts=2)
    contexts = ["Ann lives in Oslo.", "Bo lives in Rome.", "Cy lives in Lima."]
    for c in [*contexts, contexts[2], contexts[0]]:  # A B C C A: C is held, A was evicted by C
        reader.answer("Who?", c)
    assert [times_tokenized(encode_calls, c) for c in contexts] == [2, 1, 1]
    reader.settings.windows = WindowSettings(max_seq_length=64, doc_stride=16, max_query_length=16)
    reader.answer("Who?", contexts[2])  # new settings, new encoder: windows follow the settings
    assert times_tokenized(encode_calls, contexts[2]) == 2
    assert reader.windows([Example("0", "Who?", CONTEXT)]).input_ids.shape[1] == 64


def test_server_batches_questions_about_one_context(tiny_model, tmp_path, encode_calls):
    reader = Reader.load(reader_folder(tiny_model, tmp_path))

    async def run():
        batcher = MicroBatcher(answering(reader.answer_many), max_items=4, max_wait_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([(q, CONTEXT, 1)]) for q in QUESTIONS * 2))
        await batcher.stop()
        return results

    results = asyncio.run(run())
    assert len(results) == 2 * len(QUESTIONS)
    assert times_tokenized(encode_calls, CONTEXT) == 1  # several batches (max_items=4), one tokenization
