"""Fine-tuning a QA reader: the question-answering task on the training engine.

Training rows are windows (question + a slice of the context) in the memory-mapped cache; the loss is
the model's start/end cross-entropy; evaluation decodes dev answers and scores them with the official
metrics; the outputs are a reader folder (HF model + `spanqa.json`) with prediction files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spanqa.data.batches import model_inputs
from spanqa.data.sources import DataError, held_out_split
from spanqa.files import atomic_write_json
from spanqa.models import SETTINGS_FILE, keep_layers, load_qa_model, load_tokenizer, max_positions
from spanqa.progress import progress_bar
from spanqa.qa.config import TrainConfig, default_data_file
from spanqa.qa.evaluate import calibrate_threshold, evaluate_windows, write_predictions, write_report_files
from spanqa.qa.reader import ReaderSettings
from spanqa.qa.squad import Dataset, Example, ExampleStream, load_dataset
from spanqa.qa.windows import Windows, cached_windows, check_settings, streamed_windows
from spanqa.training.engine import run


def train(config: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Fine-tune `config.model` and write the reader folder; returns the final metrics."""
    return run(QATask(config), config, on_step)


class QATask:
    """Extractive QA: windows in, start/end logits out, answers decoded and scored with EM/F1."""

    unit = "windows"
    curve_metric = "f1"

    def __init__(self, config: TrainConfig):
        self.config = config
        self.tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        check_settings(self.tokenizer, config.windows, max_positions(config.model, config.trust_remote_code))
        self.train_set, self.dev_set = prepare_data(config)

    def prepare(self, show: bool) -> None:
        self.train_w = _train_windows(self.train_set, self.tokenizer, self.config, show)
        self.dev_w = _windows("dev windows", self.dev_set.examples, self.tokenizer, self.config, show)
        self.train_rows = _training_rows(self.train_w, self.config.answer_windows_only)

    def lengths(self) -> np.ndarray:
        return np.asarray(self.train_w.attention_mask).sum(axis=1)[self.train_rows]

    def window_rows(self, rows: np.ndarray) -> np.ndarray:
        """The engine's training rows as (sorted) rows of `train_w`."""
        return np.sort(self.train_rows[rows])

    def build_model(self) -> torch.nn.Module:
        model = load_qa_model(self.config.model, self.config.trust_remote_code)
        return keep_layers(model, self.config.student_layers) if self.config.student_layers else model

    def loss(self, model, rows: np.ndarray, device, epoch: int) -> torch.Tensor:
        rows = self.window_rows(rows)
        inputs, (lo, hi) = model_inputs(self.train_w, rows, device)
        # labels index the full window; the batch is cut to columns [lo, hi) (CLS is always kept)
        starts = torch.as_tensor(np.asarray(self.train_w.start_positions[rows]) - lo, dtype=torch.long, device=device)
        ends = torch.as_tensor(np.asarray(self.train_w.end_positions[rows]) - lo, dtype=torch.long, device=device)
        return model(**inputs, start_positions=starts, end_positions=ends).loss

    def evaluate(self, model, autocast_dtype) -> tuple[dict, list]:
        return evaluate_windows(model, self.dev_set.examples, self.dev_w, self.config.decoding,
                                self.config.eval_batch_size, autocast_dtype)

    def finish(self, model, out: Path, metrics: dict, predictions: list) -> dict:
        """v2 threshold calibration, then the reader folder, its prediction files and report.html."""
        config = self.config
        decoding = config.decoding
        if config.version_2:
            threshold, calibrated = calibrate_threshold(self.dev_set.examples, predictions)
            decoding = replace(decoding, null_threshold=threshold)
            metrics.update(calibrated)
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        atomic_write_json(out / SETTINGS_FILE, {**ReaderSettings(config.windows, decoding).to_dict(),
                                                "training": config.to_dict(), "version_2": config.version_2})
        write_predictions(out, predictions, config.version_2)
        write_report_files(out, self.dev_set.examples, predictions, self.dev_w,
                           title=f"spanqa evaluation report: {out.name} (final evaluation)")
        return {"train_questions": config.max_train_samples}


def prepare_data(config: TrainConfig) -> tuple[Dataset | ExampleStream, Dataset]:
    """The training data and the validated dev set; clear errors before any training starts.

    A local training file stays a stream, read and validated while its windows are built (memory does
    not grow with it); it is held in memory only to be split (`valid_split`), extended with hard
    negatives, or when it comes from the hub.
    """
    train_file = config.train_file or default_data_file("train")
    stream = ExampleStream(train_file)
    train: Dataset | ExampleStream = stream
    dev: Dataset | None = None
    if stream.path is None or config.valid_split > 0 or config.negatives:
        train = load_dataset(train_file)
        if config.valid_split > 0:
            train, dev = _hold_out(train, config.valid_split, config.seed)
        if config.max_train_samples:
            train.examples = train.examples[:config.max_train_samples]
        _check_training_set(train.source, len(train.examples), sum(not e.has_answer for e in train.examples), config)
        if config.negatives:
            from spanqa.qa.collection import hard_negatives

            train.examples = train.examples + hard_negatives(train.examples, config.negatives)
    if dev is None:
        dev = load_dataset(config.dev_file or default_data_file("dev"), split="validation")
    if config.max_eval_samples:
        dev.examples = dev.examples[:config.max_eval_samples]
    if not any(e.has_answer for e in dev.examples):
        raise DataError(f"{dev.source}: the dev set has no answers to score against "
                        "(use `spanqa predict` for data without answers)")
    return train, dev


def _hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    train_idx, dev_idx = held_out_split(len(train.examples), fraction, seed)
    return (Dataset(train.source, [train.examples[i] for i in train_idx], train.version_2),
            Dataset(train.source + f" (held out {fraction:.0%})", [train.examples[i] for i in dev_idx],
                    train.version_2))


def _check_training_set(source: str, examples: int, unanswerable: int, config: TrainConfig) -> None:
    if not examples:
        raise DataError(f"{source}: the training set is empty")
    if unanswerable and not config.version_2:
        raise DataError(f"{source}: {unanswerable} unanswerable questions; pass --version-2 to train with them")


def _training_rows(windows: Windows, answer_windows_only: bool) -> np.ndarray:
    """Every window, or (answer_windows_only) those whose answer lies inside: a weak encoder trained on
    SQuAD v1.1's 128-token windows, half of them without the answer, learns to point at CLS everywhere."""
    if not answer_windows_only:
        return np.arange(len(windows))
    rows = np.flatnonzero(np.asarray(windows.start_positions) != np.asarray(windows.cls_index))
    if not len(rows):
        raise DataError("no training window holds its answer: --answer-windows-only has nothing to train on")
    return rows


def _windows(label: str, examples: list[Example], tokenizer, config: TrainConfig, show: bool) -> Windows:
    bar = progress_bar(f"{label} ({len(examples):,} questions)", len(examples), enabled=show, unit="q")
    try:
        return cached_windows(examples, tokenizer, config.windows, on_batch=bar.advance)
    finally:
        bar.close()


def _train_windows(train: Dataset | ExampleStream, tokenizer, config: TrainConfig, show: bool) -> Windows:
    if isinstance(train, Dataset):
        return _windows("train windows", train.examples, tokenizer, config, show)
    limit = config.max_train_samples or None
    bar = progress_bar(f"train windows ({Path(train.source).name})", limit, enabled=show, unit="q")
    try:
        windows, held = streamed_windows(train, tokenizer, config.windows, limit, on_batch=bar.advance)
    finally:
        bar.close()
    _check_training_set(train.source, held["examples"], held["unanswerable"], config)
    return windows
