"""ONNX export: the exported reader gives the torch reader's logits; int8 still answers with valid spans."""

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
    for variant in ("int8", "int8-unsmoothed"):
        if variant != "int8":
            export_onnx(folder, tmp_path / variant, int8=True, smooth=False)
        assert not any(n.op_type == "MatMul" for n in _graph(tmp_path / variant).node)  # every MatMul is int8


def _graph(folder):
    import onnx

    return onnx.load(str(folder / "model.onnx"), load_external_data=False).graph


def test_smoothing_keeps_the_function_and_evens_out_the_channels(tiny_model, tmp_path):
    import torch

    from spanqa.export import _ffn_outputs, _smooth_ffn_outputs
    from spanqa.models import load_qa_model, load_tokenizer

    folder = reader_folder(tiny_model, tmp_path)
    model, tokenizer = load_qa_model(folder).eval(), load_tokenizer(folder)
    with torch.no_grad():  # give one feed-forward input channel an outlier, as trained BERTs have
        model.bert.encoder.layer[0].intermediate.dense.bias[3] = 40.0
    feeds = [tokenizer(q, c, truncation=True, max_length=128, return_tensors="pt") for q, c in PAIRS]
    peaks = []

    def hook(module, inputs):
        peaks.append(inputs[0].abs().reshape(-1, inputs[0].shape[-1]).amax(0))

    def ffn_input_peaks():
        peaks.clear()
        handle = _ffn_outputs(model)[0][2].register_forward_pre_hook(hook)
        with torch.no_grad():
            logits = [model(**f).start_logits for f in feeds]
        handle.remove()
        return torch.stack(peaks).amax(0), logits

    before, logits_before = ffn_input_peaks()
    assert len(_ffn_outputs(model)) == model.config.num_hidden_layers
    _smooth_ffn_outputs(model, feeds)
    after, logits_after = ffn_input_peaks()
    for a, b in zip(logits_before, logits_after):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # the same function in fp32
    spread = lambda p: (p.max() / p.median()).item()  # noqa: E731
    assert spread(after) < spread(before) / 3  # the outlier channel no longer sets the scale of the others
