"""Document collections: read files, split them into passages, index them (BM25 and dense), search.

An index folder holds `index.json` (settings, the embedding model and its fingerprint),
`passages.jsonl` and `embeddings.npy` (L2-normalised mean-pooled sentence embeddings); the bm25s
index is rebuilt from the passages on load (a second for 10k passages, nothing to keep in sync).
`--add` appends documents: only the new passages are embedded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from spanqa.data.documents import CollectionError, Document, read_documents
from spanqa.models import load_encoder, load_tokenizer, resolve_model
from spanqa.progress import progress_bar

INDEX_FORMAT = 1
MODES = ("bm25", "dense", "hybrid")
HYBRID_POOL = 100  # passages each retriever contributes to hybrid ranking


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
class Hit:
    passage: Passage
    score: float
    rank: int


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

    def __init__(self, name: str = "all-MiniLM-L6-v2", max_length: int = 256, batch_size: int = 64):
        import torch

        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        path = resolve_model(name)
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
    """Passages with a BM25 index and dense embeddings; `search` in bm25, dense or hybrid mode."""

    def __init__(self, meta: dict, passages: list[Passage], embeddings: np.ndarray, embedder: Embedder | None = None):
        self.meta, self.passages, self.embeddings = meta, passages, embeddings
        self._embedder = embedder
        self._bm25 = bm25_index([_indexed_text(p) for p in passages])

    # building and storing

    @classmethod
    def build(cls, paths: Sequence[str | Path], settings: PassageSettings = PassageSettings(),
              embedder: Embedder | None = None, field: str = "text", base: "Index | None" = None,
              show_progress: bool = False) -> tuple["Index", list[str]]:
        """An index of the documents in `paths` (added to `base` when given) and notes on skipped ones."""
        docs, notes = read_documents(paths, field)
        if base is not None:
            settings = PassageSettings(**base.meta["passages"])
            known = {(p.path, p.doc_id) for p in base.passages}
            notes += [f"{d.path}: document {d.doc_id!r} is already in the index; skipped" for d in docs
                      if (d.path, d.doc_id) in known]
            docs = [d for d in docs if (d.path, d.doc_id) not in known]
        new = [p for d in docs for p in split_passages(d, settings)]
        if not new and base is None:
            raise CollectionError("no text to index in " + ", ".join(map(str, paths)) + (": " + "; ".join(notes) if notes else ""))
        embedder = embedder or (base.embedder() if base else Embedder())
        if base is not None:
            base.check_embedder(embedder)
        vectors = embedder.encode([_indexed_text(p) for p in new], show_progress) if new else np.zeros((0, 0), np.float32)
        passages = (base.passages if base else []) + new
        embeddings = np.concatenate([base.embeddings, vectors]) if base is not None and len(new) else (
            base.embeddings if base is not None else vectors)
        meta = {"format": INDEX_FORMAT, "embedding_model": embedder.name, "embedding_fingerprint": embedder.fingerprint,
                "embedding_max_length": embedder.max_length, "passages": asdict(settings),
                "documents": len({(p.path, p.doc_id) for p in passages}), "passage_count": len(passages)}
        return cls(meta, passages, embeddings, embedder), notes

    def save(self, folder: str | Path) -> Path:
        """Write the index folder atomically (a complete new folder replaces the old one)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
            staged = Path(tmp) / "index"
            staged.mkdir()
            (staged / "index.json").write_text(json.dumps(self.meta, indent=2) + "\n")
            with open(staged / "passages.jsonl", "w", encoding="utf-8") as f:
                for p in self.passages:
                    f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
            np.save(staged / "embeddings.npy", self.embeddings)
            old = folder.with_name(f".{folder.name}.old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(staged, folder)
            shutil.rmtree(old, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, embedder: Embedder | None = None) -> "Index":
        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise CollectionError(f"{folder}: not an index folder (no index.json); build one with `spanqa index`")
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise CollectionError(f"{folder}: index format {meta.get('format')}, this spanqa reads {INDEX_FORMAT}; rebuild it")
        with open(folder / "passages.jsonl", encoding="utf-8") as f:
            passages = [Passage(**json.loads(line)) for line in f]
        index = cls(meta, passages, np.load(folder / "embeddings.npy", allow_pickle=False), embedder)
        if embedder is not None:
            index.check_embedder(embedder)
        return index

    # embeddings

    def embedder(self) -> Embedder:
        """The embedding model that built the index (checked against its fingerprint)."""
        if self._embedder is None:
            embedder = Embedder(self.meta["embedding_model"], self.meta["embedding_max_length"])
            self.check_embedder(embedder)
            self._embedder = embedder
        return self._embedder

    def check_embedder(self, embedder: Embedder) -> None:
        name, fingerprint = self.meta["embedding_model"], self.meta["embedding_fingerprint"]
        if embedder.fingerprint != fingerprint:
            raise CollectionError(f"this index was built with embedding model {name!r} (weights {fingerprint}), "
                                  f"not {embedder.name!r} (weights {embedder.fingerprint}): dense search would "
                                  f"compare unrelated vectors; use {name!r} or rebuild the index")

    # searching

    def describe(self) -> dict:
        return {"passages": len(self.passages), "documents": self.meta["documents"],
                "embedding_model": self.meta["embedding_model"]}

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
        """The k best passages of each query, best first."""
        if mode not in MODES:
            raise CollectionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        k = min(k, len(self.passages))
        if k == 0:
            return [[] for _ in queries]
        pool = min(len(self.passages), max(k, HYBRID_POOL)) if mode == "hybrid" else k
        ranked = []
        if mode in ("bm25", "hybrid"):
            ranked.append(self._bm25_search(queries, pool))
        if mode in ("dense", "hybrid"):
            ranked.append(self._dense_search(queries, pool))
        if mode != "hybrid":
            ids, scores = ranked[0]
        else:
            ids, scores = _fuse(ranked, k)
        return [[Hit(self.passages[i], float(s), r) for r, (i, s) in enumerate(zip(row_ids[:k], row_scores[:k]))]
                for row_ids, row_scores in zip(ids, scores)]

    def _bm25_search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return bm25_retrieve(self._bm25, queries, k)

    def _dense_search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = self.embedder().encode(list(queries)) @ self.embeddings.T
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


def bm25_retrieve(retriever, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Passage ids and scores (Q, k) of the k best BM25 matches of each query."""
    import bm25s

    tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)
    return retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)


def bm25_index(texts: list[str]):
    """A bm25s index of the passages (built at load time: seconds for 10k passages, nothing to keep in sync)."""
    import bm25s

    retriever = bm25s.BM25()
    if texts:
        retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False),
                        show_progress=False)
    return retriever
