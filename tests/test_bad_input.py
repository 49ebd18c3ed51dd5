"""Bad input, as a hostile or careless user gives it: every case gets a message naming the file (and
record/field), a non-zero exit, no traceback and no half-written output; loaders raise only their own
errors on random input, and a tiny deeply nested file is refused in bounded memory and time."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from conftest import CONTEXT, TINY_QAS, squad_json, write_people
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spanqa.cli import app
from spanqa.data.documents import CollectionError, iter_documents
from spanqa.data.sources import DataError

GOOD = json.dumps(squad_json(TINY_QAS)).encode()
ONE = json.dumps(squad_json([TINY_QAS[0]])).encode()  # its answer_start is 34
RECORD = {"id": "a", "title": "t", "question": "When?", "context": CONTEXT,
          "answers": {"text": ["1889"], "answer_start": [CONTEXT.index("1889")]}}


def _jsonl(**change) -> bytes:
    return (json.dumps({**RECORD, **change}) + "\n").encode()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes(b ^ 0x5A for b in data[at:at + 16]) + data[at + 16:]


DEEP = "nested more than 100 levels"
# (file name, bytes, what the message must say (a regex), the path of the record/field it must name or None)
SQUAD_CASES = [
    ("deep_arrays.json", b"[" * 200_000, DEEP, "line 1, column 101"),
    ("deep_objects.json", b'{"data":[' + b'{"a":' * 100_000, DEEP, "line 1, column"),
    ("deep_in_article.json", b'{"data":[{"title":"x","paragraphs":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
     DEEP, "column 133"),
    ("deep_lines.jsonl", _jsonl()[:-2] + b', "x": ' + b"[" * 100_000 + b"\n", DEEP, "line 1"),
    ("plain.json.gz", GOOD, "not gzip-compressed.*rename it to plain.json", None),
    ("gzipped.json", gzip.compress(GOOD), "gzip-compressed but not named .gz.*gzipped.json.gz", None),
    ("truncated.json.gz", gzip.compress(GOOD * 20)[:-40], "cut short.*copy or download it again", None),
    ("corrupt.json.gz", _flip(gzip.compress(GOOD * 20), 30), "damaged gzip", None),
    ("truncated.jsonl.gz", gzip.compress(_jsonl() * 50)[:-30], "cut short", None),
    ("bigint.json", ONE.replace(b'"answer_start": 34', b'"answer_start": 123456789012345678901234567890'),
     "does not fit in 64 bits", r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]\.answer_start"),
    ("bigfloat.json", ONE.replace(b'"answer_start": 34', b'"answer_start": 1e999'), "beyond the range of a double",
     "answer_start"),
    ("nan.json", ONE.replace(b'"answer_start": 34', b'"answer_start": NaN'), "NaN is not JSON", "answer_start"),
    ("infinity.jsonl", _jsonl().replace(b"[34]", b"[-Infinity]"), "Infinity is not JSON",
     r"line 1.*answers\.answer_start\[0\]"),
    ("bigint.jsonl", _jsonl().replace(b"[34]", b"[99999999999999999999999]"), "64 bits", "line 1"),
    ("surrogate.json", ONE.replace(b"When was", b"When \\ud800was"), r"invalid Unicode escape '\\ud800'", "line 1"),
    ("low_surrogate.jsonl", _jsonl(question="x").replace(b'"x"', b'"\\udc00"'), "invalid Unicode escape", "line 1"),
    ("bad_escape.json", ONE.replace(b"When was", b"When \\uZZZZ"), r"invalid JSON.*\\uXXXX", "line 1, column"),
    ("latin1.json", ONE.replace(b"When was", "Whén was".encode("latin-1")), "not UTF-8", "byte"),
    ("latin1.jsonl", _jsonl().replace(b"When?", "Whén?".encode("latin-1")), "not UTF-8", "line 1"),
    ("empty.json", b"", "invalid JSON", "line 1, column 1"),
    ("nul.json", b"\0" * 100, "invalid JSON", None),
    ("random.json", bytes(range(256)) * 4, "not UTF-8|invalid JSON", None),
    ("not_squad.json", b"[1, 2, 3]", "not SQuAD JSON", None),
    ("whitespace_answer.json", json.dumps(squad_json([{**TINY_QAS[0], "answers": [{"text": "   ", "answer_start": 3}]}])).encode(),
     "answer text is only whitespace", r"question 'q1'.*answers\[0\]\.text"),
    ("whitespace_question.json", json.dumps(squad_json([{**TINY_QAS[0], "question": " \t "}])).encode(),
     "only whitespace", r"question 'q1'.*field 'question'"),
    ("whitespace_answer.jsonl", _jsonl(answers={"text": [" "], "answer_start": [3]}), "only whitespace",
     r"line 1.*answers\[0\]\.text"),
]
# an empty "data" list: each command says so in its own words
EMPTY = ("empty_data.json", b'{"version": "1.1", "data": []}', "no questions|training set is empty", None)


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def _commands(tmp_path: Path, model: Path, data: Path) -> dict[str, tuple[list[str], int, list[Path]]]:
    """command -> (arguments, expected exit code, outputs that must not exist afterwards)"""
    out = tmp_path / "out"
    dev = write_people(tmp_path / "dev.json", 2, offset=100)
    small = ["--max-seq-length", "64", "--doc-stride", "16", "--max-query-length", "16", "--batch-size", "4",
             "--precision", "fp32", "--max-steps", "2"]
    return {
        "data check": (["data", "check", str(data), "--fix-offsets", "--write", str(out / "fixed.jsonl")], 1,
                       [out / "fixed.jsonl"]),
        "train": (["train", "--model", str(model), "--train-file", str(data), "--dev-file", str(dev),
                   "--output-dir", str(out), *small], 2, [out / "model.safetensors", out / "metrics.json"]),
        "evaluate": (["evaluate", str(model), str(data), "--output-dir", str(out)], 2, [out / "predictions.json"]),
    }


def _assert_clean_failure(result, code: int, data: Path, message: str, where: str | None, outputs: list[Path],
                          tmp_path: Path) -> None:
    text = result.output
    assert result.exit_code == code, text
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a message, not a traceback
    assert "Traceback" not in text
    assert data.name in text, text
    assert re.search(message, text, re.S), text
    if where:
        assert re.search(where, text, re.S), text
    for path in outputs:
        assert not path.exists(), path
    leftovers = [p for p in tmp_path.rglob("*") if re.search(r"\.tmp\d*($|\.)|\.tmp-", p.name)]
    assert not leftovers, leftovers


@pytest.mark.parametrize("command", ["data check", "train", "evaluate"])
@pytest.mark.parametrize("case", [*SQUAD_CASES, EMPTY], ids=lambda c: c[0])
def test_bad_squad_files(tmp_path, tiny_model, runner, case, command):
    name, content, message, where = case
    data = tmp_path / name
    data.write_bytes(content)
    args, code, outputs = _commands(tmp_path, tiny_model, data)[command]
    result = runner.invoke(app, args)
    _assert_clean_failure(result, code, data, message, where, outputs, tmp_path)


GLUE_RECORD = {"text": "a fine film", "label": "1"}
GLUE_CASES = [
    ("deep.jsonl", b'{"text": "x", "label": ' + b"[" * 100_000 + b"\n", DEEP, "line 1, column 123"),
    ("nan.jsonl", b'{"text": "x", "label": NaN}\n', "NaN is not JSON", "line 1.*label"),
    ("bigint.jsonl", b'{"text": "x", "label": 123456789012345678901234567890}\n', "64 bits", "line 1.*label"),
    ("surrogate.jsonl", b'{"text": "x\\ud83d", "label": "1"}\n', "invalid Unicode escape", "line 1"),
    ("latin1.jsonl", '{"text": "caf\xe9", "label": "1"}\n'.encode("latin-1"), "not UTF-8", "line 1"),
    ("truncated.jsonl.gz", gzip.compress((json.dumps(GLUE_RECORD) + "\n").encode() * 100)[:-30], "cut short", None),
    ("plain.jsonl.gz", (json.dumps(GLUE_RECORD) + "\n").encode(), "not gzip-compressed", None),
    ("whitespace.jsonl", b'{"text": " \\t ", "label": "1"}\n', "empty text", "line 1.*field 'text'"),
    ("list.jsonl", b"[1, 2]\n", "expected a JSON object", "line 1"),
    ("huge_field.csv", b"text,label\n" + b'"' + b"x" * 200_000 + b'",1\n', "cannot read this CSV row", "line"),
    ("latin1.csv", "text,label\ncaf\xe9,1\n".encode("latin-1"), "not UTF-8", "line 2"),
    ("empty.jsonl", b"", "no examples found", None),
]


@pytest.mark.parametrize("case", GLUE_CASES, ids=lambda c: c[0])
def test_bad_classification_files(tmp_path, tiny_model, runner, case):
    name, content, message, where = case
    data = tmp_path / name
    data.write_bytes(content)
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"text": t, "label": str(i % 2)}) + "\n" for i, t in enumerate(["good", "bad"])))
    out = tmp_path / "out"
    result = runner.invoke(app, ["classify", "train", "--model", str(tiny_model), "--train-file", str(data),
                                 "--dev-file", str(dev), "--output-dir", str(out), "--max-steps", "2",
                                 "--max-seq-length", "32", "--precision", "fp32"])
    _assert_clean_failure(result, 2, data, message, where, [out / "model.safetensors"], tmp_path)


# --- checkpoints ------------------------------------------------------------------------------------------

def _damage(*names: str, how: str = "flip"):
    def apply(checkpoints: Path) -> None:
        for name in names:
            path = checkpoints / name
            if how == "flip":
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            elif how == "truncate":
                path.write_bytes(path.read_bytes()[:50])
            elif how == "garbage":
                path.write_text("{")
            else:
                path.unlink()
    return apply


def _both(name: str) -> tuple[str, str]:
    return f"checkpoint-4/{name}", f"checkpoint-2/{name}"


CHECKPOINT_CASES = [  # (case, damage, extra flags, exit code, what the output must say)
    ("flipped latest weights", _damage("checkpoint-4/model.safetensors"), ["--resume"], 0,
     r"warning: .*checkpoint-4/model.safetensors: damaged.*resuming from .*checkpoint-2"),
    ("flipped weights in both", _damage(*_both("model.safetensors")), ["--resume"], 2,
     r"no intact checkpoint.*checkpoint-4/model.safetensors: damaged.*checkpoint-2/model.safetensors: damaged.*--force"),
    ("cut training state, no checksums", lambda c: (_damage(*_both("checksums.json"), how="delete")(c),
                                                    _damage(*_both("training_state.pt"), how="truncate")(c)),
     ["--resume"], 2, r"checkpoint-4: unreadable training state.*checkpoint-2: unreadable training state"),
    ("garbage checksums", _damage(*_both("checksums.json"), how="garbage"), ["--resume"], 2,
     r"checkpoint-4/checksums.json: unreadable"),
    ("weights missing", _damage("checkpoint-4/model.safetensors", how="delete"), ["--resume"], 0,
     r"checkpoint-4/model.safetensors: missing from the checkpoint.*resuming from"),
    ("resumed with another seed", lambda c: None, ["--resume", "--seed", "7"], 2,
     r"settings differ.*seed: 42 -> 7.*--force"),
    ("a new run over it", lambda c: None, [], 2, r"holds the checkpoints of an earlier run.*--resume.*--force"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    """A CLI training run of 4 steps with checkpoints at steps 2 and 4, and the flags that made it."""
    tmp = tmp_path_factory.mktemp("run")
    args = ["train", "--model", str(tiny_model), "--train-file", str(write_people(tmp / "train.json", 12)),
            "--dev-file", str(write_people(tmp / "dev.json", 2, offset=100)), "--max-seq-length", "64",
            "--doc-stride", "16", "--max-query-length", "16", "--batch-size", "4", "--precision", "fp32",
            "--max-steps", "4", "--save-steps", "2"]
    result = CliRunner().invoke(app, [*args, "--output-dir", str(tmp / "out")])
    assert result.exit_code == 0, result.output
    return tmp / "out", args


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=lambda c: c[0])
def test_damaged_checkpoints_and_runs_in_the_way(tmp_path, runner, finished_run, case):
    import shutil

    name, damage, flags, code, message = case
    out = tmp_path / "out"
    shutil.copytree(finished_run[0], out)
    damage(out / "checkpoints")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with warnings.catch_warnings(record=True) as caught:  # the CLI prints them as `warning: ...` lines
        warnings.simplefilter("always")
        result = runner.invoke(app, [*finished_run[1], "--output-dir", str(out), *flags])
    said = result.output + "".join(f"warning: {w.message}\n" for w in caught)
    assert result.exit_code == code, said
    assert "Traceback" not in said and (code == 0 or isinstance(result.exception, SystemExit))
    assert re.search(message, said, re.S), said
    if code:  # refused: the run's checkpoints are as they were, nothing half-written beside them
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# --- models and passages --------------------------------------------------------------------------------

@pytest.fixture
def damaged_reader(tmp_path, tiny_model) -> Path:
    folder = tmp_path / "reader"
    folder.mkdir()
    for f in tiny_model.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short
    return folder


@pytest.fixture
def tiny_encoder(tmp_path, tiny_model) -> Path:
    """The tiny BERT saved as a bare encoder (as the packaged MiniLM is): no QA head."""
    from transformers import BertModel

    folder = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_model).save_pretrained(folder, safe_serialization=True)
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize("command", [
    ["ask", "{model}", "-q", "Who?", "-c", "Eiffel built it."],
    ["chat", "{model}"],
    ["serve", "{model}", "--port", "1"],
    ["export", "{model}", "--onnx", "--out", "{tmp}/exported"],
    ["evaluate", "{model}", "{tmp}/dev.json", "--output-dir", "{tmp}/eval"],
])
@pytest.mark.parametrize("which, message", [("runs/no-such-reader", "no such folder"),
                                            ("./typo", "no such folder"),
                                            ("damaged", "cannot load .*model.safetensors intact"),
                                            ("encoder", "no trained question-answering head .*qa_outputs")])
def test_missing_or_damaged_models(tmp_path, runner, damaged_reader, tiny_encoder, command, which, message,
                                   monkeypatch):
    """A model that is not there, cannot be read, or was never trained to answer (an encoder: its QA head
    would be random) is an error before anything is read or written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    write_people(tmp_path / "dev.json", 2)
    model = {"damaged": str(damaged_reader), "encoder": str(tiny_encoder)}.get(which, which)
    args = [a.format(model=model, tmp=tmp_path) for a in command]
    result = runner.invoke(app, args, input=":quit\n")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "exported").exists() and not (tmp_path / "eval" / "predictions.json").exists()


