"""Documents into any DocumentStore: read files, split passages, embed, write in one atomic step.

What `spanqa index` does for every store (an index folder or PostgreSQL); the store only persists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from spanqa.data.documents import CollectionError, read_documents

from .index import Embedder, PassageSettings, _indexed_text, split_passages
from .store import DocKey, DocumentStore

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Ingested:
    documents: int       # documents written (added or replaced)
    passages: int        # their passages
    notes: list[str]     # documents skipped and why


def store_embedder(store: DocumentStore, name: str = DEFAULT_EMBEDDER) -> Embedder:
    """The embedding model to write `store` with: its own (checked against its fingerprint) when it
    has one and `name` is the default, else `name`, which must match the store's recorded weights."""
    info = store.info()
    if "embedding_model" in info and name == DEFAULT_EMBEDDER:
        return store.embedder()
    embedder = Embedder(name)
    store.check_embedder(embedder)
    return embedder


def ingest(store: DocumentStore, paths: Sequence[str | Path], settings: PassageSettings = PassageSettings(),
           embedding_model: str = DEFAULT_EMBEDDER, field: str = "text", replace: bool = False,
           show_progress: bool = False, what: str = "index") -> Ingested:
    """Add the documents in `paths` to `store` in one write (all or nothing). A document already stored
    is skipped with a note, or replaced when `replace`. A store that has passages keeps its passage
    settings and embedding model."""
    info = store.info()
    if isinstance(info.get("passages"), dict) and info.get("passage_count"):
        settings = PassageSettings(**info["passages"])
    docs, notes = read_documents(paths, field)
    known = store.documents()
    if not replace:
        notes += [f"{d.path}: document {d.doc_id!r} is already in the {what}; skipped" for d in docs
                  if (d.path, d.doc_id) in known]
        docs = [d for d in docs if (d.path, d.doc_id) not in known]
    new = [p for d in docs for p in split_passages(d, settings)]
    if not new:
        if not known:
            raise CollectionError("no text to index in " + ", ".join(map(str, paths)) +
                                  (": " + "; ".join(notes) if notes else ""))
        return Ingested(0, 0, notes)
    embedder = store_embedder(store, embedding_model)
    vectors = embedder.encode([_indexed_text(p) for p in new], show_progress)
    (store.update if replace else store.add)(new, vectors, embedder, settings)
    return Ingested(len({(p.path, p.doc_id) for p in new}), len(new), notes)


def matching_documents(store: DocumentStore, names: Sequence[str]) -> tuple[list[DocKey], list[str]]:
    """The stored documents named by `names` (a document id, or a file path: all of its documents),
    and the names that match none."""
    known = store.documents()
    keys: dict[DocKey, None] = {}
    unmatched = []
    for name in names:
        resolved = Path(name).resolve()
        found = [k for k in known if name in (k[1], k[0]) or Path(k[0]).resolve() == resolved]
        if not found:
            unmatched.append(name)
        keys.update(dict.fromkeys(sorted(found)))
    return list(keys), unmatched
