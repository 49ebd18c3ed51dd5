"""Scoring a classifier on a labelled file, and labelling a file: what `spanqa classify evaluate|predict` run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from spanqa.classify.classifier import (
    Classifier,
    predictions_from_logits,
    write_predictions,
)
from spanqa.classify.glue import DataFormat, TextDataset, load_texts
from spanqa.classify.inputs import label_array
from spanqa.classify.metrics import classification_scores
from spanqa.files import atomic_write_json
from spanqa.progress import progress_bar


def read_for(classifier: Classifier, data: str, fmt: DataFormat | None, require_labels: bool,
             max_samples: int | None = None) -> TextDataset:
    """`data` read as the classifier was trained (or as `fmt` says); labels must be the classifier's."""
    fmt = fmt or classifier.settings.format
    if fmt.pairs != classifier.settings.format.pairs or fmt.is_regression != classifier.settings.format.is_regression:
        raise ValueError(f"{data}: the format reads {'pairs' if fmt.pairs else 'single texts'}"
                         f"{' with scores' if fmt.is_regression else ''}; the classifier was trained otherwise")
    labels = None if fmt.is_regression else classifier.settings.labels
    dataset = load_texts(data, fmt, labels=labels, require_labels=require_labels, split="dev")
    if max_samples:
        dataset.examples = dataset.examples[:max_samples]
    return dataset


def _logits(classifier: Classifier, dataset: TextDataset) -> np.ndarray:
    bar = progress_bar(f"classifying ({len(dataset.examples):,} examples)", len(dataset.examples), unit="ex")
    try:
        return classifier.logits(dataset.examples, on_batch=bar.advance)
    finally:
        bar.close()


def evaluate_classifier(model: str, data: str, output_dir: str | Path | None = None, fmt: DataFormat | None = None,
                        batch_size: int | None = None, max_samples: int | None = None,
                        precision: str = "fp32") -> dict:
    """Metrics of a classifier folder on labelled data; predictions.jsonl and metrics.json go to `output_dir`
    (default MODEL/eval)."""
    classifier = Classifier.load(model, batch_size=batch_size, precision=precision)
    fmt = fmt or classifier.settings.format
    dataset = read_for(classifier, data, fmt, require_labels=True, max_samples=max_samples)
    logits = _logits(classifier, dataset)
    gold = label_array(dataset.examples, classifier.settings.labels, fmt.is_regression)
    # the trained task decides which metrics (MRPC F1, CoLA MCC), whatever columns the file has
    metrics = {**classification_scores(logits, gold, replace(fmt, task=classifier.settings.format.task or fmt.task)),
               "examples": len(dataset.examples)}
    out = Path(output_dir) if output_dir else Path(model) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.jsonl", dataset.examples, predictions_from_logits(logits, classifier.settings))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def predict_file(model: str, data: str, out: str | Path, fmt: DataFormat | None = None,
                 batch_size: int | None = None, precision: str = "fp32") -> int:
    """Label every example of `data` (labels optional) into a .jsonl file; returns how many."""
    classifier = Classifier.load(model, batch_size=batch_size, precision=precision)
    dataset = read_for(classifier, data, fmt, require_labels=False)
    predictions = predictions_from_logits(_logits(classifier, dataset), classifier.settings)
    write_predictions(Path(out), dataset.examples, predictions)
    return len(predictions)
