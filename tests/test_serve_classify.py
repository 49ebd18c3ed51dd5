"""`spanqa serve` on a classifier folder: POST /v1/classify (single texts, pairs, regression, batches, limits),
the wrong endpoint for the model's task, a real uvicorn process and the web page in Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from test_serve import _chromium, _free_port

from spanqa.classify.classifier import Classifier, ClassifierSettings
from spanqa.classify.glue import DataFormat
from spanqa.models import SETTINGS_FILE, load_classifier_model, load_tokenizer
from spanqa.server import ServerLimits, create_app

FORMATS = {"single": (DataFormat(task="sst2"), ["0", "1"]),
           "pairs": (DataFormat(text_field="first", pair_field="second"), ["different", "same"]),
           "regression": (DataFormat(task="stsb"), [])}


def classifier_folder(tiny_model, folder: Path, kind: str = "single", seed: int = 0) -> str:
    """A classifier folder as `spanqa classify train` writes it, with the tiny encoder's (untrained) weights."""
    import torch

    fmt, labels = FORMATS[kind]
    torch.manual_seed(seed)
    model = load_classifier_model(str(tiny_model), num_labels=max(len(labels), 1),
                                  id2label=dict(enumerate(labels or ["LABEL_0"])),
                                  label2id={n: i for i, n in enumerate(labels or ["LABEL_0"])})
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(str(tiny_model)).save_pretrained(folder)
    settings = ClassifierSettings(fmt, labels, max_seq_length=64)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings.to_dict()))
    return str(folder)


def client(classifier: Classifier, **limits) -> TestClient:
    return TestClient(create_app(classifier, ServerLimits(**limits)))


@pytest.fixture
def single(tiny_model, tmp_path) -> Classifier:
    return Classifier.load(classifier_folder(tiny_model, tmp_path / "single"))


@pytest.fixture
def pairs(tiny_model, tmp_path) -> Classifier:
    return Classifier.load(classifier_folder(tiny_model, tmp_path / "pairs", "pairs"))


def test_classify_single_texts_and_batches(single):
    texts = ["the film was great", "the plot was awful", "it seemed quite a story"]
    expected = single.predict(texts)
    with client(single) as c:
        health = c.get("/health").json()
        assert health["task"] == "classify" and health["labels"] == ["0", "1"]
        assert health["pairs"] is False and health["regression"] is False and health["backend"] == "BertForSequenceClassification"
        one = c.post("/v1/classify", json={"text": texts[0]})
        assert one.status_code == 200
        body = one.json()
        assert body["label"] == expected[0].label and body["score"] == pytest.approx(expected[0].score, abs=1e-6)
        assert body["probabilities"].keys() == {"0", "1"} and sum(body["probabilities"].values()) == pytest.approx(1)
        batch = c.post("/v1/classify", json=[{"text": t} for t in texts])
        assert batch.status_code == 200
        assert [r["label"] for r in batch.json()] == [p.label for p in expected]
        for r, p in zip(batch.json(), expected):
            assert r["probabilities"] == pytest.approx(p.probabilities, abs=1e-6)
        assert c.get("/openapi.json").json()["paths"]["/v1/classify"]
        assert 'id="classify"' in c.get("/").text


def test_classify_pairs_and_regression(pairs, tiny_model, tmp_path):
    expected = pairs.predict([("the good film", "it was good"), ("a bad plot", "it was great")])
    with client(pairs) as c:
        assert c.get("/health").json()["pairs"] is True
        response = c.post("/v1/classify", json=[{"text": "the good film", "pair": "it was good"},
                                                {"text": "a bad plot", "pair": "it was great"}])
        assert response.status_code == 200
        assert [r["label"] for r in response.json()] == [p.label for p in expected]
        assert set(response.json()[0]["probabilities"]) == {"different", "same"}
    regressor = Classifier.load(classifier_folder(tiny_model, tmp_path / "stsb", "regression"))
    [value] = regressor.predict([("a man plays", "a man is playing")])
    with client(regressor) as c:
        assert c.get("/health").json()["regression"] is True
        body = c.post("/v1/classify", json={"text": "a man plays", "pair": "a man is playing"}).json()
        assert body["label"] is None and body["probabilities"] == {}
        assert body["score"] == pytest.approx(value.score, abs=1e-6)


