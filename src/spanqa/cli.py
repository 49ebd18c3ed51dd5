"""The `spanqa` command line: each command parses its options and calls the library."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fine-tune, evaluate and serve extractive question-answering readers.")
data_app = typer.Typer(no_args_is_help=True, help="Check and describe SQuAD-style data files.")
app.add_typer(data_app, name="data")
console = Console(stderr=True, soft_wrap=True)
PRECISION_HELP = "fp32, or bf16 autocast for torch models (~1.5x faster on CPUs with AVX512-BF16/AMX)"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


@data_app.command("check")
def data_check(file: str = typer.Argument(..., help="SQuAD .json/.json.gz, flat .jsonl, or a hub dataset name"),
               fix_offsets: bool = typer.Option(False, "--fix-offsets", help="Repair answer_start values that are off by a few characters"),
               write: Optional[Path] = typer.Option(None, help="With --fix-offsets: write the repaired data here (.jsonl)"),
               split: str = typer.Option("train", help="Split, for hub datasets")) -> None:
    """Validate a data file: exit 0 when valid, 1 listing every problem with its location."""
    from .data import DataError, ExampleStream, write_jsonl

    try:
        stream = ExampleStream(file, fix_offsets=fix_offsets, split=split)
        kept = [e for e in stream if write]  # streamed: only --write holds the questions
    except DataError as e:
        _fail(str(e), 1)
    for r in stream.repairs:
        console.print(f"[yellow]repaired[/] {r}", highlight=False)
    for p in stream.problems:
        console.print(f"[red]problem[/] {p}", highlight=False)
    kind = "SQuAD v2.0" if stream.version_2 else "SQuAD v1.1"
    if stream.problems:
        _fail(f"{file}: {len(stream.problems)} problem(s) in {kind} data", 1)
    if write:
        write_jsonl(kept, write)
        console.print(f"wrote {len(kept)} records to {write}")
    print(f"{file}: OK, {stream.count} questions ({kind}), "
          f"{stream.count - stream.unanswerable} answerable, {len(stream.repairs)} repair(s)")


@data_app.command("stats")
def data_stats(file: str = typer.Argument(..., help="Data file"),
               model: str = typer.Option("all-MiniLM-L6-v2", help="Model (tokenizer) folder or hub id"),
               max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
               show_failures: bool = typer.Option(False, "--show-failures", help="List answers whose labels do not decode back"),
               as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """How many pairs each max length truncates, windows per example, and label fidelity."""
    from .data import load_dataset
    from .models import load_tokenizer
    from .stats import data_stats as compute
    from .windows import WindowSettings, check_settings

    settings = WindowSettings(max_seq_length, doc_stride, max_query_length)
    tok = load_tokenizer(model)
    check_settings(tok, settings)
    stats = compute(load_dataset(file).examples, tok, settings)
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
    from .data import DataError, read_json_file
    from .metrics import score as compute

    try:
        dataset = read_json_file(data)
        preds = read_json_file(predictions)
        probs = read_json_file(na_probs) if na_probs else None
    except DataError as e:
        _fail(str(e))
    if not isinstance(preds, dict) or not all(isinstance(v, str) for v in preds.values()):
        _fail(f"{predictions}: expected a JSON object mapping question ids to answer strings")
    result = compute(dataset, preds, probs, na_prob_thresh=na_prob_thresh)
    if as_json:
        print(json.dumps(result, indent=2 if "exact" in result else None))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")


@app.command("train")
def train_cmd(
    recipe: Optional[str] = typer.Option(None, help="Named recipe: cpu-fast, full, biobert, distilbert"),
    config: Optional[str] = typer.Option(None, help="YAML file with the same keys as the flags"),
    model: Optional[str] = typer.Option(None, help="Encoder: HF model folder or id (default: packaged all-MiniLM-L6-v2)"),
    train_file: Optional[str] = typer.Option(None, help="Training data (default: train-v1.1 in $SPANQA_DATA)"),
    dev_file: Optional[str] = typer.Option(None, help="Dev data (default: dev-v1.1 in $SPANQA_DATA)"),
    valid_split: Optional[float] = typer.Option(None, help="Hold out this share of train as dev instead"),
    output_dir: Optional[str] = typer.Option(None, help="Where the reader is written (default runs/reader)"),
    epochs: Optional[float] = None, max_steps: Optional[int] = None,
    max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
    batch_size: Optional[int] = None, grad_accum: Optional[int] = None,
    learning_rate: Optional[float] = None, warmup_ratio: Optional[float] = None,
    weight_decay: Optional[float] = None, adam_eps: Optional[float] = None,
    max_seq_length: Optional[int] = None, doc_stride: Optional[int] = None, max_query_length: Optional[int] = None,
    seed: Optional[int] = None,
    precision: Optional[str] = typer.Option(None, help="auto | fp32 | bf16 | fp16 (auto: bf16 on GPUs that have "
                                            "it, else fp16; on CPUs bf16 with AVX512-BF16/AMX, else fp32)"),
    save_steps: Optional[int] = None, eval_steps: Optional[int] = None, log_steps: Optional[int] = None,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --output-dir"),
    version_2: bool = typer.Option(False, "--version-2", help="Train with unanswerable questions (SQuAD v2.0)"),
    negatives: Optional[int] = typer.Option(None, help="Add N retrieved wrong passages per question as unanswerable "
                                                       "examples: a reader for document collections (implies --version-2)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub"),
) -> None:
    """Fine-tune an encoder into an extractive QA reader and score it on dev."""
    from .config import ConfigError, build_config
    from .data import DataError
    from .models import ModelError
    from .train import train
    from .windows import WindowError

    flags = {k: v for k, v in locals().items() if k not in ("recipe", "config") and not callable(v)}
    flags.update(resume=resume or None, version_2=version_2 or None, trust_remote_code=trust_remote_code or None)
    try:
        cfg = build_config(recipe, config, **flags)
        metrics = train(cfg)
    except (ConfigError, DataError, ModelError, WindowError) as e:
        _fail(str(e))
    except KeyboardInterrupt as e:
        _fail(str(e) or "interrupted", 130)
    if metrics:
        _print_summary(cfg.output_dir, metrics)


def _print_summary(output_dir: str, metrics: dict) -> None:
    keys = [k for k in ("exact_match", "f1", "exact", "HasAns_f1", "NoAns_f1", "best_f1", "valid_loss",
                        "start_accuracy", "end_accuracy") if k in metrics]
    print("  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    print(f"reader written to {output_dir}\n"
          f"  ask:      spanqa ask {output_dir} -q 'Who designed the tower?' -c 'It was designed by Gustave Eiffel.'\n"
          f"  chat:     spanqa chat {output_dir} --context-file PASSAGE.txt\n"
          f"  serve:    spanqa serve {output_dir}   (web page and API on http://127.0.0.1:8000)\n"
          f"  faster:   spanqa export {output_dir} --onnx --int8\n"
          f"  evaluate: spanqa evaluate {output_dir} DATA.json\n"
          f"  python:   from spanqa.reader import Reader; Reader.load('{output_dir}').answer(question, context)")


@app.command("evaluate")
def evaluate_cmd(model: str = typer.Argument(..., help="Reader folder or extractive-QA model id"),
                 data: str = typer.Argument(..., help="Dataset with answers (SQuAD v1.1/v2.0 JSON or JSONL)"),
                 output_dir: Optional[Path] = typer.Option(None, help="Write predictions and metrics here (default: MODEL/eval)"),
                 calibrate: bool = typer.Option(False, "--calibrate", help="v2: store the best null threshold in MODEL/spanqa.json"),
                 batch_size: Optional[int] = typer.Option(None, help="Default: 8 on CPU, 64 on GPU"),
                 max_samples: Optional[int] = None,
                 precision: str = typer.Option("fp32", help=PRECISION_HELP)) -> None:
    """Run a reader over a dataset and score it with the official metrics."""
    from .evaluate import evaluate_reader

    try:
        metrics = evaluate_reader(model, data, output_dir, calibrate, batch_size, max_samples, precision)
    except ValueError as e:
        _fail(str(e))
    print(json.dumps(metrics, indent=2))


@app.command("predict")
def predict_cmd(model: str = typer.Argument(..., help="Reader folder or extractive-QA model id"),
                data: str = typer.Argument(..., help="Questions and contexts (answers optional)"),
                out: Path = typer.Option(Path("predictions.json"), help="Official-format predictions file"),
                batch_size: Optional[int] = typer.Option(None, help="Default: 8 on CPU, 64 on GPU"),
                precision: str = typer.Option("fp32", help=PRECISION_HELP)) -> None:
    """Answer every question of a dataset: predictions.json plus n-best and null odds beside it."""
    from .evaluate import predict_dataset

    try:
        n = predict_dataset(model, data, out, batch_size, precision)
    except ValueError as e:
        _fail(str(e))
    print(f"wrote {n} predictions to {out}")


@app.command("ask")
def ask_cmd(model: str = typer.Argument("all-MiniLM-L6-v2", help="Reader folder or extractive-QA model id"),
            question: str = typer.Option(..., "-q", "--question"),
            context: Optional[str] = typer.Option(None, "-c", "--context", help="The passage"),
            context_file: Optional[Path] = typer.Option(None, help="Read the passage from a file"),
            index: Optional[Path] = typer.Option(None, help="Answer from this document index (spanqa index)"),
            passages: int = typer.Option(5, help="With --index: passages to retrieve and read"),
            mode: str = typer.Option("hybrid", help="With --index: bm25, dense or hybrid retrieval"),
            top_k: int = typer.Option(1, help="How many answers"),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Answer one question about a passage, or about a whole indexed collection."""
    from .reader import Reader

    if sum(x is not None for x in (context, context_file, index)) != 1:
        _fail("give the passage with -c TEXT or --context-file FILE, or a collection with --index DIR (one of them)")
    if not question.strip():
        _fail("the question must not be empty")
    if index is not None:
        sourced = _ask_index(Reader.load(model), index, question, top_k, passages, mode)
        if as_json:
            print(json.dumps({"answers": [a.to_dict() for a in sourced]}, indent=2, ensure_ascii=False))
            return
        if not sourced:
            print("(no answer)")
        for a in sourced:
            print(f"{a.text}\t(score {a.score:.3f}; {a.source()}, characters {a.passage_start}-{a.passage_end})")
        return
    if context_file is not None:
        if not context_file.is_file():
            _fail(f"{context_file}: no such file")
        context = context_file.read_text(encoding="utf-8")
    if not context.strip():
        _fail("the passage must not be empty")
    answers = Reader.load(model).answer(question, context, top_k=top_k)
    if as_json:
        print(json.dumps({"answers": [asdict(a) for a in answers]}, indent=2, ensure_ascii=False))
        return
    if not answers or answers[0].start < 0:
        print("(no answer)")
    for a in answers:
        if a.start >= 0:
            print(f"{a.text}\t(score {a.score:.3f}, characters {a.start}-{a.end})")


