"""Scoring predictions of examples with the official metrics, the no-answer threshold, output files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from spanqa.data.sources import DataError
from spanqa.files import atomic_write_json
from spanqa.models import SETTINGS_FILE
from spanqa.progress import progress_bar
from spanqa.qa.decode import DecodeSettings, Prediction, decode
from spanqa.qa.metrics import squad_v1, squad_v2, token_accuracy
from spanqa.qa.reader import Reader, compute_logits
from spanqa.qa.squad import Example, load_dataset
from spanqa.qa.windows import Windows, build_windows


def as_squad_data(examples: Sequence[Example]) -> list[dict]:
    """The `data` list of a SQuAD file holding `examples` (what the official metrics read)."""
    return [{"title": "", "paragraphs": [{"context": "", "qas": [
        {"id": e.id, "answers": [{"text": t} for t in e.answer_texts]} for e in examples]}]}]


def score_examples(examples: Sequence[Example], predictions: Sequence[Prediction]) -> dict:
    """Official v1.1 metrics, or v2.0 ones (with null odds) when any example is unanswerable."""
    data = as_squad_data(examples)
    texts = {p.id: p.text for p in predictions}
    if all(e.has_answer for e in examples):
        out = squad_v1(data, texts)
        return {"exact_match": out["exact_match"], "f1": out["f1"]}
    return squad_v2(data, texts, {p.id: p.null_odds for p in predictions}, na_prob_thresh=float("inf"))


def calibrate_threshold(examples: Sequence[Example], predictions: Sequence[Prediction]) -> tuple[float, dict]:
    """The null-odds threshold that maximizes F1 (official v2.0 sweep) and the metrics it gives."""
    data = as_squad_data(examples)
    best_span = {p.id: p.answers[0].text if p.answers else "" for p in predictions}
    odds = {p.id: p.null_odds for p in predictions}
    out = squad_v2(data, best_span, odds, na_prob_thresh=float("inf"))
    threshold = float(out["best_f1_thresh"])
    at = squad_v2(data, best_span, odds, na_prob_thresh=threshold)
    return threshold, {"null_threshold": threshold, "calibrated": at}


def nbest_json(predictions: Sequence[Prediction]) -> dict:
    """{id: [{text, start, end, probability, logit}, ...]} for the n-best files."""
    return {p.id: [{"text": a.text, "start": a.start, "end": a.end, "probability": a.score, "logit": a.logit}
                   for a in p.answers] for p in predictions}


def write_predictions(folder: str | Path, predictions: Sequence[Prediction], version_2: bool) -> None:
    """predictions.json (official format), nbest_predictions.json, and null_odds.json for v2."""
    folder = Path(folder)
    atomic_write_json(folder / "predictions.json", {p.id: p.text for p in predictions})
    atomic_write_json(folder / "nbest_predictions.json", nbest_json(predictions))
    if version_2:
        atomic_write_json(folder / "null_odds.json", {p.id: p.null_odds for p in predictions})


def window_counts(examples: Sequence[Example], windows: Windows) -> dict[str, int]:
    """{question id: number of windows} (the report's "by number of windows" table; windows.json)."""
    counts = np.bincount(np.asarray(windows.example_index), minlength=len(examples))
    return {e.id: int(c) for e, c in zip(examples, counts)}


def write_report_files(folder: str | Path, examples: Sequence[Example], predictions: Sequence[Prediction],
                       windows: Windows, calibration=None, title: str = "spanqa evaluation report") -> Path:
    """report.html and windows.json beside the prediction files (`spanqa report` rebuilds from them)."""
    from spanqa.qa.report import write_report

    counts = window_counts(examples, windows)
    atomic_write_json(Path(folder) / "windows.json", counts)
    return write_report(folder, examples, predictions, calibration, counts, title=title)


def evaluate_windows(model, examples: list[Example], windows: Windows, decoding: DecodeSettings,
                     batch_size: int, autocast_dtype=None, show: bool = True) -> tuple[dict, list]:
    """Valid loss, token accuracy, EM/F1 and predictions of a model on labelled windows."""
    was_training = getattr(model, "training", False)  # ONNX models have no training mode
    bar = progress_bar(f"evaluating ({len(windows):,} windows)", len(windows), enabled=show, unit="win")
    try:
        start, end = compute_logits(model, windows, batch_size, autocast_dtype=autocast_dtype, on_batch=bar.advance)
    finally:
        bar.close()
    preds = decode(examples, windows, start, end, decoding)
    if was_training:
        model.train()
    metrics = {"valid_loss": _span_loss(start, end, windows),
               **token_accuracy(start, end, np.asarray(windows.start_positions), np.asarray(windows.end_positions)),
               **score_examples(examples, preds)}
    return metrics, preds


def _span_loss(start: np.ndarray, end: np.ndarray, windows: Windows) -> float:
    """Mean of the start and end cross-entropies, as the model's training loss."""
    rows = np.arange(len(start))

    def ce(logits, labels):
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return float((lse - logits[rows, labels]).mean())

    return (ce(start, np.asarray(windows.start_positions)) + ce(end, np.asarray(windows.end_positions))) / 2


def evaluate_reader(model: str, data: str, output_dir: str | Path | None = None, calibrate: bool = False,
                    batch_size: int | None = None, max_samples: int | None = None, precision: str = "fp32",
                    report: bool = False) -> dict:
    """Predictions and official metrics of a reader on labelled data.

    `calibrate` fits a calibration of the answer scores on this data (`qa.calibration.fit_calibration`)
    and stores it in MODEL/spanqa.json; for v2 data also the null threshold, the one that maximizes F1
    (official sweep): it stays the reader's decision threshold, the calibration's P(no answer) = 0.5
    point is recorded beside it (`calibration.no_answer.null_threshold`). `report` writes report.html.
    Prediction files keep the decoder's uncalibrated probabilities (the report compares both)."""
    dataset = load_dataset(data, split="validation")
    examples = dataset.examples[:max_samples] if max_samples else dataset.examples
    if not any(e.has_answer for e in examples):
        raise DataError(f"{data}: no answers to score against; use `spanqa predict`")
    reader = Reader.load(model, batch_size=batch_size, precision=precision)
    windows = build_windows(examples, reader.tokenizer, reader.settings.windows)
    version_2 = dataset.version_2 or reader.settings.decoding.version_2
    decoding = reader.settings.decoding
    if version_2 and not decoding.version_2:
        decoding = replace(decoding, version_2=True)
    metrics, preds = evaluate_windows(reader.model, examples, windows, decoding, reader.batch_size,
                                      reader.autocast_dtype)
    metrics["examples"] = len(examples)
    out = Path(output_dir) if output_dir else Path(reader.path) / "eval"
    calibration = reader.settings.calibration
    if calibrate:
        from spanqa.qa.calibration import fit_calibration

        settings_path = Path(reader.path) / SETTINGS_FILE
        if not Path(reader.path).is_dir():
            raise DataError(f"{model}: --calibrate needs a local reader folder to store the calibration")
        calibration = fit_calibration(examples, preds, version_2)
        metrics["calibration"] = {k: calibration.fitted[k] for k in (
            "chosen", "examples", "heldout_ece_before", "heldout_ece_after")}
        stored = json.loads(settings_path.read_text()) if settings_path.exists() else reader.settings.to_dict()
        if version_2:
            threshold, calibrated = calibrate_threshold(examples, preds)
            metrics.update(calibrated)
            stored.setdefault("decoding", {}).update(null_threshold=threshold, version_2=True)
        stored["calibration"] = calibration.to_dict()
        atomic_write_json(settings_path, stored)
    write_predictions(out, preds, version_2)
    atomic_write_json(out / "metrics.json", metrics)
    if report:
        write_report_files(out, examples, preds, windows, calibration,
                           title=f"spanqa evaluation report: {Path(reader.path).name} on {Path(data).name}")
    return metrics


def predict_dataset(model: str, data: str, out: str | Path, batch_size: int | None = None,
                    precision: str = "fp32") -> int:
    """Answer every question of `data` (answers not needed); write the official predictions format."""
    examples = load_dataset(data, split="validation", require_answers=False).examples
    reader = Reader.load(model, batch_size=batch_size, precision=precision)
    preds = reader.predict(examples)
    out = Path(out)
    atomic_write_json(out, {p.id: p.text for p in preds})
    stem = out.with_suffix("")
    atomic_write_json(stem.with_name(stem.name + "_nbest.json"), nbest_json(preds))
    atomic_write_json(stem.with_name(stem.name + "_null_odds.json"), {p.id: p.null_odds for p in preds})
    return len(preds)
