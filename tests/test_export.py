"""ONNX export: the exported reader gives the torch reader's logits; int8 still answers with valid spans."""

from pathlib import Path

import numpy as np
from test_reader import reader_folder

from spanqa.export import export_onnx
from spanqa.onnx_models import OnnxQAModel, describe_runtime
from spanqa.qa.reader import Reader
from spanqa.qa.squad import Example
from spanqa.qa.windows import build_windows

PAIRS = [("Who designed it?", "It was designed by Gustave Eiffel in Paris."),
         ("When?", " ".join(f"Sentence {i} fills the passage." for i in range(60)) + " It ended in 1990.")]


def test_onnx_reader_matches_torch_and_int8_answers(tiny_model, tmp_path):
    folder = reader_folder(tiny_model, tmp_path)
    torch_reader = Reader.load(folder)
    onnx_reader = Reader.load(str(export_onnx(folder, tmp_path / "onnx")))
    assert isinstance(onnx_reader.model, OnnxQAModel)
    examples = [Example(str(i), q, c) for i, (q, c) in enumerate(PAIRS)]
    windows = build_windows(examples, torch_reader.tokenizer, torch_reader.settings.windows)
    assert len(windows) > 2  # the long passage needs several windows (various lengths in one batch)
    for a, b in zip(torch_reader.logits(windows), onnx_reader.logits(windows)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert onnx_reader.settings == torch_reader.settings  # spanqa.json travels with the export

    int8 = Reader.load(str(export_onnx(folder, tmp_path / "int8", int8=True)))
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < (tmp_path / "onnx" / "model.onnx").stat().st_size
    for (question, context), answers in zip(PAIRS, int8.answer_many(PAIRS, top_k=2)):
        assert answers and all(context[a.start:a.end] == a.text for a in answers)
    describe = lambda r: describe_runtime(r.model, r.device, r.autocast_dtype)  # noqa: E731  serve's start-up line
    assert [describe(r) for r in (torch_reader, onnx_reader, int8)] == [
        "torch fp32 (cpu)", "ONNX Runtime fp32 (cpu)", "ONNX Runtime int8 (cpu)"]
    # the feed-forward output projections stay fp32 unless asked; everything else is int8
    fp32_matmuls = {n.name for n in _graph(tmp_path / "int8").node if n.op_type == "MatMul"}
    assert fp32_matmuls == {f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(2)}
    # the embedding tables stay fp32 (int8 there costs F1 and saves no time)
    ops = {n.op_type for n in _graph(tmp_path / "int8").node}
    assert "EmbedLayerNormalization" in ops and "QEmbedLayerNormalization" not in ops
    # into a folder whose parents do not exist yet (bench/distill.py's first run failed there)
    export_onnx(folder, tmp_path / "new" / "int8-all", int8=True, int8_everywhere=True)
    assert not any(n.op_type == "MatMul" for n in _graph(tmp_path / "new" / "int8-all").node)


def _graph(folder):
    import onnx

    return onnx.load(str(folder / "model.onnx"), load_external_data=False).graph


def test_export_command_defaults_to_int8_and_refuses_what_it_would_destroy(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from spanqa.cli import app

    folder = reader_folder(tiny_model, tmp_path)
    run = lambda *args: CliRunner().invoke(app, ["export", folder, *args])  # noqa: E731
    result = run()
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in _graph(Path(f"{folder}-int8")).node}
    assert "MatMulInteger" in ops  # no flags: the int8 path
    assert run("--fp32", "--out", str(tmp_path / "fp32")).exit_code == 0
    assert not {"MatMulInteger", "QAttention"} & {n.op_type for n in _graph(tmp_path / "fp32").node}
    result = run("--fp32", "--int8-everywhere")
    assert result.exit_code == 2 and "contradict" in result.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    result = run("--out", str(tmp_path / "notes"))
    assert result.exit_code == 2 and "not an exported model folder" in result.output
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"  # untouched
    result = run("--out", folder)
    assert result.exit_code == 2 and "own folder" in result.output
    assert run("--out", str(tmp_path / "fp32")).exit_code == 0  # an earlier export is replaced
