"""Distillation of a QA reader: the student learns from the teacher's start/end distributions (KL at
temperature T, scaled by T^2, as Hinton et al. and DistilBERT) mixed with the gold labels.

    loss = alpha * T^2 * (KL(teacher_T || student_T)[start] + KL(...)[end]) / 2 + (1 - alpha) * gold CE

The teacher's logits are computed once, before training, into the memory-mapped cache
(`distill.teacher`); the null position (CLS) is part of both distributions, so v2 works unchanged.

With `distill_hidden` > 0 the loss adds that weight times a hidden-state loss (Patient KD, Sun et al.
2019; TinyBERT): the mean squared distance between each student layer's output and the teacher's at
the matching depth, over real tokens. Hidden states are too large to cache (a window's are 6 x 256 x
384 floats), so the teacher reads each batch again: a forward pass without gradients, about 1.7x the
per-step cost of a 3-layer student.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spanqa.data.batches import model_inputs
from spanqa.data.cache import fingerprint_tokenizer
from spanqa.distill.teacher import TeacherLogits, teacher_logits
from spanqa.models import load_qa_model, load_tokenizer, student_layer_choice
from spanqa.qa.config import TrainConfig
from spanqa.qa.squad import Dataset
from spanqa.qa.train import QATask
from spanqa.training.config import ConfigError
from spanqa.training.engine import autocast_dtype_for, run


def distill(config: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Train a student reader from `config.teacher`; writes the reader folder; returns the final metrics."""
    if not config.teacher:
        raise ConfigError("distillation needs --teacher READER")
    return run(DistillTask(config), config, on_step)


def distillation_loss(start: torch.Tensor, end: torch.Tensor, teacher_start: torch.Tensor, teacher_end: torch.Tensor,
                      gold_start: torch.Tensor, gold_end: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Soft (teacher, KL at T, times T^2) and hard (gold cross-entropy) losses of start and end, mixed by alpha."""
    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                        reduction="batchmean", log_target=True) * temperature ** 2

    soft = (kl(start, teacher_start) + kl(end, teacher_end)) / 2
    hard = (F.cross_entropy(start, gold_start) + F.cross_entropy(end, gold_end)) / 2
    return alpha * soft + (1 - alpha) * hard


def hidden_targets(teacher_layers: int, student_layers: int) -> list[int]:
    """For each student layer, the teacher hidden state (index into `hidden_states`, 0 = embeddings) its
    output learns: the input of the teacher layer after the one it was taken from (`student_layer_choice`),
    the teacher's last layer for the last. Of 6 layers, a 3-layer student (0, 2, 4) learns 2, 4, 6."""
    return student_layer_choice(teacher_layers, student_layers)[1:] + [teacher_layers]


def hidden_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], mask: torch.Tensor,
                targets: list[int]) -> torch.Tensor:
    """Mean over the student's layers of the squared distance to the teacher's hidden state at `targets`,
    averaged over hidden units and real (unmasked) tokens."""
    weights = mask.float() / mask.sum()
    per_layer = [(((s.float() - teacher[t].float()) ** 2).mean(-1) * weights).sum()
                 for s, t in zip(student[1:], targets)]
    return torch.stack(per_layer).mean()


class DistillTask(QATask):
    """The QA task with a teacher: the same windows, evaluation and outputs; the loss adds the teacher's."""

    def prepare(self, show: bool) -> None:
        super().prepare(show)
        config = self.config
        def examples() -> list:  # read again only if the teacher needs its own windows
            return self.train_set.examples if isinstance(self.train_set, Dataset) else _first_examples(config)

        # checked before the teacher's logits (minutes on a large set) are computed
        self.hidden_teacher = _hidden_teacher(config, self.tokenizer) if config.distill_hidden else None
        self.teacher = teacher_logits(config.teacher, examples, self.train_w, self.tokenizer, config.windows,
                                      config.eval_batch_size, autocast_dtype_for(config.precision), show,
                                      config.trust_remote_code)

    def loss(self, model, rows: np.ndarray, device, epoch: int) -> torch.Tensor:
        rows = self.window_rows(rows)
        inputs, (lo, hi) = model_inputs(self.train_w, rows, device)
        out = model(**inputs, output_hidden_states=self.hidden_teacher is not None)

        def columns(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array[rows, lo:hi]), dtype=torch.float32, device=device)

        gold = [torch.as_tensor(np.asarray(labels[rows]) - lo, dtype=torch.long, device=device)
                for labels in (self.train_w.start_positions, self.train_w.end_positions)]
        loss = distillation_loss(out.start_logits.float(), out.end_logits.float(), columns(self.teacher.start),
                                 columns(self.teacher.end), *gold, self.config.distill_alpha, self.config.temperature)
        if self.hidden_teacher is not None:
            teacher = self.hidden_teacher.to(device)
            with torch.no_grad():
                hidden = teacher.base_model(**inputs, output_hidden_states=True).hidden_states
            targets = hidden_targets(len(hidden) - 1, len(out.hidden_states) - 1)
            loss = loss + self.config.distill_hidden * hidden_loss(out.hidden_states, hidden,
                                                                    inputs["attention_mask"], targets)
        return loss


def _hidden_teacher(config: TrainConfig, student_tokenizer) -> torch.nn.Module:
    """The teacher model, frozen, for hidden-state distillation: it must read the student's own windows
    (the same tokenizer) and have the student's hidden size (no projection is learned)."""
    from transformers import AutoConfig

    teacher_tokenizer = load_tokenizer(config.teacher, config.trust_remote_code)
    if fingerprint_tokenizer(teacher_tokenizer) != fingerprint_tokenizer(student_tokenizer):
        raise ConfigError("--distill-hidden needs a teacher that tokenizes as the student does (the hidden states "
                          "of different tokens cannot be compared); use logit distillation alone (--distill-hidden 0)")
    sizes = [AutoConfig.from_pretrained(m, trust_remote_code=config.trust_remote_code).hidden_size
             for m in (config.teacher, config.model)]
    if sizes[0] != sizes[1]:
        raise ConfigError(f"--distill-hidden needs the same hidden size in teacher and student ({sizes[0]} vs "
                          f"{sizes[1]}); use logit distillation alone (--distill-hidden 0)")
    return load_qa_model(config.teacher, config.trust_remote_code).eval().requires_grad_(False)


def _first_examples(config: TrainConfig) -> list:
    """The examples a streamed training file gave its windows (the teacher reads them when it tokenizes
    differently): the file is read again, as far as the windows went."""
    from itertools import islice

    from spanqa.qa.config import default_data_file
    from spanqa.qa.squad import ExampleStream

    return list(islice(ExampleStream(config.train_file or default_data_file("train")), config.max_train_samples))


__all__ = ["DistillTask", "TeacherLogits", "distill", "distillation_loss", "hidden_loss", "hidden_targets"]
