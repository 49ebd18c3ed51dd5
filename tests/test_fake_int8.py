"""Quantization-aware training simulates exactly the int8 that ONNX Runtime runs after `spanqa export`."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from spanqa.training.fake_int8 import fake_int8, fake_quantize_activations, fake_quantize_weight


def test_activation_rounding_by_hand():
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    scale = 4.0 / 255  # range [-1, 3]; zero point round(1 / scale) = 64
    expected = (torch.clamp(torch.round(x / scale) + 64, 0, 255) - 64) * scale
    assert torch.allclose(fake_quantize_activations(x), expected)
    # an all-positive tensor still represents 0 exactly (the range is widened to include it)
    assert fake_quantize_activations(torch.tensor([0.0, 2.0, 1.0]))[0] == 0


def test_weight_rounding_per_output_channel():
    w = torch.tensor([[1.0, -0.5, 0.25], [100.0, 3.0, -50.0]])
    q = fake_quantize_weight(w)
    for row, qrow in zip(w, q):
        scale = row.abs().max() / 127
        assert torch.allclose(qrow, torch.round(row / scale) * scale)
    assert q[1, 1] != w[1, 1]  # the large row's scale rounds its small weight


def test_gradients_pass_straight_through():
    layer = fake_int8(torch.nn.Sequential(torch.nn.Linear(8, 4)))[0]
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) > 0
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    assert set(layer.state_dict()) == {"weight", "bias"}  # checkpoints and export see a plain Linear


@pytest.mark.filterwarnings("ignore")
def test_matches_onnx_runtime_dynamic_int8(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32)).eval()
    x = torch.randn(5, 7, 64) * 3
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(model, (x,), str(fp32), input_names=["x"], output_names=["y"], dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    runtime = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        plain = model(x).numpy()
        simulated = fake_int8(model)(x).numpy()
    # the simulation is the runtime's arithmetic up to float rounding; plain fp32 is an order further away
    assert np.abs(simulated - runtime).max() < 1e-4
    assert np.abs(plain - runtime).max() > 10 * np.abs(simulated - runtime).max()


@pytest.mark.filterwarnings("ignore")
def test_quantization_aware_reader_exports_to_the_int8_it_was_trained_for(tmp_path, tiny_model):
    from test_train import tiny_config

    from spanqa.export import export_onnx
    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import Example
    from spanqa.qa.train import train
    from spanqa.qa.windows import build_windows

    train(tiny_config(tmp_path, tiny_model, max_steps=4, quantization_aware=True))
    out = str(tmp_path / "out")
    plain = Reader.load(out)
    int8 = Reader.load(str(export_onnx(out, tmp_path / "int8", int8=True)))  # no flag: int8 everywhere
    assert not any(n.op_type == "MatMul" for n in _graph(tmp_path / "int8").node)
    examples = [Example("0", "Who designed it?", "It was designed by Gustave Eiffel in Paris in 1887.")]
    windows = build_windows(examples, plain.tokenizer, plain.settings.windows)
    with torch.no_grad():
        runtime = np.stack(int8.logits(windows))
        fp32 = np.stack(plain.logits(windows))
        fake_int8(plain.model)
        simulated = np.stack(plain.logits(windows))
    # what training saw (and its dev F1 measured) is what the exported int8 reader computes, up to the few
    # values that float rounding puts on the other side of an int8 step; plain fp32 is an order further away
    tokens = runtime > -1000  # the padding's logits are masked
    assert np.abs(simulated - runtime)[tokens].mean() < 0.25 * np.abs(fp32 - runtime)[tokens].mean()


def _graph(folder):
    import onnx

    return onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
