"""The one classification inference path: texts -> token table -> logits -> labels with probabilities.

Training evaluation, `spanqa classify evaluate|predict` and `Classifier.predict` all go through
`compute_logits`; a classifier folder is an HF model folder plus `spanqa.json` (task, fields, labels,
max_seq_length).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from spanqa.classify.glue import DataFormat, TextExample
from spanqa.classify.inputs import SentenceTable, build_table
from spanqa.classify.pooling import use_pooling
from spanqa.data.batches import model_inputs
from spanqa.files import atomic_write_text
from spanqa.models import (
    SETTINGS_FILE,
    ModelError,
    default_device,
    for_inference,
    load_classifier_model,
    load_tokenizer,
    resolve_model,
)

TASK = "classify"  # the "task" of a classifier folder's spanqa.json


@dataclass
class ClassifierSettings:
    """What a classifier folder records for inference (spanqa.json)."""

    format: DataFormat = field(default_factory=DataFormat)
    labels: list[str] = field(default_factory=list)  # names in id order; [] for regression
    max_seq_length: int = 128
    pooling: str = "cls"  # "mean" where trained with mean pooling (spanqa.classify.pooling)

    def to_dict(self) -> dict:
        return {"task": TASK, "format": asdict(self.format), "pairs": self.format.pairs,
                "regression": self.format.is_regression, "labels": self.labels, "max_seq_length": self.max_seq_length,
                "pooling": self.pooling}

    @staticmethod
    def read(folder: str | Path) -> ClassifierSettings:
        path = Path(folder) / SETTINGS_FILE
        if not path.exists():
            raise ModelError(f"{folder}: no {SETTINGS_FILE}; train a classifier with `spanqa classify train`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("task") != TASK:
                raise ModelError(f"{folder}: not a classifier ({SETTINGS_FILE} says task {data.get('task', 'qa')!r})")
            return ClassifierSettings(DataFormat(**data["format"]), list(data["labels"]), int(data["max_seq_length"]),
                                      data.get("pooling", "cls"))  # folders from before pooling was recorded: cls
        except ModelError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise ModelError(f"{path}: damaged classifier settings ({type(e).__name__}: {str(e)[:200]}); copy the "
                             "folder again, or train it again") from None


def is_classifier_folder(path: str | Path) -> bool:
    """Whether `path` is a folder whose spanqa.json says it holds a classifier."""
    settings = Path(path) / SETTINGS_FILE
    try:
        return settings.is_file() and json.loads(settings.read_text()).get("task") == TASK
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Prediction:
    """A classifier's answer for one input."""

    label: str | None                # the most probable label; None for regression
    score: float                     # its probability, or the predicted score (regression)
    probabilities: dict[str, float]  # every label's probability; {} for regression


