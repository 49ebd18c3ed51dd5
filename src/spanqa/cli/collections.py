"""`spanqa index|search`: document collections."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from spanqa.cli.common import STORE_HELP, app, console, fail, load_collection, load_store
from spanqa.models import DEFAULT_ENCODER


@app.command("index")
def index_cmd(docs: list[Path] = typer.Argument(None, help="Files or folders: .txt .md .json(.gz) .jsonl .pdf, SQuAD files"),
              out: Optional[Path] = typer.Option(None, "--out", help="Index folder (the in-process store)"),
              store: Optional[str] = typer.Option(None, "--store", help="Or a PostgreSQL store: "
                                                  "postgresql://user@host/db[?schema=NAME]"),
              add: bool = typer.Option(False, "--add", help="Add the documents to the existing collection "
                                       "(an index folder skips unchanged files and re-indexes changed ones; a "
                                       "store skips documents already there)"),
              update: bool = typer.Option(False, "--update", help="Add the documents, replacing the stored "
                                          "versions of those already there"),
              delete: list[str] = typer.Option([], "--delete", help="Remove a document (its id, or a file path: "
                                               "all of that file's documents); repeatable"),
              field: str = typer.Option("text", help="Text field of .json/.jsonl records"),
              passage_words: int = typer.Option(200, help="Longest passage, in words"),
              overlap_words: int = typer.Option(50, help="Overlap of the pieces of a long paragraph, in words"),
              embedding_model: str = typer.Option(DEFAULT_ENCODER, help="Sentence-embedding model for dense search")) -> None:
    """Split documents into passages and index them for bm25, dense and hybrid search (a folder or PostgreSQL).

    Writes are atomic: --delete is one step, then the new documents are written in another. A file that
    cannot be read is named (all of them, with the reason) and the others are indexed; the exit code is 1."""
    from spanqa.data.documents import CollectionError
    from spanqa.models import ModelError
    from spanqa.retrieval.passages import PassageSettings
    from spanqa.retrieval.stores import is_database_url

    if (out is None) == (store is None):
        fail("say where the collection goes: --out DIR or --store postgresql://...")
    if not docs and not delete:
        fail("give documents to index (or --delete DOC)")
    if store is not None and not is_database_url(store):
        fail("--store takes a postgresql:// URL; an index folder is --out DIR")
    try:
        settings = PassageSettings(passage_words, overlap_words)
        job = dict(docs=docs or [], delete=delete, add=add, update=update, settings=settings,
                   embedding_model=embedding_model, field=field)
        done, removed, info = _index_folder(out, **job) if out is not None else _index_store(store, **job)
    except (CollectionError, ModelError) as e:
        fail(str(e))
    where = out if out is not None else _redacted(store)
    print(f"{where}: {info['documents']} documents, {info['passage_count']} passages "
          f"(embeddings: {info.get('embedding_model')})"
          + (f"; {done.documents} documents written" if done is not None else "")
          + (f"; {removed} passages deleted" if delete else ""))
    if done is not None and done.unreadable:
        _report_unreadable(done.unreadable, where, out is not None, kept_old=bool(add or update or delete))


def _index_folder(out: Path, docs: list[Path], delete: list[str], add: bool, update: bool, settings,
                  embedding_model: str, field: str):
    """(what was ingested, passages deleted, the index's info) for an index folder."""
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval import layout
    from spanqa.retrieval.index import Index

    layout.check_target(out)  # before any work: a mistyped --out is refused, not found out after embedding
    if not (add or update or delete):  # a new index from these documents; the old one stays until it is saved
        target = Index.empty(settings)
        done = _ingest(target, docs, settings, embedding_model, field, False, "index")
        target.save(out)
        return done, 0, target.info()
    if not layout.is_index(out):  # never a new index of only these documents in place of a lost one
        raise CollectionError(f"{out}: no index there to change (--add, --update and --delete change an existing "
                              f"index); {layout.rebuild_hint(out, 'build it first')}")
    with layout.writing(out, on_wait=lambda message: _print_notes([message])):  # one writer at a time
        target = Index.load(out)
        removed = _delete(target, delete)
        done = _ingest(target, docs, settings, embedding_model, field, update, "index") if docs else None
        target.save(out)
    return done, removed, target.info()


def _index_store(store: str, docs: list[Path], delete: list[str], add: bool, update: bool, settings,
                 embedding_model: str, field: str):
    """(what was ingested, passages deleted, the store's info) for a PostgreSQL store."""
    target = load_store(store)
    try:
        if not (add or update or delete) and target.count():
            fail(f"this store already holds {target.count()} passages: --add adds documents, --update "
                 "replaces changed ones, --delete DOC removes one")
        removed = _delete(target, delete)
        done = _ingest(target, docs, settings, embedding_model, field, update, "store") if docs else None
        return done, removed, target.info()
    finally:
        target.close()


def _delete(target, names: list[str]) -> int:
    from spanqa.retrieval.ingest import matching_documents

    if not names:
        return 0
    keys, unmatched = matching_documents(target, names)
    _print_notes([f"no stored document is named {name!r} (a document id or a file path)" for name in unmatched])
    return target.delete(keys)


def _ingest(target, docs: list[Path], settings, embedding_model: str, field: str, update: bool, what: str):
    from spanqa.retrieval.ingest import ingest

    done = ingest(target, docs, settings, embedding_model, field, replace=update, show_progress=True, what=what)
    _print_notes(done.notes)
    return done


def _report_unreadable(problems: list[str], where, folder: bool, kept_old: bool) -> None:
    """Name every file that could not be read, then exit 1: the others are indexed and saved (beside what
    the collection held before when `kept_old`: --add, --update, --delete; a new index holds only these)."""
    before = " (and what it held of these before)" if kept_old else ""
    console.print(Text.assemble(("error:", "bold red"), f" {len(problems)} file(s) could not be read; {where} "
                                f"holds the other documents{before}:"), highlight=False)
    for problem in problems:
        console.print(Text("  " + problem), highlight=False)
    target = f"--out {where}" if folder else "--store URL"
    console.print(Text(f"fix or convert them, then add them with `spanqa index FILES {target} --add`"),
                  highlight=False)
    raise typer.Exit(1)


def _print_notes(notes: list[str]) -> None:
    for note in notes:  # a Text: brackets in a file name or title are never read as Rich markup
        console.print(Text.assemble(("note", "yellow"), " " + note), highlight=False)


def _redacted(url: str) -> str:
    from spanqa.retrieval.postgres import _redact

    return _redact(url)


@app.command("search")
def search_cmd(index: Optional[Path] = typer.Argument(None, help="Index folder (or --store URL)"),
               store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
               query: str = typer.Option(..., "-q", "--query"),
               k: int = typer.Option(5, "-k", help="How many passages"),
               mode: str = typer.Option("hybrid", help="bm25, dense or hybrid"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """The passages of an index (or a PostgreSQL store) that best match a query, with scores and sources."""
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.store import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}")
    if index is None and store is None:
        fail("give the collection: an index folder or --store URL")
    collection = load_collection(index, store)
    try:
        hits = collection.search_many([query], k, mode)[0]
    except CollectionError as e:
        fail(str(e))
    finally:
        getattr(collection, "close", lambda: None)()
    if as_json:
        print(json.dumps([{"score": h.score, "relevance": h.relevance, **asdict(h.passage)} for h in hits],
                         indent=2, ensure_ascii=False))
        return
    out = Console(soft_wrap=True, highlight=False)
    for h in hits:  # Text, not markup: a title like "[bold red]x[/]" or "[/]" is printed as it is
        p = h.passage
        out.print(Text.assemble((f"{h.rank + 1}. {p.title or p.doc_id}", "bold"),
                                f" ({p.path}, passage {p.passage_id}) score {h.score:.4f}"))
        out.print(Text("   " + (p.text if len(p.text) <= 300 else p.text[:300] + "…")))
