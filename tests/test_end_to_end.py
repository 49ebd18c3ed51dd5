"""The real packaged encoder, end to end: train 20 steps, evaluate, ask (marked slow, runs in CI)."""

import json

import pytest
from conftest import write_people
from typer.testing import CliRunner

from spanqa.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_packaged_encoder_trains_evaluates_and_answers(tmp_path):
    out = tmp_path / "reader"
    result = runner.invoke(app, [
        "train", "--train-file", str(write_people(tmp_path / "train.json", 40)),
        "--dev-file", str(write_people(tmp_path / "dev.json", 8, offset=200)), "--output-dir", str(out),
        "--max-steps", "20", "--batch-size", "8", "--max-seq-length", "96", "--doc-stride", "32",
        "--max-query-length", "24", "--learning-rate", "2e-4", "--warmup-ratio", "0.1", "--save-steps", "10", "--log-steps", "5"])
    assert result.exit_code == 0, result.output
    history = json.loads((out / "history.json").read_text())
    losses = [h["training_loss"] for h in history if "training_loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "reader written to" in result.output

    result = runner.invoke(app, ["evaluate", str(out), str(tmp_path / "dev.json"), "--output-dir", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["f1"] <= 100 and (tmp_path / "ev" / "predictions.json").exists()
    result = runner.invoke(app, ["evaluate", str(out), str(tmp_path / "dev.json"), "--output-dir", str(tmp_path / "ev16"),
                                 "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    bf16 = json.loads((tmp_path / "ev16" / "metrics.json").read_text())
    assert bf16["valid_loss"] != metrics["valid_loss"]  # autocast really ran, and changed little:
    assert bf16["valid_loss"] == pytest.approx(metrics["valid_loss"], rel=0.05)

    context = "Bruno was born in Oslo in 1913. Later Bruno worked as a pilot for many years."
    result = runner.invoke(app, ["ask", str(out), "-q", "Where was Bruno born?", "-c", context, "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)["answers"]
    assert 1 <= len(answers) <= 3
    for a in answers:  # offsets point into the given context
        assert context[a["start"]:a["end"]] == a["text"] and 0 <= a["score"] <= 1

    result = runner.invoke(app, ["predict", str(out), str(tmp_path / "dev.json"), "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "p.json").read_text())) == 16
