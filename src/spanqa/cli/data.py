"""`spanqa data check|stats` and `spanqa score`: look at data files and score predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from spanqa.cli.common import app, console, fail
from spanqa.models import DEFAULT_ENCODER

data_app = typer.Typer(no_args_is_help=True, help="Check and describe SQuAD-style data files.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(file: str = typer.Argument(..., help="SQuAD .json/.json.gz, flat .jsonl, or a hub dataset name"),
               fix_offsets: bool = typer.Option(False, "--fix-offsets", help="Repair answer_start values that are off by a few characters"),
               write: Optional[Path] = typer.Option(None, help="With --fix-offsets: write the repaired data here (.jsonl)"),
               split: str = typer.Option("train", help="Split, for hub datasets")) -> None:
    """Validate a data file: exit 0 when valid, 1 listing every problem with its location."""
    from spanqa.data.sources import DataError
    from spanqa.qa.squad import ExampleStream, write_jsonl

    try:
        stream = ExampleStream(file, fix_offsets=fix_offsets, split=split)
        kept = [e for e in stream if write]  # streamed: only --write holds the questions
    except DataError as e:
        fail(str(e), 1)
    for r in stream.repairs:
        console.print(f"[yellow]repaired[/] {r}", highlight=False)
    for p in stream.problems:
        console.print(f"[red]problem[/] {p}", highlight=False)
    kind = "SQuAD v2.0" if stream.version_2 else "SQuAD v1.1"
    if stream.problems:
        fail(f"{file}: {len(stream.problems)} problem(s) in {kind} data", 1)
    if not stream.count:
        fail(f"{file}: no questions found (an empty 'data' list, or articles without questions)", 1)
    if write:
        write_jsonl(kept, write)
        console.print(f"wrote {len(kept)} records to {write}")
    print(f"{file}: OK, {stream.count} questions ({kind}), "
          f"{stream.count - stream.unanswerable} answerable, {len(stream.repairs)} repair(s)")


@data_app.command("stats")
def data_stats(file: str = typer.Argument(..., help="Data file"),
               model: str = typer.Option(DEFAULT_ENCODER, help="Model (tokenizer) folder or hub id"),
               max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
               show_failures: bool = typer.Option(False, "--show-failures", help="List answers whose labels do not decode back"),
               as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """How many pairs each max length truncates, windows per example, and label fidelity."""
    from spanqa.models import load_tokenizer
    from spanqa.qa.squad import load_dataset
    from spanqa.qa.stats import data_stats as compute
    from spanqa.qa.windows import WindowSettings, check_settings

    from spanqa.data.sources import DataError
    from spanqa.models import ModelError
    from spanqa.qa.windows import WindowError

    try:
        settings = WindowSettings(max_seq_length, doc_stride, max_query_length)
        tok = load_tokenizer(model)
        check_settings(tok, settings)
        stats = compute(load_dataset(file).examples, tok, settings)
    except (DataError, ModelError, WindowError) as e:
        fail(str(e))
    if as_json:
        out = stats.to_dict(settings)
        if not show_failures:
            out.pop("failures")
        print(json.dumps(out, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{file}: {stats.examples} questions, {stats.answerable} answerable")
    table.add_column("max length", justify="right")
    table.add_column("pairs longer (truncated/split)", justify="right")
    table.add_column("share", justify="right")
    for m, n in stats.over_length.items():
        table.add_row(str(m), f"{n:,}", f"{100 * n / max(stats.examples, 1):.2f}%")
    Console().print(table)
    print(f"windows at {max_seq_length}/{doc_stride}: {stats.windows:,} "
          f"({stats.windows / max(stats.examples, 1):.3f} per example, max {stats.windows_per_example_max})")
    print(f"gold answers recovered exactly from token labels: {stats.label_exact:,}/{stats.label_total:,} "
          f"= {100 * stats.label_exact_share:.3f}%")
    if show_failures:
        for f in stats.failures:
            print(f"  {f.id}: gold {f.gold!r} -> labelled {f.decoded!r}")


@app.command("score")
def score(data: Path = typer.Argument(..., help="SQuAD v1.1 or v2.0 JSON (.json or .json.gz)"),
          predictions: Path = typer.Argument(..., help="Predictions JSON {id: answer text}"),
          na_probs: Optional[Path] = typer.Option(None, "--na-probs", help="v2.0: {id: no-answer probability}"),
          na_prob_thresh: float = typer.Option(1.0, help="v2.0: predict '' when the no-answer probability exceeds this"),
          as_json: bool = typer.Option(True, "--json/--table", help="JSON (the official scripts' keys) or a table")) -> None:
    """Official SQuAD metrics, offline: v1.1 (exact_match, f1) or v2.0 (exact, f1, HasAns_*, NoAns_*, best_*)."""
    from spanqa.data.sources import DataError, read_json_file
    from spanqa.qa.metrics import score as compute

    try:
        dataset = read_json_file(data)
        preds = read_json_file(predictions)
        probs = read_json_file(na_probs) if na_probs else None
    except DataError as e:
        fail(str(e))
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        fail(f"{data}: not SQuAD JSON: expected an object with a 'data' list")
    if not isinstance(preds, dict) or not all(isinstance(v, str) for v in preds.values()):
        fail(f"{predictions}: expected a JSON object mapping question ids to answer strings")
    result = compute(dataset, preds, probs, na_prob_thresh=na_prob_thresh)
    if as_json:
        print(json.dumps(result, indent=2 if "exact" in result else None))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