def test_a_mistyped_hub_name_fails_at_once_when_offline(monkeypatch):
    import time

    from huggingface_hub import constants

    from spanqa.models import ModelError, resolve_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="no such folder, and HF_HUB_OFFLINE is set"):
        resolve_model("some-org/no-such-model")
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_non_utf8_context_file(tmp_path, tiny_model, runner, command):
    passage = tmp_path / "passage.txt"
    passage.write_bytes("Der Turm wurde 1889 gebaut, sagt Müller.".encode("latin-1"))
    args = ["ask", str(tiny_model), "-q", "When?", "--context-file", str(passage)] if command == "ask" else \
        ["chat", str(tiny_model), "--context-file", str(passage)]
    result = runner.invoke(app, args, input=":quit\n")
    assert result.exit_code == 2 and "passage.txt: not UTF-8 text" in result.output, result.output


def test_blank_questions_are_refused(tiny_model):
    from spanqa.models import load_qa_model, load_tokenizer
    from spanqa.qa.reader import Reader, ReaderSettings
    from spanqa.qa.windows import WindowSettings

    reader = Reader(load_qa_model(str(tiny_model)), load_tokenizer(str(tiny_model)),
                    ReaderSettings(WindowSettings(64, 16, 16)))
    with pytest.raises(ValueError, match="question 1 of 2 is empty"):
        reader.answer_many([("When?", CONTEXT), (" \n\t", CONTEXT)])


