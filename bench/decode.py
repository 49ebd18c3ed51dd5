"""Decoding all of dev-v1.1: spanqa's vectorized decoder vs HF `utils_qa.postprocess_qa_predictions`.

The peer is re-implemented from its public definition (nested loops over the top n_best start x
end indices of every window, n_best 20, max_answer_length 30). It gets its features as plain
Python dicts (faster than the Arrow rows run_qa passes it), so its time is a lower bound. Both see
the same windows (MiniLM tokenizer, 384/128) and the same logits: fixed random logits of the real
shapes by default, or a model's logits with `--model DIR`. Predictions are compared one by one.
`ours_seconds`: predictions (best text of every example) with the n-best kept as arrays, built into
Python objects only when read; `ours_with_nbest_objects_seconds` also builds every example's n-best
list of Python objects, as the peer does.

    python bench/decode.py [--model runs/quick/model]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SQUAD, save_result


def postprocess_qa_predictions(examples, features, all_start_logits, all_end_logits,
                               n_best_size=20, max_answer_length=30):
    """HF utils_qa.postprocess_qa_predictions, v1.1 branch (as published)."""
    example_id_to_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)
    all_predictions = collections.OrderedDict()
    all_nbest_json = collections.OrderedDict()
    for example_index in range(len(examples["id"])):
        feature_indices = features_per_example[example_index]
        prelim_predictions = []
        for feature_index in feature_indices:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            token_is_max_context = features[feature_index].get("token_is_max_context", None)
            start_indexes = np.argsort(start_logits)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -n_best_size - 1: -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (start_index >= len(offset_mapping) or end_index >= len(offset_mapping)
                            or offset_mapping[start_index] is None or len(offset_mapping[start_index]) < 2
                            or offset_mapping[end_index] is None or len(offset_mapping[end_index]) < 2):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    if token_is_max_context is not None and not token_is_max_context.get(str(start_index), False):
                        continue
                    prelim_predictions.append({
                        "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                        "score": start_logits[start_index] + end_logits[end_index],
                        "start_logit": start_logits[start_index], "end_logit": end_logits[end_index]})
        predictions = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        context = examples["context"][example_index]
        for pred in predictions:
            offsets = pred.pop("offsets")
            pred["text"] = context[offsets[0]: offsets[1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([pred.pop("score") for pred in predictions])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, pred in zip(probs, predictions):
            pred["probability"] = prob
        all_predictions[examples["id"][example_index]] = predictions[0]["text"]
        all_nbest_json[examples["id"][example_index]] = [
            {k: (float(v) if isinstance(v, (np.float16, np.float32, np.float64)) else v) for k, v in pred.items()}
            for pred in predictions]
    return all_predictions, all_nbest_json


def model_logits(model_dir: str, windows) -> tuple[np.ndarray, np.ndarray]:
    from spanqa.qa.reader import Reader

    reader = Reader.load(model_dir)
    return reader.logits(windows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model folder for real logits (default: fixed random logits)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from spanqa.data.sources import read_json_file
    from spanqa.models import load_tokenizer
    from spanqa.qa.decode import DecodeSettings, decode
    from spanqa.qa.metrics import squad_v1
    from spanqa.qa.squad import load_dataset
    from spanqa.qa.windows import WindowSettings, build_windows

    examples = load_dataset(SQUAD / "dev-v1.1.json.gz").examples
    tokenizer = load_tokenizer(None if not args.model else args.model)
    windows = build_windows(examples, tokenizer, WindowSettings(384, 128, 64))
    if args.model:
        cache = Path(tempfile.gettempdir()) / f"spanqa-bench-logits-{Path(args.model).resolve().name}.npz"
        if not cache.exists():
            np.savez(cache, *model_logits(args.model, windows))
        saved = np.load(cache)
        start, end = saved["arr_0"], saved["arr_1"]
    else:
        rng = np.random.default_rng(0)
        start, end = (rng.normal(size=windows.input_ids.shape).astype(np.float32) for _ in range(2))

    # The peer's inputs, as run_qa's prepare_validation_features makes them (offsets None outside the context).
    features = [{"example_id": examples[windows.example_index[i]].id,
                 "offset_mapping": [tuple(o) if o[0] >= 0 else None for o in windows.offsets[i].tolist()]}
                for i in range(len(windows))]
    ex_cols = {"id": [e.id for e in examples], "context": [e.context for e in examples]}

    def time_best(fn):
        best, out = float("inf"), None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_hf, (hf_preds, _) = time_best(lambda: postprocess_qa_predictions(ex_cols, features, start, end))
    # the peer's algorithm: no max-context rule, no widening to words, no merging of equal texts
    settings = DecodeSettings(n_best=20, max_answer_length=30, use_max_context=False, align_to_words=False,
                              merge_same_text=False)

    def ours_with_nbest(settings):
        """Decode and materialize what the peer returns: best text and the n-best list of every example."""
        preds = decode(examples, windows, start, end, settings)
        for p in preds:
            p.text, p.answers
        return preds

    t_ours, ours = time_best(lambda: decode(examples, windows, start, end, settings))
    t_ours_nbest, _ = time_best(lambda: ours_with_nbest(settings))
    t_ours_default, ours_default = time_best(lambda: decode(examples, windows, start, end, DecodeSettings()))
    ours_preds = {p.id: p.text for p in ours}
    same = sum(ours_preds[k] == v for k, v in hf_preds.items())
    data = read_json_file(SQUAD / "dev-v1.1.json.gz")["data"]
    result = {
        "logits": args.model or "random normal, seed 0", "examples": len(examples), "windows": len(windows),
        "hf_seconds": t_hf, "ours_seconds": t_ours, "ours_default_seconds": t_ours_default,
        "ours_with_nbest_objects_seconds": t_ours_nbest,
        "speedup": t_hf / t_ours, "speedup_with_nbest_objects": t_hf / t_ours_nbest, "same_predictions": same,
        "f1_hf": squad_v1(data, hf_preds)["f1"], "f1_ours": squad_v1(data, ours_preds)["f1"],
        "speedup_default": t_hf / t_ours_default,
        "f1_ours_default": squad_v1(data, {p.id: p.text for p in ours_default})["f1"],
    }
    print(result)
    save_result("decode" + ("_model" if args.model else "_random"), result)


if __name__ == "__main__":
    main()
