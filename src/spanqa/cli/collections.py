"""`spanqa index|search`: document collections."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from spanqa.cli.common import STORE_HELP, app, console, fail, load_collection, load_store


@app.command("index")
def index_cmd(docs: list[Path] = typer.Argument(None, help="Files or folders: .txt .md .json(.gz) .jsonl .pdf, SQuAD files"),
              out: Optional[Path] = typer.Option(None, "--out", help="Index folder (the in-process store)"),
              store: Optional[str] = typer.Option(None, "--store", help="Or a PostgreSQL store: "
                                                  "postgresql://user@host/db[?schema=NAME]"),
              add: bool = typer.Option(False, "--add", help="Add the documents to the existing collection "
                                       "(documents already there are skipped)"),
              update: bool = typer.Option(False, "--update", help="Add the documents, replacing the stored "
                                          "versions of those already there"),
              delete: list[str] = typer.Option([], "--delete", help="Remove a document (its id, or a file path: "
                                               "all of that file's documents); repeatable"),
              field: str = typer.Option("text", help="Text field of .json/.jsonl records"),
              passage_words: int = typer.Option(200, help="Longest passage, in words"),
              overlap_words: int = typer.Option(50, help="Overlap of the pieces of a long paragraph, in words"),
              embedding_model: str = typer.Option("all-MiniLM-L6-v2", help="Sentence-embedding model for dense search")) -> None:
    """Split documents into passages and index them for bm25, dense and hybrid search (a folder or PostgreSQL).

    Writes are atomic: --delete is one step, then the new documents are written in another."""
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.index import Embedder, Index, PassageSettings
    from spanqa.retrieval.ingest import ingest, matching_documents

    if (out is None) == (store is None):
        fail("say where the collection goes: --out DIR or --store postgresql://...")
    if not docs and not delete:
        fail("give documents to index (or --delete DOC)")
    from spanqa.retrieval.store import is_database_url

    if store is not None and not is_database_url(store):
        fail("--store takes a postgresql:// URL; an index folder is --out DIR")
    settings = PassageSettings(passage_words, overlap_words)
    grow = add or update or bool(delete)
    target = None
    try:
        if out is not None and not grow:  # a new index folder from these documents (replaces the old one)
            index, notes = Index.build(docs, settings, Embedder(embedding_model), field, show_progress=True)
            _print_notes(notes)
            index.save(out)
            print(f"{out}: {index.meta['documents']} documents, {len(index.passages)} passages "
                  f"(embeddings: {index.meta['embedding_model']})")
            return
        if out is not None:
            target = Index.load(out) if out.exists() else Index.empty(settings)
        else:
            target = load_store(store)
            if not grow and target.count():
                fail(f"this store already holds {target.count()} passages: --add adds documents, --update "
                     "replaces changed ones, --delete DOC removes one")
        removed = 0
        if delete:
            keys, unmatched = matching_documents(target, delete)
            for name in unmatched:
                console.print(f"[yellow]note[/] no stored document is named {name!r} (a document id or a file path)",
                              highlight=False)
            removed = target.delete(keys)
        done = ingest(target, docs, settings, embedding_model, field, replace=update, show_progress=True,
                      what="index" if out is not None else "store") if docs else None
        if done is not None:
            _print_notes(done.notes)
        if out is not None:
            target.save(out)
        info = target.info()
    except CollectionError as e:
        fail(str(e))
    finally:
        if store is not None and target is not None:
            target.close()
    where = out if out is not None else _redacted(store)
    print(f"{where}: {info['documents']} documents, {info['passage_count']} passages "
          f"(embeddings: {info.get('embedding_model')})"
          + (f"; {done.documents} documents written" if done is not None else "")
          + (f"; {removed} passages deleted" if delete else ""))


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)


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
    from spanqa.retrieval.index import MODES

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
    for h in hits:
        p = h.passage
        out.print(f"[bold]{h.rank + 1}. {p.title or p.doc_id}[/] ({p.path}, passage {p.passage_id}) score {h.score:.4f}")
        out.print("   " + (p.text if len(p.text) <= 300 else p.text[:300] + "…"), markup=False)
