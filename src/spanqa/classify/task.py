"""Fine-tuning a sentence (pair) classifier or regressor: the classification task on the training engine.

Training rows are tokenized sentences in the memory-mapped cache; the loss is the model's own
(cross-entropy, or MSE with one output for regression); evaluation scores dev with the GLUE metrics;
the output is a classifier folder (HF model with id2label/label2id + `spanqa.json`) with dev predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spanqa.classify.classifier import (
    ClassifierSettings,
    compute_logits,
    is_classifier_folder,
    predictions_from_logits,
    write_predictions,
)
from spanqa.classify.glue import (
    GLUE_TASKS,
    DataFormat,
    TextDataset,
    check_same_labels,
    default_glue_file,
    label_names,
    load_texts,
)
from spanqa.classify.inputs import SentenceTable, cached_table
from spanqa.classify.metrics import classification_scores
from spanqa.classify.pooling import POOLINGS, encoder_pooling, use_pooling
from spanqa.data.batches import model_inputs
from spanqa.data.sources import DataError, held_out_split
from spanqa.files import atomic_write_json
from spanqa.models import (
    SETTINGS_FILE,
    load_classifier_model,
    load_tokenizer,
    max_positions,
    resolve_model,
)
from spanqa.progress import progress_bar
from spanqa.training.config import ConfigError, LoopConfig, layered_config
from spanqa.training.engine import run


@dataclass
class ClassifyConfig(LoopConfig):
    """A classification fine-tuning run; `spanqa classify train --help` documents each flag."""

    output_dir: str = "runs/classifier"
    task: str | None = None            # sst2 | mrpc | rte | cola | stsb: GLUE TSV columns, labels, metrics
    train_file: str | None = None      # default with --task: the task's train.tsv in $SPANQA_GLUE_DATA
    dev_file: str | None = None        # default with --task: its dev.tsv, unless valid_split > 0
    text_field: str = "text"           # without --task: the fields of CSV/TSV/JSONL/hub records
    pair_field: str | None = None
    label_field: str = "label"
    regression: bool = False           # numeric labels: one output, MSE loss (STS-B is one)
    valid_split: float = 0.0           # hold out this share of the training examples as dev instead
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128
    pooling: str | None = None         # cls | mean; default: a starting classifier's own, else the encoder's (encoder_pooling)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task is not None and self.task not in GLUE_TASKS:
            raise ConfigError(f"task must be one of {', '.join(GLUE_TASKS)}, not {self.task!r}")
        if not 0 <= self.valid_split < 1:
            raise ConfigError("valid_split must be in [0, 1)")
        if self.max_seq_length < 2:
            raise ConfigError("max_seq_length must be >= 2")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")

    @property
    def data_format(self) -> DataFormat:
        return DataFormat(self.task, self.text_field, self.pair_field, self.label_field, self.regression)


def build_config(recipe: str | None = None, config: str | None = None, **overrides: Any) -> ClassifyConfig:
    """A classification run's settings: defaults < recipe < YAML config < explicit overrides."""
    return layered_config(ClassifyConfig, recipe, config, **overrides)


