"""Settings of a QA fine-tuning run: the engine's `LoopConfig` plus data, windows and decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanqa.qa.decode import DecodeSettings
from spanqa.qa.windows import WindowSettings
from spanqa.training.config import ConfigError, LoopConfig, layered_config


@dataclass
class TrainConfig(LoopConfig):
    """A QA fine-tuning run; `spanqa train --help` documents each flag."""

    train_file: str | None = None      # default: train-v1.1 in the data directory ($SPANQA_DATA)
    dev_file: str | None = None        # default: dev-v1.1 in the data directory, unless valid_split > 0
    valid_split: float = 0.0           # hold out this share of the training questions instead
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    version_2: bool = False            # train with unanswerable questions (CLS labels)
    answer_windows_only: bool = False  # v1.1: train only on the windows that hold the answer (no CLS labels)
    negatives: int = 0                 # > 0: per question, that many retrieved wrong passages as unanswerable
    student_layers: int | None = None  # keep this many of the encoder's layers (evenly spaced, the first included)
    teacher: str | None = None         # distillation: a trained reader whose start/end distributions are learned
    distill_alpha: float = 0.5         # weight of the teacher's loss (1 - alpha: the gold labels')
    temperature: float = 2.0           # softmax temperature of the distillation loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.valid_split < 1:
            raise ConfigError("valid_split must be in [0, 1)")
        if self.max_seq_length < 1:
            raise ConfigError("max_seq_length must be >= 1")
        if self.negatives < 0:
            raise ConfigError("negatives must be >= 0")
        if self.negatives:
            self.version_2 = True  # a wrong passage is labelled "no answer" (CLS)
        if self.answer_windows_only and self.version_2:
            raise ConfigError("answer_windows_only drops the no-answer (CLS) labels that a v2 reader learns from; "
                              "use it without --version-2/--negatives")
        if self.student_layers is not None and self.student_layers < 1:
            raise ConfigError("student_layers must be >= 1")
        if not 0 <= self.distill_alpha <= 1 or self.temperature <= 0:
            raise ConfigError("distill_alpha must be in [0, 1] and temperature > 0")

    @property
    def windows(self) -> WindowSettings:
        return WindowSettings(self.max_seq_length, self.doc_stride, self.max_query_length)

    @property
    def decoding(self) -> DecodeSettings:
        return DecodeSettings(n_best=self.n_best, max_answer_length=self.max_answer_length, version_2=self.version_2)


def build_config(recipe: str | None = None, config: str | None = None, **overrides: Any) -> TrainConfig:
    """A QA run's settings: defaults < recipe < YAML config < explicit overrides (None means not given)."""
    return layered_config(TrainConfig, recipe, config, **overrides)

def data_dir() -> Path:
    """Where the default SQuAD files live: $SPANQA_DATA, else ../shared/data/squad beside the project."""
    env = os.environ.get("SPANQA_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "squad"


def default_data_file(kind: str) -> str:
    """The train or dev SQuAD v1.1 file in the data directory."""
    folder = data_dir()
    names = {"train": ["train-v1.1.json", "train-v1.1.json.gz", "train-v1.1.reconstructed.json.gz"],
             "dev": ["dev-v1.1.json", "dev-v1.1.json.gz"]}[kind]
    for name in names:
        if (folder / name).exists():
            return str(folder / name)
    raise ConfigError(f"no SQuAD {kind} file in {folder} (looked for {', '.join(names)}); "
                      f"set SPANQA_DATA to a folder that has one, or pass --{kind}-file")
