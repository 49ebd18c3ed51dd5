"""Server input, as a hostile or careless client sends it: non-finite numbers, invalid Unicode and
bytes that are not UTF-8 are a 422 naming the place, never a 500; random JSON and random bytes
never give a 500 (hypothesis); /docs loads nothing from outside the server; a server on an index
built with other embedding weights refuses to start."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reader import reader_folder
from test_serve_classify import classifier_folder

from spanqa.classify.classifier import Classifier
from spanqa.qa.reader import Reader
from spanqa.server import ServerLimits, create_app

CONTEXT = "The tower was finished in 1889. It was designed by Gustave Eiffel."
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def reader(tiny_model, tmp_path_factory) -> Reader:
    return Reader.load(reader_folder(tiny_model, tmp_path_factory.mktemp("input_reader")))


@pytest.fixture(scope="module")
def reader_client(reader):
    with TestClient(create_app(reader, ServerLimits(max_context_chars=2000))) as c:
        yield c


@pytest.fixture(scope="module")
def classifier_client(tiny_model, tmp_path_factory):
    classifier = Classifier.load(classifier_folder(tiny_model, tmp_path_factory.mktemp("input_classifier") / "c"))
    with TestClient(create_app(classifier)) as c:
        yield c


def _item(**change) -> bytes:
    return json.dumps({"question": "Who designed it?", "context": CONTEXT, **change}).encode()


# (body, what the 422's detail must say (regex)); json.dumps writes NaN, Infinity and lone surrogates as given
CASES = [
    (_item(top_k=float("nan")), r"body\.top_k: NaN is not JSON"),
    (_item(question=float("inf")), r"body\.question: Infinity is not JSON"),
    (b"[" + _item(top_k=float("-inf")) + b"]", r"body\[0\]\.top_k: -Infinity is not JSON"),
    (_item().replace(b'"context"', b'"top_k": 1e999, "context"'), r"body\.top_k: the number is beyond the range"),
    (_item(question="Who\ud800?"), r"body\.question: invalid Unicode: a lone surrogate \\ud800 at character 3"),
    (_item(context="tail \udfff"), r"body\.context: invalid Unicode: a lone surrogate \\udfff"),
    (_item(**{"\udc00": 1}), r"body: a key has invalid Unicode"),
    (b'{"question": "caf\xe9?", "context": "x"}', r"not UTF-8: byte 0xe9 at offset 17"),  # Latin-1, not UTF-8
    (_item().replace(b"Who", b"\xed\xa0\x80"), r"not UTF-8: byte 0xed"),  # a surrogate written as UTF-8 bytes
    (b"\xff\xfe" + _item(), r"not UTF-8: byte 0xff at offset 0"),
    (b"[" * 5000, r"nested too deeply"),
    (b"[" * 100 + b"]" * 100, r"body(\[0\]){32}: nested more than 32 levels deep"),
    (_item().replace(b'"context"', b'"top_k": ' + b"9" * 5000 + b', "context"'), r"number that cannot be read"),
    (b'{"question": "Who?", "context": ', r"not valid JSON: Expecting value \(line 1, column 33\)"),
]


@pytest.mark.parametrize("body, message", CASES)
@pytest.mark.parametrize("app, path", [("reader_client", "/v1/answer"), ("classifier_client", "/v1/classify")])
def test_bad_bodies_are_a_422_naming_the_place(request, app, path, body, message):
    response = request.getfixturevalue(app).post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert re.search(message, response.json()["detail"]), response.json()["detail"]


def test_whole_characters_and_other_content_types(reader_client):
    pair = reader_client.post("/v1/answer", content=_item(question="Who designed it? \ud83d\ude00"), headers=JSON)
    assert pair.status_code == 200  # a surrogate pair escape is one whole character
    plain = reader_client.post("/v1/answer", content=b"\xe9t\xe9", headers={"content-type": "text/plain"})
    assert plain.status_code == 422 and "not UTF-8" in plain.json()["detail"]
    text = reader_client.post("/v1/answer", content=_item(), headers={"content-type": "text/plain"})
    assert text.status_code == 422  # FastAPI's own 422 for a body it will not read as JSON, written out safely


def test_classifier_bodies(classifier_client):
    ok = classifier_client.post("/v1/classify", json={"text": "a fine film"})
    assert ok.status_code == 200
    bad = classifier_client.post("/v1/classify", content=b'{"text": "a \\ud800 film"}', headers=JSON)
    assert bad.status_code == 422 and "body.text: invalid Unicode" in bad.json()["detail"]


# --- property tests: random JSON structures and random bytes ---------------------------------------

KEYS = st.sampled_from(["question", "context", "top_k", "text", "pair", "passages", "mode"]) | st.text(max_size=4)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
           | st.integers(0xD800, 0xDFFF).map(lambda n: f"x{chr(n)}y"))  # lone surrogates
json_values = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(KEYS, inner, max_size=5), max_leaves=20)
TEXTS = st.text(max_size=200) | st.sampled_from(["Who?", CONTEXT, " \u200b\u0000", "\u0301" * 50, "\U0001F600 " * 30])
requests = st.fixed_dictionaries({"question": TEXTS, "context": TEXTS},
                                  optional={"top_k": st.integers(-3, 30) | st.floats() | st.text(max_size=3)})
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _never_a_500(client: TestClient, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert 200 <= response.status_code < 500, (body[:300], response.status_code, response.text[:300])
    response.json()  # always a JSON body


@PROPERTY
@given(value=json_values | requests | st.lists(requests, max_size=3))
def test_random_json_never_a_500(reader_client, classifier_client, value):
    body = json.dumps(value).encode("utf-8", "surrogatepass")
    _never_a_500(reader_client, "/v1/answer", body)
    _never_a_500(classifier_client, "/v1/classify", body)


@PROPERTY
@given(data=st.binary(max_size=300), at=st.integers(0, 200), valid=st.booleans())
def test_random_bytes_never_a_500(reader_client, classifier_client, data, at, valid):
    base = _item()
    body = base[:at] + data + base[at:] if valid else data  # junk inside a valid request, or junk alone
    _never_a_500(reader_client, "/v1/answer", body)
    _never_a_500(classifier_client, "/v1/classify", body)


# --- /docs without a CDN --------------------------------------------------------------------------------

@pytest.mark.parametrize("path, marker", [("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc")])
def test_docs_load_nothing_from_outside_the_server(reader_client, path, marker):
    page = reader_client.get(path)
    assert page.status_code == 200 and marker in page.text
    assert not re.findall(r"https?://", page.text), re.findall(r"https?://\S+", page.text)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and reader_client.get(asset).status_code == 200, asset
    assert "/openapi.json" in page.text
    assert reader_client.get("/openapi.json").json()["paths"]["/v1/answer"]
    if path == "/docs":
        assert '"validatorUrl": null' in page.text  # no badge image from validator.swagger.io


# --- an index built with other embedding weights ----------------------------------------------------

def test_a_server_on_an_index_of_other_embedding_weights_refuses_to_start(tiny_model, tmp_path, reader):
    import torch
    from transformers import BertConfig, BertModel
    from typer.testing import CliRunner

    from spanqa.cli import app
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.embedder import Embedder
    from spanqa.retrieval.index import Index

    embedding = tmp_path / "embedding-model"
    shutil.copytree(tiny_model, embedding)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tower.txt").write_text(CONTEXT)
    built, _ = Index.build([docs], embedder=Embedder(str(embedding)))
    index = built.save(tmp_path / "index")
    torch.manual_seed(1)  # the same name, other weights
    BertModel(BertConfig.from_pretrained(embedding)).save_pretrained(embedding, safe_serialization=True)

    result = CliRunner().invoke(app, ["serve", reader.path, "--index", str(index), "--port", "1"])
    assert result.exit_code == 2, result.output
    assert re.search(r"built with embedding model .*rebuild the index", " ".join(result.output.split()))
    on_index = create_app(reader, retriever=Index.load(index))
    with pytest.raises(CollectionError, match="rebuild the index"), TestClient(on_index):
        pass  # the app's start-up checks the index's embedding model
