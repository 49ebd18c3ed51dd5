"""ONNX export of classifiers: the exported classifier gives torch's logits and labels, int8 (through the CLI)
gives torch's labels on a trained toy classifier, pairs and regression export too."""

import numpy as np
import pytest
from test_classify_train import toy_config, toy_sentences
from test_serve_classify import classifier_folder
from typer.testing import CliRunner

from spanqa.classify.classifier import Classifier
from spanqa.classify.task import train
from spanqa.cli import app
from spanqa.export import export_onnx
from spanqa.onnx_models import OnnxClassifierModel

LONG = " ".join(f"the film number {i} was quite a story" for i in range(12))


def test_onnx_classifier_matches_torch_and_int8_keeps_the_labels(tiny_model, tmp_path):
    train(toy_config(tmp_path, tiny_model, epochs=4))
    folder = str(tmp_path / "out")
    texts = [s for s, _ in toy_sentences(40, 2)] + [LONG, "great"]
    torch_clf = Classifier.load(folder)
    onnx_clf = Classifier.load(str(export_onnx(folder, tmp_path / "onnx")))
    assert isinstance(onnx_clf.model, OnnxClassifierModel) and onnx_clf.settings == torch_clf.settings
    onnx_clf.batch_size = 7  # batches of several lengths
    examples = [onnx_clf._example(i, t) for i, t in enumerate(texts)]
    np.testing.assert_allclose(onnx_clf.logits(examples), torch_clf.logits(examples), atol=1e-4)
    expected = [p.label for p in torch_clf.predict(texts)]
    assert [p.label for p in onnx_clf.predict(texts)] == expected

    result = CliRunner().invoke(app, ["export", folder, "--onnx", "--int8", "--out", str(tmp_path / "int8")])
    assert result.exit_code == 0, result.output
    assert "classify predict" in result.output
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < (tmp_path / "onnx" / "model.onnx").stat().st_size
    int8 = Classifier.load(str(tmp_path / "int8"))
    assert [p.label for p in int8.predict(texts)] == expected


@pytest.mark.parametrize("kind", ["pairs", "regression"])
def test_pair_classifiers_and_regressors_export(tiny_model, tmp_path, kind):
    folder = classifier_folder(tiny_model, tmp_path / kind, kind)
    inputs = [("the good film", "it was good"), ("a bad plot", LONG), ("yes", "no")]
    torch_clf = Classifier.load(folder)
    onnx_clf = Classifier.load(str(export_onnx(folder, tmp_path / "onnx")))
    for a, b in zip(torch_clf.predict(inputs), onnx_clf.predict(inputs)):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-4)
