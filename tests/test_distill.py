"""Distillation: the loss, teacher logits carried across tokenizers, cached once; smaller students."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import TINY_QAS, squad_json, write_people
from spanqa.distill.task import distill, distillation_loss
from spanqa.distill.teacher import map_to_student
from spanqa.models import keep_layers, load_qa_model, student_layer_choice
from spanqa.qa.config import TrainConfig
from spanqa.qa.squad import load_dataset
from spanqa.qa.windows import WindowSettings, build_windows


def test_distillation_loss_against_a_hand_computation():
    s_start, s_end = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    t_start, t_end = torch.tensor([[0.0, 4.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    gold_start, gold_end = torch.tensor([1]), torch.tensor([2])
    T, alpha = 2.0, 0.3

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    def kl(student, teacher):
        p, q = softmax(np.array(teacher) / T), softmax(np.array(student) / T)
        return float((p * np.log(p / q)).sum()) * T * T

    def ce(logits, gold):
        return -float(np.log(softmax(np.array(logits))[gold]))

    soft = (kl([1, 2, 0], [0, 4, 0]) + kl([0, 0, 3], [1, 1, 1])) / 2
    hard = (ce([1, 2, 0], 1) + ce([0, 0, 3], 2)) / 2
    got = distillation_loss(s_start, s_end, t_start, t_end, gold_start, gold_end, alpha, T).item()
    assert got == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-6)
    # alpha 0: the gold loss alone; a student equal to its teacher has no soft loss
    assert distillation_loss(s_start, s_end, t_start, t_end, gold_start, gold_end, 0.0, T).item() == pytest.approx(hard)
    assert distillation_loss(t_start, t_end, t_start, t_end, gold_start, gold_end, 1.0, T).item() == pytest.approx(0, abs=1e-6)


def test_offsets_carry_teacher_logits_to_another_tokenizer(tmp_path, tokenizer, roberta_tokenizer):
    """A teacher (BERT WordPiece) sure of the gold spans gives a RoBERTa-BPE student its gold spans."""
    path = tmp_path / "d.json"
    path.write_text(json.dumps(squad_json(TINY_QAS)))
    examples = load_dataset(path).examples
    settings = WindowSettings(max_seq_length=48, doc_stride=16, max_query_length=16)  # several windows each
    teacher_w = build_windows(examples, tokenizer, settings)
    student_w = build_windows(examples, roberta_tokenizer, settings)
    assert len(teacher_w) > len(examples) and len(student_w) > len(examples)
    t_start = np.zeros(teacher_w.input_ids.shape, dtype=np.float32)
    t_end = np.zeros_like(t_start)
    rows = np.arange(len(teacher_w))
    t_start[rows, teacher_w.start_positions] = 10.0  # the teacher's labels as its confident logits
    t_end[rows, teacher_w.end_positions] = 10.0
    start, end = map_to_student(teacher_w, t_start, t_end, student_w)
    answered = student_w.start_positions != student_w.cls_index
    assert answered.any()
    np.testing.assert_array_equal(start.argmax(axis=1)[answered], student_w.start_positions[answered])
    np.testing.assert_array_equal(end.argmax(axis=1)[answered], student_w.end_positions[answered])
    outside = np.asarray(student_w.offsets)[..., 0] < 0  # question, separators, padding: no probability
    outside[np.arange(len(student_w)), student_w.cls_index] = False
    assert (start[outside] < -1000).all() and (end[outside] < -1000).all()


def tiny_config(tmp_path, model, **kw) -> TrainConfig:
    base = dict(model=str(model), train_file=str(write_people(tmp_path / "train.json", 16)),
                dev_file=str(write_people(tmp_path / "dev.json", 4, offset=100)), output_dir=str(tmp_path / "out"),
                max_seq_length=64, doc_stride=16, max_query_length=16, batch_size=4, learning_rate=1e-3,
                warmup_ratio=0.0, epochs=3, log_steps=1, save_steps=100, eval_batch_size=16, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def test_teacher_logits_are_computed_once(tmp_path, tiny_model, monkeypatch):
    import spanqa.distill.teacher as teacher_module

    calls = []
    real = teacher_module.compute_logits
    monkeypatch.setattr(teacher_module, "compute_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    metrics = distill(tiny_config(tmp_path, tiny_model, teacher=str(tiny_model)))  # 3 epochs, 3 evaluations
    assert len(calls) == 1 and np.isfinite(metrics["f1"])
    distill(tiny_config(tmp_path, tiny_model, teacher=str(tiny_model), output_dir=str(tmp_path / "again")))
    assert len(calls) == 1  # the second run reads the cache


def test_a_student_learns_from_a_teacher_with_another_tokenizer(tmp_path, tiny_model, roberta_tokenizer):
    from transformers import RobertaConfig, RobertaForQuestionAnswering

    student = tmp_path / "roberta"
    RobertaForQuestionAnswering(RobertaConfig(vocab_size=len(roberta_tokenizer), hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                              pad_token_id=roberta_tokenizer.pad_token_id)).save_pretrained(student)
    roberta_tokenizer.save_pretrained(student)
    cfg = tiny_config(tmp_path, student, teacher=str(tiny_model), distill_alpha=0.7, epochs=2)
    metrics = distill(cfg)
    assert np.isfinite(metrics["f1"]) and (tmp_path / "out" / "model.safetensors").exists()
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert all(np.isfinite(h["training_loss"]) for h in history if "training_loss" in h)


def test_smaller_students_keep_evenly_spaced_layers(tmp_path, tiny_model):
    assert student_layer_choice(6, 3) == [0, 2, 4] and student_layer_choice(12, 6) == [0, 2, 4, 6, 8, 10]
    full = load_qa_model(str(tiny_model))
    cut = keep_layers(load_qa_model(str(tiny_model)), 1)
    assert len(cut.bert.encoder.layer) == 1 and cut.config.num_hidden_layers == 1
    torch.testing.assert_close(cut.bert.encoder.layer[0].state_dict(), full.bert.encoder.layer[0].state_dict())
    train_metrics = distill(tiny_config(tmp_path, tiny_model, teacher=str(tiny_model), student_layers=1, epochs=1))
    assert np.isfinite(train_metrics["f1"])
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert not any(".layer.1." in k for k in saved)
    from spanqa.qa.reader import Reader

    reader = Reader.load(str(tmp_path / "out"))
    assert reader.model.config.num_hidden_layers == 1
    reader.answer("Where was Alice born?", "Alice was born in Paris in 1900.")