# --- document folders and indexes ------------------------------------------------------------------------

GOOD_DOC = "Emperor penguins breed in the Antarctic winter."


def _docs(tmp: Path, files: dict[str, bytes] | None = None) -> Path:
    """tmp/docs: good.txt and `files` (name -> bytes)."""
    folder = tmp / "docs"
    folder.mkdir(exist_ok=True)
    (folder / "good.txt").write_text(GOOD_DOC)
    for name, content in (files or {}).items():
        (folder / name).write_bytes(content)
    return folder


def _built(tmp: Path, model: Path, damage=None) -> Path:
    """tmp/idx: an index of tmp/docs, then `damage(folder of its current version)`."""
    out = tmp / "idx"
    result = CliRunner().invoke(app, ["index", str(_docs(tmp)), "--out", str(out), "--embedding-model", str(model)])
    assert result.exit_code == 0, result.output
    if damage:
        damage(out / (out / "CURRENT").read_text().strip())
    return out


def _index_args(tmp: Path, model: Path, *paths, add: bool = False) -> list[str]:
    return ["index", *map(str, paths), "--out", str(tmp / "idx"), "--embedding-model", str(model),
            *(["--add"] if add else [])]


def _link(tmp: Path, name: str, target: str) -> Path:
    (_docs(tmp) / name).symlink_to(target)
    return tmp / "docs"


