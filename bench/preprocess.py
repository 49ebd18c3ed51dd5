"""Training windows for SQuAD train-v1.1 (MiniLM tokenizer, 384/128): spanqa vs HF run_qa.py.

The peer is HF `run_qa.py`'s `prepare_train_features` (re-implemented from its public definition)
applied with `datasets.map` on the flat JSON records, as run_qa does; spanqa streams the file through
validation and windowing into its cache, as `spanqa train` does. Each run is a fresh
subprocess so that its peak RSS is its own; both read the same JSONL file and both end with their
features on disk (spanqa's memory-mapped cache, datasets' Arrow cache).

    python bench/preprocess.py                 # 25%, 50%, 100% of the data, both implementations
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SQUAD, peak_rss_mb, save_result

MAX_SEQ_LENGTH, DOC_STRIDE = 384, 128


def prepare_train_features_factory(tokenizer):
    """HF run_qa.py's prepare_train_features (pad_to_max_length=True, its default)."""
    pad_on_right = tokenizer.padding_side == "right"

    def prepare_train_features(examples):
        examples["question"] = [q.lstrip() for q in examples["question"]]
        tokenized = tokenizer(
            examples["question" if pad_on_right else "context"],
            examples["context" if pad_on_right else "question"],
            truncation="only_second" if pad_on_right else "only_first",
            max_length=MAX_SEQ_LENGTH, stride=DOC_STRIDE, return_overflowing_tokens=True,
            return_offsets_mapping=True, padding="max_length")
        sample_mapping = tokenized.pop("overflow_to_sample_mapping")
        offset_mapping = tokenized.pop("offset_mapping")
        tokenized["start_positions"], tokenized["end_positions"] = [], []
        for i, offsets in enumerate(offset_mapping):
            input_ids = tokenized["input_ids"][i]
            if tokenizer.cls_token_id in input_ids:
                cls_index = input_ids.index(tokenizer.cls_token_id)
            elif tokenizer.bos_token_id in input_ids:
                cls_index = input_ids.index(tokenizer.bos_token_id)
            else:
                cls_index = 0
            sequence_ids = tokenized.sequence_ids(i)
            answers = examples["answers"][sample_mapping[i]]
            if len(answers["answer_start"]) == 0:
                tokenized["start_positions"].append(cls_index)
                tokenized["end_positions"].append(cls_index)
                continue
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start_index = 0
            while sequence_ids[token_start_index] != (1 if pad_on_right else 0):
                token_start_index += 1
            token_end_index = len(input_ids) - 1
            while sequence_ids[token_end_index] != (1 if pad_on_right else 0):
                token_end_index -= 1
            if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
                tokenized["start_positions"].append(cls_index)
                tokenized["end_positions"].append(cls_index)
            else:
                while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                    token_start_index += 1
                tokenized["start_positions"].append(token_start_index - 1)
                while offsets[token_end_index][1] >= end_char:
                    token_end_index -= 1
                tokenized["end_positions"].append(token_end_index + 1)
        return tokenized

    return prepare_train_features


def run_hf(jsonl: Path, workdir: Path) -> dict:
    import datasets

    from spanqa.models import load_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(None)
    raw = datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=str(workdir / "hf"))
    features = raw.map(prepare_train_features_factory(tokenizer), batched=True, remove_columns=raw.column_names,
                       load_from_cache_file=False)
    return {"windows": len(features), "sample": {k: features[k][:200] for k in ("input_ids", "start_positions", "end_positions")}}


def run_ours(jsonl: Path, workdir: Path) -> dict:
    from spanqa.models import load_tokenizer
    from spanqa.qa.squad import ExampleStream
    from spanqa.qa.windows import WindowSettings, streamed_windows

    tokenizer = load_tokenizer(None)  # the file is read, validated and windowed 1,000 questions at a time
    w, _ = streamed_windows(ExampleStream(jsonl), tokenizer, WindowSettings(MAX_SEQ_LENGTH, DOC_STRIDE, 64),
                            cache_dir=workdir / "ours")
    return {"windows": len(w), "sample": {"input_ids": w.input_ids[:200].tolist(),
                                          "start_positions": w.start_positions[:200].tolist(),
                                          "end_positions": w.end_positions[:200].tolist()}}


def worker(impl: str, jsonl: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = (run_ours if impl == "ours" else run_hf)(jsonl, Path(tmp))
        out["seconds"] = time.perf_counter() - t0
        out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def write_subset(fraction: float, folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from spanqa.qa.squad import load_dataset, write_jsonl

    examples = load_dataset(SQUAD / "train-v1.1.reconstructed.json.gz").examples
    path = folder / f"train-{int(fraction * 100)}.jsonl"
    write_jsonl(examples[:int(len(examples) * fraction)], path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["ours", "hf"])
    ap.add_argument("--jsonl", type=Path)
    ap.add_argument("--fractions", default="0.25,0.5,1.0")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.jsonl)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in map(float, args.fractions.split(",")):
            jsonl = write_subset(fraction, Path(tmp))
            runs = {}
            for impl in ("ours", "hf"):
                proc = subprocess.run([sys.executable, __file__, "--worker", impl, "--jsonl", str(jsonl)],
                                      capture_output=True, text=True, check=True)
                runs[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            same = sum(a == b for a, b in zip(runs["ours"]["sample"]["input_ids"], runs["hf"]["sample"]["input_ids"]))
            labels = sum(a == b and c == d for a, b, c, d in zip(
                runs["ours"]["sample"]["start_positions"], runs["hf"]["sample"]["start_positions"],
                runs["ours"]["sample"]["end_positions"], runs["hf"]["sample"]["end_positions"]))
            row = {"fraction": fraction, "examples_file": jsonl.name,
                   **{f"{k}_{impl}": runs[impl][k] for impl in runs for k in ("windows", "seconds", "peak_rss_mb")},
                   "speedup": runs["hf"]["seconds"] / runs["ours"]["seconds"],
                   "first200_same_input_ids": same, "first200_same_labels": labels}
            rows.append(row)
            print(json.dumps(row), flush=True)
    save_result("preprocess", {"max_seq_length": MAX_SEQ_LENGTH, "doc_stride": DOC_STRIDE, "rows": rows})


if __name__ == "__main__":
    main()
