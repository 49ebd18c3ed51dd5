"""Classification on the training engine: a tiny model learns a toy task, exact resume, outputs, predict round trip."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from spanqa.classify.classifier import Classifier
from spanqa.classify.evaluate import evaluate_classifier, predict_file
from spanqa.classify.task import ClassifyConfig, build_config, train
from spanqa.data.sources import DataError
from spanqa.training.config import ConfigError

POSITIVE = ["good", "great"]
NEGATIVE = ["bad", "awful"]
FILLER = ["the", "film", "story", "was", "quite", "a", "very", "plot", "and", "actors", "music", "it", "seemed"]


def toy_sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """Filler words with one sentiment word: label 1 when it is positive."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
        label = i % 2
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        rows.append((" ".join(words), str(label)))
    return rows


def write_sst2(path, rows) -> str:
    path.write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))  # SST-2's trailing space
    return str(path)


def toy_config(tmp_path, model, **kw) -> ClassifyConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = dict(model=str(model), task="sst2", train_file=write_sst2(tmp_path / "train.tsv", toy_sentences(64, 0)),
                dev_file=write_sst2(tmp_path / "dev.tsv", toy_sentences(32, 1)), output_dir=str(tmp_path / "out"),
                max_seq_length=32, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0, epochs=6, log_steps=4,
                save_steps=20, eval_batch_size=16, precision="fp32")
    base.update(kw)
    return ClassifyConfig(**base)


def test_tiny_model_learns_the_toy_task_and_writes_a_classifier(tmp_path, tiny_model):
    metrics = train(toy_config(tmp_path, tiny_model))
    out = tmp_path / "out"
    history = json.loads((out / "history.json").read_text())
    accuracies = [h["accuracy"] for h in history if "accuracy" in h]
    assert len(accuracies) >= 6  # one evaluation per epoch
    assert accuracies[0] < 0.8 and metrics["accuracy"] >= 0.9, accuracies
    for name in ("model.safetensors", "config.json", "tokenizer.json", "spanqa.json", "history.json",
                 "learning_curve.png", "predictions.jsonl", "metrics.json"):
        assert (out / name).exists(), name
    settings = json.loads((out / "spanqa.json").read_text())
    assert settings["task"] == "classify" and settings["labels"] == ["0", "1"] and settings["max_seq_length"] == 32
    assert settings["format"]["task"] == "sst2" and settings["pairs"] is False
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["label2id"] == {"0": 0, "1": 1}
    dev_predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(dev_predictions) == 32 and set(dev_predictions[0]) >= {"line", "text", "label", "probability",
                                                                        "probabilities", "gold"}
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(out)  # a plain HF model folder

    # the Python API and the commands' functions read the folder back
    clf = Classifier.load(str(out))
    good, bad = clf.predict(["the film was great", "the plot was awful"])
    assert (good.label, bad.label) == ("1", "0")
    assert sum(good.probabilities.values()) == pytest.approx(1.0) and good.score == good.probabilities["1"]
    again = evaluate_classifier(str(out), str(tmp_path / "dev.tsv"), tmp_path / "eval")
    assert again["accuracy"] == pytest.approx(metrics["accuracy"]) and again["examples"] == 32
    unlabelled = tmp_path / "new.jsonl"
    unlabelled.write_text("".join(json.dumps({"review": s}) + "\n" for s in ["a good story", "bad actors"]))
    from spanqa.classify.glue import DataFormat

    assert predict_file(str(out), str(unlabelled), tmp_path / "p.jsonl", DataFormat(text_field="review")) == 2
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["1", "0"] and "gold" not in rows[0]


def test_pinned_loss(tmp_path, tiny_model):
    """Fixed seed, tiny model, 6 steps: a silent change in data order, tokenization, labels or the loss moves this."""
    train(toy_config(tmp_path, tiny_model, max_steps=6, log_steps=1))
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    losses = [round(h["training_loss"], 4) for h in history if "training_loss" in h]
    assert losses == pytest.approx(PINNED_LOSSES, abs=2e-3), losses


PINNED_LOSSES = [0.6916, 0.7031, 0.697, 0.6991, 0.6892, 0.6861]


