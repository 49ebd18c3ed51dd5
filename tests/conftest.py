"""Shared fixtures: tiny data written by the tests, the packaged tokenizer, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"

CONTEXT = ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris. "
           "It was designed by the engineering company of Gustave Eiffel. "
           "The tower is 330 metres tall and was the tallest man-made structure for 41 years.")


def squad_json(qas: list[dict], context: str = CONTEXT, version: str = "1.1", title: str = "Eiffel") -> dict:
    return {"version": version, "data": [{"title": title, "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(qid: str, question: str, text: str | None, context: str = CONTEXT) -> dict:
    if text is None:
        return {"id": qid, "question": question, "answers": [], "is_impossible": True}
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": context.index(text)}]}


TINY_QAS = [
    qa("q1", "When was the Eiffel Tower completed?", "1889"),
    qa("q2", "Who designed the tower?", "the engineering company of Gustave Eiffel"),
    qa("q3", "How tall is the tower?", "330 metres"),
    qa("q4", "For how many years was it the tallest structure?", "41 years"),
]


@pytest.fixture
def tiny_squad(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(squad_json(TINY_QAS)))
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from spanqa.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def roberta_tokenizer(tmp_path_factory):
    """A byte-level BPE (RoBERTa-style: no token_type_ids, <s> </s></s>) tokenizer trained here."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(trim_offsets=True)
    bpe.train_from_iterator([CONTEXT, *(q["question"] for q in TINY_QAS)] * 5, vocab_size=400,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")),
                                                      ("<s>", bpe.token_to_id("<s>")), trim_offsets=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  sep_token="</s>", cls_token="<s>", pad_token="<pad>", unk_token="<unk>",
                                  mask_token="<mask>", model_input_names=["input_ids", "attention_mask"])
    return tok
