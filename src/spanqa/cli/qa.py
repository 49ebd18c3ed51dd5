"""`spanqa train|evaluate|predict|quickstart`: fine-tune and evaluate QA readers."""

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
    console,
    fail,
    run_training,
)


@app.command("train")
def train_cmd(
    recipe: Optional[str] = typer.Option(None, help="Named recipe: cpu-fast, cpu-30m, full, domain, biobert, distilbert"),
    config: Optional[str] = typer.Option(None, help="YAML file with the same keys as the flags"),
    model: Optional[str] = typer.Option(None, help="Encoder: HF model folder or id (default: packaged all-MiniLM-L6-v2)"),
    train_file: Optional[str] = typer.Option(None, help="Training data (default: train-v1.1 in $SPANQA_DATA)"),
    dev_file: Optional[str] = typer.Option(None, help="Dev data (default: dev-v1.1 in $SPANQA_DATA)"),
    valid_split: Optional[float] = typer.Option(None, help="Hold out this share of train as dev instead"),
    output_dir: Optional[str] = typer.Option(None, help="Where the reader is written (default runs/reader)"),
    epochs: Optional[float] = None, max_steps: Optional[int] = None,
    time_budget: TimeBudget = None,
    dropout: Dropout = None,
    max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
    batch_size: Optional[int] = None, grad_accum: Optional[int] = None,
    learning_rate: Optional[float] = None, warmup_ratio: Optional[float] = None,
    weight_decay: Optional[float] = None, adam_eps: Optional[float] = None,
    max_seq_length: Optional[int] = None, doc_stride: Optional[int] = None, max_query_length: Optional[int] = None,
    seed: Optional[int] = None,
    precision: TrainPrecision = None,
    save_steps: Optional[int] = None, eval_steps: Optional[int] = None, log_steps: Optional[int] = None,
    resume: Resume = False, force: Force = False, keep_checkpoints: KeepCheckpoints = None,
    version_2: bool = typer.Option(False, "--version-2", help="Train with unanswerable questions (SQuAD v2.0)"),
    answer_windows_only: bool = typer.Option(False, "--answer-windows-only",
                                             help="v1.1: train only on windows that hold the answer (for weak or "
                                                  "from-scratch encoders that learn to point at CLS everywhere)"),
    negatives: Optional[int] = typer.Option(None, help="Add N retrieved wrong passages per question as unanswerable "
                                                       "examples: a reader for document collections (implies --version-2)"),
    student_layers: Optional[int] = typer.Option(None, help="Keep this many of the encoder's layers (evenly spaced): "
                                                 "a smaller, faster reader"),
    teacher: Optional[str] = typer.Option(None, help="Distil from this trained reader (its start/end distributions)"),
    distill_alpha: Optional[float] = typer.Option(None, help="Weight of the teacher's loss (default 0.5)"),
    temperature: Optional[float] = typer.Option(None, help="Distillation temperature (default 2)"),
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Fine-tune an encoder into an extractive QA reader and score it on dev (or distil one from --teacher)."""
    from spanqa.distill.task import distill
    from spanqa.qa.config import build_config
    from spanqa.qa.train import train

    cfg, metrics = run_training(build_config, lambda c: distill(c) if c.teacher else train(c), recipe, config,
                                dict(locals()))
    if metrics:
        _print_summary(cfg.output_dir, metrics)


def _print_summary(output_dir: str, metrics: dict) -> None:
    keys = [k for k in ("exact_match", "f1", "exact", "HasAns_f1", "NoAns_f1", "best_f1", "valid_loss",
                        "start_accuracy", "end_accuracy", "answer_start_accuracy", "answer_end_accuracy")
            if k in metrics]
    print("  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    print(f"reader written to {output_dir}\n"
          f"  ask:      spanqa ask {output_dir} -q 'Who designed the tower?' -c 'It was designed by Gustave Eiffel.'\n"
          f"  chat:     spanqa chat {output_dir} --context-file PASSAGE.txt\n"
          f"  serve:    spanqa serve {output_dir}   (web page and API on http://127.0.0.1:8000)\n"
          f"  faster:   spanqa export {output_dir}   (ONNX int8, then serve or ask that folder)\n"
          f"  evaluate: spanqa evaluate {output_dir} DATA.json\n"
          f"  python:   from spanqa.qa.reader import Reader; Reader.load('{output_dir}').answer(question, context)")


@app.command("evaluate")
def evaluate_cmd(model: str = typer.Argument(..., help="Reader folder or extractive-QA model id"),
                 data: str = typer.Argument(..., help="Dataset with answers (SQuAD v1.1/v2.0 JSON or JSONL)"),
                 output_dir: Optional[Path] = typer.Option(None, help="Write predictions and metrics here (default: MODEL/eval)"),
                 calibrate: bool = typer.Option(False, "--calibrate", help="Fit a calibration of answer scores (P(exact match)) "
                                                "on this data and store it in MODEL/spanqa.json; v2: also the best null threshold"),
                 report: bool = typer.Option(False, "--report", help="Also write report.html (and windows.json) beside the predictions"),
                 batch_size: Optional[int] = typer.Option(None, help="Default: 8 on CPU, 64 on GPU"),
                 max_samples: Optional[int] = None,
                 precision: str = typer.Option("fp32", help=PRECISION_HELP)) -> None:
    """Run a reader over a dataset and score it with the official metrics."""
    from spanqa.qa.evaluate import evaluate_reader

    try:
        metrics = evaluate_reader(model, data, output_dir, calibrate, batch_size, max_samples, precision, report)
    except ValueError as e:
        fail(str(e))
    print(json.dumps(metrics, indent=2))
    if report:
        print(f"report: {(output_dir or Path(model) / 'eval') / 'report.html'}")


@app.command("report")
def report_cmd(run: Path = typer.Argument(..., help="Folder with predictions.json and nbest_predictions.json "
                                                   "(an evaluation's output folder or a training run)"),
               data: str = typer.Option(..., "--data", help="The dataset those predictions answer (with answers)"),
               calibration: Optional[Path] = typer.Option(None, help="spanqa.json holding the calibration to show "
                                                          "(default: the one in RUN or its parent, if any)"),
               out: Optional[Path] = typer.Option(None, help="Folder for report.html (default: RUN)"),
               worst: int = typer.Option(25, help="How many of the worst errors to show")) -> None:
    """Build report.html again from prediction files, without running the model."""
    from spanqa.qa.calibration import Calibration
    from spanqa.qa.report import report_from_files

    try:
        cal = None
        if calibration is not None:
            stored = json.loads(calibration.read_text(encoding="utf-8")).get("calibration")
            if not stored:
                fail(f"{calibration}: no calibration stored (run spanqa evaluate MODEL DATA --calibrate)")
            cal = Calibration.from_dict(stored)
        path = report_from_files(run, data, cal, out, worst)
    except (OSError, ValueError) as e:
        fail(str(e))
    print(f"report: {path}")


@app.command("predict")
def predict_cmd(model: str = typer.Argument(..., help="Reader folder or extractive-QA model id"),
                data: str = typer.Argument(..., help="Questions and contexts (answers optional)"),
                out: Path = typer.Option(Path("predictions.json"), help="Official-format predictions file"),
                batch_size: Optional[int] = typer.Option(None, help="Default: 8 on CPU, 64 on GPU"),
                precision: str = typer.Option("fp32", help=PRECISION_HELP)) -> None:
    """Answer every question of a dataset: predictions.json plus n-best and null odds beside it."""
    from spanqa.qa.evaluate import predict_dataset

    try:
        n = predict_dataset(model, data, out, batch_size, precision)
    except ValueError as e:
        fail(str(e))
    print(f"wrote {n} predictions to {out}")


@app.command("quickstart")
def quickstart(output_dir: str = typer.Option("runs/quick", help="Where the reader goes"),
               recipe: Optional[str] = typer.Option(None, help="Default: cpu-fast on CPU, full on a GPU"),
               force: bool = typer.Option(False, "--force", help="Start over in an output folder that holds a run")) -> None:
    """The first run: fine-tune the packaged encoder on SQuAD, evaluate on dev, answer a question."""
    import torch

    from spanqa.qa.reader import Reader

    chosen = recipe or ("full" if torch.cuda.is_available() else "cpu-fast")
    console.print(f"[bold]spanqa quickstart[/]: recipe {chosen}, output {output_dir}")
    from spanqa.qa.config import build_config
    from spanqa.qa.train import train

    # run again, the quickstart continues its own run (finished: evaluated and written again) rather than refusing
    resume = not force and (Path(output_dir) / "checkpoints" / "latest.json").exists()
    try:
        metrics = train(build_config(chosen, None, output_dir=output_dir, force=force or None, resume=resume or None))
    except ValueError as e:
        fail(str(e))
    context = ("The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair. "
               "It was designed by the engineering company of Gustave Eiffel and is 330 metres tall.")
    question = "Who designed the Eiffel Tower?"
    best = Reader.load(output_dir).answer(question, context)
    print(f"Q: {question}\nA: {best[0].text if best else '(no answer)'}")
    _print_summary(output_dir, metrics)