def _outside_folder(tmp: Path) -> Path:
    secret = tmp / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("the secret key is swordfish")
    return _link(tmp, "private", str(secret))


def _fifo(tmp: Path) -> Path:
    os.mkfifo(_docs(tmp) / "pipe.txt")  # reading it would block forever
    return tmp / "docs"


def _other_files(tmp: Path) -> Path:
    (tmp / "idx").mkdir()
    (tmp / "idx" / "thesis.md").write_text("years of work")
    return _docs(tmp)


def _indexed_texts(tmp: Path) -> list[str]:
    from spanqa.retrieval.index import Index

    return [p.text for p in Index.load(tmp / "idx").passages]


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


PDF_BROKEN = b"%PDF-1.4 this is not really a pdf"
INDEX_CASES = [  # (case, prepare(tmp, model) -> arguments, exit code, what the output must say, texts indexed or None)
    ("unreadable files: all named, the rest indexed",
     lambda t, m: _index_args(t, m, _docs(t, {"latin1.txt": "caf\xe9".encode("latin-1"), "broken.pdf": PDF_BROKEN,
                                              "bad.jsonl": b'{"text": oops}\n', "nul.md": b"\xff\xfe\0"})), 1,
     r"(?s)4 file\(s\) could not be read; \S+idx holds the other documents:\n.*bad.jsonl, line 1.*invalid JSON"
     r".*broken.pdf: cannot read this PDF.*latin1.txt: not UTF-8.*nul.md: not UTF-8.*--add", [GOOD_DOC]),
    ("--add of an unreadable file: the index keeps what it held",
     lambda t, m: _index_args(t, _built(t, m), _docs(t, {"latin1.txt": b"caf\xe9"}), add=True), 1,
     r"1 file\(s\) could not be read; \S+idx holds the other documents \(and what it held of these before\):"
     r"\n.*latin1.txt: not UTF-8", [GOOD_DOC]),
    ("only unreadable files", lambda t, m: _index_args(t, m, _docs(t, {"latin1.txt": b"caf\xe9"}) / "latin1.txt"), 2,
     r"no text to index.*latin1.txt: not UTF-8", None),
    ("a link to a system file", lambda t, m: _index_args(t, m, _link(t, "passwd.txt", "/etc/passwd")), 0,
     r"passwd.txt: a link to /etc/passwd, outside .*docs; not followed", [GOOD_DOC]),
    ("a link to a folder outside", lambda t, m: _index_args(t, m, _outside_folder(t)), 0,
     r"private: a link to a folder outside .*docs; not followed", [GOOD_DOC]),
    ("a broken link", lambda t, m: _index_args(t, m, _link(t, "gone.txt", "/no/such/file.txt")), 0,
     r"gone.txt: a link to /no/such/file.txt, outside", [GOOD_DOC]),
    ("a pipe named .txt", lambda t, m: _index_args(t, m, _fifo(t)), 0, r"pipe.txt: not a regular file", [GOOD_DOC]),
    ("missing and unsupported arguments, all named",
     lambda t, m: _index_args(t, m, _docs(t) / "none.txt", _docs(t, {"x.docx": b"PK"}) / "x.docx"), 2,
     r"none.txt: no such file or folder; .*x.docx: unsupported file type", None),
    ("--out holds other files", lambda t, m: _index_args(t, m, _other_files(t)), 2,
     r"idx: this folder holds other files \(thesis.md\), not an index", None),
    ("--add to a missing index", lambda t, m: _index_args(t, m, _docs(t), add=True), 2,
     r"idx: no index there to change.*build it first", None),
    ("--add to an index whose version is gone",
     lambda t, m: _index_args(t, _built(t, m, lambda v: __import__("shutil").rmtree(v)), _docs(t), add=True), 2,
     r"CURRENT names version 'v-.*', which is not there: the index is damaged; rebuild the index", None),
    ("--add to an index with cut embeddings",
     lambda t, m: _index_args(t, _built(t, m, lambda v: (v / "embeddings.npy").write_bytes(b"\x93NUMPY")), _docs(t),
                              add=True), 2, r"embeddings.npy: damaged.*rebuild the index", None),
    ("--add to an index with damaged passages",
     lambda t, m: _index_args(t, _built(t, m, lambda v: _flip_middle(v / "passages.jsonl")), _docs(t), add=True), 2,
     r"passages.jsonl: damaged.*rebuild the index", None),
    ("--add to an index missing a file",
     lambda t, m: _index_args(t, _built(t, m, lambda v: (v / "index.json").unlink()), _docs(t), add=True), 2,
     r"index.json: missing, the index is damaged", None),
    ("an embedding model that is not there", lambda t, m: _index_args(t, t / "no-such-model", _docs(t)), 2,
     r"no-such-model does not exist \(no such folder\)", None),
]


