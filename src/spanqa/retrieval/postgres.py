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
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from spanqa.data.documents import CollectionError

from .index import Passage, PassageSettings, _indexed_text
from .store import (BM25_B, BM25_K1, HYBRID_POOL, DocKey, EmbedderLike, Hit, check_mode, check_vectors,
                    embedding_mismatch, hits)

SCHEMA_VERSION = 2
MIGRATIONS = {  # version -> statements that bring version - 1 to it; never edit a released one, add the next
    1: """
        CREATE TABLE meta (key text PRIMARY KEY, value jsonb NOT NULL);
        CREATE TABLE passages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            path text NOT NULL, doc_id text NOT NULL, passage_id int NOT NULL,
            title text NOT NULL, start int NOT NULL, text text NOT NULL,
            terms text[] NOT NULL,         -- distinct BM25 terms of title + text
            tfs int[] NOT NULL,            -- their counts, in the same order
            length int NOT NULL,           -- BM25 document length (tokens)
            embedding vector NOT NULL,     -- typed vector(dim) by the first write, which builds the HNSW index
            UNIQUE (path, doc_id, passage_id));
        CREATE INDEX passages_terms ON passages USING gin (terms);
        CREATE TABLE terms (term text PRIMARY KEY, df bigint NOT NULL);
        CREATE TABLE totals (one boolean PRIMARY KEY DEFAULT true CHECK (one),
                             passages bigint NOT NULL, tokens bigint NOT NULL);
        INSERT INTO totals VALUES (true, 0, 0);
    """,
    # a text query found its passages through the GIN index on passages.terms, then read each one's wide
    # row (text, vector) for its counts: ~1 s a query at 100,000 synthetic passages. Postings apart,
    # read by an index-only scan, are what an inverted index is.
    2: """
        CREATE TABLE postings (term text NOT NULL, passage bigint NOT NULL, tf int NOT NULL, length int NOT NULL,
                               PRIMARY KEY (term, passage) INCLUDE (tf, length));
        INSERT INTO postings SELECT u.term, p.id, u.tf, p.length FROM passages p, unnest(p.terms, p.tfs) AS u(term, tf);
        DROP INDEX passages_terms;
    """,
}
MAX_EF_SEARCH = 1000  # pgvector's limit
# pgvector's default, 40, lost 0.8 points of dense recall@5 on open SQuAD dev (2,229 passages) against
# exact search; 100 gave exact search's recall on its first 3,000 questions
MIN_EF_SEARCH = 100

_COLUMNS = "doc_id, title, path, passage_id, start, text"  # Passage's fields, in order
# q is MATERIALIZED: inlined, the planner joined every passage with every row of `terms` before
# keeping the query's (20,000 passages: over 5 minutes for one query instead of 0.6 s). totals is read
# through scalar subqueries and text_pool MATERIALIZED: joined as a table, never-analyzed `totals` was
# estimated at 1,810 rows, and at 100,000 passages the planner then fetched the k results by scanning
# `passages` (440 ms a query, 65 of them scoring) instead of looking them up by id
_TEXT_POOL = """
    q AS MATERIALIZED (SELECT t.term, ln(1 + ((SELECT passages FROM totals) - t.df + 0.5) / (t.df + 0.5)) AS idf,
                              (SELECT tokens::float8 / greatest(passages, 1) FROM totals) AS avgdl
          FROM unnest(%(terms)s::text[]) AS u(term) JOIN terms t ON t.term = u.term),
    text_pool AS MATERIALIZED (
        SELECT o.passage AS id, sum(q.idf * o.tf / (o.tf + {k1} * (1 - {b} + {b} * o.length / q.avgdl))) AS score
        FROM q JOIN postings o ON o.term = q.term
        GROUP BY o.passage ORDER BY score DESC, o.passage LIMIT %(pool)s)""".format(k1=BM25_K1, b=BM25_B)
_VECTOR_POOL = """
    vector_pool AS (SELECT id, 1 - (embedding <=> %(vector)s) AS score
                    FROM passages ORDER BY embedding <=> %(vector)s LIMIT %(pool)s)"""
# min-max normalisation over a pool; the in-process text pool is padded with zero-score passages when
# fewer than `pool` passages share a term with the query, so its minimum is then 0: the same here
_NORMALISED = """
    {name}_norm AS (SELECT id, CASE WHEN hi > lo THEN (score - lo) / (hi - lo) ELSE 1 END AS score
                    FROM (SELECT id, score, max(score) OVER () AS hi, {lo} AS lo FROM {name}_pool) s)"""
