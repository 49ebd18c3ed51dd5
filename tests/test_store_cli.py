"""The PostgreSQL store through the command line and the server: index -> search -> ask, --add,
--update, --delete, the embedding-model check, /v1/ask over the pool. A real server (tests/pg_server.py)
and the packaged MiniLM embedder; tiny documents."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from pg_server import pg_url_or_skip
from test_reader import reader_folder
from typer.testing import CliRunner

from spanqa.cli import app

EIFFEL = ("# The Eiffel Tower\n\nThe Eiffel Tower was completed in 1889 for the World's Fair in Paris. "
          "It was designed by the engineering company of Gustave Eiffel.\n")
PENGUINS = "Emperor penguins breed in the Antarctic winter. The males keep the eggs warm on their feet."
VOLCANO = "Mount Etna is an active volcano on the east coast of Sicily."


@pytest.fixture(scope="module")
def pg_url():
    yield from pg_url_or_skip()


def spanqa(*args, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result.stdout if code == 0 else result.stderr


def test_cli_index_search_ask_add_update_delete(pg_url, tiny_model, tmp_path):
    store = f"{pg_url}?schema=cli"
    for name, text in [("eiffel.md", EIFFEL), ("penguins.txt", PENGUINS), ("volcano.txt", VOLCANO)]:
        (tmp_path / name).write_text(text)
    assert "2 documents" in spanqa("index", tmp_path / "eiffel.md", tmp_path / "penguins.txt", "--store", store)
    assert "--add" in spanqa("index", tmp_path / "volcano.txt", "--store", store, code=2)  # no silent overwrite
    assert "3 documents" in spanqa("index", tmp_path / "volcano.txt", tmp_path / "eiffel.md", "--store", store, "--add")

    hits = json.loads(spanqa("search", "--store", store, "-q", "active volcano", "-k", "1", "--json"))
    assert hits[0]["doc_id"] == "volcano" and hits[0]["relevance"] == 1.0
    answer = json.loads(spanqa("ask", reader_folder(tiny_model, tmp_path), "--store", store, "-q", "Which volcano?",
                               "--json"))["answers"][0]
    assert answer["passage"][answer["passage_start"]:answer["passage_end"]] == answer["text"]

    (tmp_path / "volcano.txt").write_text("Mount Fuji is the highest mountain of Japan.")
    assert "3 documents" in spanqa("index", tmp_path / "volcano.txt", "--store", store, "--update")
    hits = json.loads(spanqa("search", "--store", store, "-q", "highest mountain Japan", "-k", "1", "--json",
                             "--mode", "bm25"))
    assert hits[0]["doc_id"] == "volcano" and "Fuji" in hits[0]["text"]

    assert "2 documents" in spanqa("index", "--store", store, "--delete", "penguins")
    hits = json.loads(spanqa("search", "--store", store, "-q", "emperor penguins", "--json", "--mode", "bm25"))
    assert all(h["doc_id"] != "penguins" for h in hits)

    # the store's embedding model is checked as for an index folder
    error = spanqa("index", tmp_path / "penguins.txt", "--store", store, "--add", "--embedding-model", tiny_model,
                   code=2)
    assert "embedding model 'all-MiniLM-L6-v2'" in error
    assert "cannot connect" in spanqa("search", "--store", "postgresql://nobody@127.0.0.1:1/x", "-q", "q", code=2)


def test_server_asks_the_store_through_its_pool(pg_url, tiny_model, tmp_path):
    from spanqa.qa.reader import Reader
    from spanqa.retrieval.ingest import ingest
    from spanqa.retrieval.stores import open_store
    from spanqa.server import create_app

    (tmp_path / "volcano.txt").write_text(VOLCANO)
    (tmp_path / "eiffel.md").write_text(EIFFEL)
    store = open_store(f"{pg_url}?schema=served", pool_size=2)
    ingest(store, [tmp_path], what="store")
    reader = Reader.load(reader_folder(tiny_model, tmp_path))
    with TestClient(create_app(reader, retriever=store)) as client:  # the lifespan checks the store first
        assert client.get("/health").json()["index"]["passages"] == 2
        asked = [client.post("/v1/ask", json={"question": "Which volcano is active?", "passages": 2}).json()
                 for _ in range(4)]  # more requests than pooled connections
        assert all(a["answers"] and a["answers"][0]["doc_id"] in ("volcano", "eiffel") for a in asked)
    assert store.pool.closed  # the server closed the pool on shutdown


def test_cli_update_and_delete_on_an_index_folder(tmp_path):
    (tmp_path / "volcano.txt").write_text(VOLCANO)
    (tmp_path / "penguins.txt").write_text(PENGUINS)
    out = tmp_path / "idx"
    assert "2 documents" in spanqa("index", tmp_path / "volcano.txt", tmp_path / "penguins.txt", "--out", out)
    (tmp_path / "volcano.txt").write_text("Mount Fuji is the highest mountain of Japan.")
    assert "2 documents" in spanqa("index", tmp_path / "volcano.txt", "--out", out, "--update")
    assert "Fuji" in json.loads(spanqa("search", out, "-q", "Japan", "-k", "1", "--json", "--mode", "bm25"))[0]["text"]
    assert "1 documents" in spanqa("index", "--out", out, "--delete", tmp_path / "penguins.txt")
