"""Document collections: reading (incl. a PDF made here), passages, index round trip, --add,
embedding-model mismatch, bad documents, retrieve-then-read in the API, CLI and server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_reader import reader_folder
from typer.testing import CliRunner

from spanqa.cli import app
from spanqa.data.documents import CollectionError, Document, read_documents
from spanqa.qa.collection import ask_collection
from spanqa.qa.reader import Reader
from spanqa.retrieval.embedder import Embedder
from spanqa.retrieval.index import Index
from spanqa.retrieval.passages import PassageSettings, split_passages
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


# --- identity, changes, links, models from other folders, markup, the folder on disk ---------------------

def cli(*args, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def test_one_file_under_other_spellings_is_indexed_once(tmp_path, tiny_model, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "penguins.txt").write_text(PENGUINS)
    (docs / "alias.txt").symlink_to("penguins.txt")  # a link inside the folder: the same file
    (docs / "sub" / "again.txt").symlink_to(docs / "penguins.txt")
    monkeypatch.chdir(tmp_path)
    spellings = ["docs/penguins.txt", "./docs/penguins.txt", "docs/sub/../penguins.txt", str(docs / "penguins.txt"),
                 "docs/alias.txt", "docs/sub/again.txt", "docs"]
    embedder = Embedder(str(tiny_model))
    index, notes = Index.build(spellings, embedder=embedder)
    assert [p.path for p in index.passages] == [str((docs / "penguins.txt").resolve())]
    assert not notes  # one file: nothing repeated to note
    for spelling in spellings:  # --add under any other spelling: already there
        grown, notes = Index.build([spelling], embedder=embedder, base=index)
        assert grown.passages == index.passages and notes and all("unchanged since; skipped" in n for n in notes)
    out = tmp_path / "idx"
    cli("index", "docs/penguins.txt", "--out", out, "--embedding-model", tiny_model)
    assert "1 documents, 1 passages" in cli("index", "./docs/sub/../alias.txt", "--out", out, "--add")


def test_a_changed_file_is_indexed_again_on_add(tmp_path, tiny_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    volcano, notes = docs / "volcano.txt", docs / "notes.jsonl"
    volcano.write_text("Mount Etna is an active volcano on the east coast of Sicily.")
    notes.write_text(json.dumps({"id": "n1", "text": "Green tea is made from unoxidized leaves."}) + "\n" +
                     json.dumps({"id": "n2", "text": "Black tea is fully oxidized."}) + "\n")
    out = tmp_path / "idx"
    cli("index", docs, "--out", out, "--embedding-model", tiny_model)
    before = Index.load(out)
    mtime = volcano.stat().st_mtime_ns + 5 * 10**9
    os.utime(volcano, ns=(mtime, mtime))  # touched, the same bytes: nothing indexed again
    assert "0 documents written" in cli("index", docs, "--out", out, "--add")
    assert Index.load(out).passages == before.passages
    # the same size and mtime, other text (a write within the mtime tick of the one indexed): the sha256 tells
    volcano.write_text("Mount Fuji is an active volcano on the east coast of Honshu.")
    os.utime(volcano, ns=(mtime, mtime))
    notes.write_text(json.dumps({"id": "n1", "text": "Green tea is made from unoxidized leaves."}) + "\n")
    assert "2 documents written" in cli("index", docs, "--out", out, "--add")
    after = Index.load(out)
    texts = sorted(p.text for p in after.passages)
    assert texts == ["Green tea is made from unoxidized leaves.", "Mount Fuji is an active volcano on the east coast of Honshu."]
    assert after.search("Honshu volcano", 1, "bm25")[0].passage.text.startswith("Mount Fuji")
    green = [[i for i, p in enumerate(x.passages) if p.text.startswith("Green")][0] for x in (before, after)]
    assert np.array_equal(after.embeddings[green[1]], before.embeddings[green[0]])  # unchanged text: its vector kept


def test_links_out_of_the_folder_are_not_followed(tmp_path, tiny_model):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("the launch code is swordfish")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "penguins.txt").write_text(PENGUINS)
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    (docs / "key.txt").symlink_to(secret / "key.txt")
    (docs / "more").symlink_to(secret)
    index, notes = Index.build([docs], embedder=Embedder(str(tiny_model)))
    assert [p.doc_id for p in index.passages] == ["penguins"]
    said = "\n".join(notes)
    for name in ("passwd.txt: a link to /etc/passwd", f"key.txt: a link to {secret / 'key.txt'}", "more: a link to a folder"):
        assert name in said, said
    index, _ = Index.build([docs / "key.txt"], embedder=Embedder(str(tiny_model)))  # named itself: read
    assert "swordfish" in index.passages[0].text


def test_a_relative_embedding_model_path_works_from_another_folder(tmp_path, tiny_model, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_model, work / "models" / "emb")
    (work / "docs").mkdir()
    (work / "docs" / "penguins.txt").write_text(PENGUINS)
    (work / "docs" / "volcano.txt").write_text("Mount Etna is an active volcano on the east coast of Sicily.")
    monkeypatch.chdir(work)
    cli("index", "docs/penguins.txt", "--out", "idx", "--embedding-model", "models/emb")
    monkeypatch.chdir(tmp_path)
    assert Index.load("work/idx").meta["embedding_model"] == str((work / "models" / "emb").resolve())
    assert json.loads(cli("search", "work/idx", "-q", "penguins", "--mode", "dense", "--json"))[0]["doc_id"] == "penguins"
    assert "2 documents" in cli("index", "work/docs", "--out", "work/idx", "--add")  # its own model, found


def test_markup_in_titles_and_text_is_printed_as_it_is(tmp_path, tiny_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# [bold red]x[/]\n\nThe red bolt [i]fell[/i] on the tower in 1889.\n")
    (docs / "b.md").write_text("# [/]\n\nThe tower is 330 metres tall :smile:.\n")
    (docs / "[red]blank.txt").write_text("  ")
    out = tmp_path / "idx"
    said = CliRunner().invoke(app, ["index", str(docs), "--out", str(out), "--embedding-model", str(tiny_model)])
    assert said.exit_code == 0 and "[red]blank.txt" in said.output, said.output
    found = cli("search", out, "-q", "tower", "-k", "2", "--mode", "bm25")
    for text in ("[bold red]x[/] (", "[/] (", "[i]fell[/i]", ":smile:"):
        assert text in found, found
    answers = cli("ask", reader_folder(tiny_model, tmp_path), "--index", out, "-q", "How tall is the tower?", "--top-k", "3")
    for line in answers.splitlines():  # the tiny reader's answers vary; each names its source as it is
        assert "(score" not in line or "[/] (" in line, answers


def test_leftovers_of_killed_saves_are_ignored_then_cleaned(index, tmp_path):
    from spanqa.retrieval.layout import CURRENT

    folder = index.save(tmp_path / "idx")
    dead = dead_pid()
    (folder / f"v-1-{dead}.tmp{dead}").mkdir()  # a killed writer's staging folder, half written
    (folder / f"v-1-{dead}.tmp{dead}" / "passages.jsonl").write_text('{"doc_id": "x"')
    (folder / "v-2-1").mkdir()  # an old version a killed writer had not removed yet
    (folder / f".{CURRENT}.tmp{dead}.ab.tmp").write_text("v-")  # CURRENT, half replaced
    assert Index.load(folder).passages == index.passages  # readers see the current version only
    index.save(folder)
    names = sorted(os.listdir(folder))
    assert names == [".lock", CURRENT, (folder / CURRENT).read_text().strip()]
    assert Index.load(folder).passages == index.passages


def test_an_index_in_the_layout_before_versions_is_read_then_moved(index, tmp_path):
    saved = index.save(tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(saved / (saved / "CURRENT").read_text().strip(), old)  # index.json etc. in the folder itself
    assert Index.load(old).passages == index.passages
    shutil.copytree(old, tmp_path / ".old.old")  # what killed saves of that layout left beside it
    (tmp_path / ".old.k3j4h5g6" / "index").mkdir(parents=True)
    os.utime(tmp_path / ".old.k3j4h5g6", (1e9, 1e9))
    Index.load(old).save(old)
    assert not (tmp_path / ".old.old").exists() and not (tmp_path / ".old.k3j4h5g6").exists()
    assert sorted(p.name for p in old.iterdir() if not p.name.startswith("v-")) == [".lock", "CURRENT"]
    assert Index.load(old).passages == index.passages
    old.rename(tmp_path / ".old.old")  # what a kill between the two renames of the save before left
    with pytest.raises(CollectionError, match=r"no index, but .*\.old\.old holds the one a killed save left; move it"):
        Index.load(old)


def test_readers_see_a_whole_index_while_saves_replace_it(index, tmp_path):
    """Loads while another thread saves the two indexes in turn: each load is one whole version. The writer
    starts after the first load and goes on until the reader has loaded several times and seen both."""
    import threading

    (tmp_path / "one.txt").write_text(PENGUINS)
    small, _ = Index.build([tmp_path / "one.txt"], embedder=index.embedder())
    folder = small.save(tmp_path / "idx")
    first_load, done = threading.Event(), threading.Event()
    loads, seen, errors = [], set(), []

    def writer():
        try:
            assert first_load.wait(timeout=60)
            for i in range(1000):
                if done.is_set() or (i >= 15 and len(loads) > 5 and len(seen) == 2):  # set: the reader failed
                    break
                (index if i % 2 else small).save(folder)
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not done.is_set():
            loaded = Index.load(folder)  # never missing, never passages of one version with vectors of another
            assert loaded.passages in (small.passages, index.passages)
            seen.add(len(loaded.passages))
            loads.append(1)
            first_load.set()
    finally:
        first_load.set()
        done.set()
        thread.join()
    assert not errors, errors
    assert len(loads) > 5 and seen == {len(small.passages), len(index.passages)}


def test_a_second_writer_waits_for_the_first(tmp_path):
    """The holder keeps the lock until the waiting writer has said whom it waits for."""
    from spanqa.retrieval.layout import LOCK, writing

    folder = tmp_path / "idx"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\n"
                               f"fd = os.open({str(folder / LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                               "print('held', flush=True); sys.stdin.readline()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    told = []

    def on_wait(message: str) -> None:
        told.append(message)
        holder.stdin.write("release\n")
        holder.stdin.flush()

    try:
        assert holder.stdout.readline().strip() == "held"
        with writing(folder, on_wait=on_wait):
            pass
    finally:
        holder.stdin.close()  # releases it in any case
        holder.wait(timeout=60)
    assert told == [f"{folder}: another process (pid {holder.pid}) is writing this index; waiting for it"]


def test_a_file_system_without_locks_or_folder_sync(index, tmp_path, monkeypatch):
    """flock failing (ENOLCK on NFS without lockd) is a CollectionError naming the folder; a folder's fsync
    failing with EINVAL (CIFS, some FUSE) does not stop a save."""
    import errno
    import fcntl
    import stat

    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = index.save(tmp_path / "idx")
    assert Index.load(folder).passages == index.passages

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(CollectionError, match=rf"{folder}: cannot lock it \(No locks available\); .*local disk"):
        index.save(folder)


def test_index_folders_among_documents_are_skipped_but_not_a_lone_index_json(index, tmp_path):
    """An index kept in the documents' folder is no document; a folder whose index.json is a document is read."""
    docs = tmp_path / "docs"
    (docs / "records").mkdir(parents=True)
    (docs / "records" / "index.json").write_text(json.dumps([{"text": "Green tea is made from leaves."}]))
    index.save(docs / "idx")
    old = docs / "old-idx"  # the layout before versions
    shutil.copytree(docs / "idx" / (docs / "idx" / "CURRENT").read_text().strip(), old)
    found, _ = read_documents([docs])
    assert [d.text for d in found] == ["Green tea is made from leaves."]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
