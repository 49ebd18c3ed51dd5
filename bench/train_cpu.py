"""Training throughput on CPU: spanqa's loop vs an HF Trainer with run_qa.py's defaults, same data.

Both fine-tune the packaged MiniLM on the first 4,000 train-v1.1 questions for `--steps` steps of
batch 16. The peer pads every window to 384 (run_qa's `pad_to_max_length=True`); spanqa cuts
length-grouped batches to their longest window (recipe cpu-fast: length 256, stride 64). Each runs
in fp32 (run_qa's default) and with bf16 autocast (spanqa's `auto` on CPUs with AVX512-BF16/AMX).
The EM/F1 of the full cpu-fast recipe comes from `spanqa quickstart` (see BENCHMARKS.md).

    python bench/train_cpu.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import SQUAD, save_result

QUESTIONS, BATCH = 4000, 16


def hf_features(tmp: Path):
    """The peer's training features: run_qa's prepare_train_features under datasets.map."""
    import datasets
    from preprocess import prepare_train_features_factory

    from spanqa.models import load_tokenizer
    from spanqa.qa.squad import load_dataset, write_jsonl

    datasets.disable_progress_bars()
    write_jsonl(load_dataset(SQUAD / "train-v1.1.reconstructed.json.gz").examples[:QUESTIONS], tmp / "t.jsonl")
    raw = datasets.load_dataset("json", data_files=str(tmp / "t.jsonl"), split="train", cache_dir=str(tmp / "hf"))
    return raw.map(prepare_train_features_factory(load_tokenizer(None)), batched=True,
                   remove_columns=raw.column_names)


def hf_trainer(steps: int, tmp: Path, features, bf16: bool) -> float:
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from spanqa.models import load_qa_model

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp / "hf_out"), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=1e-4, report_to=[], save_strategy="no", logging_steps=steps,
                             dataloader_num_workers=0, disable_tqdm=True, use_cpu=True, bf16=bf16)
    trainer = Trainer(model=load_qa_model(None), args=args, train_dataset=features, data_collator=default_data_collator)
    t0 = time.perf_counter()
    trainer.train()
    return steps * BATCH / (time.perf_counter() - t0)


def ours(steps: int, tmp: Path, precision: str) -> float:
    from spanqa.qa.config import build_config
    from spanqa.qa.train import train

    out = tmp / f"ours-{precision}"
    cfg = build_config("cpu-fast", None, output_dir=str(out), max_steps=steps, max_eval_samples=50,
                       save_steps=0, log_steps=steps, precision=precision)
    train(cfg)
    history = json.loads((out / "history.json").read_text())
    return [h for h in history if "windows_per_s" in h][-1]["windows_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        features = hf_features(tmp)
        rates = {"spanqa_fp32": ours(args.steps, tmp, "fp32"),
                 "spanqa_bf16": ours(args.steps, tmp, "bf16"),
                 "hf_trainer_fp32": hf_trainer(args.steps, tmp, features, bf16=False),
                 "hf_trainer_bf16": hf_trainer(args.steps, tmp, features, bf16=True)}
    result = {"steps": args.steps, "batch": BATCH, "windows_per_s": rates,
              "x_hf_trainer_fp32": {k: v / rates["hf_trainer_fp32"] for k, v in rates.items()},
              "spanqa_bf16_x_hf_trainer_bf16": rates["spanqa_bf16"] / rates["hf_trainer_bf16"]}
    print(json.dumps(result, indent=1))
    save_result("train_cpu", result)


if __name__ == "__main__":
    main()
