"""Document collections: read files, split them into passages, index them (BM25 and dense), search.

An index version holds `index.json` (settings, the embedding model and its fingerprint, and the size,
mtime and sha256 of each indexed file), `passages.jsonl` and `embeddings.npy` (L2-normalised
mean-pooled sentence embeddings); layout.py keeps versions in the folder so that no kill leaves it
unusable. The bm25s index is rebuilt from the passages on load (a second for 10k passages, nothing to
keep in sync). `--add` appends documents (only new passages are embedded) and re-indexes changed files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from spanqa.data.documents import CollectionError, Document
from spanqa.models import DEFAULT_ENCODER, ModelError, load_encoder, load_tokenizer, resolve_model
from spanqa.progress import progress_bar

from . import layout

# Hit and MODES live in the store interface; imported here also for the modules that import them from here
from .store import (HYBRID_POOL, MODES, DocKey, EmbedderLike, Hit, check_mode, check_vectors,  # noqa: F401
                    embedding_mismatch, hits)

INDEX_FORMAT = 1


@dataclass(frozen=True)
class Passage:
    """A piece of a document: text == document text[start:start + len(text)]."""

    doc_id: str
    title: str
    path: str
    passage_id: int
    start: int
    text: str


@dataclass(frozen=True)
class PassageSettings:
    max_words: int = 200
    overlap_words: int = 50

    def __post_init__(self) -> None:
        if self.max_words < 1 or not 0 <= self.overlap_words < self.max_words:
            raise CollectionError("passages need max_words >= 1 and 0 <= overlap_words < max_words")


# --- passages ------------------------------------------------------------------------------------

def split_passages(doc: Document, settings: PassageSettings) -> list[Passage]:
    """Paragraph-aware passages: whole paragraphs packed up to max_words; longer paragraphs cut into
    windows of max_words overlapping by overlap_words. Offsets point into the document text."""
    pieces: list[tuple[int, int]] = []  # (start, end) character ranges, each at most max_words words
    for para in re.finditer(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", doc.text, flags=re.S):
        words = [m.span() for m in re.finditer(r"\S+", para.group())]
        step = settings.max_words - settings.overlap_words
        for lo in range(0, max(len(words) - settings.overlap_words, 1), step):
            chunk = words[lo:lo + settings.max_words]
            pieces.append((para.start() + chunk[0][0], para.start() + chunk[-1][1]))
    passages, group, group_words = [], [], 0
    for start, end in pieces:
        n = len(doc.text[start:end].split())
        if group and group_words + n > settings.max_words:
            passages.append(group)
            group, group_words = [], 0
        group.append((start, end))
        group_words += n
    if group:
        passages.append(group)
    return [Passage(doc.doc_id, doc.title, doc.path, i, g[0][0], doc.text[g[0][0]:g[-1][1]])
            for i, g in enumerate(passages)]


# --- dense embeddings ----------------------------------------------------------------------------

class Embedder:
    """Sentence embeddings by mean pooling a transformer encoder (all-MiniLM-L6-v2 by default)."""

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 256, batch_size: int = 64):
        import torch

        path = resolve_model(name)
        local = Path(name).expanduser()
        # a local folder is recorded by its absolute path: the index is used from other working folders
        self.name = str(local.resolve()) if local.exists() else name
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = load_tokenizer(path)
        self.model = load_encoder(path).eval()
        self.torch = torch
        self.fingerprint = _fingerprint(Path(path))

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """(N, dim) float32, unit length; longest texts first so batches carry little padding."""
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bar = progress_bar("embedding passages", len(texts), show_progress, "passages")
        with self.torch.inference_mode():
            for lo in range(0, len(texts), self.batch_size):
                index = order[lo:lo + self.batch_size]
                batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[index] = self.torch.nn.functional.normalize(pooled, dim=-1).numpy()
                bar.advance(len(index))
        bar.close()
        return out


def _fingerprint(folder: Path) -> str:
    """sha256 of the model's weights file(s): the same name with other weights is a mismatch."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) if folder.exists() else []
    if not files:
        return "unknown"
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# --- the index -----------------------------------------------------------------------------------

class Index:
    """Passages with a BM25 index and dense embeddings; `search` in bm25, dense or hybrid mode.

    The in-process DocumentStore: `add`, `update` and `delete` change it in memory (all or nothing),
    `save` writes it to its folder atomically."""

    def __init__(self, meta: dict, passages: list[Passage], embeddings: np.ndarray, embedder: Embedder | None = None):
        self.meta, self.passages, self.embeddings = meta, passages, embeddings
        self._embedder = embedder
        self._bm25 = bm25_index([_indexed_text(p) for p in passages])

    # building and storing

    @classmethod
    def build(cls, paths: Sequence[str | Path], settings: PassageSettings = PassageSettings(),
              embedder: Embedder | None = None, field: str = "text", base: "Index | None" = None,
              show_progress: bool = False) -> tuple["Index", list[str]]:
        """An index of the documents in `paths` (added to a copy of `base` when given: changed files
        re-indexed, unchanged ones skipped) and notes on what was skipped or could not be read."""
        from .ingest import ingest

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
        return {_indexed_text(p): self.embeddings[i] for i, p in enumerate(self.passages) if (p.path, p.doc_id) in keys}

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
        bm25 = bm25_index([_indexed_text(p) for p in passages])  # before any change: a failure changes nothing
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


def _indexed_text(p: Passage) -> str:
    """What search sees of a passage: its document title, then its text (as DPR indexes Wikipedia)."""
    return f"{p.title.replace('_', ' ')}\n{p.text}" if p.title else p.text


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


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def bm25_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The BM25 tokens of each text (bm25s with English stop words and stems): the index's and the
    PostgreSQL store's, so that both match the same words."""
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


def bm25_retrieve(retriever, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Passage ids and scores (Q, k) of the k best BM25 matches of each query."""
    return retriever.retrieve(bm25_tokens(queries), k=k, show_progress=False, n_threads=0)


def bm25_index(texts: list[str]):
    """A bm25s index of the passages (built at load time: seconds for 10k passages, nothing to keep in sync)."""
    import bm25s

    retriever = bm25s.BM25()
    if texts:
        retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False),
                        show_progress=False)
    return retriever