@pytest.mark.parametrize("kind, body, message", [
    ("single", {"text": "x" * 501}, "at most 500"),
    ("single", [{"text": "fine"}, {"text": "y" * 501}], "item 1: text has 501"),
    ("single", {"text": ""}, "text"),
    ("single", {"pair": "no text"}, "text"),
    ("single", [{"text": "fine"}] * 5, "at most 4"),
    ("single", [], "empty"),
    ("single", {"text": "one", "pair": "two"}, "single texts"),
    ("pairs", {"text": "one"}, "sentence pairs"),
    ("pairs", [{"text": "one", "pair": "two"}, {"text": "three"}], "item 1: this classifier reads sentence pairs"),
    ("pairs", {"text": "one", "pair": "z" * 501}, "pair has 501"),
])
def test_bad_classify_requests_are_rejected_up_front(tiny_model, tmp_path, kind, body, message):
    classifier = Classifier.load(classifier_folder(tiny_model, tmp_path / kind, kind))
    calls = []
    predict = classifier.predict
    classifier.predict = lambda inputs: calls.append(inputs) or predict(inputs)
    with client(classifier, max_context_chars=500, max_batch_items=4) as c:
        response = c.post("/v1/classify", json=body)
    assert response.status_code == 422
    assert message in str(response.json()["detail"])
    assert not calls  # nothing of the request was run


def test_body_limit_timeout_and_the_wrong_endpoint(single, tiny_model, tmp_path):
    with client(single, max_body_bytes=1000) as c:
        assert c.post("/v1/classify", json={"text": "x" * 5000}).status_code == 413
        wrong = c.post("/v1/answer", json={"question": "Who?", "context": "Someone."})
        assert wrong.status_code == 400 and "/v1/classify" in wrong.json()["detail"]
        assert c.post("/v1/ask", json={"question": "Who?"}).status_code == 400
    with client(single, timeout_s=1e-6) as c:
        assert c.post("/v1/classify", json={"text": "slow"}).status_code == 504
    from test_reader import reader_folder

    from spanqa.qa.reader import Reader

    with TestClient(create_app(Reader.load(reader_folder(tiny_model, tmp_path)))) as c:
        assert c.get("/health").json()["task"] == "qa"
        wrong = c.post("/v1/classify", json={"text": "a text"})
        assert wrong.status_code == 400 and "/v1/answer" in wrong.json()["detail"]


@pytest.fixture(scope="module")
def live_classifier(tiny_model, tmp_path_factory):
    folder = classifier_folder(tiny_model, tmp_path_factory.mktemp("served_classifier") / "pairs", "pairs")
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "spanqa", "serve", folder, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            pytest.fail("server exited: " + process.stdout.read())
    yield url
    process.terminate()
    process.wait(10)


def test_real_uvicorn_process_serves_a_classifier_folder(live_classifier):
    assert httpx.get(live_classifier + "/health").json()["task"] == "classify"
    response = httpx.post(live_classifier + "/v1/classify", json={"text": "the good film", "pair": "it was good"})
    assert response.status_code == 200 and response.json()["label"] in ("different", "same")


def test_web_page_shows_label_probabilities_in_chromium(live_classifier):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = httpx.post(live_classifier + "/v1/classify", json={"text": "a good film", "pair": "it was bad"}).json()
    browser = _chromium()
    try:
        browser.get(live_classifier + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "pair").is_displayed())
        assert not browser.find_element(By.ID, "question").is_displayed()  # no passage and question for a classifier
        browser.find_element(By.ID, "text").send_keys("a good film")
        browser.find_element(By.ID, "pair").send_keys("it was bad")
        browser.find_element(By.ID, "classify").click()
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#classification .prob"))
        assert browser.find_element(By.CSS_SELECTOR, "#classification .label").text == expected["label"]
        bars = browser.find_elements(By.CSS_SELECTOR, "#classification .prob")
        assert sorted(b.get_attribute("data-label") for b in bars) == ["different", "same"]
        shown = {b.get_attribute("data-label"): b.find_element(By.CSS_SELECTOR, ".prob-value").text for b in bars}
        assert shown == {k: f"{100 * p:.1f}%" for k, p in expected["probabilities"].items()}
    finally:
        browser.quit()
