"""Accuracy-checked export: scores are the exports' real scores on the check data, the first export within the
tolerance is kept (fastest first), fp32 when none is, and the choice is recorded beside the model."""

import json
from pathlib import Path

from conftest import write_people
from test_classify_train import toy_config
from test_export import _graph
from test_reader import reader_folder
from typer.testing import CliRunner

from spanqa.classify.task import train
from spanqa.cli import app
from spanqa.export_check import CHECK_FILE, export_checked
from spanqa.qa.evaluate import evaluate_reader
from spanqa.qa.reader import Reader


def _ops(folder) -> set[str]:
    return {n.op_type for n in _graph(Path(folder)).node}


def test_checked_export_keeps_the_fastest_export_within_the_tolerance(tiny_model, tmp_path):
    folder = reader_folder(tiny_model, tmp_path)
    data = str(write_people(tmp_path / "check.json", 12))
    loose = export_checked(folder, data, tmp_path / "loose", max_loss=100)
    assert loose.chosen == "int8-everywhere" and list(loose.scores) == ["fp32", "int8-everywhere"]
    assert "MatMul" not in _ops(tmp_path / "loose")  # every matmul int8
    # the fp32 score is the model's own: the torch reader scores the same on the same data
    assert abs(loose.scores["fp32"] - evaluate_reader(folder, data, tmp_path / "eval")["f1"]) < 1e-6
    assert loose.examples == 24
    recorded = json.loads((tmp_path / "loose" / CHECK_FILE).read_text())
    assert recorded["chosen"] == "int8-everywhere" and recorded["scores"] == loose.scores
    assert Reader.load(str(tmp_path / "loose")).answer("Where was Ada born?", "Ada was born in Oslo.")

    # no int8 export can beat fp32 by 200 F1 points: both are scored, fp32 is kept
    strict = export_checked(folder, data, tmp_path / "strict", max_loss=-200, max_samples=10)
    assert strict.chosen == "fp32" and list(strict.scores) == ["fp32", "int8-everywhere", "int8"]
    assert strict.examples == 10 and not {"MatMulInteger", "QAttention"} & _ops(tmp_path / "strict")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tmp")) == []  # staging removed


def test_export_command_with_check(tiny_model, tmp_path, capsys):
    folder = reader_folder(tiny_model, tmp_path)
    data = str(write_people(tmp_path / "check.json", 6))
    run = lambda *args: CliRunner().invoke(app, ["export", folder, "--check", data, *args])  # noqa: E731
    result = run("--max-loss", "100")
    assert result.exit_code == 0, result.output
    assert "chosen by export --check: int8-everywhere" in result.output and Path(f"{folder}-int8-everywhere", CHECK_FILE).exists()
    from spanqa.cli.use import _announce  # serve's start-up line says what the choice rests on

    served = f"{folder}-int8-everywhere"
    _announce(served, Reader.load(served))
    line = capsys.readouterr().out
    assert "ONNX Runtime int8 (cpu); chosen by export --check: int8-everywhere, f1" in line
    assert "on 12 examples (max loss 100.0)" in line
    result = run("--max-loss", "-200")  # no int8 export beats fp32 by 200 points
    assert result.exit_code == 0 and "export --check kept fp32: no int8 export within -200.0" in result.output
    assert Path(f"{folder}-onnx", CHECK_FILE).exists()
    for flag in ("--fp32", "--int8-everywhere"):
        result = run(flag)
        assert result.exit_code == 2 and "--check chooses" in result.output
    result = CliRunner().invoke(app, ["export", folder, "--check", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "missing.json" in result.output


def test_checked_export_of_a_classifier_scores_its_main_metric(tiny_model, tmp_path):
    config = toy_config(tmp_path, tiny_model, epochs=4)
    train(config)
    checked = export_checked(str(tmp_path / "out"), config.dev_file, tmp_path / "int8", max_loss=100)
    assert checked.metric == "accuracy" and checked.examples == 32
    trained = json.loads((tmp_path / "out" / "metrics.json").read_text())["accuracy"]
    assert abs(checked.scores["fp32"] - 100 * trained) < 1e-6  # the trained classifier's own dev accuracy
