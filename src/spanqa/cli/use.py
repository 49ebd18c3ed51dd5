"""`spanqa ask|chat|serve|export`: use a reader on a passage or a collection."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from spanqa.cli.common import PRECISION_HELP, STORE_HELP, app, fail, load_collection


@app.command("ask")
def ask_cmd(model: str = typer.Argument(..., help="Reader folder, exported ONNX folder or extractive-QA model id"),
            question: str = typer.Option(..., "-q", "--question"),
            context: Optional[str] = typer.Option(None, "-c", "--context", help="The passage"),
            context_file: Optional[Path] = typer.Option(None, help="Read the passage from a file"),
            index: Optional[Path] = typer.Option(None, help="Answer from this document index (spanqa index)"),
            store: Optional[str] = typer.Option(None, "--store", help=f"Or from a store. {STORE_HELP}"),
            passages: int = typer.Option(5, help="With --index/--store: passages to retrieve and read"),
            mode: str = typer.Option("hybrid", help="With --index/--store: bm25, dense or hybrid retrieval"),
            top_k: int = typer.Option(1, help="How many answers"),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Answer one question about a passage, or about a whole indexed collection."""
    if sum(x is not None for x in (context, context_file, index, store)) != 1:
        fail("give the passage with -c TEXT or --context-file FILE, or a collection with --index DIR or "
             "--store URL (one of them)")
    if not question.strip():
        fail("the question must not be empty")
    if index is not None or store is not None:
        sourced = _ask_collection(model, index, store, question, top_k, passages, mode)
        if as_json:
            print(json.dumps({"answers": [a.to_dict() for a in sourced]}, indent=2, ensure_ascii=False))
            return
        if not sourced:
            print("(no answer)")
        for a in sourced:
            print(f"{a.text}\t(score {a.score:.3f}; {a.source()}, characters {a.passage_start}-{a.passage_end})")
        return
    if context_file is not None:
        context = _read_passage(context_file)
    if not context.strip():
        fail("the passage must not be empty")
    answers = _load_reader(model).answer(question, context, top_k=top_k)
    if as_json:
        print(json.dumps({"answers": [asdict(a) for a in answers]}, indent=2, ensure_ascii=False))
        return
    if not answers or answers[0].start < 0:
        print("(no answer)")
    for a in answers:
        if a.start >= 0:
            print(f"{a.text}\t(score {a.score:.3f}, characters {a.start}-{a.end})")


def _ask_collection(model: str, folder: Optional[Path], store: Optional[str], question: str, top_k: int,
                    passages: int, mode: str):
    from spanqa.data.documents import CollectionError
    from spanqa.qa.collection import ask_collection
    from spanqa.retrieval.store import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}")
    collection = load_collection(folder, store)
    try:
        return ask_collection(_load_reader(model), collection, question, top_k, passages, mode)
    except CollectionError as e:
        fail(str(e))
    finally:
        getattr(collection, "close", lambda: None)()


@app.command("chat")
def chat_cmd(model: str = typer.Argument(..., help="Reader folder or extractive-QA model id"),
             context_file: Optional[Path] = typer.Option(None, help="Start with the passage in this file"),
             index: Optional[Path] = typer.Option(None, help="Ask a document index (spanqa index) instead"),
             store: Optional[str] = typer.Option(None, "--store", help=f"Or ask a store. {STORE_HELP}"),
             top_k: int = typer.Option(1, help="Answers per question")) -> None:
    """Ask many questions about a passage (or a collection); :load FILE switches passage, :quit leaves."""
    from spanqa.chat import chat
    from spanqa.qa.collection import ask_collection

    context = _read_passage(context_file) if context_file is not None else ""
    out = Console(soft_wrap=True)
    reader = _load_reader(model)
    collection = None
    loaded = load_collection(index, store)
    if loaded is not None:
        collection = lambda question: ask_collection(reader, loaded, question, top_k)  # noqa: E731
    chat(reader, _input_lines(out), out, context, collection, top_k)


