"""Calibration wired in: `evaluate --calibrate` stores it in spanqa.json, the reader's scores (API, CLI,
server, collections) become P(answer is right); `evaluate --report`, a training run and `spanqa report`
write report.html, which opens in headless Chromium with every section and image."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import write_people
from fastapi.testclient import TestClient
from test_train import tiny_config
from typer.testing import CliRunner

from spanqa.cli import app
from spanqa.qa.calibration import Calibration
from spanqa.qa.reader import Reader, ReaderSettings
from spanqa.qa.report import SECTIONS
from spanqa.server import create_app

runner = CliRunner()
CONTEXT = "Bruno was born in Oslo in 1913. Later Bruno worked as a pilot for many years."


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """A tiny reader trained on synthetic people (right on most, not all, of an unseen dev set)."""
    from spanqa.qa.train import train

    tmp = tmp_path_factory.mktemp("calibrated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPANQA_CACHE", str(tmp_path_factory.getbasetemp() / "spanqa-cache"))
        train(tiny_config(tmp / "train", tiny_model, epochs=6, log_steps=10, save_steps=1000))
    return tmp / "train" / "out", write_people(tmp / "dev40.json", 40, offset=300)


@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    """A copy of the reader after `spanqa evaluate --calibrate --report`, and that evaluation's folder."""
    out, dev = trained
    folder = tmp_path_factory.mktemp("calibrated_reader") / "reader"
    shutil.copytree(out, folder)
    before = json.loads((folder / "spanqa.json").read_text())
    result = runner.invoke(app, ["evaluate", str(folder), str(dev), "--calibrate", "--report",
                                 "--output-dir", str(folder.parent / "ev")])
    assert result.exit_code == 0, result.output
    after = json.loads((folder / "spanqa.json").read_text())
    assert {k: after[k] for k in before} == before  # read-modify-write: nothing else changed
    return folder, folder.parent / "ev", dev


def section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z-]+)"', page))


def test_training_run_folder_gets_the_report(trained):
    out, _ = trained
    page = (out / "report.html").read_text()
    assert section_ids(page) == set(SECTIONS) - {"has-answer"}  # v1 run, window counts known
    counts = json.loads((out / "windows.json").read_text())
    assert set(counts) == set(json.loads((out / "predictions.json").read_text())) and min(counts.values()) >= 1


def test_calibration_round_trip_through_spanqa_json(calibrated):
    folder, ev, _ = calibrated
    stored = json.loads((folder / "spanqa.json").read_text())["calibration"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["calibration"]["chosen"] == stored["fitted"]["chosen"]
    settings = ReaderSettings.read(folder)
    assert settings.calibration == Calibration.from_dict(stored)
    assert settings.to_dict()["calibration"] == stored  # to_dict keeps it (export copies spanqa.json)

    reader = Reader.load(str(folder))
    answers = reader.answer("Where was Bruno born?", CONTEXT, top_k=5)
    scores = [a.score for a in answers]
    assert all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-9
    assert scores == sorted(scores, reverse=True)
    # the score is the calibration's probability, computed from the same logits
    (raw,) = reader.predict([_example("Where was Bruno born?")], calibrated=False)
    expected = settings.calibration.calibrated_answers(raw)[:5]
    assert [a.text for a in answers] == [a.text for a in expected]
    np.testing.assert_allclose(scores, [a.score for a in expected], rtol=1e-9)
    assert raw.answers[0].score != pytest.approx(scores[0])  # really changed by the calibration
    # batched: the same numbers
    many = reader.answer_many([("Where was Bruno born?", CONTEXT), ("What did Bruno work as?", CONTEXT)], top_k=5)
    np.testing.assert_allclose([a.score for a in many[0]], scores, rtol=1e-6)

    result = runner.invoke(app, ["ask", str(folder), "-q", "Where was Bruno born?", "-c", CONTEXT, "--json",
                                 "--top-k", "3"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose([a["score"] for a in json.loads(result.output)["answers"]], scores[:3], rtol=1e-6)

    with TestClient(create_app(reader)) as client:
        assert client.get("/health").json()["calibrated"] is True
        served = client.post("/v1/answer", json={"question": "Where was Bruno born?", "context": CONTEXT,
                                                  "top_k": 3}).json()["answers"]
        np.testing.assert_allclose([a["score"] for a in served], scores[:3], rtol=1e-6)
        assert "probability the answer is right" in client.get("/").text


def _example(question: str):
    from spanqa.qa.squad import Example

    return Example("q", question, CONTEXT)


def test_uncalibrated_reader_keeps_decoder_probabilities(trained):
    out, _ = trained
    reader = Reader.load(str(out))
    assert reader.settings.calibration is None and "calibration" not in reader.settings.to_dict()
    (raw,) = reader.predict([_example("Where was Bruno born?")])
    answers = reader.answer("Where was Bruno born?", CONTEXT, top_k=3)
    assert [a.score for a in answers] == [a.score for a in raw.answers[:3]]


def test_collection_answers_ranked_by_calibrated_probability(calibrated, tmp_path):
    from spanqa.qa.collection import ask_collection
    from spanqa.retrieval.index import Index

    folder, _, _ = calibrated
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bruno.txt").write_text(CONTEXT)
    (docs / "dana.txt").write_text("Dana was born in Lima in 1950. Later Dana worked as a nurse for many years.")
    index, _ = Index.build([docs])
    reader = Reader.load(str(folder))
    answers = ask_collection(reader, index, "Where was Bruno born?", top_k=3, passages=2)
    assert answers and [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
    for a in answers:  # each score is the calibrated probability of that span, read in its own passage
        (own,) = [x for x in reader.answer("Where was Bruno born?", a.passage, top_k=20)
                  if (x.start, x.end) == (a.passage_start, a.passage_end)]
        assert a.score == pytest.approx(own.score)


def test_report_rebuilt_from_files_without_the_model(calibrated):
    folder, ev, dev = calibrated
    original = (ev / "report.html").read_text()
    assert section_ids(original) == set(SECTIONS) - {"has-answer"}
    assert "the stored calibration" in original
    (ev / "report.html").unlink()
    result = runner.invoke(app, ["report", str(ev), "--data", str(dev), "--calibration", str(folder / "spanqa.json")])
    assert result.exit_code == 0, result.output
    rebuilt = (ev / "report.html").read_text()
    assert section_ids(rebuilt) == section_ids(original)

    def overall(page: str) -> str:
        return re.search(r'<section id="overall">.*?</section>', page).group(0)

    assert overall(rebuilt) == overall(original)
    assert "the stored calibration" in rebuilt
    missing = runner.invoke(app, ["report", str(ev.parent / "nothing"), "--data", str(dev)])
    assert missing.exit_code == 2 and "predictions.json" in missing.output


def test_report_opens_in_headless_chromium(calibrated, tmp_path):
    from selenium.webdriver.common.by import By
    from test_serve import _chromium

    _, ev, _ = calibrated
    browser = _chromium()
    try:
        browser.get((ev / "report.html").as_uri())
        found = {s.get_attribute("id") for s in browser.find_elements(By.TAG_NAME, "section")}
        assert found == set(SECTIONS) - {"has-answer"}
        for sid in found:  # every section has a heading and content
            section = browser.find_element(By.ID, sid)
            assert section.find_element(By.TAG_NAME, "h2").text and len(section.text) > len(sid)
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 3  # question types, reliability, coverage
        loaded = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)")
        assert all(loaded) and len(loaded) == len(images)
        assert browser.find_elements(By.CSS_SELECTOR, "#errors mark.gold")
        assert browser.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.quit()
