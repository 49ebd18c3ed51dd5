"""Fine-tuning: the loss falls, pinned numbers, exact resume, outputs, clear errors up front."""

import json

import numpy as np
import pytest
import torch
from conftest import write_people
from safetensors.numpy import load_file

from spanqa.data.sources import DataError
from spanqa.models import ModelError
from spanqa.qa.config import TrainConfig, build_config
from spanqa.qa.train import train
from spanqa.qa.windows import WindowError
from spanqa.training.config import ConfigError
from spanqa.training.engine import epoch_batches


def tiny_config(tmp_path, model, **kw) -> TrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = dict(model=str(model), train_file=str(write_people(tmp_path / "train.json", 24)),
                dev_file=str(write_people(tmp_path / "dev.json", 6, offset=100)),
                output_dir=str(tmp_path / "out"), max_seq_length=64, doc_stride=16, max_query_length=16,
                batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, epochs=3, log_steps=1, save_steps=4,
                eval_batch_size=16, precision="fp32")  # pinned numbers must not depend on the CPU's bf16
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_and_outputs_are_written(tmp_path, tiny_model):
    cfg = tiny_config(tmp_path, tiny_model, epochs=6)
    metrics = train(cfg)
    out = tmp_path / "out"
    history = json.loads((out / "history.json").read_text())
    losses = [h["training_loss"] for h in history if "training_loss" in h]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert sum("valid_loss" in h for h in history) >= 6  # one evaluation per epoch (+ final)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "spanqa.json", "history.json",
                 "learning_curve.png", "predictions.json", "nbest_predictions.json", "metrics.json"):
        assert (out / name).exists(), name
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 12 and set(metrics) >= {"exact_match", "f1", "valid_loss", "start_accuracy"}
    from transformers import AutoModelForQuestionAnswering

    AutoModelForQuestionAnswering.from_pretrained(out)  # a plain HF model folder


def test_pinned_loss(tmp_path, tiny_model):
    """Fixed seed, tiny model, 6 steps: a silent change in data order, labels or the loop moves this."""
    train(tiny_config(tmp_path, tiny_model, max_steps=6))
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    losses = [round(h["training_loss"], 4) for h in history if "training_loss" in h]
    assert losses == pytest.approx(PINNED_LOSSES, abs=2e-3), losses


PINNED_LOSSES = [3.4239, 3.313, 3.2695, 3.3666, 3.2548, 3.2112]


def test_resume_after_interruption_gives_the_same_weights(tmp_path, tiny_model):
    full = tiny_config(tmp_path / "a", tiny_model, max_steps=10)
    train(full)

    interrupted = tiny_config(tmp_path / "b", tiny_model, max_steps=10)

    def stop_at_6(step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="resume"):
        train(interrupted, on_step=stop_at_6)
    interrupted.resume = True
    train(interrupted)  # continues from the checkpoint of step 4
    a = load_file(tmp_path / "a" / "out" / "model.safetensors")
    b = load_file(tmp_path / "b" / "out" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    ha = json.loads((tmp_path / "a" / "out" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "out" / "history.json").read_text())
    assert [h["step"] for h in ha if "training_loss" in h] == [h["step"] for h in hb if "training_loss" in h]


def test_half_precision_checkpoints_train_with_fp32_weights(tmp_path, tiny_model):
    """transformers 5 keeps a checkpoint's dtype by default; fp16 master weights would not train."""
    from spanqa.models import load_qa_model

    half = tmp_path / "half"
    load_qa_model(str(tiny_model)).half().save_pretrained(half)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (half / f).write_bytes((tiny_model / f).read_bytes())
    assert {p.dtype for p in load_qa_model(str(half)).parameters()} == {torch.float32}
    metrics = train(tiny_config(tmp_path, half, max_steps=4, epochs=0))
    assert np.isfinite(metrics["f1"])
    assert {a.dtype for a in load_file(str(tmp_path / "out" / "model.safetensors")).values()} == {np.dtype("float32")}


def test_bf16_autocast_on_cpu_trains_like_fp32_with_fp32_weights(tmp_path, tiny_model):
    def losses(name, precision):
        train(tiny_config(tmp_path / name, tiny_model, max_steps=6, precision=precision))
        history = json.loads((tmp_path / name / "out" / "history.json").read_text())
        return np.array([h["training_loss"] for h in history if "training_loss" in h])

    fp32, bf16 = losses("fp32", "fp32"), losses("bf16", "bf16")
    assert not np.array_equal(fp32, bf16)  # bf16 matmuls really ran
    np.testing.assert_allclose(bf16, fp32, rtol=0.02)
    weights = load_file(str(tmp_path / "bf16" / "out" / "model.safetensors")).values()
    assert {a.dtype for a in weights} == {np.dtype("float32")}


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, tiny_model, monkeypatch):
    """--precision bf16 where the CPU only emulates it (reading 6-7x slower than fp32, BENCHMARKS.md) says so."""
    import warnings

    from spanqa.training import engine

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        train(tiny_config(tmp_path / "bf16", tiny_model, max_steps=2, precision="bf16"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_config(tmp_path / "auto", tiny_model, max_steps=2, precision="auto"))  # auto: fp32 here
    assert not [w for w in caught if "emulated" in str(w.message)]


def test_epoch_batches_are_reproducible_and_cover_everything():
    lengths = np.random.default_rng(0).integers(10, 100, size=103)
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(lengths, 8, seed=1, epoch=0)]
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(lengths, 8, seed=1, epoch=1)]


