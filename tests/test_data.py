"""Data layer: loading every format, and each malformed case failing with its culprit named."""

import copy
import gzip
import json

import pytest
from conftest import CONTEXT, SHARED, TINY_QAS, qa, squad_json
from typer.testing import CliRunner

from spanqa.cli import app
from spanqa.data.sources import DataError
from spanqa.qa.squad import ExampleStream, check_dataset, load_dataset

runner = CliRunner()


def check(tmp_path, obj, *args, name="d.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    result = runner.invoke(app, ["data", "check", str(path), *args])
    return result.exit_code, result.output


def test_nested_json_gz_and_jsonl_load_the_same(tmp_path):
    obj = squad_json(TINY_QAS)
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(obj).encode()))
    nested = load_dataset(tmp_path / "a.json.gz")
    with open(tmp_path / "a.jsonl", "w") as f:
        for record in jsonl_records():
            f.write(json.dumps(record) + "\n")
    flat = load_dataset(tmp_path / "a.jsonl")
    assert nested.examples == flat.examples and len(flat.examples) == 4
    assert not nested.version_2


def test_v2_file_with_unanswerable(tmp_path):
    obj = squad_json(TINY_QAS + [qa("q5", "Who painted it?", None)], version="v2.0")
    code, out = check(tmp_path, obj)
    assert code == 0 and "SQuAD v2.0" in out and "4 answerable" in out


@pytest.mark.parametrize("name", ["d.json", "d.json.gz", "d.jsonl"])
def test_files_are_streamed_one_record_at_a_time(tmp_path, name):
    """The first questions come out before the reader has seen the (broken) end of the file."""
    if name == "d.jsonl":
        good = jsonl_records()
        text = "".join(json.dumps(r) + "\n" for r in good) + '{"id": "broken"\n'
    else:
        text = json.dumps(squad_json(TINY_QAS))[:-1] + ', "oops": [1, }'
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    stream = iter(ExampleStream(path))
    assert next(stream).id == TINY_QAS[0]["id"]
    with pytest.raises(DataError, match="line"):
        list(stream)


def jsonl_records():
    return [{"id": q["id"], "title": "Eiffel", "context": CONTEXT, "question": q["question"],
             "answers": {"text": [a["text"] for a in q["answers"]],
                         "answer_start": [a["answer_start"] for a in q["answers"]]}} for q in TINY_QAS]


def test_valid_file_passes(tmp_path):
    code, out = check(tmp_path, squad_json(TINY_QAS))
    assert code == 0, out


def test_bad_json_names_line_and_column(tmp_path):
    code, out = check(tmp_path, '{"version": "1.1",\n "data": [oops]}')
    assert code == 1 and "line 2" in out and "column" in out


def _broken(mutate):
    obj = squad_json(copy.deepcopy(TINY_QAS))
    mutate(obj["data"][0]["paragraphs"][0])
    return obj


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p.__setitem__("context", ""), "'context': empty"),
    (lambda p: p.pop("context"), "'context': missing"),
    (lambda p: p.__setitem__("context", 42), "'context': must be a string"),
    (lambda p: p["qas"][1].__setitem__("question", " "), "question 'q2': field 'question': empty"),
    (lambda p: p["qas"][1].pop("question"), "question 'q2': field 'question': missing"),
    (lambda p: p["qas"][2].__setitem__("answers", {"text": "x"}), "question 'q3': field 'answers': missing or not a list"),
    (lambda p: p["qas"][2]["answers"][0].__setitem__("answer_start", -3), "answers[0].answer_start': negative"),
    (lambda p: p["qas"][2]["answers"][0].__setitem__("answer_start", 10_000), "runs past the end"),
    (lambda p: p["qas"][2]["answers"][0].__setitem__("answer_start", 5), "not the answer text"),
    (lambda p: p["qas"][2]["answers"][0].__setitem__("answer_start", "5"), "must be an integer"),
    (lambda p: p["qas"][3].__setitem__("id", "q1"), "duplicate id"),
    (lambda p: p["qas"][3].__setitem__("answers", []), "no answers and not marked is_impossible"),
    (lambda p: p["qas"][3]["answers"][0].__setitem__("text", ""), "must be a non-empty string"),
])
def test_each_malformed_case_fails_naming_the_culprit(tmp_path, mutate, expected):
    code, out = check(tmp_path, _broken(mutate))
    assert code == 1, out
    assert expected in " ".join(out.split()), out
    assert "article 'Eiffel', paragraph 0" in " ".join(out.split())


def test_every_problem_is_listed(tmp_path):
    def two(p):
        p["qas"][0]["answers"][0]["answer_start"] = -1
        p["qas"][1]["question"] = ""
    code, out = check(tmp_path, _broken(two))
    assert code == 1 and "q1" in out and "q2" in out and "2 problem(s)" in " ".join(out.split())


def test_fix_offsets_repairs_and_reports(tmp_path):
    obj = _broken(lambda p: p["qas"][2]["answers"][0].__setitem__("answer_start", CONTEXT.index("330 metres") + 3))
    code, _ = check(tmp_path, obj)
    assert code == 1
    code, out = check(tmp_path, obj, "--fix-offsets", "--write", str(tmp_path / "fixed.jsonl"))
    assert code == 0 and "repaired" in out and "q3" in out
    fixed = load_dataset(tmp_path / "fixed.jsonl").examples
    assert fixed[2].answer_starts == (CONTEXT.index("330 metres"),) and len(fixed) == 4


def test_jsonl_problems_name_the_line(tmp_path):
    bad = {"id": "x", "title": "T", "context": "abc", "question": "q?", "answers": {"text": ["zz"], "answer_start": [0]}}
    code, out = check(tmp_path, json.dumps(bad) + "\n", name="d.jsonl")
    assert code == 1 and "line 1" in out and "question 'x'" in out


def test_load_refuses_invalid_data(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_broken(lambda p: p["qas"][0]["answers"][0].__setitem__("answer_start", -1))))
    with pytest.raises(DataError, match="answer_start"):
        load_dataset(path)


def test_missing_file_and_offline_hub_name_are_clear(monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        check_dataset("nope/train.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="(?i)pass a local file"):
        check_dataset("rajpurkar/squad")


@pytest.mark.skipif(not (SHARED / "dev-v1.1.json.gz").exists(), reason="shared SQuAD data not present")
def test_official_dev_passes():
    result = runner.invoke(app, ["data", "check", str(SHARED / "dev-v1.1.json.gz")])
    assert result.exit_code == 0 and "10570 questions" in result.output
