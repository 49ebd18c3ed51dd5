"""Distillation of a QA reader: the student learns from the teacher's start/end distributions (KL at
temperature T, scaled by T^2, as Hinton et al. and DistilBERT) mixed with the gold labels.

    loss = alpha * T^2 * (KL(teacher_T || student_T)[start] + KL(...)[end]) / 2 + (1 - alpha) * gold CE

The teacher's logits are computed once, before training, into the memory-mapped cache
(`distill.teacher`); the null position (CLS) is part of both distributions, so v2 works unchanged.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spanqa.data.batches import model_inputs
from spanqa.distill.teacher import TeacherLogits, teacher_logits
from spanqa.qa.config import TrainConfig, default_data_file
from spanqa.qa.squad import Dataset, ExampleStream
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


class DistillTask(QATask):
    """The QA task with a teacher: the same windows, evaluation and outputs; the loss adds the teacher's."""

    def prepare(self, show: bool) -> None:
        super().prepare(show)
        config = self.config
        def examples() -> list:  # read again only if the teacher needs its own windows
            return self.train_set.examples if isinstance(self.train_set, Dataset) else _first_examples(config)

        self.teacher = teacher_logits(config.teacher, examples, self.train_w, self.tokenizer, config.windows,
                                      config.eval_batch_size, autocast_dtype_for(config.precision), show,
                                      config.trust_remote_code)

    def loss(self, model, rows: np.ndarray, device, epoch: int) -> torch.Tensor:
        rows = self.window_rows(rows)
        inputs, (lo, hi) = model_inputs(self.train_w, rows, device)
        out = model(**inputs)

        def columns(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array[rows, lo:hi]), dtype=torch.float32, device=device)

        gold = [torch.as_tensor(np.asarray(labels[rows]) - lo, dtype=torch.long, device=device)
                for labels in (self.train_w.start_positions, self.train_w.end_positions)]
        return distillation_loss(out.start_logits.float(), out.end_logits.float(), columns(self.teacher.start),
                                 columns(self.teacher.end), *gold, self.config.distill_alpha, self.config.temperature)


def _first_examples(config: TrainConfig) -> list:
    """The examples a streamed training file gave its windows (the teacher reads them when it tokenizes
    differently): the file is read again, as far as the windows went."""
    return list(islice(ExampleStream(config.train_file or default_data_file("train")), config.max_train_samples))


__all__ = ["DistillTask", "TeacherLogits", "distill", "distillation_loss"]