def test_version_2_training_and_calibrated_threshold(tmp_path, tiny_model):
    cfg = tiny_config(tmp_path, tiny_model, version_2=True, max_steps=8,
                      train_file=str(write_people(tmp_path / "t2.json", 12, unanswerable=True)),
                      dev_file=str(write_people(tmp_path / "d2.json", 4, offset=50, unanswerable=True)))
    metrics = train(cfg)
    assert "HasAns_f1" in metrics and "NoAns_f1" in metrics and "best_f1" in metrics
    settings = json.loads((tmp_path / "out" / "spanqa.json").read_text())
    assert settings["decoding"]["version_2"] is True
    assert settings["decoding"]["null_threshold"] == metrics["null_threshold"]
    assert (tmp_path / "out" / "null_odds.json").exists()


def test_unanswerable_training_data_needs_version_2(tmp_path, tiny_model):
    cfg = tiny_config(tmp_path, tiny_model, train_file=str(write_people(tmp_path / "t2.json", 4, unanswerable=True)))
    with pytest.raises(DataError, match="--version-2"):
        train(cfg)


@pytest.mark.parametrize("change, error, match", [
    ({"model": "/no/such/model"}, ModelError, "does not exist"),
    ({"max_seq_length": 256}, WindowError, "larger than the model allows"),
    ({"doc_stride": 60}, WindowError, "doc_stride"),
])
def test_bad_settings_fail_before_training(tmp_path, tiny_model, change, error, match):
    with pytest.raises(error, match=match):
        train(tiny_config(tmp_path, {**{"model": tiny_model}, **change}.pop("model"),
                          **{k: v for k, v in change.items() if k != "model"}))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_empty_training_set_and_dev_without_answers(tmp_path, tiny_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="training set is empty"):
        train(tiny_config(tmp_path, tiny_model, train_file=str(empty)))
    no_answers = tmp_path / "dev.jsonl"
    no_answers.write_text(json.dumps({"id": "x", "title": "", "context": "abc def", "question": "what?",
                                      "answers": {"text": [], "answer_start": []}}) + "\n")
    with pytest.raises(DataError, match="no answers to score"):
        train(tiny_config(tmp_path, tiny_model, dev_file=str(no_answers)))


def test_config_layers_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("batch_size: 7\nlearning_rate: 2.0e-5\n")
    cfg = build_config("cpu-fast", str(yaml_file), batch_size=9)
    assert (cfg.batch_size, cfg.learning_rate, cfg.max_seq_length) == (9, 2e-5, 256)
    yaml_file.write_text("batch_sise: 7\n")
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(None, str(yaml_file))
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_answer_windows_only_trains_on_the_windows_that_hold_the_answer(tmp_path, tiny_model):
    from spanqa.qa.train import QATask

    every = QATask(tiny_config(tmp_path, tiny_model, max_seq_length=24, doc_stride=4))
    every.prepare(show=False)
    only = QATask(tiny_config(tmp_path, tiny_model, max_seq_length=24, doc_stride=4, answer_windows_only=True))
    only.prepare(show=False)
    w = only.train_w
    holds = np.asarray(w.start_positions) != np.asarray(w.cls_index)
    assert 0 < holds.sum() < len(w)  # the tiny data has windows without their answer
    assert len(every.lengths()) == len(w) and len(only.lengths()) == holds.sum()
    rows = only.window_rows(np.arange(len(only.lengths()))[::-1])
    assert list(rows) == list(np.flatnonzero(holds))
    metrics = train(only.config)  # and it trains end to end
    assert "f1" in metrics
    with pytest.raises(ConfigError, match="v2"):
        tiny_config(tmp_path, tiny_model, answer_windows_only=True, version_2=True)
