"""Accuracy-checked export: the fastest ONNX copy of a model whose score on held-out labelled data stays
within a tolerance of the fp32 copy's (the accuracy-driven tuning of Intel Neural Compressor, over the
exports `spanqa export` can write).

What int8 costs depends on the model more than on the CPU: int8 everywhere lost 1.2-2.3 F1 on the cpu-fast
reader and 0.4 or less on a reader trained for 30 minutes, the default int8 0.4-0.8 and 0.1 (BENCHMARKS.md,
issue 17). A fixed default has to assume the worst reader; a check on the user's own held-out data can take
the faster export where it holds, and says what it measured.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from spanqa.export import check_target, export_onnx, quantize_onnx
from spanqa.files import atomic_write_json
from spanqa.models import resolve_model
from spanqa.onnx_models import ONNX_FILE

CHECK_FILE = "export_check.json"
# fastest first (bench/infer_cpu.py); fp32, the reference, is what remains when neither holds
CANDIDATES = {"int8-everywhere": True, "int8": False}  # name: int8_everywhere
SUFFIX = {"int8-everywhere": "int8-everywhere", "int8": "int8", "fp32": "onnx"}


@dataclass
class CheckedExport:
    """What the check measured: `scores` in points (F1, or 100 x the classifier's main metric) for each export
    scored, fp32 first; `chosen` is the fastest within `max_loss` points of fp32."""

    path: str
    chosen: str
    metric: str
    max_loss: float
    data: str
    examples: int
    scores: dict[str, float] = field(default_factory=dict)

    def loss(self, name: str) -> float:
        return self.scores["fp32"] - self.scores[name]


def export_checked(model: str, data: str, out_dir: str | Path | None = None, max_loss: float = 0.5,
                   max_samples: int | None = None, log: Callable[[str], None] = lambda _: None) -> CheckedExport:
    """Export `model` as fp32, then as each int8 candidate from the fastest, score each on `data` (SQuAD data
    for a reader, the classifier's labelled format for a classifier; held out from what you will report), and
    keep the first within `max_loss` points of fp32, or fp32 if none is. Written to `out_dir` (default:
    MODEL-int8-everywhere, MODEL-int8 or MODEL-onnx, after the choice) with `export_check.json` beside it."""
    source = resolve_model(model)
    staging = Path(out_dir).parent if out_dir else Path(f"{model.rstrip('/')}-onnx").parent
    if out_dir:
        check_target(Path(out_dir), source)
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        tmp = Path(tmp)
        folders = {"fp32": export_onnx(source, tmp / "fp32")}
        metric, reference, examples = _score(folders["fp32"], data, max_samples, tmp / "eval")
        check = CheckedExport("", "fp32", metric, max_loss, str(data), examples, {"fp32": reference})
        log(f"fp32: {metric} {reference:.2f} on {examples} examples of {data}")
        for name, everywhere in CANDIDATES.items():  # quantized from the fp32 export's graph, not exported again
            folders[name] = Path(shutil.copytree(folders["fp32"], tmp / name,
                                                 ignore=shutil.ignore_patterns(ONNX_FILE)))
            quantize_onnx(folders["fp32"] / ONNX_FILE, folders[name] / ONNX_FILE, everywhere)
            check.scores[name] = _score(folders[name], data, max_samples, tmp / "eval")[1]
            holds = check.loss(name) <= max_loss
            log(f"{name}: {metric} {check.scores[name]:.2f} ({-check.loss(name):+.2f}), "
                f"{'within' if holds else 'beyond'} {max_loss} of fp32")
            if holds:
                check.chosen = name
                break
        out = Path(out_dir) if out_dir else Path(f"{model.rstrip('/')}-{SUFFIX[check.chosen]}")
        check_target(out, source)
        check.path = str(out)
        atomic_write_json(folders[check.chosen] / CHECK_FILE, asdict(check))
        if out.exists():
            shutil.rmtree(out)
        os.replace(folders[check.chosen], out)  # the folder appears complete or not at all
    return check


def _score(folder: Path, data: str, max_samples: int | None, eval_dir: Path) -> tuple[str, float, int]:
    """(metric name, score in points, examples scored) of an exported reader or classifier on `data`."""
    from spanqa.classify.classifier import Classifier, is_classifier_folder

    if is_classifier_folder(folder):
        from spanqa.classify.evaluate import evaluate_classifier

        metrics = evaluate_classifier(str(folder), data, eval_dir, max_samples=max_samples)
        name = Classifier.load(str(folder)).settings.format.main_metric
        return name, 100 * metrics[name], metrics["examples"]
    from spanqa.qa.evaluate import evaluate_reader

    metrics = evaluate_reader(str(folder), data, eval_dir, max_samples=max_samples)
    return "f1", metrics["f1"], metrics["examples"]
