"""HTTP server: answers, batches, limits, micro-batching; a real uvicorn process; the web page in Chromium."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from test_reader import reader_folder

from spanqa.qa.reader import Reader
from spanqa.server import MicroBatcher, ServerLimits, answering, create_app

CONTEXT = "The tower was finished in 1889. It was designed by Gustave Eiffel. It is 330 metres tall."


@pytest.fixture
def reader(tiny_model, tmp_path) -> Reader:
    return Reader.load(reader_folder(tiny_model, tmp_path))


def client(reader: Reader, **limits) -> TestClient:
    return TestClient(create_app(reader, ServerLimits(**limits)))


def test_answer_single_and_batch(reader):
    with client(reader) as c:
        assert c.get("/health").json()["status"] == "ok"
        one = c.post("/v1/answer", json={"question": "Who designed it?", "context": CONTEXT, "top_k": 3})
        assert one.status_code == 200
        answers = one.json()["answers"]
        assert 1 <= len(answers) <= 3
        for a in answers:
            assert CONTEXT[a["start"]:a["end"]] == a["text"] and 0 <= a["score"] <= 1
        expected = reader.answer("Who designed it?", CONTEXT, top_k=3)
        assert [(a["start"], a["end"]) for a in answers] == [(a.start, a.end) for a in expected]
        batch = c.post("/v1/answer", json=[{"question": "Who?", "context": CONTEXT},
                                           {"question": "When?", "context": "It ended in 1990."}])
        assert batch.status_code == 200 and len(batch.json()) == 2
        assert all(len(r["answers"]) == 1 for r in batch.json())
        assert "<textarea" in c.get("/").text
        assert c.get("/openapi.json").json()["paths"]["/v1/answer"]


@pytest.mark.parametrize("body, status, message", [
    ({"question": "Who?", "context": "x" * 501}, 422, "at most 500"),
    ({"question": "Who?", "context": CONTEXT, "top_k": 50}, 422, "top_k"),
    ({"question": "", "context": CONTEXT}, 422, "question"),
    ({"context": CONTEXT}, 422, "question"),
    ([{"question": "Who?", "context": CONTEXT}] * 5, 422, "at most 4"),
    ([], 422, "empty"),
])
def test_bad_requests_are_rejected_with_a_message(reader, body, status, message):
    with client(reader, max_context_chars=500, max_batch_items=4) as c:
        response = c.post("/v1/answer", json=body)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_malformed_json_oversized_body_and_timeout(reader):
    with client(reader, max_body_bytes=1000) as c:
        bad = c.post("/v1/answer", content=b'{"question": "Who?", "context": ', headers={"content-type": "application/json"})
        assert bad.status_code == 422 and "json" in str(bad.json()["detail"]).lower()
        big = c.post("/v1/answer", json={"question": "Who?", "context": "x" * 5000})
        assert big.status_code == 413
        chunked = c.post("/v1/answer", content=iter([b'{"question": "Who?", ', b'"context": "' + b"x" * 5000 + b'"}']),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413
    with client(reader, timeout_s=1e-6) as c:
        slow = c.post("/v1/answer", json={"question": "Who?", "context": CONTEXT})
        assert slow.status_code == 504
    with client(reader) as c:
        assert c.post("/v1/ask", json={"question": "Who?"}).status_code == 400


def test_concurrent_requests_share_batches(reader):
    calls = []

    def answer_many(pairs, top_k):
        calls.append(len(pairs))
        return reader.answer_many(pairs, top_k)

    async def run():
        batcher = MicroBatcher(answering(answer_many), max_items=64, max_wait_s=0.05)
        batcher.start()
        questions = [f"Question number {i}?" for i in range(12)]
        results = await asyncio.gather(*(batcher.submit([(q, CONTEXT, 2)]) for q in questions))
        await batcher.stop()
        return questions, results

    questions, results = asyncio.run(run())
    assert sum(calls) == 12 and len(calls) < 12  # gathered into shared passes
    alone = reader.answer_many([(q, CONTEXT) for q in questions], 2)
    assert [[(a.start, a.end) for a in r[0]] for r in results] == [[(a.start, a.end) for a in r] for r in alone]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(tiny_model, tmp_path_factory):
    folder = reader_folder(tiny_model, tmp_path_factory.mktemp("served"))
    docs = tmp_path_factory.mktemp("served_docs")
    (docs / "tower.txt").write_text(CONTEXT)
    (docs / "bees.txt").write_text("Honey bees dance to show where the flowers are.")
    index = tmp_path_factory.mktemp("served_index") / "idx"
    subprocess.run([sys.executable, "-m", "spanqa", "index", str(docs), "--out", str(index)], check=True)
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "spanqa", "serve", folder, "--port", str(port), "--index", str(index)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
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


def test_real_uvicorn_process(live_server):
    response = httpx.post(live_server + "/v1/answer", json={"question": "When?", "context": CONTEXT})
    assert response.status_code == 200
    a = response.json()["answers"][0]
    assert CONTEXT[a["start"]:a["end"]] == a["text"]


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (test.sh installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_web_page_highlights_the_answer_in_chromium(live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = httpx.post(live_server + "/v1/answer", json={"question": "Who designed it?", "context": CONTEXT})
    expected = expected.json()["answers"][0]
    browser = _chromium()
    try:
        browser.get(live_server + "/")
        browser.find_element(By.ID, "context").send_keys(CONTEXT)
        browser.find_element(By.ID, "question").send_keys("Who designed it?")
        browser.find_element(By.ID, "ask").click()
        mark = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results mark"))[0]
        assert mark.text == expected["text"].strip()
        assert browser.find_element(By.CSS_SELECTOR, ".answer-text").text == expected["text"].strip()
    finally:
        browser.quit()


def test_web_page_shows_the_source_passage_of_collection_answers(live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    question = "When was the tower finished?"
    expected = httpx.post(live_server + "/v1/ask", json={"question": question, "top_k": 3}).json()["answers"][0]
    browser = _chromium()
    try:
        browser.get(live_server + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "source-choice").is_displayed())
        browser.find_element(By.ID, "use-index").click()
        browser.find_element(By.ID, "question").send_keys(question)
        browser.find_element(By.ID, "ask").click()
        mark = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results mark"))[0]
        assert mark.text == expected["text"].strip()
        first = browser.find_elements(By.CSS_SELECTOR, ".answer")[0]
        assert "tower.txt" in first.text or "bees.txt" in first.text  # the source is shown
        assert expected["passage"][:30] in first.find_element(By.CSS_SELECTOR, ".passage").text
    finally:
        browser.quit()


def test_blank_questions_are_refused_before_batching(reader):
    """One whitespace-only question must not fail the other requests of its micro-batch: 422 up front."""
    from fastapi.testclient import TestClient

    from spanqa.server import create_app

    with TestClient(create_app(reader)) as client:
        for body in ({"question": "   ", "context": "Paris is in France."},
                     {"question": "Where is Paris?", "context": "\n\t "},
                     {"question": "\x1f", "context": "0"},  # white space to Python (the reader), not to regex \S
                     [{"question": "Where is Paris?", "context": "Paris is in France."}, {"question": " ", "context": "x"}]):
            assert client.post("/v1/answer", json=body).status_code == 422
        assert client.post("/v1/answer", json={"question": "Where is Paris?", "context": "Paris is in France."}).status_code == 200


def test_api_docs_render_in_chromium_from_local_assets(live_server):
    """/docs is Swagger UI served by spanqa itself (test_serve_input checks it names no other host)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chromium()
    try:
        browser.get(live_server + "/docs")
        title = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
        assert "spanqa" in title[0].text
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/answer", "/v1/ask", "/health"} <= paths, paths
    finally:
        browser.quit()


@pytest.mark.parametrize("started, code", [(True, None), (False, 3)])
def test_serve_ends_quietly_on_ctrl_c_and_with_code_3_when_start_up_fails(reader, monkeypatch, started, code):
    """As uvicorn.run(): uvicorn re-raises Ctrl-C after its shutdown, and a start-up that failed exits 3."""
    import uvicorn

    from spanqa.server import serve

    class Server:  # started and stopped by Ctrl-C, or returned at start-up
        def __init__(self, config):
            self.started = False

        def run(self):
            self.started = started
            if started:
                raise KeyboardInterrupt

    monkeypatch.setattr(uvicorn, "Server", Server)
    if code is None:
        serve(reader)
    else:
        with pytest.raises(SystemExit) as exit:
            serve(reader)
        assert exit.value.code == code


@pytest.mark.parametrize("option", ["--timeout", "--read-timeout"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_serve_command_refuses_timeouts_that_are_not_positive(option, value):
    from typer.testing import CliRunner

    from spanqa.cli import app

    result = CliRunner().invoke(app, ["serve", "no-such-model", option, value])
    assert result.exit_code == 2 and option in result.output, result.output
