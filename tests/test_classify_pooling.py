"""Mean pooling for classifiers: the pooled vector is the masked mean (padding changes nothing), and a
mean-pooled classifier keeps its pooling through training, loading, continued training and ONNX export."""

import json

import numpy as np
import pytest
import torch
from test_classify_train import toy_config, toy_sentences

from spanqa.classify.classifier import Classifier
from spanqa.classify.pooling import MeanPooler, use_pooling
from spanqa.classify.task import train
from spanqa.export import export_onnx
from spanqa.models import ModelError, load_classifier_model
from spanqa.training.config import ConfigError


def test_mean_pooling_is_the_masked_mean_of_the_token_vectors(tiny_model, tokenizer):
    model = use_pooling(load_classifier_model(str(tiny_model), num_labels=2), "mean").eval()
    texts = ["a short one", "a much longer sentence about the film and its many actors"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.base_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
        alone = model(**tokenizer(texts[:1], return_tensors="pt")).logits
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits[:1], alone, atol=1e-5, rtol=1e-5)  # its padding in the batch changed nothing
    cls = load_classifier_model(str(tiny_model), num_labels=2).eval()
    with torch.no_grad():
        assert not torch.allclose(cls(**batch).logits, logits)


def test_a_mean_pooled_classifier_trains_loads_and_exports_with_its_pooling(tiny_model, tmp_path):
    metrics = train(toy_config(tmp_path, tiny_model, pooling="mean"))
    folder = tmp_path / "out"
    assert json.loads((folder / "spanqa.json").read_text())["pooling"] == "mean"
    assert metrics["accuracy"] >= 0.9
    clf = Classifier.load(str(folder))
    assert isinstance(clf.model.base_model.pooler, MeanPooler)
    texts = [s for s, _ in toy_sentences(20, 2)]
    dev = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [p.label for p in clf.predict([d["text"] for d in dev])] == [d["label"] for d in dev]
    onnx = Classifier.load(str(export_onnx(str(folder), tmp_path / "onnx")))
    onnx.batch_size = 7
    examples = [onnx._example(i, t) for i, t in enumerate(texts)]
    np.testing.assert_allclose(onnx.logits(examples), clf.logits(examples), atol=1e-4)
    # without --pooling, a classifier continues with the pooling it was trained with
    train(toy_config(tmp_path / "again", folder, max_steps=2))
    assert json.loads((tmp_path / "again" / "out" / "spanqa.json").read_text())["pooling"] == "mean"
    train(toy_config(tmp_path / "plain", tiny_model, max_steps=2))  # an encoder: BERT's [CLS] unless told
    assert json.loads((tmp_path / "plain" / "out" / "spanqa.json").read_text())["pooling"] == "cls"


def test_pooling_errors(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="pooling must be one of"):
        toy_config(tmp_path, tiny_model, pooling="max")

    class Headless(torch.nn.Module):  # a classifier whose head reads the tokens itself (RoBERTa, MPNet)
        base_model = torch.nn.Module()

    with pytest.raises(ModelError, match="--pooling cls"):
        use_pooling(Headless(), "mean")
