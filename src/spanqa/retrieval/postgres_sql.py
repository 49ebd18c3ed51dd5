"""The SQL of the PostgreSQL store: its versioned tables and their migrations, the search statements
(BM25 from postings, HNSW, hybrid fusion) and the writes that keep the BM25 statistics in step.

`postgres.PostgresStore` (connections, pool, the DocumentStore API) is the only user; the design of
the tables and of the scores is described there.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from spanqa.data.documents import CollectionError

from .bm25 import bm25_tokens
from .passages import Passage, indexed_text
from .store import BM25_B, BM25_K1, DocKey, EmbedderLike, embedding_mismatch

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


def migrate(conn, schema: str) -> str:
    """Create or upgrade spanqa's tables in `schema`; the schema holding pgvector's type. On a read-only
    server (a streaming replica) nothing is created: the primary's schema must be current."""
    import psycopg

    vector, version = installed(conn, schema)
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


def installed(conn, schema: str) -> tuple[str | None, int | None]:
    """The vector type's schema (None without pgvector) and the version of spanqa's tables in `schema`."""
    vector = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
                          ).fetchone()
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_version",)).fetchone()[0]
    version = conn.execute(f"SELECT max(version) FROM {schema}.schema_version").fetchone()[0] if exists else None
    return (vector[0] if vector else None), version


def lock_writers(conn) -> None:
    # one writer at a time: document frequencies and totals are shared counters; readers are not blocked
    conn.execute("LOCK TABLE totals IN EXCLUSIVE MODE")


def set_meta(conn, values: dict) -> None:
    from psycopg.types.json import Jsonb

    for key, value in values.items():
        conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (key, Jsonb(value)))


def check_stored_embedder(conn, embedder: EmbedderLike, dim: int | None = None) -> bool:
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


def delete_documents(conn, keys: list[DocKey]) -> int:
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


def insert_passages(conn, passages: Iterable[Passage], embeddings: np.ndarray, batch: int = 2048) -> None:
    """COPY the passages in (tokenized in batches as they stream), then add their postings and term
    statistics. Writers hold the table lock, so the rows after the largest id before the COPY are these."""
    before = conn.execute("SELECT coalesce(max(id), 0) FROM passages").fetchone()[0]
    df: Counter[str] = Counter()
    count = tokens_total = 0
    with conn.cursor().copy(f"COPY passages ({_COLUMNS}, terms, tfs, length, embedding) FROM STDIN "
                            "(FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "text", "int4", "int4", "text", "text[]", "int4[]", "int4", "vector"])
        for chunk in _chunks(passages, batch):
            for p, toks in zip(chunk, bm25_tokens([indexed_text(c) for c in chunk])):
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
