"""`spanqa classify train|evaluate|predict`: sentence and sentence-pair classifiers (GLUE and your own labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from spanqa.cli.common import (
    PRECISION_HELP,
    Dropout,
    Force,
    KeepCheckpoints,
    Resume,
    TimeBudget,
    TrainPrecision,
    TrustRemoteCode,
    app,
    fail,
    run_training,
)

classify_app = typer.Typer(no_args_is_help=True, help="Sentence and sentence-pair classification and regression "
                                                      "(GLUE TSV, CSV, JSONL) on the training engine.")
app.add_typer(classify_app, name="classify")

TASK_HELP = "GLUE task whose TSV columns, labels and metrics to use: sst2, mrpc, rte, cola, stsb"
TEXT_HELP = "Without --task: the text column/key of CSV, TSV (with header) or JSONL records"


@classify_app.command("train")
def train_cmd(
    recipe: Optional[str] = typer.Option(None, help="Named recipe (e.g. glue-sst2) or a YAML file"),
    config: Optional[str] = typer.Option(None, help="YAML file with the same keys as the flags"),
    task: Optional[str] = typer.Option(None, help=TASK_HELP),
    model: Optional[str] = typer.Option(None, help="Encoder: HF model folder or id (default: packaged all-MiniLM-L6-v2)"),
    train_file: Optional[str] = typer.Option(None, help="Training data (default with --task: $SPANQA_GLUE_DATA/<TASK>/train.tsv.gz)"),
    dev_file: Optional[str] = typer.Option(None, help="Dev data (default with --task: the task's dev.tsv.gz)"),
    valid_split: Optional[float] = typer.Option(None, help="Hold out this share of train as dev instead"),
    text_field: Optional[str] = typer.Option(None, help=TEXT_HELP + " (default text)"),
    pair_field: Optional[str] = typer.Option(None, help="Without --task: the second text of a pair"),
    label_field: Optional[str] = typer.Option(None, help="Without --task: the label column/key (default label)"),
    regression: bool = typer.Option(False, "--regression", help="Without --task: numeric labels (MSE, one output)"),
    output_dir: Optional[str] = typer.Option(None, help="Where the classifier is written (default runs/classifier)"),
    epochs: Optional[float] = None, max_steps: Optional[int] = None,
    time_budget: TimeBudget = None,
    dropout: Dropout = None,
    max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
    batch_size: Optional[int] = None, grad_accum: Optional[int] = None,
    learning_rate: Optional[float] = None, warmup_ratio: Optional[float] = None,
    weight_decay: Optional[float] = None, adam_eps: Optional[float] = None,
    max_seq_length: Optional[int] = typer.Option(None, help="Tokens per example (pairs truncated longest first; default 128)"),
    pooling: Optional[str] = typer.Option(None, help="Sentence vector: cls (BERT's [CLS] pooler) or mean (of the token vectors, "
                                                     "as sentence-transformers encoders were trained). Default: the "
                                                     "starting classifier's; mean for a sentence-transformers BERT such "
                                                     "as the packaged MiniLM; else cls"),
    seed: Optional[int] = None,
    precision: TrainPrecision = None,
    save_steps: Optional[int] = None, eval_steps: Optional[int] = None, eval_batch_size: Optional[int] = None,
    log_steps: Optional[int] = None,
    resume: Resume = False, force: Force = False, keep_checkpoints: KeepCheckpoints = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Fine-tune an encoder into a sentence (pair) classifier and score it on dev."""
    from spanqa.classify.task import build_config, train

    cfg, metrics = run_training(build_config, train, recipe, config, dict(locals()))
    if metrics:
        keys = [k for k in ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "valid_loss")
                if k in metrics]
        print("  ".join(f"{k}={metrics[k]:.4f}" for k in keys))
        out = cfg.output_dir
        print(f"classifier written to {out}\n"
              f"  evaluate: spanqa classify evaluate {out} DEV_FILE\n"
              f"  predict:  spanqa classify predict {out} DATA --out predictions.jsonl\n"
              f"  python:   from spanqa.classify.classifier import Classifier; "
              f"Classifier.load('{out}').predict([text, ...])")


def _format(task: Optional[str], text_field: Optional[str], pair_field: Optional[str], label_field: Optional[str],
            regression: bool):
    """A DataFormat when any format flag is given; None: read the data as the classifier was trained."""
    from spanqa.classify.glue import DataFormat

    if task is None and text_field is None and pair_field is None and label_field is None and not regression:
        return None
    return DataFormat(task, text_field or "text", pair_field, label_field or "label", regression)


@classify_app.command("evaluate")
def evaluate_cmd(model: str = typer.Argument(..., help="Classifier folder (from `spanqa classify train`)"),
                 data: str = typer.Argument(..., help="Labelled data, read as the classifier was trained unless "
                                                      "format flags say otherwise"),
                 output_dir: Optional[Path] = typer.Option(None, help="predictions.jsonl and metrics.json here "
                                                                      "(default: MODEL/eval)"),
                 task: Optional[str] = typer.Option(None, help=TASK_HELP),
                 text_field: Optional[str] = typer.Option(None, help=TEXT_HELP),
                 pair_field: Optional[str] = None, label_field: Optional[str] = None,
                 regression: bool = typer.Option(False, "--regression"),
                 batch_size: Optional[int] = typer.Option(None, help="Default: 16 on CPU, 128 on GPU"),
                 max_samples: Optional[int] = None,
                 precision: str = typer.Option("fp32", help=PRECISION_HELP)) -> None:
    """Score a classifier on labelled data with the GLUE metrics."""
    from spanqa.classify.evaluate import evaluate_classifier

    try:
        fmt = _format(task, text_field, pair_field, label_field, regression)
        metrics = evaluate_classifier(model, data, output_dir, fmt, batch_size, max_samples, precision)
    except ValueError as e:
        fail(str(e))
    print(json.dumps(metrics, indent=2))


@classify_app.command("predict")
def predict_cmd(model: str = typer.Argument(..., help="Classifier folder (from `spanqa classify train`)"),
                data: str = typer.Argument(..., help="Texts to label (labels optional)"),
                out: Path = typer.Option(Path("predictions.jsonl"), help="One JSON line per example: label, "
                                                                         "probability, probabilities (or score)"),
                task: Optional[str] = typer.Option(None, help=TASK_HELP),
                text_field: Optional[str] = typer.Option(None, help=TEXT_HELP),
                pair_field: Optional[str] = None, label_field: Optional[str] = None,
                regression: bool = typer.Option(False, "--regression"),
                batch_size: Optional[int] = typer.Option(None, help="Default: 16 on CPU, 128 on GPU"),
                precision: str = typer.Option("fp32", help=PRECISION_HELP)) -> None:
    """Label every example of a file: a .jsonl of labels with probabilities."""
    from spanqa.classify.evaluate import predict_file

    try:
        fmt = _format(task, text_field, pair_field, label_field, regression)
        n = predict_file(model, data, out, fmt, batch_size, precision)
    except ValueError as e:
        fail(str(e))
    print(f"wrote {n} predictions to {out}")