@pytest.mark.parametrize("case", INDEX_CASES, ids=lambda c: c[0])
def test_bad_documents_and_indexes(tmp_path, tiny_model, runner, case):
    """Each case: the exit code, every bad file named with its reason, no traceback, no temporary left; a
    refused command changes no existing index; an accepted one indexed exactly the readable text."""
    name, prepare, code, message, texts = case
    args = prepare(tmp_path, tiny_model)
    out = tmp_path / "idx"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} if out.exists() else {}
    result = runner.invoke(app, args)
    said = result.output
    assert result.exit_code == code, said
    assert "Traceback" not in said and (code == 0 or isinstance(result.exception, SystemExit)), repr(result.exception)
    assert re.search(message, said), said
    if code == 2:  # refused: what was there is as it was
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} if out.exists() else {}
        assert after == before
    if texts is not None:
        assert sorted(_indexed_texts(tmp_path)) == sorted(texts)
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def _without_root_override() -> list[str]:
    """The prefix of a command that file permissions apply to: root reads and writes any file, so as root
    the command runs without the capabilities that override them (skipped where setpriv is missing)."""
    caps = "-dac_override,-dac_read_search"
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"]
    pytest.skip("root without setpriv reads and writes files whatever their permissions")


def test_unreadable_files_for_lack_of_permission_are_named(tmp_path, tiny_model):
    """chmod 000 on a file and a subfolder: both named, the rest indexed, exit 1."""
    docs = _docs(tmp_path, {"locked.txt": b"you may not read this"})
    (docs / "sub").mkdir()
    (docs / "sub" / "inner.txt").write_text("nor this")
    prefix = _without_root_override()
    os.chmod(docs / "locked.txt", 0)
    os.chmod(docs / "sub", 0)
    try:
        run = subprocess.run([*prefix, sys.executable, "-m", "spanqa", "index", str(docs), "--out",
                              str(tmp_path / "idx"), "--embedding-model", str(tiny_model)],
                             capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(docs / "sub", 0o755)
        os.chmod(docs / "locked.txt", 0o644)
    assert run.returncode == 1, run.stderr
    assert "2 file(s) could not be read" in run.stderr, run.stderr
    assert re.search(r"locked.txt: cannot read it \(Permission denied\)", run.stderr), run.stderr
    assert re.search(r"sub: cannot list this folder \(Permission denied\)", run.stderr), run.stderr
    assert "Traceback" not in run.stderr and "1 documents" in run.stdout
    assert "what it held of these before" not in run.stderr  # a new index: nothing was held before
    assert sorted(_indexed_texts(tmp_path)) == [GOOD_DOC]


def test_a_read_only_index_folder_is_named_for_lack_of_permission(tmp_path, tiny_model):
    """An index folder this user may not write to: a new index and --add are refused before any work (exit
    2, the folder named, no traceback), and so is taking its write lock; the index stays as it was."""
    out = _built(tmp_path, tiny_model)
    (out / ".lock").unlink()  # the lock file is created again by the next writer: here it cannot be
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    prefix = _without_root_override()
    lock = "import sys\nfrom spanqa.retrieval.layout import writing\nwith writing(sys.argv[1]): pass"
    os.chmod(out, 0o555)
    try:
        runs = [subprocess.run([*prefix, sys.executable, *args], capture_output=True, text=True, timeout=300)
                for args in (["-m", "spanqa", *_index_args(tmp_path, tiny_model, tmp_path / "docs")],
                             ["-m", "spanqa", *_index_args(tmp_path, tiny_model, tmp_path / "docs", add=True)],
                             ["-c", lock, str(out)])]
    finally:
        os.chmod(out, 0o755)
    for run in runs[:2]:
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        assert re.search(rf"{re.escape(str(out))}: cannot write the index there \(it is read-only", run.stderr), run.stderr
    assert re.search(rf"CollectionError: {re.escape(str(out))}: cannot write the index there \(Permission denied: "
                     rf"{re.escape(str(out / '.lock'))}\)", runs[2].stderr), runs[2].stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", [["tokenizer", "train", "{docs}", "--out", "{tmp}/tok", "--vocab-size", "100"],
                                     ["pretrain", "{docs}", "--output-dir", "{tmp}/mlm", "--max-steps", "1"]])
