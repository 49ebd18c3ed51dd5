"""SQuAD v2.0, NON-STANDARD split (no v2 training set exists offline).

Train: the first 4,000 train-v1.1 questions (as recipe cpu-fast) plus dev-v2.0 articles 0-16
(answerable and unanswerable), `--version-2`, recipe cpu-fast otherwise (length 256, stride 64,
1 epoch, 2 CPU cores). Evaluate: dev-v2.0 articles 17-34, official v2.0 metrics. The null threshold
is calibrated on articles 17-25 and applied, unchanged, to articles 26-34 (an honest held-out
number), beside the official script's `best_f1` (threshold chosen on the scored set itself).

    python bench/train_v2.py [--v1-questions 4000] [--output-dir runs/v2-bench]
    python bench/train_v2.py --reuse-model      # evaluate the reader already in --output-dir again
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import SQUAD, save_result

from spanqa.data.sources import read_json_file
from spanqa.files import atomic_write_json
from spanqa.qa.config import build_config
from spanqa.qa.evaluate import as_squad_data
from spanqa.qa.metrics import squad_v2
from spanqa.qa.squad import load_dataset
from spanqa.qa.train import train

TRAIN_ARTICLES, EVAL_ARTICLES = range(0, 17), range(17, 35)
CALIBRATE_ARTICLES = range(17, 26)  # threshold chosen here, applied to 26-34


def v1_articles(questions: int) -> list[dict]:
    """Leading train-v1.1 articles cut so that they hold exactly `questions` questions."""
    out, left = [], questions
    for article in read_json_file(SQUAD / "train-v1.1.reconstructed.json.gz")["data"]:
        paragraphs = []
        for p in article["paragraphs"]:
            qas = p["qas"][:left]
            left -= len(qas)
            if qas:
                paragraphs.append({"context": p["context"], "qas": qas})
            if left == 0:
                break
        out.append({"title": article["title"], "paragraphs": paragraphs})
        if left == 0:
            return out
    raise ValueError(f"train-v1.1 has fewer than {questions} questions")


def write_split(path: Path, articles: list[dict]) -> str:
    atomic_write_json(path, {"version": "v2.0", "data": articles})
    return str(path)


def held_out_metrics(folder: Path, dev_file: str) -> dict:
    """Threshold calibrated on CALIBRATE_ARTICLES, applied to the remaining eval articles."""
    articles = read_json_file(SQUAD / "dev-v2.0.reconstructed.json.gz")["data"]
    preds = json.loads((folder / "predictions.json").read_text())
    nbest = json.loads((folder / "nbest_predictions.json").read_text())
    odds = json.loads((folder / "null_odds.json").read_text())
    best_span = {qid: (answers[0]["text"] if answers else "") for qid, answers in nbest.items()}

    def ids(article_range) -> set[str]:
        return {qa["id"] for i in article_range for p in articles[i]["paragraphs"] for qa in p["qas"]}

    examples = load_dataset(dev_file).examples
    calib = [e for e in examples if e.id in ids(CALIBRATE_ARTICLES)]
    test = [e for e in examples if e.id in ids(range(CALIBRATE_ARTICLES.stop, EVAL_ARTICLES.stop))]
    sweep = squad_v2(as_squad_data(calib), {e.id: best_span[e.id] for e in calib},
                     {e.id: odds[e.id] for e in calib}, na_prob_thresh=float("inf"))
    threshold = float(sweep["best_f1_thresh"])
    applied = squad_v2(as_squad_data(test), {e.id: best_span[e.id] for e in test},
                       {e.id: odds[e.id] for e in test}, na_prob_thresh=threshold)
    at_zero = squad_v2(as_squad_data(test), {e.id: preds[e.id] for e in test}, None, na_prob_thresh=1.0)
    return {"threshold_from_articles_17_25": threshold, "articles_26_34_calibrated": applied,
            "articles_26_34_threshold_0": at_zero}


def evaluate_again(folder: Path, dev_file: str) -> dict:
    """The trained reader in `folder` on the eval articles with today's decoder (threshold 0, then
    calibrated), its prediction files rewritten for `held_out_metrics`."""
    from dataclasses import replace

    from spanqa.qa.evaluate import (
        calibrate_threshold,
        evaluate_windows,
        write_predictions,
    )
    from spanqa.qa.reader import Reader
    from spanqa.qa.windows import build_windows

    reader = Reader.load(str(folder))
    examples = load_dataset(dev_file).examples
    windows = build_windows(examples, reader.tokenizer, reader.settings.windows)
    decoding = replace(reader.settings.decoding, null_threshold=0.0, version_2=True)
    metrics, preds = evaluate_windows(reader.model, examples, windows, decoding, reader.batch_size)
    metrics.update(calibrate_threshold(examples, preds)[1])
    write_predictions(folder, preds, True)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--v1-questions", type=int, default=4000)
    ap.add_argument("--output-dir", default="runs/v2-bench")
    ap.add_argument("--reuse-model", action="store_true", help="skip training: evaluate the reader in --output-dir")
    args = ap.parse_args()
    v2 = read_json_file(SQUAD / "dev-v2.0.reconstructed.json.gz")["data"]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = write_split(Path(tmp) / "train.json",
                                 v1_articles(args.v1_questions) + [v2[i] for i in TRAIN_ARTICLES])
        dev_file = write_split(Path(tmp) / "dev.json", [v2[i] for i in EVAL_ARTICLES])
        config = build_config("cpu-fast", None, train_file=train_file, dev_file=dev_file, version_2=True,
                              output_dir=args.output_dir)
        config.max_train_samples = config.max_eval_samples = None
        metrics = evaluate_again(Path(args.output_dir), dev_file) if args.reuse_model else train(config)
        result = {"split": "NON-STANDARD: train = train-v1.1[:%d questions] + dev-v2.0 articles 0-16; "
                           "eval = dev-v2.0 articles 17-34" % args.v1_questions,
                  "train_questions": len(load_dataset(train_file).examples),
                  "eval_questions": len(load_dataset(dev_file).examples),
                  "metrics_threshold_0": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
                  "calibrated_on_eval_set": metrics.get("calibrated"),
                  "held_out": held_out_metrics(Path(args.output_dir), dev_file)}
    print(json.dumps(result, indent=2))
    save_result("train_v2", result)


if __name__ == "__main__":
    main()
