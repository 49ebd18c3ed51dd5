"""Training throughput on CPU: spanqa's loop vs an HF Trainer with run_qa.py's defaults, same data.

Both fine-tune the packaged MiniLM on the first 4,000 train-v1.1 questions for `--steps` steps of
batch 16. The peer pads every window to 384 (run_qa's `pad_to_max_length=True`); spanqa cuts
length-grouped batches to their longest window (recipe cpu-fast: length 256, stride 64). Each runs
in fp32 (run_qa's default) and with bf16 autocast (spanqa's `auto` on CPUs with AVX512-BF16/AMX).
The EM/F1 of the full cpu-fast recipe comes from `spanqa quickstart` (see BENCHMARKS.md).

The four runs take turns (spanqa fp32, spanqa bf16, Trainer fp32, Trainer bf16, then again), each
a fresh model and run of `--steps` steps, after a short warm-up run of each; reported are the
median and min-max windows/s of each over `--rounds` rounds, ratios of medians, and how noisy the
machine was. At 30 steps a round takes ~9 minutes on 2 cores (the fp32 Trainer ~4 of them).

    python bench/train_cpu.py [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import (
    SQUAD,
    interleave,
    load_average,
    print_report,
    ratio,
    report,
    save_result,
)

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

    out = Path(tempfile.mkdtemp(prefix=f"ours-{precision}-", dir=tmp))  # a fresh run each round, never a resume
    cfg = build_config("cpu-fast", None, output_dir=str(out), max_steps=steps, max_eval_samples=50,
                       save_steps=0, log_steps=steps, precision=precision)
    train(cfg)
    history = json.loads((out / "history.json").read_text())
    return [h for h in history if "windows_per_s" in h][-1]["windows_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        features = hf_features(tmp)

        def runs(steps: int) -> dict:
            return {"spanqa_fp32": lambda: ours(steps, tmp, "fp32"),
                    "spanqa_bf16": lambda: ours(steps, tmp, "bf16"),
                    "hf_trainer_fp32": lambda: hf_trainer(steps, tmp, features, bf16=False),
                    "hf_trainer_bf16": lambda: hf_trainer(steps, tmp, features, bf16=True)}

        warm = runs(args.warmup_steps)
        load_before = load_average()
        rates = interleave(runs(args.steps), args.rounds, warmup=lambda name: warm[name](),
                           on_round=lambda r, name, w: print(f"round {r + 1} {name}: {w:.2f} windows/s", flush=True))
    result = report(rates, "hf_trainer_fp32", load_before)
    result["contenders"]["spanqa_bf16"]["x_hf_trainer_bf16"] = ratio(rates["spanqa_bf16"], rates["hf_trainer_bf16"])
    result.update(steps=args.steps, batch=BATCH, questions=QUESTIONS, unit="windows/s")
    print(json.dumps(result, indent=1))
    print_report(result, "windows/s")
    r = result["contenders"]["spanqa_bf16"]["x_hf_trainer_bf16"]
    print(f"spanqa bf16 x Trainer bf16: {r['median']:.2f} ({r['low']:.2f} - {r['high']:.2f})")
    save_result("train_cpu", result)


if __name__ == "__main__":
    main()