def train(config: ClassifyConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Fine-tune `config.model` into a classifier folder; returns the final metrics."""
    return run(ClassifyTask(config), config, on_step)


class ClassifyTask:
    """Sentence (pair) classification or regression: token rows in, logits out, GLUE metrics."""

    unit = "examples"

    def __init__(self, config: ClassifyConfig):
        self.config = config
        self.format = config.data_format
        self.curve_metric = self.format.main_metric
        self.tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        limit = max_positions(config.model, config.trust_remote_code)
        if limit and config.max_seq_length > limit:
            raise ConfigError(f"max_seq_length {config.max_seq_length} is larger than the model allows ({limit})")
        self.train_set, self.dev_set = prepare_data(config)
        self.labels = label_names(self.train_set, self.format)
        self.settings = ClassifierSettings(self.format, self.labels, config.max_seq_length, self._pooling())

    def _pooling(self) -> str:
        """--pooling, else the pooling of the classifier training continues from, else the encoder's own:
        mean for sentence-transformers BERTs (the packaged MiniLM), [CLS] for the rest."""
        if self.config.pooling is not None:
            return self.config.pooling
        model = resolve_model(self.config.model)
        return ClassifierSettings.read(model).pooling if is_classifier_folder(model) else encoder_pooling(model)

    def prepare(self, show: bool) -> None:
        self.train_t = self._table("train", self.train_set, show)
        self.dev_t = self._table("dev", self.dev_set, show)

    def _table(self, label: str, data: TextDataset, show: bool) -> SentenceTable:
        bar = progress_bar(f"{label} inputs ({len(data.examples):,} examples)", len(data.examples), show, "ex")
        try:
            return cached_table(data.examples, self.tokenizer, self.config.max_seq_length, self.labels,
                                self.format.is_regression, on_batch=bar.advance)
        finally:
            bar.close()

    def lengths(self) -> np.ndarray:
        return np.asarray(self.train_t.attention_mask).sum(axis=1)

    def build_model(self) -> torch.nn.Module:
        if self.format.is_regression:
            heads: dict = {"num_labels": 1, "problem_type": "regression"}
        else:
            heads = {"num_labels": len(self.labels), "problem_type": "single_label_classification",
                     "id2label": dict(enumerate(self.labels)), "label2id": {n: i for i, n in enumerate(self.labels)}}
        # a classifier trained on other labels may be the starting point: its head is replaced
        model = load_classifier_model(self.config.model, self.config.trust_remote_code,
                                      ignore_mismatched_sizes=True, **heads)
        return use_pooling(model, self.settings.pooling)

    def loss(self, model, rows: np.ndarray, device, epoch: int) -> torch.Tensor:
        rows = np.sort(rows)
        inputs, _ = model_inputs(self.train_t, rows, device)
        dtype = torch.float32 if self.format.is_regression else torch.long
        labels = torch.as_tensor(np.asarray(self.train_t.labels[rows]), dtype=dtype, device=device)
        return model(**inputs, labels=labels).loss

    def evaluate(self, model, autocast_dtype) -> tuple[dict, np.ndarray]:
        bar = progress_bar(f"evaluating ({len(self.dev_t):,} examples)", len(self.dev_t), unit="ex")
        try:
            logits = compute_logits(model, self.dev_t, self.config.eval_batch_size,
                                    autocast_dtype=autocast_dtype, on_batch=bar.advance)
        finally:
            bar.close()
        return classification_scores(logits, np.asarray(self.dev_t.labels), self.format), logits

    def finish(self, model, out: Path, metrics: dict, logits: np.ndarray) -> dict:
        """The classifier folder and its dev predictions (predictions.jsonl)."""
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        atomic_write_json(out / SETTINGS_FILE, {**self.settings.to_dict(), "training": self.config.to_dict()})
        write_predictions(out / "predictions.jsonl", self.dev_set.examples,
                          predictions_from_logits(logits, self.settings))
        return {"train_examples": len(self.train_set.examples), "dev_examples": len(self.dev_set.examples)}


def prepare_data(config: ClassifyConfig) -> tuple[TextDataset, TextDataset]:
    """The validated training and dev sets (same label set); clear errors before any training starts."""
    fmt = config.data_format
    train_file = config.train_file or (default_glue_file(config.task, "train") if config.task else None)
    if train_file is None:
        raise ConfigError("pass --train-file (or --task with the GLUE data folder)")
    train = load_texts(train_file, fmt, split="train")
    if config.valid_split > 0:
        train, dev = _hold_out(train, config.valid_split, config.seed)
    else:
        dev_file = config.dev_file or (default_glue_file(config.task, "dev") if config.task else None)
        if dev_file is None:
            raise ConfigError("pass --dev-file, or --valid-split to hold out part of the training set")
        dev = load_texts(dev_file, fmt, split="dev")
        check_same_labels(train, dev, fmt)
    if config.max_train_samples:
        train.examples = train.examples[:config.max_train_samples]
    if config.max_eval_samples:
        dev.examples = dev.examples[:config.max_eval_samples]
    # a cut (or a held-out share) may leave a rare label out of train: dev must not need it
    unknown = dev.label_set() - train.label_set()
    if unknown and not fmt.glue and not fmt.is_regression:
        raise DataError(f"{dev.source}: labels {sorted(unknown)} do not occur in the training examples")
    return train, dev


def _hold_out(train: TextDataset, fraction: float, seed: int) -> tuple[TextDataset, TextDataset]:
    train_idx, dev_idx = held_out_split(len(train.examples), fraction, seed)
    return (TextDataset(train.source, [train.examples[i] for i in train_idx]),
            TextDataset(f"{train.source} (held out {fraction:.0%})", [train.examples[i] for i in dev_idx]))
