"""Documents into any DocumentStore: read files, split passages, embed, write in one atomic step.

What `spanqa index` does for every store (an index folder or PostgreSQL); the store only persists.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from spanqa.data.cache import file_sha256
from spanqa.data.documents import CollectionError, Document, document_files, keep_documents, read_file
from spanqa.models import DEFAULT_ENCODER

from .embedder import Embedder
from .passages import PassageSettings, indexed_text, split_passages
from .store import DocKey, DocumentStore


@dataclass(frozen=True)
class Ingested:
    documents: int       # documents written (added or replaced)
    passages: int        # their passages
    notes: list[str]     # documents skipped and why
    unreadable: list[str] = field(default_factory=list)  # files that could not be read, each with the reason


def store_embedder(store: DocumentStore, name: str = DEFAULT_ENCODER) -> Embedder:
    """The embedding model to write `store` with: its own (checked against its fingerprint) when it
    has one and `name` is the default, else `name`, which must match the store's recorded weights."""
    info = store.info()
    if "embedding_model" in info and name == DEFAULT_ENCODER:
        return store.embedder()
    embedder = Embedder(name)
    store.check_embedder(embedder)
    return embedder


RACY_NS = 2_000_000_000  # mtimes are coarse (a kernel tick; 2 s on FAT): a write this soon after one is unseen


def file_signature(path: Path) -> dict:
    """What tells a file changed: size and mtime (no reading), then its sha256 (see `_unchanged`)."""
    checked = time.time_ns()
    stat = path.stat()  # before hashing: a write during the hashing leaves a newer mtime, seen next time
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path), "checked_ns": checked}


def _unchanged(path: Path, old: dict | None) -> tuple[bool, dict]:
    """(the file is as it was indexed, its signature now). Size and mtime as recorded are trusted only when
    the file was already older than RACY_NS when recorded (as git does): a write within the same mtime
    tick as the recorded one would otherwise go unseen. Else the content's sha256 decides."""
    if old is not None:
        stat = path.stat()
        if ((stat.st_size, stat.st_mtime_ns) == (old.get("size"), old.get("mtime_ns"))
                and old.get("checked_ns", 0) - old.get("mtime_ns", 0) > RACY_NS):
            return True, old
    new = file_signature(path)
    return old is not None and new["sha256"] == old.get("sha256"), new


def ingest(store: DocumentStore, paths: Sequence[str | Path], settings: PassageSettings = PassageSettings(),
           embedding_model: str = DEFAULT_ENCODER, field: str = "text", replace: bool = False,
           show_progress: bool = False, what: str = "index", embedder: Embedder | None = None) -> Ingested:
    """Add the documents in `paths` to `store` in one write (all or nothing for the store). A file that
    cannot be read is listed in `unreadable` and the others are written. Files are known by their real
    paths. A store that records file signatures (the index folder) skips a file unchanged since it was
    read and replaces all documents of a changed one; elsewhere a document already stored is skipped
    with a note, or replaced when `replace`. A store that has passages keeps its passage settings and
    embedding model."""
    info = store.info()
    if isinstance(info.get("passages"), dict) and info.get("passage_count"):
        settings = PassageSettings(**info["passages"])
    if embedder is not None:
        store.check_embedder(embedder)  # before reading anything: another model's vectors never mix in
    tracked = store.files() if hasattr(store, "files") else None
    known = store.documents()
    by_file: dict[str, set[DocKey]] = defaultdict(set)  # stored paths may be other spellings of one file
    for key in known:
        by_file[os.path.realpath(key[0])].add(key)
    notes: list[str] = []
    unreadable: list[str] = []
    docs: list[Document] = []
    seen: set[str] = set()
    replaced: set[DocKey] = set()  # stored documents of the files read again
    signatures: dict[str, dict] = {}
    unchanged: list[Path] = []
    for path in document_files(paths, notes, unreadable):
        name = str(path)
        try:
            if tracked is not None:
                same, signatures[name] = _unchanged(path, tracked.get(name))
                if same and not replace:
                    unchanged.append(path)
                    continue
            found = read_file(path, field)
        except OSError as e:
            signatures.pop(name, None)
            unreadable.append(f"{path}: cannot read it ({e.strerror or e}); check that you may read it")
            continue
        except CollectionError as e:
            signatures.pop(name, None)
            unreadable.append(str(e))
            continue
        stored = by_file.get(name, set())
        if stored and tracked is None and not replace:
            notes += [f"{d.path}: document {d.doc_id!r} is already in the {what}; skipped (--update replaces "
                      "it)" for d in found if (d.path, d.doc_id) in stored]
            found = [d for d in found if (d.path, d.doc_id) not in stored]
        else:
            replaced |= stored
        docs += keep_documents(found, seen, notes)
    if unchanged:  # one line for a folder of thousands
        notes.insert(0, f"{unchanged[0] if len(unchanged) == 1 else f'{len(unchanged)} files'}: already in the "
                        f"{what} and unchanged since; skipped")
    new = [p for d in docs for p in split_passages(d, settings)]
    gone = replaced - {(p.path, p.doc_id) for p in new}  # documents no longer in their changed file
    if not new and not known:
        raise CollectionError("no text to index in " + ", ".join(map(str, paths)) +
                              (": " + "; ".join(notes + unreadable) if notes or unreadable else ""))
    if new:
        embedder = embedder or store_embedder(store, embedding_model)
        vectors = _embed(store, embedder, new, replaced, show_progress)
        (store.update if replace or replaced else store.add)(new, vectors, embedder, settings)
    if gone:  # after the update: a kill between two writes of a database store leaves extra, not missing, text
        store.delete(gone)
    if tracked is not None:
        store.record_files(signatures)
    return Ingested(len({(p.path, p.doc_id) for p in new}), len(new), notes, unreadable)


def _embed(store: DocumentStore, embedder: Embedder, passages: list, replaced: set[DocKey],
           show_progress: bool) -> np.ndarray:
    """Embeddings of `passages`; those whose text is unchanged in a replaced document keep their vector."""
    texts = [indexed_text(p) for p in passages]
    old = store.vectors_of(replaced) if replaced and hasattr(store, "vectors_of") else {}
    todo = [i for i, t in enumerate(texts) if t not in old]
    fresh = embedder.encode([texts[i] for i in todo], show_progress) if todo else None
    vectors = np.zeros((len(texts), len(next(iter(old.values()))) if fresh is None else fresh.shape[1]), np.float32)
    if fresh is not None:
        vectors[todo] = fresh
    for i, t in enumerate(texts):
        if t in old:
            vectors[i] = old[t]
    return vectors


def matching_documents(store: DocumentStore, names: Sequence[str]) -> tuple[list[DocKey], list[str]]:
    """The stored documents named by `names` (a document id, or a file path: all of its documents),
    and the names that match none."""
    known = store.documents()
    real = {path: Path(path).resolve() for path, _ in known}  # once, not once a name
    keys: dict[DocKey, None] = {}
    unmatched = []
    for name in names:
        resolved = Path(name).resolve()
        found = [k for k in known if name in (k[1], k[0]) or real[k[0]] == resolved]
        if not found:
            unmatched.append(name)
        keys.update(dict.fromkeys(sorted(found)))
    return list(keys), unmatched