def test_a_corpus_file_without_read_permission_is_named(tmp_path, command):
    """`spanqa tokenizer train` and `pretrain` over a folder with an unreadable file stop with a message
    naming it (exit 2), not a PermissionError traceback."""
    docs = _docs(tmp_path, {"locked.txt": b"you may not read this"})
    prefix = _without_root_override()
    os.chmod(docs / "locked.txt", 0)
    args = [a.format(docs=docs, tmp=tmp_path) for a in command]
    try:
        run = subprocess.run([*prefix, sys.executable, "-m", "spanqa", *args], capture_output=True, text=True,
                             timeout=300)
    finally:
        os.chmod(docs / "locked.txt", 0o644)
    assert run.returncode == 2, run.stderr
    assert re.search(r"locked.txt: cannot read it \(Permission denied\)", run.stderr), run.stderr
    assert "Traceback" not in run.stderr, run.stderr


# --- random input: only the loaders' own errors ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["data", "paragraphs", "qas", "context", "question", "answers", "text", "answer_start",
                         "id", "title", "is_impossible", "version", "label"]) | st.text(max_size=5), inner, max_size=5),
    max_leaves=30)
# strings and numbers a JSON writer may emit, NaN and surrogates included (json.dumps writes both)
LOADERS = {
    "squad": lambda path: __import__("spanqa.qa.squad", fromlist=["check_dataset"]).check_dataset(path),
    "glue": lambda path: __import__("spanqa.classify.glue", fromlist=["load_texts"]).load_texts(
        path, __import__("spanqa.classify.glue", fromlist=["DataFormat"]).DataFormat()),
    "documents": lambda path: list(iter_documents([path])),
}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load_all(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    for loader in LOADERS.values():
        try:
            loader(str(path))
        except (DataError, CollectionError):
            pass


@SETTINGS
@given(value=json_values, squad_like=st.booleans())
def test_random_json_structures(tmp_path, value, squad_like):
    if squad_like:  # reach deeper into the SQuAD validation
        value = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [value]}]}]}
    text = json.dumps(value)
    for name, content in (("r.json", text.encode()), ("r.jsonl", text.encode() + b"\n"),
                          ("r.json.gz", gzip.compress(text.encode())), ("records.jsonl", (text + "\n").encode() * 2)):
        _load_all(tmp_path, name, content)


