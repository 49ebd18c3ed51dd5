"""Document collections: reading (incl. a PDF made here), passages, index round trip, --add,
embedding-model mismatch, bad documents, retrieve-then-read in the API, CLI and server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_reader import reader_folder

from spanqa.data.documents import CollectionError, Document, read_documents
from spanqa.qa.collection import ask_collection
from spanqa.qa.reader import Reader
from spanqa.retrieval.index import Embedder, Index, PassageSettings, split_passages
from spanqa.server import create_app

EIFFEL = ("# The Eiffel Tower\n\nThe Eiffel Tower was completed in 1889 for the World's Fair in Paris. "
          "It was designed by the engineering company of Gustave Eiffel.\n\n"
          "The tower is 330 metres tall and was the tallest man-made structure for 41 years.\n")
PENGUINS = "Emperor penguins breed in the Antarctic winter. The males keep the eggs warm on their feet."


def make_pdf(path, text: str) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 8, text)
    pdf.set_title("Volcanoes")
    pdf.output(str(path))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    (folder / "eiffel.md").write_text(EIFFEL)
    (folder / "penguins.txt").write_text(PENGUINS)
    (folder / "empty.txt").write_text("  \n")
    make_pdf(folder / "volcano.pdf", "Mount Etna is an active volcano on the east coast of Sicily.")
    with open(folder / "notes.jsonl", "w") as f:
        f.write(json.dumps({"id": "n1", "title": "Tea", "body": "Green tea is made from unoxidized leaves."}) + "\n")
    squad = {"version": "1.1", "data": [{"title": "Rivers", "paragraphs": [
        {"context": "The Danube flows through ten countries and into the Black Sea.", "qas": []}]}]}
    (folder / "rivers.json").write_text(json.dumps(squad))
    return folder


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def index(docs, embedder):
    built, notes = Index.build([docs], embedder=embedder, field="body")
    assert any("empty.txt" in n and "empty" in n for n in notes)
    return built


def test_reads_every_kind_of_document(docs):
    found, _ = read_documents([docs], field="body")
    by_id = {d.doc_id: d for d in found}
    assert by_id["eiffel"].title == "The Eiffel Tower"
    assert "Mount Etna is an active volcano" in by_id["volcano"].text and by_id["volcano"].title == "Volcanoes"
    assert by_id["n1"].title == "Tea" and by_id["Rivers#0"].text.startswith("The Danube")
    assert "empty" not in by_id


def test_passages_are_paragraph_aware_with_exact_offsets():
    text = "\n\n".join(["alpha " * 30, "beta " * 30, "gamma " * 250]).strip()
    doc = Document("d", "", "d.txt", text)
    passages = split_passages(doc, PassageSettings(max_words=100, overlap_words=20))
    for p in passages:
        assert text[p.start:p.start + len(p.text)] == p.text and len(p.text.split()) <= 100
    assert passages[0].text.split()[0] == "alpha" and "beta" in passages[0].text  # whole paragraphs packed
    gammas = [p for p in passages if p.text.startswith("gamma")]
    assert len(gammas) == 3  # 250 words in windows of 100 with stride 80
    covered = set()
    for p in gammas:
        covered.update(range(p.start, p.start + len(p.text)))
    assert covered >= set(range(text.index("gamma"), len(text)))  # nothing lost


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_search_finds_the_right_document(index, mode):
    assert index.search("When do emperor penguins breed?", 2, mode)[0].passage.doc_id == "penguins"
    assert index.search("volcano in Sicily", 2, mode)[0].passage.doc_id == "volcano"


def test_round_trip_add_and_mismatch(index, docs, tmp_path, tiny_model):
    folder = index.save(tmp_path / "idx")
    loaded = Index.load(folder)
    assert loaded.passages == index.passages and np.array_equal(loaded.embeddings, index.embeddings)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "bees.txt").write_text("Honey bees communicate the direction of flowers with a waggle dance.")
    grown, notes = Index.build([extra, docs / "penguins.txt"], base=loaded)
    assert len(grown.passages) == len(index.passages) + 1 and any("already in the index" in n for n in notes)
    assert np.array_equal(grown.embeddings[:len(index.passages)], index.embeddings)  # old vectors kept
    assert grown.search("waggle dance of bees", 1, "dense")[0].passage.doc_id == "bees"
    other = Embedder(str(tiny_model))
    with pytest.raises(CollectionError, match="built with embedding model 'all-MiniLM-L6-v2'"):
        Index.load(folder, embedder=other)
    with pytest.raises(CollectionError, match="rebuild the index"):
        Index.build([extra], embedder=other, base=loaded)


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"caf\xe9 au lait", "not UTF-8"),
    ("bad.pdf", b"%PDF-1.4 this is not really a pdf", "cannot read this PDF"),
    ("bad.jsonl", b'{"text": "fine"}\n{"text": broken}\n', "line 2, column 10: invalid JSON"),
    ("nofield.jsonl", b'{"body": "x"}\n', "no string field 'text'"),
    ("bad.docx", b"...", "unsupported file type"),
    ("blank.txt", b"   ", "no text to index"),
])
def test_bad_documents_get_clear_errors(tmp_path, embedder, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CollectionError, match=message) as e:
        Index.build([path], embedder=embedder)
    assert name in str(e.value) or message == "no text to index"


def test_ask_collection_returns_sourced_answers(index, tiny_model, tmp_path):
    reader = Reader.load(reader_folder(tiny_model, tmp_path))
    answers = ask_collection(reader, index, "How tall is the tower?", top_k=3, passages=3)
    assert 1 <= len(answers) <= 3
    texts = {d.doc_id: d.text for d in read_documents({p.path for p in index.passages}, field="body")[0]}
    for a in answers:
        assert a.passage[a.passage_start:a.passage_end] == a.text
        assert texts[a.doc_id][a.doc_start:a.doc_start + len(a.text)] == a.text
    assert abs(sum(a.score for a in answers)) <= 1 + 1e-6 and answers == sorted(answers, key=lambda a: -a.score)
    with TestClient(create_app(reader, retriever=index)) as client:
        assert client.get("/health").json()["index"]["passages"] == len(index.passages)
        served = client.post("/v1/ask", json={"question": "How tall is the tower?", "top_k": 3, "passages": 3}).json()
        assert [a["text"] for a in served["answers"]] == [a.text for a in answers]
        assert client.post("/v1/ask", json={"question": "x", "mode": "magic"}).status_code == 422


def test_cli_index_search_and_ask(docs, tiny_model, tmp_path):
    def spanqa(*args):
        run = subprocess.run([sys.executable, "-m", "spanqa", *map(str, args)], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        return run.stdout

    out = tmp_path / "idx"
    assert "2 documents" in spanqa("index", docs / "eiffel.md", docs / "penguins.txt", "--out", out)
    assert "3 documents" in spanqa("index", docs / "volcano.pdf", "--out", out, "--add")
    hits = json.loads(spanqa("search", out, "-q", "active volcano", "-k", "1", "--json"))
    assert hits[0]["doc_id"] == "volcano" and hits[0]["path"].endswith("volcano.pdf")
    answer = json.loads(spanqa("ask", reader_folder(tiny_model, tmp_path), "--index", out, "-q", "Which volcano?",
                               "--json"))["answers"][0]
    assert answer["passage"][answer["passage_start"]:answer["passage_end"]] == answer["text"]


def test_hard_negatives_are_other_passages_without_the_answer():
    from spanqa.qa.collection import hard_negatives
    from spanqa.qa.config import TrainConfig
    from spanqa.qa.squad import Example

    examples = [Example("a", "Where was Alice born?", "Alice was born in Paris.", ("Paris",), (18,)),
                Example("b", "Where was Bob born?", "Bob was born in Oslo. Alice was born in Paris.", ("Oslo",), (16,)),
                Example("c", "What is blue?", "The sky is blue.", ("The sky",), (0,))]
    negatives = {n.id: n for n in hard_negatives(examples, 1)}
    assert negatives["a-neg0"].context == "The sky is blue."  # b's passage matches better but holds "Paris"
    assert negatives["b-neg0"].context == "Alice was born in Paris."
    assert all(n.is_impossible and not n.answer_texts for n in negatives.values())
    assert TrainConfig(negatives=1).version_2  # wrong passages are labelled "no answer"


def test_chat_over_an_index(index, tiny_model, tmp_path):
    folder = index.save(tmp_path / "idx")
    run = subprocess.run([sys.executable, "-m", "spanqa", "chat", reader_folder(tiny_model, tmp_path), "--index",
                          str(folder)], input="Which volcano is active?\n:quit\n", capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "score " in run.stdout and "passage " in run.stdout and run.stdout.rstrip().endswith("bye")
