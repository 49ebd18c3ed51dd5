"""Masked-LM pretraining: tokenizer, packing, masking, the MLM task on the engine, and the chain to QA."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import write_people
from spanqa.data.documents import CollectionError
from spanqa.mlm.corpus import packed_sequences
from spanqa.mlm.masking import IGNORE, mask_rows
from spanqa.mlm.task import MLMTask, PretrainConfig, masked_lm_loss, pretrain
from spanqa.mlm.tokenizer import train_wordpiece
from spanqa.models import ModelError, load_mlm_model, load_tokenizer
from spanqa.training.config import ConfigError

ANIMALS = ["cat", "dog", "horse", "sheep", "goat", "duck", "mouse", "tiger"]
FOODS = ["milk", "bones", "hay", "grass", "leaves", "bread", "cheese", "meat"]


def write_corpus(folder, documents: int = 60):
    """Small text files with a learnable pattern: each animal always eats the same food."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(documents):
        lines = []
        for s in range(6):
            k = (d * 3 + s) % len(ANIMALS)
            lines.append(f"The {ANIMALS[k]} eats {FOODS[k]} every morning and sleeps in the barn.")
        (folder / f"doc{d:03d}.txt").write_text(" ".join(lines) + "\n\nUnbelievably, everything happened again.\n")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def wordpiece(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "wordpiece"
    train_wordpiece([corpus], out, vocab_size=120, min_frequency=1)
    return out


def test_tokenizer_round_trip(wordpiece):
    tok = load_tokenizer(str(wordpiece))  # what every spanqa command uses to load a tokenizer
    assert tok.is_fast and len(tok) == 120
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    enc = tok("The cat eats milk.", "Who sleeps?")
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[0] == "[CLS]" and pieces.count("[SEP]") == 2 and max(enc["token_type_ids"]) == 1
    assert tok.decode(tok("The Cat eats MILK.")["input_ids"], skip_special_tokens=True) == "the cat eats milk."
    assert tok.tokenize("catdog")[0] == "cat" and tok.tokenize("catdog")[1].startswith("##")  # unseen: pieces


def test_packing_fills_sequences_across_documents(corpus, wordpiece):
    tok = load_tokenizer(str(wordpiece))
    table, stats = packed_sequences([corpus], tok, max_seq_length=32)
    assert stats["documents"] == 60
    full = np.asarray(table.attention_mask).sum(axis=1)
    assert (full[:-1] == 32).all()  # only the last row may be short
    ids = np.asarray(table.input_ids)
    assert (ids[:, 0] == tok.cls_token_id).all()
    assert (ids[np.arange(len(ids)), full - 1] == tok.sep_token_id).all()
    body = ids[:, 1:-1][np.asarray(table.attention_mask)[:, 1:-1] == 1]
    assert (body == tok.sep_token_id).sum() >= 59  # a [SEP] between consecutive documents
    assert stats["tokens"] == (body != tok.sep_token_id).sum() + (ids[-1, full[-1] - 1] != tok.sep_token_id)


def test_masking_statistics_and_determinism():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, size=(64, 512))
    ids[:, 0], ids[:, -1] = 2, 3
    word_start = np.ones_like(ids, dtype=bool)
    rows = np.arange(100, 164)
    masked, labels = mask_rows(ids, word_start, rows, [0, 1, 2, 3, 4], 4, 1000, seed=7, epoch=0)
    chosen = labels != IGNORE
    assert 0.14 < chosen.mean() < 0.16
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # never [CLS]/[SEP]
    assert (labels[chosen] == ids[chosen]).all()
    as_mask = (masked[chosen] == 4).mean()
    unchanged = (masked[chosen] == ids[chosen]).mean()
    assert 0.77 < as_mask < 0.83 and 0.08 < unchanged < 0.12
    # a pure function of (seed, epoch, row): another batching of the same rows gives the same masks
    again, labels2 = mask_rows(ids[::-1], word_start, rows[::-1], [0, 1, 2, 3, 4], 4, 1000, seed=7, epoch=0)
    np.testing.assert_array_equal(again[::-1], masked)
    np.testing.assert_array_equal(labels2[::-1], labels)
    other, _ = mask_rows(ids, word_start, rows, [0, 1, 2, 3, 4], 4, 1000, seed=7, epoch=1)
    assert not np.array_equal(other, masked)


