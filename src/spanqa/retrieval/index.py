"""The in-process document store: passages with a BM25 index and dense embeddings in a versioned folder.

An index version holds `index.json` (settings, the embedding model and its fingerprint, and the size,
mtime and sha256 of each indexed file), `passages.jsonl` and `embeddings.npy` (L2-normalised
mean-pooled sentence embeddings); layout.py keeps versions in the folder so that no kill leaves it
unusable. The bm25s index is rebuilt from the passages on load (a second for 10k passages, nothing to
keep in sync). `--add` appends documents (only new passages are embedded) and re-indexes changed files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from spanqa.errors import CollectionError
from spanqa.models import ModelError

from . import layout
from .bm25 import bm25_index, bm25_retrieve
from .embedder import Embedder
from .ingest import ingest
from .passages import Passage, PassageSettings, indexed_text
from .store import HYBRID_POOL, DocKey, EmbedderLike, Hit, check_mode, check_vectors, embedding_mismatch, hits

INDEX_FORMAT = 1


# --- the index -----------------------------------------------------------------------------------

class Index:
    """Passages with a BM25 index and dense embeddings; `search` in bm25, dense or hybrid mode.

    The in-process DocumentStore: `add`, `update` and `delete` change it in memory (all or nothing),
    `save` writes it to its folder atomically."""

    def __init__(self, meta: dict, passages: list[Passage], embeddings: np.ndarray, embedder: Embedder | None = None):
        self.meta, self.passages, self.embeddings = meta, passages, embeddings
        self._embedder = embedder
        self._bm25 = bm25_index([indexed_text(p) for p in passages])

    # building and storing

    @classmethod
    def build(cls, paths: Sequence[str | Path], settings: PassageSettings = PassageSettings(),
              embedder: Embedder | None = None, field: str = "text", base: "Index | None" = None,
              show_progress: bool = False) -> tuple["Index", list[str]]:
        """An index of the documents in `paths` (added to a copy of `base` when given: changed files
        re-indexed, unchanged ones skipped) and notes on what was skipped or could not be read."""
        index = copy.copy(base) if base is not None else cls.empty(settings)
        done = ingest(index, paths, settings, field=field, show_progress=show_progress, embedder=embedder)
        return index, done.notes + done.unreadable

    @classmethod
    def empty(cls, settings: PassageSettings = PassageSettings()) -> "Index":
        """An index without passages; the first `add` records its embedding model."""
        return cls({"format": INDEX_FORMAT, "passages": asdict(settings), "documents": 0, "passage_count": 0},
                   [], np.zeros((0, 0), np.float32))

    def save(self, folder: str | Path) -> Path:
        """Write the index as a new version of `folder`; readers see the old version until it is complete."""
        def write(staging: Path) -> None:
            (staging / "index.json").write_text(json.dumps(self.meta, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
            with open(staging / "passages.jsonl", "w", encoding="utf-8") as f:
                for p in self.passages:
                    f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
            np.save(staging / "embeddings.npy", self.embeddings)

        return layout.save_version(Path(folder), write)

    @classmethod
    def load(cls, folder: str | Path, embedder: Embedder | None = None) -> "Index":
        """The folder's current index; CollectionError naming the file when it is missing or damaged."""
        folder = Path(folder)
        version, files = layout.open_files(folder)
        where = version / "index.json"
        try:
            meta = json.loads(files[0].read().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise CollectionError(f"{where}: index format {found}, this spanqa reads {INDEX_FORMAT}; "
                                      f"{layout.rebuild_hint(folder)}")
            where = version / "passages.jsonl"
            passages = [Passage(**json.loads(line)) for line in files[1]]
            where = version / "embeddings.npy"
            embeddings = np.load(files[2], allow_pickle=False)
        except CollectionError:
            raise
        except (ValueError, TypeError, EOFError, OSError) as e:  # cut short, flipped bytes, not ours
            raise CollectionError(f"{where}: damaged ({str(e)[:200]}); {layout.rebuild_hint(folder)}") from None
        finally:
            for f in files:
                f.close()
        if embeddings.ndim != 2 or len(embeddings) != len(passages) or meta.get("passage_count") != len(passages):
            raise CollectionError(f"{version}: damaged ({len(passages)} passages, embeddings of shape "
                                  f"{embeddings.shape}, index.json says {meta.get('passage_count')}); "
                                  f"{layout.rebuild_hint(folder)}")
        index = cls(meta, passages, embeddings, embedder)
        if embedder is not None:
            index.check_embedder(embedder)
        return index

    # embeddings

    def embedder(self) -> Embedder:
        """The embedding model that built the index (checked against its fingerprint)."""
        if self._embedder is None:
            try:
                embedder = Embedder(self.meta["embedding_model"], self.meta["embedding_max_length"])
            except ModelError as e:
                raise CollectionError(f"this index's embedding model cannot be loaded: {e}") from None
            self.check_embedder(embedder)
            self._embedder = embedder
        return self._embedder

    def check_embedder(self, embedder: EmbedderLike) -> None:
        """Raise CollectionError unless the index's vectors come from `embedder`'s weights."""
        name, fingerprint = self.meta.get("embedding_model"), self.meta.get("embedding_fingerprint")
        if fingerprint is not None and embedder.fingerprint != fingerprint:
            raise CollectionError(embedding_mismatch(name, fingerprint, embedder))

    # the DocumentStore interface

    def info(self) -> dict:
        """The index's meta: embedding model, fingerprint, passage settings, counts."""
        return dict(self.meta)

    def count(self) -> int:
        """Number of passages."""
        return len(self.passages)

    def documents(self) -> set[DocKey]:
        """Keys (path, doc_id) of the indexed documents."""
        return {(p.path, p.doc_id) for p in self.passages}

    def add(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
            settings: PassageSettings | None = None) -> None:
        """Add new documents' passages; a document already indexed is refused."""
        self._write(passages, embeddings, embedder, settings, replace=False)

    def update(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
               settings: PassageSettings | None = None) -> None:
        """Replace the documents of `passages` (adding new ones)."""
        self._write(passages, embeddings, embedder, settings, replace=True)

    def delete(self, keys: Iterable[DocKey]) -> int:
        """Remove these documents; the number of passages removed."""
        gone = set(keys)
        keep = [i for i, p in enumerate(self.passages) if (p.path, p.doc_id) not in gone]
        removed = len(self.passages) - len(keep)
        if removed:
            kept = [self.passages[i] for i in keep]
            left = {p.path for p in kept}  # a file with no document left is forgotten: adding it again reads it
            emptied = {k[0] for k in gone} - left
            files = {f: sig for f, sig in self.files().items() if f not in emptied}
            self._set(kept, self.embeddings[keep], {**self.meta, "files": files})
        return removed

    def vectors_of(self, keys: Iterable[DocKey]) -> dict[str, np.ndarray]:
        """Indexed text -> embedding of these documents' passages: a changed file's unchanged passages
        keep their vectors instead of being embedded again."""
        keys = set(keys)
        return {indexed_text(p): self.embeddings[i] for i, p in enumerate(self.passages) if (p.path, p.doc_id) in keys}

    def files(self) -> dict[str, dict]:
        """Size, mtime_ns and sha256 of each indexed file (by real path), as they were when it was read."""
        return dict(self.meta.get("files", {}))

    def record_files(self, signatures: dict[str, dict]) -> None:
        """Remember these files' signatures (see `files`): `--add` skips a file only while it matches."""
        self.meta = {**self.meta, "files": dict(sorted({**self.files(), **signatures}.items()))}

    def _write(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
               settings: PassageSettings | None, replace: bool) -> None:
        new = list(passages)  # everything is computed aside: a failure leaves the index as it was
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(new):
            raise CollectionError(f"{len(new)} passages need {len(new)} embedding rows, "
                                  f"not an array of shape {embeddings.shape}")
        self.check_embedder(embedder)
        if self.passages and embeddings.shape[1] != self.embeddings.shape[1]:
            raise CollectionError(f"this index holds {self.embeddings.shape[1]}-dimensional embeddings, "
                                  f"not {embeddings.shape[1]}")
        keys = {(p.path, p.doc_id) for p in new}
        present = sorted(keys & self.documents())
        if present and not replace:
            raise CollectionError(f"{len(present)} document(s) already in the index, e.g. {present[0][1]!r} "
                                  f"of {present[0][0]}: update them instead")
        meta = {**self.meta, "embedding_model": embedder.name, "embedding_fingerprint": embedder.fingerprint,
                "embedding_max_length": embedder.max_length}
        if settings is not None:
            meta["passages"] = asdict(settings)
        keep = [i for i, p in enumerate(self.passages) if (p.path, p.doc_id) not in keys]
        kept = [self.passages[i] for i in keep]
        self._set(kept + new, np.concatenate([self.embeddings[keep], embeddings]) if kept else embeddings, meta)

    def _set(self, passages: list[Passage], embeddings: np.ndarray, meta: dict) -> None:
        bm25 = bm25_index([indexed_text(p) for p in passages])  # before any change: a failure changes nothing
        self.meta = {**meta, "documents": len({(p.path, p.doc_id) for p in passages}), "passage_count": len(passages)}
        self.passages, self.embeddings, self._bm25 = passages, embeddings, bm25

    # searching

    def describe(self) -> dict:
        return {"passages": len(self.passages), "documents": self.meta["documents"],
                "embedding_model": self.meta["embedding_model"]}

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
        """The k best passages of each query, best first (queries embedded here when the mode needs them)."""
        check_mode(mode)
        needs_vectors = mode != "bm25" and k > 0 and self.passages and queries
        return self.retrieve(queries, self.embedder().encode(list(queries)) if needs_vectors else None, k, mode)

    def retrieve(self, queries: Sequence[str], vectors: np.ndarray | None, k: int = 5,
                 mode: str = "hybrid") -> list[list[Hit]]:
        """The k best passages of each query, best first; `vectors` are the queries' embeddings."""
        check_mode(mode)
        k = min(k, len(self.passages))
        if k <= 0 or not queries:
            return [[] for _ in queries]
        check_vectors(mode, vectors, queries)
        pool = min(len(self.passages), max(k, HYBRID_POOL)) if mode == "hybrid" else k
        ranked = []
        if mode in ("bm25", "hybrid"):
            ranked.append(self._bm25_search(queries, pool))
        if mode in ("dense", "hybrid"):
            ranked.append(self._dense_search(np.asarray(vectors, dtype=np.float32), pool))
        if mode != "hybrid":
            ids, scores = ranked[0]
        else:
            ids, scores = _fuse(ranked, k)
        return [hits([self.passages[i] for i in row_ids[:k]], [float(s) for s in row_scores[:k]], mode)
                for row_ids, row_scores in zip(ids, scores)]

    def _bm25_search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return bm25_retrieve(self._bm25, queries, k)

    def _dense_search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = vectors @ self.embeddings.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        return ids, np.take_along_axis(sims, ids, axis=1)


def _fuse(rankings: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hybrid ranking: the equal-weight sum of each retriever's min-max normalised scores over its pool.

    On open-domain SQuAD dev (bench/open_squad.py) this beat reciprocal rank fusion at recall@1 and @5.
    """
    ids_out, scores_out = [], []
    for rows in zip(*(zip(ids, scores) for ids, scores in rankings)):
        fused: dict[int, float] = {}
        for ids, scores in rows:
            span = float(scores.max() - scores.min()) if len(scores) else 0.0
            for i, s in zip(ids.tolist(), ((scores - scores.min()) / span if span > 0 else np.ones_like(scores)).tolist()):
                fused[i] = fused.get(i, 0.0) + s / len(rows)
        best = sorted(fused.items(), key=lambda item: -item[1])[:k]
        ids_out.append(np.array([i for i, _ in best]))
        scores_out.append(np.array([s for _, s in best]))
    return ids_out, scores_out