@SETTINGS
@given(content=st.binary(max_size=300) | st.text(alphabet='[]{}",:\\u0123456789abdDnNaIf \n', max_size=200).map(str.encode),
       suffix=st.sampled_from([".json", ".jsonl", ".json.gz", ".jsonl.gz", ".csv", ".tsv", ".txt", ".md", ".pdf"]))
def test_random_bytes(tmp_path, content, suffix):
    _load_all(tmp_path, "r" + suffix, content)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=400), chunk=st.integers(1, 64), depth=st.integers(1, 8))
def test_depth_scanner_agrees_with_a_plain_reading(data, chunk, depth):
    """Streamed in chunks of any size, the scanner finds the first byte past the depth limit (outside
    strings, escapes honoured) exactly where a byte-by-byte reading does."""
    from spanqa.data.strict_json import JsonProblem, JsonScanner

    level, in_string, escaped, expected = 0, False, False, None
    for i, ch in enumerate(data):
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == 92, ch != 34)
        elif ch == 34:
            in_string = True
        elif ch in b"[{":
            level += 1
            if level > depth:
                expected = (data.count(b"\n", 0, i) + 1, i - data.rfind(b"\n", 0, i))
                break
        elif ch in b"]}":
            level -= 1
    scanner = JsonScanner(depth)
    try:
        for lo in range(0, len(data), chunk):
            scanner._depth(data[lo:lo + chunk])
        found = None
    except JsonProblem as e:
        found = (e.line, e.column)
    assert found == expected