def _load_index(folder: Path):
    from .index import CollectionError, Index

    try:
        return Index.load(folder)
    except CollectionError as e:
        _fail(str(e))


def _ask_index(reader, folder: Path, question: str, top_k: int, passages: int, mode: str):
    from .collection import ask_collection
    from .index import MODES

    if mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}")
    return ask_collection(reader, _load_index(folder), question, top_k, passages, mode)


@app.command("index")
def index_cmd(docs: list[Path] = typer.Argument(..., help="Files or folders: .txt .md .json(.gz) .jsonl .pdf, SQuAD files"),
              out: Path = typer.Option(..., "--out", help="Index folder"),
              add: bool = typer.Option(False, "--add", help="Add the documents to the existing index at --out"),
              field: str = typer.Option("text", help="Text field of .json/.jsonl records"),
              passage_words: int = typer.Option(200, help="Longest passage, in words"),
              overlap_words: int = typer.Option(50, help="Overlap of the pieces of a long paragraph, in words"),
              embedding_model: str = typer.Option("all-MiniLM-L6-v2", help="Sentence-embedding model for dense search")) -> None:
    """Split documents into passages and index them for bm25, dense and hybrid search."""
    from .index import CollectionError, Embedder, Index, PassageSettings

    try:
        base = Index.load(out) if add and out.exists() else None
        embedder = Embedder(embedding_model) if base is None or embedding_model != "all-MiniLM-L6-v2" else None
        index, notes = Index.build(docs, PassageSettings(passage_words, overlap_words), embedder, field, base,
                                   show_progress=True)
    except CollectionError as e:
        _fail(str(e))
    for note in notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    index.save(out)
    print(f"{out}: {index.meta['documents']} documents, {len(index.passages)} passages "
          f"(embeddings: {index.meta['embedding_model']})")


