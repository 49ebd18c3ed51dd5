"""report.html: every section, valid embedded PNGs, nothing external, contexts escaped; rebuilt from files."""

import base64
import json
import re

import numpy as np
import pytest

from spanqa.qa.calibration import Calibration
from spanqa.qa.decode import Answer
from spanqa.qa.report import SECTIONS, StoredPrediction, highlight, load_predictions, report_from_files, write_report
from spanqa.qa.squad import Example

EVIL = "Tom & Jerry <script>alert('x')</script> met in 1940 at MGM, said \"Fred\"."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUESTIONS = ["Who met?", "When did they meet?", "Where did they meet?", "How many cats?", "Which studio?",
             "What is it?", "Why?", "How did it go?", "In what year?", "Name them."]


def synthetic(n=60, seed=0):
    """Examples about EVIL (a third unanswerable) and predictions, half of them wrong."""
    rng = np.random.default_rng(seed)
    spans = [("Tom & Jerry", 0), ("1940", EVIL.index("1940")), ("MGM", EVIL.index("MGM")),
             ("<script>", EVIL.index("<script>"))]
    examples, preds = [], []
    for i in range(n):
        gold_text, gold_start = spans[i % len(spans)]
        answerable = i % 3 != 0
        examples.append(Example(f"q{i}", QUESTIONS[i % len(QUESTIONS)], EVIL,
                                (gold_text,) if answerable else (), (gold_start,) if answerable else (),
                                is_impossible=not answerable))
        order = rng.permutation(len(spans)) if rng.random() < 0.5 else [i % len(spans), *range(len(spans))]
        logits = np.sort(rng.normal(2, 3, size=3))[::-1]
        share = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum() * 0.9
        seen, answers = set(), []
        for k in order:
            if k not in seen and len(answers) < 3:
                seen.add(k)
                t, s = spans[k]
                answers.append(Answer(t, s, s + len(t), float(share[len(answers)]), float(logits[len(answers)])))
        null = float(logits[0] + rng.normal(0, 2))
        preds.append(StoredPrediction(f"q{i}", EVIL, answers, null, no_answer=null - logits[0] > 1.0))
    return examples, preds


def check_page(page: str, sections=SECTIONS) -> None:
    for sid in sections:
        assert f'<section id="{sid}">' in page, sid
    images = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(images) >= 3  # question types, reliability, coverage
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    # self-contained: no script, no stylesheet link, nothing fetched from elsewhere
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page


def test_report_sections_images_and_escaping(tmp_path):
    examples, preds = synthetic()
    path = write_report(tmp_path, examples, preds, windows={e.id: 1 + i % 3 for i, e in enumerate(examples)})
    page = path.read_text(encoding="utf-8")
    assert path.name == "report.html"
    check_page(page)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "Tom &amp; Jerry" in page
    assert page.count("<li>") == 25  # the 25 worst errors
    assert "after calibration (cross-fitted)" in page and "HasAns" in page and "NoAns" in page


def test_report_v1_with_stored_calibration_has_no_v2_section(tmp_path):
    examples, preds = synthetic()
    examples = [e for e in examples if e.has_answer]
    preds = [StoredPrediction(p.id, p.context, p.answers, p.null_score) for p, e in zip(preds, synthetic()[0])
             if e.has_answer]
    cal = Calibration("temperature", temperature=2.0, fitted={"examples": 123})
    page = write_report(tmp_path, examples, preds, cal, worst=5).read_text(encoding="utf-8")
    check_page(page, [s for s in SECTIONS if s not in ("has-answer", "windows")])
    assert '<section id="has-answer">' not in page and '<section id="windows">' not in page
    assert "after calibration" in page and "fitted on 123 questions" in page


def test_highlight_marks_gold_pred_and_both_and_trims():
    context = "x" * 500 + "a <b>gold</b> pred" + "y" * 500
    g = context.index("<b>gold")
    p = context.index("gold</b> pred")
    out = highlight(context, [(g, g + len("<b>gold</b>"))], [(p, p + len("gold</b> pred"))], margin=20)
    assert '<mark class="gold">&lt;b&gt;</mark><mark class="both">gold&lt;/b&gt;</mark>' in out
    assert '<mark class="pred"> pred</mark>' in out
    assert out.startswith("… ") and out.endswith(" …") and "x" * 21 not in out and "y" * 21 not in out
    far = highlight("gold " + "z" * 1000 + " pred", [(0, 4)], [(1006, 1010)], margin=10)
    assert far.count("<br>") == 1  # two separate snippets, not the 1,000 characters between them


def test_report_from_files_without_the_model(tmp_path):
    from spanqa.qa.evaluate import nbest_json

    examples, preds = synthetic(40)
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": EVIL, "qas": [
        {"id": e.id, "question": e.question, "is_impossible": not e.has_answer,
         "answers": [{"text": t, "answer_start": s} for t, s in zip(e.answer_texts, e.answer_starts)]}
        for e in examples]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(data))
    reader = tmp_path / "reader"
    run = reader / "eval"
    run.mkdir(parents=True)
    # the files evaluate.write_predictions writes (its nbest format), plus the optional windows.json
    (run / "predictions.json").write_text(json.dumps({p.id: p.text for p in preds}))
    (run / "nbest_predictions.json").write_text(json.dumps(nbest_json(preds)))
    (run / "null_odds.json").write_text(json.dumps({p.id: p.null_odds for p in preds}))
    (run / "windows.json").write_text(json.dumps({p.id: 2 for p in preds}))
    cal = Calibration("temperature", temperature=1.5, version_2=True, null_weight=1.0, null_bias=-1.0,
                      fitted={"examples": 77})
    (reader / "spanqa.json").write_text(json.dumps({"calibration": cal.to_dict()}))

    back = load_predictions(run, examples)
    assert [b.text for b in back] == [p.text for p in preds]
    np.testing.assert_allclose([b.null_score for b in back], [p.null_score for p in preds])
    np.testing.assert_allclose(cal.confidence(back), cal.confidence(preds))

    page = report_from_files(run, tmp_path / "dev.json").read_text(encoding="utf-8")
    check_page(page)
    assert "fitted on 77 questions" in page  # found in the reader's spanqa.json


def test_report_needs_predictions(tmp_path):
    with pytest.raises(ValueError):
        write_report(tmp_path, [], [])