def test_nesting_is_refused_in_bounded_memory_and_time(tmp_path):
    """A 200 KB file of `[` (or `{"a":`) once cost ijson gigabytes: now each loader refuses it, in a process
    limited to 1.5 GB of address space, within seconds."""
    files = {"a.json": b"[" * 200_000, "b.json": b'{"data": [' + b'{"a": ' * 40_000,
             "c.jsonl": b"[" * 200_000 + b"\n", "d.json.gz": gzip.compress(b'{"data": [' + b"[" * 200_000)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    script = textwrap.dedent(f"""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        from spanqa.classify.glue import DataFormat, load_texts
        from spanqa.data.documents import CollectionError, iter_documents
        from spanqa.data.sources import DataError
        from spanqa.qa.squad import check_dataset
        for name in {sorted(files)!r}:
            path = {str(tmp_path)!r} + "/" + name
            loaders = [check_dataset, lambda p: list(iter_documents([p]))]
            if name.endswith(".jsonl"):
                loaders.append(lambda p: load_texts(p, DataFormat()))
            for load in loaders:
                t0 = time.perf_counter()
                try:
                    load(path)
                    sys.exit(f"{{name}}: accepted")
                except (DataError, CollectionError) as e:
                    assert "nested more than 100 levels" in str(e), str(e)
                assert time.perf_counter() - t0 < 5, name
        # VmHWM: this process's peak (ru_maxrss would count the forking pytest's pages too)
        peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
        print("peak RSS MB", int(peak) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) < 300  # MB: imports (numpy, ijson; ~40 MB) and nothing that grows with depth


def test_a_mistyped_data_name_fails_at_once_when_offline(runner, monkeypatch):
    """Not a file, so a hub dataset name: with the hub out of reach only the cache is asked (no retries)."""
    import time

    import spanqa.models

    monkeypatch.setattr(spanqa.models, "hub_reachable", lambda: False)
    t0 = time.perf_counter()
    result = runner.invoke(app, ["data", "check", "squad_typo"])
    assert result.exit_code == 1 and "hub cannot be reached and it is not cached" in result.output, result.output
    assert time.perf_counter() - t0 < 15  # importing datasets included
