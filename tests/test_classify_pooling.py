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


def _sentence_transformers_folder(tiny_model, path, **mode):
    import shutil

    shutil.copytree(tiny_model, path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **mode}))
    return path


def test_a_sentence_transformers_encoder_is_mean_pooled_unless_told(tiny_model, tmp_path):
    from spanqa.classify.pooling import encoder_pooling
    from spanqa.models import resolve_model

    mean = _sentence_transformers_folder(tiny_model, tmp_path / "st", pooling_mode_mean_tokens=True)
    train(toy_config(tmp_path / "a", mean, max_steps=2))
    assert json.loads((tmp_path / "a" / "out" / "spanqa.json").read_text())["pooling"] == "mean"
    train(toy_config(tmp_path / "b", mean, max_steps=2, pooling="cls"))  # --pooling cls wins
    assert json.loads((tmp_path / "b" / "out" / "spanqa.json").read_text())["pooling"] == "cls"
    cls = _sentence_transformers_folder(tiny_model, tmp_path / "st-cls", pooling_mode_cls_token=True)
    assert encoder_pooling(str(cls)) == "cls"
    assert encoder_pooling(str(tiny_model)) == "cls"  # a plain encoder: BERT's [CLS]
    assert encoder_pooling(resolve_model("default")) == "mean"  # the packaged all-MiniLM-L6-v2
    config = json.loads((mean / "config.json").read_text())
    (mean / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    assert encoder_pooling(str(mean)) == "cls"  # its classifier has no pooler to replace
