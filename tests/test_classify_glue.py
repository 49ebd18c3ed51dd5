"""GLUE TSV quirks, CSV/JSONL fields, and validation errors that name file, line and field."""

import gzip
import json

import pytest

from spanqa.classify.glue import (
    DataFormat,
    TextDataset,
    check_same_labels,
    label_names,
    load_texts,
)
from spanqa.data.sources import DataError

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def write(path, text: str, gz: bool = False):
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_sst2_header_trailing_space_and_gzip(tmp_path):
    path = write(tmp_path / "train.tsv.gz", "sentence\tlabel\nhide new secretions \t0\na charming journey . \t1\n", gz=True)
    data = load_texts(path, DataFormat("sst2"))
    assert [(e.text, e.pair, e.label, e.line) for e in data.examples] == [
        ("hide new secretions", None, "0", 2), ("a charming journey .", None, "1", 3)]


def test_mrpc_bom_label_first_and_quotes_inside_fields(tmp_path):
    # with Python's default CSV quoting these two lines would merge into one record
    rows = ('1\t1\t2\tHe said " the pie business doesn \'t fit .\tThe pie " business does not fit .\n'
            '0\t3\t4\tAnother "quoted\tSecond sentence .\n')
    data = load_texts(write(tmp_path / "dev.tsv", MRPC_HEADER + rows), DataFormat("mrpc"))
    assert len(data.examples) == 2
    first = data.examples[0]
    assert (first.label, first.text, first.pair) == ("1", 'He said " the pie business doesn \'t fit .',
                                                     'The pie " business does not fit .')
    assert data.examples[1].text == 'Another "quoted'


def test_cola_has_no_header_and_no_final_newline(tmp_path):
    text = "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tThe more books I ask to whom he will give.\n"
    data = load_texts(write(tmp_path / "dev.tsv", text.rstrip("\n")), DataFormat("cola"))
    assert [(e.label, e.line) for e in data.examples] == [("1", 1), ("0", 2)]
    assert data.examples[1].text == "The more books I ask to whom he will give."


def test_rte_label_names(tmp_path):
    text = "index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tA man is awake.\tnot_entailment\n1\tA b.\tA.\tentailment\n"
    data = load_texts(write(tmp_path / "dev.tsv", text), DataFormat("rte"))
    assert [e.label for e in data.examples] == ["not_entailment", "entailment"]
    assert label_names(data, DataFormat("rte")) == ["entailment", "not_entailment"]


def test_stsb_float_scores(tmp_path):
    row = "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is dancing.\tA man dances.\t{}\n"
    data = load_texts(write(tmp_path / "dev.tsv", STSB_HEADER + row.format("5.000") + row.format("0.750")),
                      DataFormat("stsb"))
    assert [e.label for e in data.examples] == [5.0, 0.75]
    assert all(isinstance(e.label, float) for e in data.examples)
    assert DataFormat("stsb").is_regression and label_names(data, DataFormat("stsb")) == []


def test_glue_errors_name_file_line_and_field(tmp_path):
    text = ("index\tsentence1\tsentence2\tlabel\n"
            "0\tA man sleeps.\tA man is awake.\n"          # line 2: 3 columns
            "1\t  \tA.\tentailment\n"                       # line 3: empty text
            "2\tA b.\tA.\tcontradiction\n"                  # line 4: unknown label
            "3\tA b.\tA.\t\n")                              # line 5: missing label
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(DataError) as err:
        load_texts(path, DataFormat("rte"))
    message = str(err.value)
    assert "4 problem(s)" in message
    assert f"{path}, line 2: field 'columns': 3 tab-separated columns, expected 4" in message
    assert f"{path}, line 3: field 'sentence1': empty text" in message
    assert f"{path}, line 4: field 'label': unknown label 'contradiction' (labels: entailment, not_entailment)" in message
    assert f"{path}, line 5: field 'label': missing label" in message


def test_wrong_task_for_the_file_is_named_by_its_header(tmp_path):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match="line 1: header .* is not RTE's.*right --task"):
        load_texts(path, DataFormat("rte"))