_TEXT_LO = ("CASE WHEN count(*) OVER () < (SELECT least(%(pool)s, passages) FROM totals) THEN 0 "
            "ELSE min(score) OVER () END")
_FUSED = """
    fused_pool AS (SELECT coalesce(t.id, v.id) AS id, (coalesce(t.score, 0) + coalesce(v.score, 0)) / 2 AS score
                   FROM text_norm t FULL JOIN vector_norm v ON t.id = v.id)"""
SEARCH_SQL = {mode: f"WITH {ctes} SELECT p.doc_id, p.title, p.path, p.passage_id, p.start, p.text, r.score "
                    f"FROM {pool}_pool r JOIN passages p ON p.id = r.id ORDER BY r.score DESC, r.id LIMIT %(k)s"
              for mode, ctes, pool in [
                  ("bm25", _TEXT_POOL, "text"),
                  ("dense", _VECTOR_POOL, "vector"),
                  ("hybrid", ",".join([_TEXT_POOL, _VECTOR_POOL, _NORMALISED.format(name="text", lo=_TEXT_LO),
                                       _NORMALISED.format(name="vector", lo="min(score) OVER ()"), _FUSED]), "fused")]}


def bm25_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The in-process index's BM25 tokens of each text (bm25s with English stop words and stems)."""
    import bm25s

    from .index import _stemmer

    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


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
                vector_schema = _migrate(conn, schema)
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
            _check_embedder(conn, embedder)

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
            _lock(conn)
            return _delete(conn, keys)

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
            _lock(conn)
            first = _check_embedder(conn, embedder, embeddings.shape[1])
            if first:  # the column gets its dimension; the HNSW index is built after the rows are in (faster)
                conn.execute(f"ALTER TABLE passages ALTER COLUMN embedding TYPE vector({embeddings.shape[1]})")
                _set_meta(conn, {"embedding_model": embedder.name, "embedding_fingerprint": embedder.fingerprint,
                                 "embedding_max_length": embedder.max_length, "embedding_dim": embeddings.shape[1]})
            if settings is not None:
                _set_meta(conn, {"passages": {"max_words": settings.max_words,
                                              "overlap_words": settings.overlap_words}})
            if replace:
                _delete(conn, keys)
            else:
                present = conn.execute("SELECT DISTINCT path, doc_id FROM passages WHERE (path, doc_id) IN "
                                       "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                                       ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
                if present:
                    raise CollectionError(f"{len(present)} document(s) already in the store, e.g. "
                                          f"{present[0][1]!r} of {present[0][0]}: update them instead")
            _insert(conn, passages, embeddings)
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
                from .index import Embedder

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


def _migrate(conn, schema: str) -> str:
    """Create or upgrade spanqa's tables in `schema`; the schema holding pgvector's type. On a read-only
    server (a streaming replica) nothing is created: the primary's schema must be current."""
    import psycopg

    vector, version = _installed(conn, schema)
    if vector is not None and version == SCHEMA_VERSION:
        return vector  # current: no DDL, so a role that may only read (or a replica) opens it too
    if version is not None and version > SCHEMA_VERSION:
        raise CollectionError(f"schema {schema!r} has version {version}; this spanqa knows up to "
                              f"{SCHEMA_VERSION}: upgrade spanqa")
    if conn.execute("SELECT current_setting('transaction_read_only') = 'on'").fetchone()[0]:
        raise CollectionError(f"this server is read-only (a replica?) and schema {schema!r} is at version "
                              f"{version or 'none'}, not {SCHEMA_VERSION}: open the store on the primary "
                              "first (it creates or migrates the schema)")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('spanqa-migrate'))")  # one migrator at a time
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege:
            raise CollectionError("pgvector is not enabled in this database and this user may not enable it: "
                                  "ask its administrator to run CREATE EXTENSION vector") from None
        vector_schema = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension "
                                     "WHERE extname = 'vector'").fetchone()[0]
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(f"SET LOCAL search_path = {schema}, {vector_schema}")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise CollectionError(f"schema {schema!r} has version {version}; this spanqa knows up to "
                                  f"{SCHEMA_VERSION}: upgrade spanqa")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[v])
            conn.execute("INSERT INTO schema_version VALUES (%s)", (v,))
    return vector_schema