@torch.inference_mode()
def compute_logits(model, table: SentenceTable, batch_size: int = 64, device: torch.device | None = None,
                   autocast_dtype: torch.dtype | None = None,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, C) logits (C = 1 for regression) of all rows, batched by similar length to waste no padding."""
    device = device or next(model.parameters()).device
    order = np.argsort(-np.asarray(table.attention_mask).sum(axis=1), kind="stable")
    out = np.zeros((len(table), model.config.num_labels), dtype=np.float32)
    was_training = getattr(model, "training", False)  # an ONNX Runtime model has no training mode
    model.eval()
    for lo in range(0, len(table), batch_size):
        index = np.sort(order[lo:lo + batch_size])
        inputs, _ = model_inputs(table, index, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out[index] = model(**inputs).logits.float().cpu().numpy()
        if on_batch:
            on_batch(len(index))
    if was_training:
        model.train()
    return out


def predictions_from_logits(logits: np.ndarray, settings: ClassifierSettings) -> list[Prediction]:
    """Softmax probabilities and the best label per row; the raw score for regression."""
    if settings.format.is_regression:
        return [Prediction(None, float(s), {}) for s in logits[:, 0]]
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return [Prediction(settings.labels[b], float(p[b]), dict(zip(settings.labels, map(float, p))))
            for b, p in zip(best, probs)]


def prediction_record(example: TextExample, prediction: Prediction) -> dict:
    """One line of a predictions .jsonl file."""
    record: dict = {"line": example.line, "text": example.text}
    if example.pair is not None:
        record["pair"] = example.pair
    if prediction.label is None:
        record["score"] = prediction.score
    else:
        record.update(label=prediction.label, probability=prediction.score, probabilities=prediction.probabilities)
    if example.label is not None:
        record["gold"] = example.label
    return record


def write_predictions(path: str | Path, examples: Sequence[TextExample], predictions: Sequence[Prediction]) -> None:
    """One JSON line per example (written atomically): label, probability and all probabilities, or the score."""
    atomic_write_text(path, "".join(json.dumps(prediction_record(e, p), ensure_ascii=False) + "\n"
                                    for e, p in zip(examples, predictions)))


class Classifier:
    """A sentence (or sentence-pair) classifier or regressor with its tokenizer and settings.

    >>> clf = Classifier.load("runs/sst2")
    >>> clf.predict(["a charming and often affecting journey"])[0].label
    """

    def __init__(self, model, tokenizer, settings: ClassifierSettings, device: torch.device | None = None,
                 batch_size: int | None = None, precision: str = "fp32", path: str | None = None):
        self.settings = settings
        self.device = device or default_device()
        self.model, self.autocast_dtype = for_inference(model, self.device, precision)
        self.tokenizer = tokenizer
        self.batch_size = batch_size or (16 if self.device.type == "cpu" else 128)
        self.path = path

    @classmethod
    def load(cls, path: str, device: str | None = None, batch_size: int | None = None,
             trust_remote_code: bool = False, precision: str = "fp32") -> Classifier:
        """A classifier from a folder written by `spanqa classify train`, or its ONNX export (`spanqa export`)."""
        from spanqa.onnx_models import OnnxClassifierModel, is_onnx_folder

        folder = resolve_model(path)
        settings = ClassifierSettings.read(folder)
        if is_onnx_folder(folder):
            model, device = OnnxClassifierModel(folder), "cpu"
        else:
            model = use_pooling(load_classifier_model(folder, trust_remote_code), settings.pooling)
        tokenizer = load_tokenizer(folder, trust_remote_code)
        return cls(model, tokenizer, settings, torch.device(device) if device else None, batch_size, precision,
                   folder)

    def table(self, examples: Sequence[TextExample]) -> SentenceTable:
        return build_table(examples, self.tokenizer, self.settings.max_seq_length, self.settings.labels,
                           self.settings.format.is_regression)

    def logits(self, examples: Sequence[TextExample], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        if not examples:
            return np.zeros((0, self.model.config.num_labels), dtype=np.float32)
        return compute_logits(self.model, self.table(examples), self.batch_size, self.device, self.autocast_dtype,
                              on_batch)

    def predict(self, inputs: Sequence[str | tuple[str, str] | list[str]]) -> list[Prediction]:
        """Labels with probabilities (or scores) for texts, or (text, pair) tuples for a pair classifier."""
        examples = [self._example(i, x) for i, x in enumerate(inputs)]
        return predictions_from_logits(self.logits(examples), self.settings)

    def _example(self, i: int, x: str | tuple[str, str] | list[str]) -> TextExample:
        pairs = self.settings.format.pairs
        if isinstance(x, str):
            if pairs:
                raise ValueError(f"input {i}: this classifier reads sentence pairs; pass (text, pair) tuples")
            return TextExample(x, None, None, i)
        if not pairs or len(x) != 2:
            raise ValueError(f"input {i}: this classifier reads {'pairs' if pairs else 'single texts'}, "
                             f"got {type(x).__name__} of {len(x)}")
        return TextExample(x[0], x[1], None, i)
