"""Reader API: offsets into the given context, long contexts, batches, no-answer results."""

import json
import shutil

import pytest

from spanqa.qa.reader import Reader

SMALL = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 32}


def reader_folder(tiny_model, tmp_path, decoding=None):
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


def test_bf16_reader_casts_linear_weights_once_and_keeps_autocast_logits(tiny_model, tmp_path):
    """`precision="bf16"` stores the Linear weights in bf16 (no re-cast at every batch) and gives the
    same logits as the fp32 model run under bf16 autocast; LayerNorm and embeddings stay fp32."""
    import numpy as np
    import torch

    from spanqa.qa.reader import compute_logits
    from spanqa.qa.squad import Example

    folder = reader_folder(tiny_model, tmp_path)
    bf16, fp32 = Reader.load(folder, precision="bf16"), Reader.load(folder)
    assert bf16.model.bert.encoder.layer[0].intermediate.dense.weight.dtype == torch.bfloat16
    assert bf16.model.bert.embeddings.LayerNorm.weight.dtype == torch.float32
    assert fp32.model.bert.encoder.layer[0].intermediate.dense.weight.dtype == torch.float32
    windows = fp32.windows([Example("q", "Which city is cold?", "Oslo is cold. Rome is warm. " * 5)])
    got = bf16.logits(windows)
    expected = compute_logits(fp32.model, windows, 8, torch.device("cpu"), torch.bfloat16)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_bf16_on_a_cpu_without_native_bf16_warns_and_fp32_does_not(tiny_model, tmp_path, monkeypatch):
    """Without AVX512-BF16 or AMX, bf16 is emulated and slower than fp32: the user is told so."""
    import warnings

    from spanqa import models

    folder = reader_folder(tiny_model, tmp_path)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        Reader.load(folder, precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Reader.load(folder)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Reader.load(folder, precision="bf16")


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_a_compiled_reader_reads_as_the_eager_one_and_onnx_refuses_to_compile(tiny_model, tmp_path):
    """`compile=True` compiles at load time (torch.compile, inductor with freezing) and then gives the eager
    model's logits (to float tolerance: inductor fuses and reorders) and the same answers; the start-up line
    says so. An ONNX export cannot be compiled again: a clear error."""
    import numpy as np

    from spanqa.export import export_onnx
    from spanqa.models import ModelError
    from spanqa.onnx_models import describe_runtime
    from spanqa.qa.squad import Example

    folder = reader_folder(tiny_model, tmp_path)
    eager, compiled = Reader.load(folder), Reader.load(folder, compile=True)
    assert describe_runtime(compiled.model, compiled.device, compiled.autocast_dtype) == "torch fp32, compiled (cpu)"
    examples = [Example("a", "Which city is cold?", "Oslo is cold. Rome is warm. " * 12),
                Example("b", "Which city is warm?", "Rome is warm."),
                Example("c", "Who is tall?", "Ann is tall and Bo is short. " * 3)]
    windows = eager.windows(examples)
    for a, b in zip(compiled.logits(windows), eager.logits(windows)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    assert [p.text for p in compiled.predict(examples)] == [p.text for p in eager.predict(examples)]
    with pytest.raises(ModelError, match="ONNX export"):
        Reader.load(str(export_onnx(folder, tmp_path / "onnx")), compile=True)