def _installed(conn, schema: str) -> tuple[str | None, int | None]:
    """The vector type's schema (None without pgvector) and the version of spanqa's tables in `schema`."""
    vector = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
                          ).fetchone()
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_version",)).fetchone()[0]
    version = conn.execute(f"SELECT max(version) FROM {schema}.schema_version").fetchone()[0] if exists else None
    return (vector[0] if vector else None), version


def _lock(conn) -> None:
    # one writer at a time: document frequencies and totals are shared counters; readers are not blocked
    conn.execute("LOCK TABLE totals IN EXCLUSIVE MODE")


def _set_meta(conn, values: dict) -> None:
    from psycopg.types.json import Jsonb

    for key, value in values.items():
        conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (key, Jsonb(value)))


def _check_embedder(conn, embedder: EmbedderLike, dim: int | None = None) -> bool:
    """Raise CollectionError on another model's weights or dimension; True when no model is recorded yet."""
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'embedding%%'").fetchall())
    if not meta:
        return True
    if embedder.fingerprint != meta["embedding_fingerprint"]:
        raise CollectionError(embedding_mismatch(meta["embedding_model"], meta["embedding_fingerprint"],
                                                 embedder, "store"))
    if dim is not None and dim != meta["embedding_dim"]:
        raise CollectionError(f"this store holds {meta['embedding_dim']}-dimensional embeddings, not {dim}")
    return False


def _delete(conn, keys: list[DocKey]) -> int:
    """Delete documents' passages and take their terms out of the statistics."""
    if not keys:
        return 0
    removed = conn.execute("""
        WITH gone AS (DELETE FROM passages WHERE (path, doc_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
                      RETURNING id, terms, length),
             unposted AS (DELETE FROM postings o USING (SELECT id, unnest(terms) AS term FROM gone) g
                          WHERE o.term = g.term AND o.passage = g.id),
             counts AS (SELECT term, count(*) AS n FROM gone, unnest(gone.terms) AS term GROUP BY term),
             dfs AS (UPDATE terms SET df = terms.df - counts.n FROM counts WHERE terms.term = counts.term),
             total AS (UPDATE totals SET passages = passages - (SELECT count(*) FROM gone),
                                         tokens = tokens - (SELECT coalesce(sum(length), 0) FROM gone))
        SELECT count(*) FROM gone""", ([k[0] for k in keys], [k[1] for k in keys])).fetchone()[0]
    conn.execute("DELETE FROM terms WHERE df <= 0")
    return removed


def _insert(conn, passages: Iterable[Passage], embeddings: np.ndarray, batch: int = 2048) -> None:
    """COPY the passages in (tokenized in batches as they stream), then add their postings and term
    statistics. Writers hold the table lock, so the rows after the largest id before the COPY are these."""
    before = conn.execute("SELECT coalesce(max(id), 0) FROM passages").fetchone()[0]
    df: Counter[str] = Counter()
    count = tokens_total = 0
    with conn.cursor().copy(f"COPY passages ({_COLUMNS}, terms, tfs, length, embedding) FROM STDIN "
                            "(FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "text", "int4", "int4", "text", "text[]", "int4[]", "int4", "vector"])
        for chunk in _chunks(passages, batch):
            for p, toks in zip(chunk, bm25_tokens([_indexed_text(c) for c in chunk])):
                tf = Counter(toks)
                df.update(tf.keys())
                copy.write_row([p.doc_id, p.title, p.path, p.passage_id, p.start, p.text,
                                list(tf.keys()), list(tf.values()), len(toks), embeddings[count]])
                count += 1
                tokens_total += len(toks)
    # in index order: the primary key's btree then grows at its right edge instead of splitting pages
    # all over (a first load of 1,000,000 passages writes ~80 million postings)
    conn.execute("SET LOCAL work_mem = '256MB'")
    conn.execute("INSERT INTO postings SELECT u.term, p.id, u.tf, p.length FROM passages p, "
                 "unnest(p.terms, p.tfs) AS u(term, tf) WHERE p.id > %s ORDER BY u.term, p.id", (before,))
    if df:
        conn.execute("INSERT INTO terms SELECT * FROM unnest(%s::text[], %s::bigint[]) "
                     "ON CONFLICT (term) DO UPDATE SET df = terms.df + excluded.df", (list(df), list(df.values())))
    conn.execute("UPDATE totals SET passages = passages + %s, tokens = tokens + %s", (count, tokens_total))


def _chunks(items: Iterable, size: int) -> Iterable[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _redact(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)
