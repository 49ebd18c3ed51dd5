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


NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
CITIES = ["Paris", "Lagos", "Osaka", "Quito", "Oslo", "Perth", "Cairo", "Lima", "Riga", "Hanoi", "Turin", "Dakar"]
JOBS = ["baker", "pilot", "nurse", "judge", "chemist", "farmer", "painter", "sailor", "teacher", "miner", "poet", "tailor"]


def people_examples(n: int, offset: int = 0) -> list[dict]:
    """Synthetic SQuAD records: who was born where, who worked as what."""
    records = []
    for i in range(offset, offset + n):
        name, city, job = NAMES[i % 12], CITIES[(i * 5) % 12], JOBS[(i * 7) % 12]
        year = 1900 + (i * 13) % 100
        context = f"{name} was born in {city} in {year}. Later {name} worked as a {job} for many years."
        for kind, question, answer in (("city", f"Where was {name} born?", city),
                                       ("job", f"What did {name} work as?", job)):
            records.append({"id": f"{kind}{i}", "question": question, "context": context,
                            "answers": [{"text": answer, "answer_start": context.index(answer)}]})
    return records


def write_people(path: Path, n: int, offset: int = 0, unanswerable: bool = False) -> Path:
    qas_by_context: dict[str, list] = {}
    for r in people_examples(n, offset):
        qas_by_context.setdefault(r["context"], []).append({"id": r["id"], "question": r["question"],
                                                           "answers": r["answers"]})
    if unanswerable:
        for k, (context, qas) in enumerate(qas_by_context.items()):
            qas.append({"id": f"none{offset}_{k}", "question": "Which river flows through the town?",
                        "answers": [], "is_impossible": True})
    data = [{"title": "people", "paragraphs": [{"context": c, "qas": q} for c, q in qas_by_context.items()]}]
    path.write_text(json.dumps({"version": "v2.0" if unanswerable else "1.1", "data": data}))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 32-wide BERT with the packaged tokenizer: trains in seconds."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny_bert")
    BertForQuestionAnswering(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path_factory.getbasetemp() / "spanqa-cache"))