def test_whole_word_masking_masks_every_piece_of_a_word():
    ids = np.tile(np.arange(10, 70), (200, 1))
    word_start = np.zeros_like(ids, dtype=bool)
    word_start[:, ::3] = True  # words of three pieces
    _, labels = mask_rows(ids, word_start, np.arange(200), [0], 4, 100, seed=1, epoch=0, whole_word=True)
    chosen = (labels != IGNORE).reshape(200, 20, 3)
    assert (chosen.all(axis=2) | ~chosen.any(axis=2)).all()  # all three pieces, or none
    assert 0.12 < chosen[:, :, 0].mean() < 0.18


def test_head_on_masked_tokens_only_equals_the_full_loss(tiny_mlm):
    model = load_mlm_model(str(tiny_mlm)).eval()
    ids = torch.randint(5, 100, (3, 12))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 2], labels[2, 5], labels[2, 9] = 7, 8, 9
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert masked_lm_loss(model, inputs, labels).item() == pytest.approx(model(**inputs, labels=labels).loss.item(), abs=1e-5)


def scratch_config(tmp_path, corpus, wordpiece, **kw) -> PretrainConfig:
    base = dict(corpus=[str(corpus)], from_scratch=True, size="tiny", tokenizer=str(wordpiece),
                output_dir=str(tmp_path / "mlm"), max_seq_length=32, batch_size=8, learning_rate=2e-3,
                warmup_ratio=0.0, epochs=4, log_steps=2, save_steps=5, valid_fraction=0.1, precision="fp32")
    base.update(kw)
    return PretrainConfig(**base)


def test_from_scratch_mlm_loss_falls_and_outputs(tmp_path, corpus, wordpiece):
    metrics = pretrain(scratch_config(tmp_path, corpus, wordpiece))
    out = tmp_path / "mlm"
    history = json.loads((out / "history.json").read_text())
    losses = [h["training_loss"] for h in history if "training_loss" in h]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3])
    # from chance (uniform over 120 tokens: ln 120 = 4.8) to at least the corpus' token frequencies
    assert metrics["valid_loss"] < np.log(120) - 1 and metrics["masked_accuracy"] > 0.1
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["valid_loss"]))
    # the final metrics reuse the last epoch's evaluation of the same step (the MLM task's evaluation returns no
    # payload, which once made the engine evaluate the last step twice)
    evaluated = [h["step"] for h in history if "masked_accuracy" in h]
    assert len(evaluated) == len(set(evaluated)) and evaluated[-1] == metrics["steps"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "spanqa.json", "learning_curve.png"):
        assert (out / name).exists(), name
    from transformers import AutoModelForMaskedLM

    assert type(AutoModelForMaskedLM.from_pretrained(out)).__name__ == "BertForMaskedLM"


