"""`spanqa index|search`: document collections."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console

from spanqa.cli.common import app, console, fail, load_index


@app.command("index")
def index_cmd(docs: list[Path] = typer.Argument(..., help="Files or folders: .txt .md .json(.gz) .jsonl .pdf, SQuAD files"),
              out: Path = typer.Option(..., "--out", help="Index folder"),
              add: bool = typer.Option(False, "--add", help="Add the documents to the existing index at --out"),
              field: str = typer.Option("text", help="Text field of .json/.jsonl records"),
              passage_words: int = typer.Option(200, help="Longest passage, in words"),
              overlap_words: int = typer.Option(50, help="Overlap of the pieces of a long paragraph, in words"),
              embedding_model: str = typer.Option("all-MiniLM-L6-v2", help="Sentence-embedding model for dense search")) -> None:
    """Split documents into passages and index them for bm25, dense and hybrid search."""
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.index import Embedder, Index, PassageSettings

    try:
        base = Index.load(out) if add and out.exists() else None
        embedder = Embedder(embedding_model) if base is None or embedding_model != "all-MiniLM-L6-v2" else None
        index, notes = Index.build(docs, PassageSettings(passage_words, overlap_words), embedder, field, base,
                                   show_progress=True)
    except CollectionError as e:
        fail(str(e))
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
    from spanqa.retrieval.index import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}")
    hits = load_index(index).search(query, k, mode)
    if as_json:
        print(json.dumps([{"score": h.score, **asdict(h.passage)} for h in hits], indent=2, ensure_ascii=False))
        return
    out = Console(soft_wrap=True, highlight=False)
    for h in hits:
        p = h.passage
        out.print(f"[bold]{h.rank + 1}. {p.title or p.doc_id}[/] ({p.path}, passage {p.passage_id}) score {h.score:.4f}")
        out.print("   " + (p.text if len(p.text) <= 300 else p.text[:300] + "…"), markup=False)