def test_resume_after_interruption_gives_the_same_weights(tmp_path, tiny_model):
    # checkpoints every 4 steps, losses logged every 2: the resumed run's loss windows line up too
    settings = {"max_steps": 10, "save_steps": 4, "log_steps": 2}
    train(toy_config(tmp_path / "a", tiny_model, **settings))
    interrupted = toy_config(tmp_path / "b", tiny_model, **settings)

    def stop_at_7(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="resume"):
        train(interrupted, on_step=stop_at_7)
    interrupted.resume = True
    train(interrupted)  # continues from the checkpoint of step 4 (epoch 0 has 8 batches: crosses an epoch)
    a = load_file(tmp_path / "a" / "out" / "model.safetensors")
    b = load_file(tmp_path / "b" / "out" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    ha = json.loads((tmp_path / "a" / "out" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "out" / "history.json").read_text())
    assert [round(h["training_loss"], 5) for h in ha if "training_loss" in h] == \
           [round(h["training_loss"], 5) for h in hb if "training_loss" in h]


def test_pairs_from_csv_and_the_pair_classifier_api(tmp_path, tiny_model):
    def rows(n, seed):
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            a = str(rng.choice(POSITIVE + NEGATIVE))
            b = a if i % 2 else str(rng.choice([w for w in POSITIVE + NEGATIVE if w != a]))
            out.append(f'"the {a} film, said ""she""",it was {b},{"same" if i % 2 else "different"}\n')
        return "first,second,relation\n" + "".join(out)

    (tmp_path / "train.csv").write_text(rows(48, 0))
    (tmp_path / "dev.csv").write_text(rows(16, 1))
    cfg = toy_config(tmp_path, tiny_model, task=None, train_file=str(tmp_path / "train.csv"),
                     dev_file=str(tmp_path / "dev.csv"), text_field="first", pair_field="second",
                     label_field="relation", max_steps=6)
    metrics = train(cfg)
    assert set(metrics) >= {"accuracy", "valid_loss"}
    clf = Classifier.load(cfg.output_dir)
    assert clf.settings.labels == ["different", "same"] and clf.settings.format.pairs
    [p] = clf.predict([("the good film", "it was good")])
    assert p.label in ("different", "same")
    with pytest.raises(ValueError, match="sentence pairs"):
        clf.predict(["a single text"])


def test_regression_on_stsb_format(tmp_path, tiny_model):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"

    def stsb(n, seed):
        rng = np.random.default_rng(seed)
        lines = []
        for i in range(n):
            score = float(rng.uniform(0, 5))
            lines.append(f"{i}\tg\tf\t2012\t{i:04d}\tnone\tnone\tA man is {'happy' if score > 2.5 else 'sad'}.\t"
                         f"A man \" smiles.\t{score:.3f}\n")
        return header + "".join(lines)

    (tmp_path / "sts-train.tsv").write_text(stsb(32, 0))
    (tmp_path / "sts-dev.tsv").write_text(stsb(16, 1))
    cfg = toy_config(tmp_path, tiny_model, task="stsb", train_file=str(tmp_path / "sts-train.tsv"),
                     dev_file=str(tmp_path / "sts-dev.tsv"), max_steps=8)
    metrics = train(cfg)
    assert {"pearson", "spearmanr", "valid_loss"} <= set(metrics)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert len(config["id2label"]) == 1
    assert config["problem_type"] == "regression"
    [p] = Classifier.load(cfg.output_dir).predict([("A man is happy.", "A man smiles.")])
    assert p.label is None and p.probabilities == {} and np.isfinite(p.score)


def test_errors_before_training(tmp_path, tiny_model):
    dev = tmp_path / "one-label.tsv"
    with pytest.raises(DataError, match="label set differs"):
        train(toy_config(tmp_path, tiny_model, dev_file=write_sst2(dev, [("only negatives here", "0")])))
    with pytest.raises(ConfigError, match="larger than the model allows"):
        train(toy_config(tmp_path, tiny_model, max_seq_length=512))
    with pytest.raises(ConfigError, match="task must be one of"):
        toy_config(tmp_path, tiny_model, task="qqp")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_recipes_and_cli(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from spanqa.cli import app

    cfg = build_config("glue-sst2", None, max_steps=3)
    assert cfg.task == "sst2"
    toy = toy_config(tmp_path, tiny_model)  # writes the toy files
    runner = CliRunner()
    result = runner.invoke(app, ["classify", "train", "--task", "sst2", "--model", str(tiny_model),
                                 "--train-file", toy.train_file, "--dev-file", toy.dev_file,
                                 "--output-dir", toy.output_dir, "--max-steps", "3", "--batch-size", "8",
                                 "--max-seq-length", "32", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "accuracy=" in result.output
    result = runner.invoke(app, ["classify", "predict", toy.output_dir, toy.dev_file, "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0 and "wrote 32 predictions" in result.output
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine\t7\n")
    result = runner.invoke(app, ["classify", "evaluate", toy.output_dir, str(bad)])
    assert result.exit_code == 2 and "line 2: field 'label': unknown label '7'" in result.output
