"""Reader API: offsets into the given context, long contexts, batches, no-answer results."""

import json

from spanqa.qa.reader import Reader

SMALL = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 32}


def reader_folder(tiny_model, tmp_path, decoding=None):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    (folder / "spanqa.json").write_text(json.dumps({"windows": SMALL, "decoding": decoding or {}}))
    return str(folder)


def test_reader_answers_with_offsets_long_contexts_and_batches(tiny_model, tmp_path):
    reader = Reader.load(reader_folder(tiny_model, tmp_path))
    long_context = " ".join(["Filler sentence number %d is here." % i for i in range(200)]) + " Oslo is cold."
    answers = reader.answer("Which city is cold?", long_context, top_k=3)
    assert 1 <= len(answers) <= 3
    for a in answers:
        assert long_context[a.start:a.end] == a.text and 0 <= a.score <= 1
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
    many = reader.answer_many([("Which city?", "Oslo is cold."), ("Who?", "Ann wrote it.")], top_k=2)
    assert len(many) == 2 and all(len(m) >= 1 for m in many)


def test_calibrated_threshold_gives_no_answer(tiny_model, tmp_path):
    folder = reader_folder(tiny_model, tmp_path, {"version_2": True, "null_threshold": -1e9})
    (first,) = Reader.load(folder).answer("Which city?", "Oslo is cold.")
    assert first.text == "" and first.start == -1
