"""A document store in PostgreSQL (psycopg 3 + pgvector): many processes, one collection, live updates.

    store = PostgresStore("postgresql://user@host/db")       # tables in schema "spanqa" (schema=...)

Text relevance is BM25, not ts_rank. PostgreSQL's ts_rank has no inverse document frequency (a
question's rare word counts no more than a common one) and no length saturation like BM25's, so its
order differs from the in-process index's and hybrid fusion (which uses the scores, not only the
ranks) would too. Instead spanqa tokenizes passages and queries exactly as the in-process index does
(bm25s: lowercased, English stop words, Snowball stems) and PostgreSQL computes Lucene BM25 from
stored statistics: `postings` holds one row per (term, passage) with the term's count and the passage's
length, its primary key (term, passage) INCLUDE (tf, length) being the inverted index; the `terms` table
holds document frequencies and `totals` the passage and token counts, all updated in the same
transaction as the passages. A query scores only the passages that share a term with it, read from
the narrow index entries alone (an index-only scan: the wide passage rows, with their text and vector,
are read for the k results only), and gets the in-process index's numbers; no tsvector is kept
because nothing would read it. Dense search is an HNSW index over cosine distance
(pgvector); hybrid fuses both pools (min-max normalised, equal weights: the in-process rule, which
beat reciprocal rank fusion on open SQuAD) in one SQL statement.

Writes run in one transaction each (a killed run leaves the old state or the new one) and are
serialised by a table lock on `totals` (document frequencies are shared counters); readers never
wait for them. The schema is versioned (`schema_version`) and migrated on connect.
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Iterable, Sequence

import numpy as np

from spanqa.data.documents import CollectionError

from .bm25 import bm25_tokens
from .embedder import Embedder
from .passages import Passage, PassageSettings
from .postgres_sql import (MAX_EF_SEARCH, MIN_EF_SEARCH, SEARCH_SQL, check_stored_embedder,
                           delete_documents, insert_passages, lock_writers, migrate, set_meta)
from .store import HYBRID_POOL, DocKey, EmbedderLike, Hit, check_mode, check_vectors, hits


class PostgresStore:
    """A DocumentStore in a PostgreSQL database (pgvector needed), through a connection pool."""

    def __init__(self, url: str, schema: str = "spanqa", pool_size: int = 4, embedder: EmbedderLike | None = None):
        import psycopg
        from psycopg_pool import ConnectionPool
        from pgvector.psycopg import register_vector

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise CollectionError(f"schema name {schema!r}: use lowercase letters, digits and _")
        self.url, self.schema, self._embedder = url, schema, embedder
        self._embedder_lock = threading.Lock()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                vector_schema = migrate(conn, schema)
                self.read_only = conn.execute("SELECT current_setting('transaction_read_only') = 'on'").fetchone()[0]
        except psycopg.OperationalError as e:
            raise CollectionError(f"cannot connect to {_redact(url)}: {str(e).strip()}") from None
        # every connection sees spanqa's tables and the vector type unqualified
        options = f"-c search_path={schema},{vector_schema}"
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs={"options": options},
                                   configure=register_vector, open=True, name=f"spanqa-{schema}")
        if embedder is not None:
            try:
                self.check_embedder(embedder)
            except CollectionError:
                self.pool.close()  # no pool left behind by a refused model
                raise

    def close(self) -> None:
        """Close the pool's connections."""
        self.pool.close()

    def __enter__(self) -> "PostgresStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # what is stored

    def info(self) -> dict:
        """The index's meta keys: embedding model, fingerprint, passage settings, counts."""
        with self.pool.connection() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            documents = conn.execute("SELECT count(*) FROM (SELECT DISTINCT path, doc_id FROM passages) d"
                                     ).fetchone()[0]
            passages = conn.execute("SELECT passages FROM totals").fetchone()[0]
        return {**meta, "documents": documents, "passage_count": passages}

    def describe(self) -> dict:
        """Passages, documents and embedding model, as `Index.describe`."""
        info = self.info()
        return {"passages": info["passage_count"], "documents": info["documents"],
                "embedding_model": info.get("embedding_model")}

    def count(self) -> int:
        """Number of passages (a counter kept by every write: no table scan)."""
        with self.pool.connection() as conn:
            return conn.execute("SELECT passages FROM totals").fetchone()[0]

    def documents(self) -> set[DocKey]:
        """Keys (path, doc_id) of the stored documents."""
        with self.pool.connection() as conn:
            return set(conn.execute("SELECT DISTINCT path, doc_id FROM passages").fetchall())

    def check_embedder(self, embedder: EmbedderLike) -> None:
        """Raise CollectionError unless the stored vectors come from `embedder`'s weights."""
        with self.pool.connection() as conn:
            check_stored_embedder(conn, embedder)

    # writing

    def add(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
            settings: PassageSettings | None = None) -> None:
        """Add new documents' passages in one transaction; a document already stored is refused."""
        self._write(passages, embeddings, embedder, settings, replace=False)

    def update(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
               settings: PassageSettings | None = None) -> None:
        """Replace the documents of `passages` (adding new ones) in one transaction."""
        self._write(passages, embeddings, embedder, settings, replace=True)

    def delete(self, keys: Iterable[DocKey]) -> int:
        """Remove these documents in one transaction; the number of passages removed."""
        keys = list(keys)
        self._check_writable()
        with self.pool.connection() as conn, conn.transaction():
            lock_writers(conn)
            return delete_documents(conn, keys)

    def _check_writable(self) -> None:
        if self.read_only:
            raise CollectionError("this PostgreSQL server is read-only (a streaming replica?): "
                                  "write to the primary; replicas serve search")

    def _write(self, passages: Sequence[Passage], embeddings: np.ndarray, embedder: EmbedderLike,
               settings: PassageSettings | None, replace: bool) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(passages):
            raise CollectionError(f"{len(passages)} passages need {len(passages)} embedding rows, "
                                  f"not an array of shape {embeddings.shape}")
        self._check_writable()
        keys = list(dict.fromkeys((p.path, p.doc_id) for p in passages))
        with self.pool.connection() as conn, conn.transaction():
            lock_writers(conn)
            first = check_stored_embedder(conn, embedder, embeddings.shape[1])
            if first:  # the column gets its dimension; the HNSW index is built after the rows are in (faster)
                conn.execute(f"ALTER TABLE passages ALTER COLUMN embedding TYPE vector({embeddings.shape[1]})")
                set_meta(conn, {"embedding_model": embedder.name, "embedding_fingerprint": embedder.fingerprint,
                                 "embedding_max_length": embedder.max_length, "embedding_dim": embeddings.shape[1]})
            if settings is not None:
                set_meta(conn, {"passages": {"max_words": settings.max_words,
                                              "overlap_words": settings.overlap_words}})
            if replace:
                delete_documents(conn, keys)
            else:
                present = conn.execute("SELECT DISTINCT path, doc_id FROM passages WHERE (path, doc_id) IN "
                                       "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                                       ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
                if present:
                    raise CollectionError(f"{len(present)} document(s) already in the store, e.g. "
                                          f"{present[0][1]!r} of {present[0][0]}: update them instead")
            insert_passages(conn, passages, embeddings)
            if first:
                conn.execute("CREATE INDEX IF NOT EXISTS passages_embedding ON passages "
                             "USING hnsw (embedding vector_cosine_ops)")
        self._vacuum()

    def _vacuum(self) -> None:
        """Index-only scans need new postings marked all-visible, and the planner their statistics;
        autovacuum does both, but minutes later. The write is committed: a failure here only warns."""
        import psycopg

        try:
            with self.pool.connection() as conn:
                conn.autocommit = True  # VACUUM cannot run inside a transaction
                try:
                    conn.execute("VACUUM (ANALYZE) postings, terms, totals")
                finally:
                    conn.autocommit = False
        except psycopg.Error as e:
            warnings.warn(f"the write is committed, but VACUUM (ANALYZE) failed ({e}); text search may be "
                          "slower until autovacuum runs", RuntimeWarning, stacklevel=3)

    # searching

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The k best passages of one query (as `Index.search`)."""
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
        """`retrieve` with the queries embedded by the store's embedding model (as `Index.search_many`)."""
        check_mode(mode)
        vectors = self.embedder().encode(list(queries)) if mode != "bm25" and queries else None
        return self.retrieve(queries, vectors, k, mode)

    def embedder(self):
        """The embedding model of the stored vectors (loaded on first use, checked against its fingerprint)."""
        with self._embedder_lock:  # threads sharing the store load it once (transformers' lazy imports race)
            if self._embedder is None:
                info = self.info()
                if "embedding_model" not in info:
                    raise CollectionError("this store is empty: add documents before searching it")
                embedder = Embedder(info["embedding_model"], info["embedding_max_length"])
                self.check_embedder(embedder)
                self._embedder = embedder
        return self._embedder

    def retrieve(self, queries: Sequence[str], vectors: np.ndarray | None, k: int = 5,
                 mode: str = "hybrid") -> list[list[Hit]]:
        """The k best passages of each query, best first (scores as in the store module's docstring)."""
        check_mode(mode)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        check_vectors(mode, vectors, queries)
        pool = max(k, HYBRID_POOL) if mode == "hybrid" else k
        tokens = bm25_tokens(queries) if mode != "dense" else [[] for _ in queries]
        out = []
        with self.pool.connection() as conn, conn.transaction():
            # HNSW returns at most ef_search rows: the pool must fit; at least MIN_EF_SEARCH
            conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(pool, MIN_EF_SEARCH), MAX_EF_SEARCH)}")
            total = conn.execute("SELECT passages FROM totals").fetchone()[0]
            for i, terms in enumerate(tokens):
                params = {"terms": terms, "pool": pool, "k": k,
                          "vector": None if vectors is None else np.asarray(vectors[i], dtype=np.float32)}
                rows = conn.execute(SEARCH_SQL[mode], params).fetchall()
                # fewer BM25 hits than asked for: the in-process index pads with zero scores (relevance floor 0)
                out.append(hits([Passage(*row[:6]) for row in rows], [row[6] for row in rows], mode,
                                floor=0.0 if mode == "bm25" and len(rows) < min(k, total) else None))
        return out


def _redact(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)