def _read_passage(path: Path) -> str:
    """A passage file's text, or exit with a message saying what is wrong with the file."""
    if not path.is_file():
        fail(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        fail(f"{path}: not UTF-8 text (byte {e.start}); convert it first, e.g. iconv -f latin1 -t utf-8 {path}")
    except OSError as e:
        fail(f"{path}: cannot read it ({e.strerror})")


def _load_reader(model: str, **kwargs):
    """`Reader.load`, or exit with its `ModelError` (missing folder, damaged weights, ...)."""
    from spanqa.models import ModelError
    from spanqa.qa.reader import Reader

    try:
        return Reader.load(model, **kwargs)
    except ModelError as e:
        fail(str(e))


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
def serve_cmd(model: str = typer.Argument(..., help="Reader or classifier folder, exported ONNX folder or QA model id"),
              host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes it to the network)"),
              port: int = typer.Option(8000),
              max_body_bytes: int = typer.Option(2_000_000, help="Larger request bodies get 413"),
              max_context_chars: int = typer.Option(100_000, help="Longer contexts (classifier: texts) get 422"),
              max_batch_items: int = typer.Option(64, help="Items per request, and per model batch"),
              timeout: float = typer.Option(30.0, min=0.1, help="Seconds per request before 504"),
              read_timeout: float = typer.Option(10.0, min=0.1, help="Seconds to receive a request's headers, and "
                                                                     "again its body, before 408"),
              precision: str = typer.Option("fp32", help=PRECISION_HELP),
              compile: bool = typer.Option(False, "--compile", help="torch readers: compile with torch.compile at "
                                           "start-up (about half a minute), then read faster (bf16 on CPU: "
                                           "BENCHMARKS.md)"),
              index: Optional[Path] = typer.Option(None, help="Serve POST /v1/ask over this document index"),
              store: Optional[str] = typer.Option(None, "--store", help=f"Or over a store. {STORE_HELP}"),
              store_connections: int = typer.Option(8, help="With a PostgreSQL --store: the connection pool's size")) -> None:
    """HTTP API (POST /v1/answer, /v1/ask with --index, GET /health, docs at /docs) and a web page at /;
    for a classifier folder (spanqa classify train), POST /v1/classify."""
    from spanqa.classify.classifier import Classifier, is_classifier_folder
    from spanqa.server import ServerLimits, serve

    limits = ServerLimits(max_body_bytes=max_body_bytes, max_context_chars=max_context_chars,
                          max_batch_items=max_batch_items, timeout_s=timeout, read_timeout_s=read_timeout)
    if is_classifier_folder(model):
        if index is not None or store is not None:
            fail(f"{model} is a classifier: it answers no questions about a collection (drop --index/--store)")
        if compile:
            fail(f"{model} is a classifier: --compile is for readers (drop it)")
        from spanqa.models import ModelError

        try:
            classifier = Classifier.load(model, precision=precision)
        except ModelError as e:
            fail(str(e))
        _announce(model, classifier)
        serve(classifier, host, port, limits)
        return
    from spanqa.data.documents import CollectionError
    from spanqa.server import _check_store

    collection = load_collection(index, store, **({"pool_size": store_connections} if store else {}))
    if collection is not None:
        try:
            _check_store(collection)  # reachable, and its embedding model is the one that wrote it
        except CollectionError as e:
            fail(str(e))
    reader = _load_reader(model, precision=precision, compile=compile)
    _announce(model, reader)
    serve(reader, host, port, limits, collection)


def _announce(model: str, predictor) -> None:
    """The start-up line: what is served, which reading path runs it, and a faster one where there is one."""
    from spanqa.onnx_models import describe_runtime
    from spanqa.models import cpu_has_native_bf16

    runtime = describe_runtime(predictor.model, predictor.device, predictor.autocast_dtype)
    hint = ""
    check = Path(model) / "export_check.json"
    if check.is_file():  # `spanqa export --check`: say what the choice rests on
        hint = "; " + _check_summary(json.loads(check.read_text()))
    elif runtime == "torch fp32 (cpu)" and cpu_has_native_bf16():
        # bf16 reads at fp32's F1; with AMX it is also faster than the int8 export (BENCHMARKS.md, issue 17)
        hint = f"; faster on this CPU: --precision bf16, or spanqa export {model} (int8) and serve the export"
    elif runtime.startswith("torch") and predictor.device.type == "cpu":
        hint = f"; faster on CPU: spanqa export {model}, then serve the export"
    elif runtime == "ONNX Runtime fp32 (cpu)":
        hint = "; faster on CPU: export the torch model again without --fp32"
    print(f"spanqa serve: {model}, {runtime}{hint}", flush=True)