def test_training_without_dropout_saves_a_model_that_fine_tunes_with_it(tmp_path, corpus, wordpiece, monkeypatch):
    """--dropout is the engine's: every Dropout module (attention's too) drops at that rate while training, and the
    saved config keeps the model's own rate for fine-tuning."""
    rates, loss = [], MLMTask.loss

    def watched(self, model, rows, device, epoch):
        rates.append({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})
        return loss(self, model, rows, device, epoch)

    monkeypatch.setattr(MLMTask, "loss", watched)
    config = scratch_config(tmp_path, corpus, wordpiece, dropout=0.0, max_steps=2, epochs=0)
    pretrain(config)
    assert rates == [{0.0}, {0.0}]
    saved = json.loads((tmp_path / "mlm" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.1
    assert json.loads((tmp_path / "mlm" / "spanqa.json").read_text())["training"]["dropout"] == 0.0
    rates.clear()
    pretrain(scratch_config(tmp_path / "default", corpus, wordpiece, max_steps=1, epochs=0))
    assert rates == [{0.1}]  # no --dropout: the model's own
    with pytest.raises(ConfigError, match="dropout"):
        PretrainConfig(corpus=[str(corpus)], dropout=1.0)


def test_pretraining_resumes_exactly(tmp_path, corpus, wordpiece):
    pretrain(scratch_config(tmp_path / "a", corpus, wordpiece, max_steps=9, epochs=0))
    interrupted = scratch_config(tmp_path / "b", corpus, wordpiece, max_steps=9, epochs=0)

    def stop_at_7(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="resume"):
        pretrain(interrupted, on_step=stop_at_7)
    interrupted.resume = True
    pretrain(interrupted)  # from the checkpoint of step 5: the masks of steps 6-9 are drawn again, identically
    a, b = (load_file(tmp_path / x / "mlm" / "model.safetensors") for x in "ab")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_packaged_encoder_continues_pretraining_then_becomes_a_reader(tmp_path, corpus):
    """Domain-adaptive pretraining of the packaged MiniLM (new MLM head tied to its embeddings), then
    `spanqa train --model` on the result."""
    from spanqa.qa.config import TrainConfig
    from spanqa.qa.train import train

    metrics = pretrain(PretrainConfig(corpus=[str(corpus)], output_dir=str(tmp_path / "dapt"), max_steps=3, epochs=0,
                                      batch_size=4, max_seq_length=32, eval_batch_size=8, max_valid_sequences=8,
                                      log_steps=1, precision="fp32"))
    assert np.isfinite(metrics["valid_loss"])
    weights = load_file(tmp_path / "dapt" / "model.safetensors")
    assert any(k.startswith("cls.predictions") for k in weights)
    qa = train(TrainConfig(model=str(tmp_path / "dapt"), train_file=str(write_people(tmp_path / "t.json", 8)),
                           dev_file=str(write_people(tmp_path / "d.json", 2, offset=50)), output_dir=str(tmp_path / "qa"),
                           max_seq_length=64, doc_stride=16, max_query_length=16, batch_size=4, max_steps=2,
                           epochs=0, precision="fp32", log_steps=1))
    assert np.isfinite(qa["f1"])
    reader_weights = load_file(tmp_path / "qa" / "model.safetensors")
    assert "qa_outputs.weight" in reader_weights and not any(k.startswith("cls.") for k in reader_weights)


def test_continued_pretraining_of_a_reader_warns(tmp_path, corpus, tiny_model):
    with pytest.warns(UserWarning, match="destroy the reader"):
        pretrain(PretrainConfig(corpus=[str(corpus)], model=str(tiny_model), output_dir=str(tmp_path / "o"),
                                max_steps=1, epochs=0, batch_size=4, max_seq_length=32, precision="fp32"))


@pytest.mark.parametrize("case, error, match", [
    ("empty", CollectionError, "no text"),
    ("latin1", CollectionError, "not UTF-8"),
    ("too_long", ConfigError, "larger than the model allows"),
    ("small", CollectionError, "fewer than one batch"),
    ("vocab", ModelError, "embeds only"),
])
def test_bad_input_fails_before_training(tmp_path, corpus, wordpiece, tiny_mlm, case, error, match):
    folder = tmp_path / "c"
    folder.mkdir()
    kw = dict(corpus=[str(folder)], model=str(tiny_mlm), output_dir=str(tmp_path / "out"), max_seq_length=32,
              batch_size=8, max_steps=1, epochs=0, precision="fp32")
    if case == "empty":
        (folder / "a.txt").write_text("   \n\n")
    elif case == "latin1":
        (folder / "a.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    elif case == "too_long":
        kw["corpus"], kw["max_seq_length"] = [str(corpus)], 256
    elif case == "small":
        (folder / "a.txt").write_text("Only a few words here.")
    elif case == "vocab":
        kw["corpus"], kw["tokenizer"] = [str(corpus)], str(wordpiece)
        kw["model"] = str(tiny_mlm_small_vocab(tmp_path, wordpiece))
    with pytest.raises(error, match=match):
        pretrain(PretrainConfig(**kw))
    assert not (tmp_path / "out" / "checkpoints").exists()


def tiny_mlm_small_vocab(tmp_path, wordpiece):
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "small_vocab"
    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    load_tokenizer(str(wordpiece)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, tokenizer):
    """A 2-layer, 32-wide BERT masked-LM with the packaged tokenizer, 128 positions."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_mlm")
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
                    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