@app.command("search")
def search_cmd(index: Path = typer.Argument(..., help="Index folder"),
               query: str = typer.Option(..., "-q", "--query"),
               k: int = typer.Option(5, "-k", help="How many passages"),
               mode: str = typer.Option("hybrid", help="bm25, dense or hybrid"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """The passages of an index that best match a query, with scores and sources."""
    from .index import MODES

    if mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}")
    hits = _load_index(index).search(query, k, mode)
    if as_json:
        print(json.dumps([{"score": h.score, **asdict(h.passage)} for h in hits], indent=2, ensure_ascii=False))
        return
    out = Console(soft_wrap=True, highlight=False)
    for h in hits:
        p = h.passage
        out.print(f"[bold]{h.rank + 1}. {p.title or p.doc_id}[/] ({p.path}, passage {p.passage_id}) score {h.score:.4f}")
        out.print("   " + (p.text if len(p.text) <= 300 else p.text[:300] + "…"), markup=False)

@app.command("chat")
def chat_cmd(model: str = typer.Argument(..., help="Reader folder or extractive-QA model id"),
             context_file: Optional[Path] = typer.Option(None, help="Start with the passage in this file"),
             index: Optional[Path] = typer.Option(None, help="Ask a document index (spanqa index) instead"),
             top_k: int = typer.Option(1, help="Answers per question")) -> None:
    """Ask many questions about a passage (or a collection); :load FILE switches passage, :quit leaves."""
    from .chat import chat
    from .collection import ask_collection
    from .reader import Reader

    context = ""
    if context_file is not None:
        if not context_file.is_file():
            _fail(f"{context_file}: no such file")
        context = context_file.read_text(encoding="utf-8")
    out = Console(soft_wrap=True)
    reader = Reader.load(model)
    collection = None
    if index is not None:
        loaded = _load_index(index)
        collection = lambda question: ask_collection(reader, loaded, question, top_k)  # noqa: E731
    chat(reader, _input_lines(out), out, context, collection, top_k)


def _input_lines(out: Console):
    """Lines typed by the user (a prompt on a terminal) or piped in, until end of input."""
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = out.input("[bold]?[/] ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        yield line


@app.command("serve")
def serve_cmd(model: str = typer.Argument(..., help="Reader folder, exported ONNX folder or QA model id"),
              host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes it to the network)"),
              port: int = typer.Option(8000),
              max_body_bytes: int = typer.Option(2_000_000, help="Larger request bodies get 413"),
              max_context_chars: int = typer.Option(100_000, help="Longer contexts get 422"),
              max_batch_items: int = typer.Option(64, help="Items per request, and per model batch"),
              timeout: float = typer.Option(30.0, help="Seconds per request before 504"),
              precision: str = typer.Option("fp32", help=PRECISION_HELP),
              index: Optional[Path] = typer.Option(None, help="Serve POST /v1/ask over this document index")) -> None:
    """HTTP API (POST /v1/answer, /v1/ask with --index, GET /health, docs at /docs) and a web page at /."""
    from .reader import Reader
    from .server import ServerLimits, serve

    limits = ServerLimits(max_body_bytes=max_body_bytes, max_context_chars=max_context_chars,
                          max_batch_items=max_batch_items, timeout_s=timeout)
    serve(Reader.load(model, precision=precision), host, port, limits, _load_index(index) if index else None)


@app.command("export")
def export_cmd(model: str = typer.Argument(..., help="Reader folder or QA model id"),
               out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL-onnx or MODEL-int8)"),
               onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX Runtime (the one format for now)"),
               int8: bool = typer.Option(False, "--int8", help="Dynamic int8 weights (feed-forward outputs stay fp32)"),
               int8_everywhere: bool = typer.Option(False, "--int8-everywhere",
                                                    help="int8 for every MatMul (faster, less exact)")) -> None:
    """An ONNX Runtime copy of a reader that `Reader.load`, ask, chat and serve run transparently."""
    from .export import export_onnx

    if not onnx:
        _fail("say which format: --onnx (the one supported now)")
    int8 = int8 or int8_everywhere
    target = out or Path(f"{model.rstrip('/')}-{'int8' if int8 else 'onnx'}")
    path = export_onnx(model, target, int8=int8, int8_everywhere=int8_everywhere)
    print(f"wrote {path}; try: spanqa ask {path} -q QUESTION -c TEXT")


@app.command("quickstart")
def quickstart(output_dir: str = typer.Option("runs/quick", help="Where the reader goes"),
               recipe: Optional[str] = typer.Option(None, help="Default: cpu-fast on CPU, full on a GPU")) -> None:
    """The first run: fine-tune the packaged encoder on SQuAD, evaluate on dev, answer a question."""
    import torch

    from .reader import Reader

    chosen = recipe or ("full" if torch.cuda.is_available() else "cpu-fast")
    console.print(f"[bold]spanqa quickstart[/]: recipe {chosen}, output {output_dir}")
    from .config import build_config
    from .train import train

    try:
        metrics = train(build_config(chosen, None, output_dir=output_dir))
    except ValueError as e:
        _fail(str(e))
    context = ("The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair. "
               "It was designed by the engineering company of Gustave Eiffel and is 330 metres tall.")
    question = "Who designed the Eiffel Tower?"
    best = Reader.load(output_dir).answer(question, context)
    print(f"Q: {question}\nA: {best[0].text if best else '(no answer)'}")
    _print_summary(output_dir, metrics)


def main() -> None:
    """Entry point of the `spanqa` console script."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