def _check_summary(c: dict) -> str:
    """What an `export --check` choice rests on, in one clause (export_check.json's fields)."""
    on = f"on {c['examples']:,} examples"
    if c["chosen"] == "fp32":
        return (f"export --check kept fp32: no int8 export within {c['max_loss']} of its {c['metric']} "
                f"{c['scores']['fp32']:.2f} {on}")
    return (f"chosen by export --check: {c['chosen']}, {c['metric']} {c['scores'][c['chosen']]:.2f} against fp32's "
            f"{c['scores']['fp32']:.2f} {on} (max loss {c['max_loss']})")


@app.command("export")
def export_cmd(model: str = typer.Argument(..., help="Reader or classifier folder, or a QA model id"),
               out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL-int8, MODEL-int8-everywhere or MODEL-onnx)"),
               # accepted so that scripts written when --onnx was required keep working; ONNX is the one format
               onnx: bool = typer.Option(True, "--onnx", hidden=True),
               int8: bool = typer.Option(True, "--int8/--fp32",
                                         help="int8 weights, activations scaled per batch, the feed-forward outputs in "
                                              "fp32: 0.4-0.8 F1 below fp32 (BENCHMARKS.md), on CPUs without AMX the fastest path near fp32's F1; or fp32"),
               int8_everywhere: bool = typer.Option(False, "--int8-everywhere",
                                                    help="int8 for the feed-forward outputs too: faster, 0.7-2.3 F1 lower"),
               check: Optional[str] = typer.Option(None, "--check", metavar="DATA",
                                                   help="Labelled data held out from what you will report (SQuAD data "
                                                        "for a reader, the classifier's format for a classifier): write "
                                                        "the fastest export within --max-loss of fp32 on it"),
               max_loss: float = typer.Option(0.5, help="With --check: points of F1 (or of the classifier's main "
                                                        "metric x 100) the export may lose against fp32"),
               check_samples: Optional[int] = typer.Option(None, help="With --check: score the first N examples only")) -> None:
    """An ONNX Runtime copy of a reader (or classifier) that `Reader.load` (`Classifier.load`), ask, chat,
    classify predict and serve run transparently."""
    from spanqa.models import ModelError

    if int8_everywhere and not int8:
        fail("--fp32 and --int8-everywhere contradict each other: give one of them")
    if check is not None:
        if int8_everywhere or not int8:
            fail("--check chooses between int8 everywhere, int8 and fp32 itself: leave out --fp32 and --int8-everywhere")
        from spanqa.export_check import export_checked

        try:
            checked = export_checked(model, check, out, max_loss, check_samples, log=print)
        except (ModelError, ValueError) as e:  # DataError is a ValueError
            fail(str(e))
        print(f"{_check_summary(asdict(checked))} (measured in {checked.path}/export_check.json)")
        path = Path(checked.path)
    else:
        from spanqa.export import export_onnx

        suffix = "int8-everywhere" if int8_everywhere else "int8" if int8 else "onnx"
        try:
            path = export_onnx(model, out or Path(f"{model.rstrip('/')}-{suffix}"), int8=int8,
                               int8_everywhere=int8_everywhere)
        except ModelError as e:
            fail(str(e))
    from spanqa.classify.classifier import is_classifier_folder

    if is_classifier_folder(path):
        print(f"wrote {path}; try: spanqa classify predict {path} DATA --out predictions.jsonl, or spanqa serve {path}")
    else:
        print(f"wrote {path}; try: spanqa ask {path} -q QUESTION -c TEXT")