def test_stsb_score_must_be_a_number(tmp_path):
    row = "0\tg\tf\ty\t0\tnone\tnone\tA.\tB.\tfive\n"
    with pytest.raises(DataError, match=r"line 2: field 'score': expected a number, got 'five'"):
        load_texts(write(tmp_path / "dev.tsv", STSB_HEADER + row), DataFormat("stsb"))


def test_csv_with_quoting_and_named_fields(tmp_path):
    text = 'id,premise,hypothesis,gold\n1,"He said ""hi"", then left",He left,yes\n2,"two\nlines",Short,no\n3,Last,One,yes\n'
    fmt = DataFormat(text_field="premise", pair_field="hypothesis", label_field="gold")
    data = load_texts(write(tmp_path / "d.csv", text), fmt)
    assert [(e.text, e.pair, e.label, e.line) for e in data.examples] == [
        ('He said "hi", then left', "He left", "yes", 2), ("two\nlines", "Short", "no", 3),
        ("Last", "One", "yes", 5)]
    assert label_names(data, fmt) == ["no", "yes"]


def test_csv_errors(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\nfine,a\n,b\ntoo,many,cells\nno label,\n")
    with pytest.raises(DataError) as err:
        load_texts(path, DataFormat())
    message = str(err.value)
    assert f"{path}, line 3: field 'text': empty text" in message
    assert f"{path}, line 4: field 'columns': 3 columns, expected 2" in message
    assert f"{path}, line 5: field 'label': missing label" in message
    with pytest.raises(DataError, match="no column 'sentence'.*--text-field"):
        load_texts(path, DataFormat(text_field="sentence"))
    for blank_first in ("\n", "\ntext,label\nfine,a\n"):  # found by test_random_bytes: was an IndexError
        with pytest.raises(DataError, match="line 1: empty; the first line must be the header"):
            load_texts(write(tmp_path / "blank.csv", blank_first), DataFormat())


def test_jsonl_fields_numeric_labels_and_errors(tmp_path):
    good = [{"s": "great film", "y": 1}, {"s": "awful", "y": 0}, {"s": "fine", "y": 10}, {"s": "ok", "y": 2.0}]
    fmt = DataFormat(text_field="s", label_field="y")
    data = load_texts(write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in good)), fmt)
    assert [e.label for e in data.examples] == ["1", "0", "10", "2"]
    assert label_names(data, fmt) == ["0", "1", "2", "10"]  # integer names sort as numbers
    bad = [{"s": "x"}, {"s": 3, "y": 1}, {"y": 1}, [1, 2]]
    path = write(tmp_path / "bad.jsonl", "".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError) as err:
        load_texts(path, fmt)
    message = str(err.value)
    for expected in ("line 1: field 'y': missing label", "line 2: field 's': expected text, got int",
                     "line 3: field 's': missing", "line 4: field 'record': expected a JSON object"):
        assert expected in message


def test_prediction_data_may_lack_labels(tmp_path):
    path = write(tmp_path / "d.jsonl", json.dumps({"text": "unlabelled"}) + "\n")
    assert load_texts(path, DataFormat(), require_labels=False).examples[0].label is None


def test_dev_label_set_must_match_train(tmp_path):
    def dataset(name, labels):
        from spanqa.classify.glue import TextExample

        return TextDataset(name, [TextExample(f"t{i}", None, label, i + 1) for i, label in enumerate(labels)])

    fmt = DataFormat()
    check_same_labels(dataset("train", ["a", "b"]), dataset("dev", ["b", "a", "a"]), fmt)
    with pytest.raises(DataError, match=r"dev: the label set differs.*\['c'\] not in train") as err:
        check_same_labels(dataset("train", ["a", "b"]), dataset("dev", ["a", "c", "b"]), fmt)
    assert "dev, line 2: field 'label': label 'c' is not in the training set" in str(err.value)
    with pytest.raises(DataError, match=r"no example of training label\(s\) \['b'\]"):
        check_same_labels(dataset("train", ["a", "b"]), dataset("dev", ["a"]), fmt)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_texts(tmp_path / "none.tsv", DataFormat("sst2"))
    with pytest.raises(DataError, match="unknown format"):
        load_texts(write(tmp_path / "d.txt", "x"), DataFormat())
    with pytest.raises(DataError, match="unknown GLUE task"):
        DataFormat("qqp")
