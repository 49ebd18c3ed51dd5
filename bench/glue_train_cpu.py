"""Classification training throughput on CPU: spanqa's `classify train` vs an HF Trainer with
run_glue.py's defaults, fine-tuning the packaged MiniLM on GLUE SST-2 on the same cores.

The peer is run_glue as its users run it: every sentence padded to 128 tokens (`pad_to_max_length`
True, `max_seq_length` 128), batches of 8 (`per_device_train_batch_size`), fp32. spanqa runs its
`glue-sst2` recipe (batches of 32 cut to their longest sentence, length-grouped, precision `auto`:
bf16 autocast on CPUs with AVX512-BF16/AMX) and, to separate what precision buys, the same in fp32.
Each contender trains a fresh model for `--steps` steps; they take turns (A B C A B C ...) for
`--rounds` rounds after a short warm-up run each. Reported: the median and min-max training
examples/s of each (steps x batch / time of the training steps), ratios of medians to the Trainer,
and how noisy the machine was.

    python bench/glue_train_cpu.py [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import interleave, load_average, print_report, report, save_result

PEER_BATCH, PEER_LENGTH = 8, 128  # run_glue.py's defaults


def peer_features():
    """SST-2 train as run_glue tokenizes it: padded to 128, truncated, under datasets.map."""
    import datasets

    from spanqa.classify.glue import default_glue_file
    from spanqa.models import load_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(None)
    raw = datasets.load_dataset("csv", data_files=default_glue_file("sst2", "train"), delimiter="\t",
                                quoting=3, split="train")  # GLUE TSV: no CSV quoting
    return raw.map(lambda b: {**tokenizer(b["sentence"], padding="max_length", max_length=PEER_LENGTH,
                                          truncation=True), "label": b["label"]},
                   batched=True, remove_columns=raw.column_names)


def hf_trainer(steps: int, tmp: Path, features) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, default_data_collator

    from spanqa.models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(None), num_labels=2)
    args = TrainingArguments(output_dir=str(tmp / "hf_out"), per_device_train_batch_size=PEER_BATCH, max_steps=steps,
                             learning_rate=2e-5, report_to=[], save_strategy="no", logging_steps=steps,
                             dataloader_num_workers=0, disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=default_data_collator)
    t0 = time.perf_counter()
    trainer.train()
    return steps * PEER_BATCH / (time.perf_counter() - t0)


def ours(steps: int, tmp: Path, precision: str) -> float:
    from spanqa.classify.task import build_config, train

    out = Path(tempfile.mkdtemp(prefix=f"ours-{precision}-", dir=tmp))  # a fresh run each round, never a resume
    train(build_config("glue-sst2", None, output_dir=str(out), max_steps=steps, max_eval_samples=32, save_steps=0,
                       log_steps=steps, precision=precision))
    history = json.loads((out / "history.json").read_text())
    return [h for h in history if "examples_per_s" in h][-1]["examples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        features = peer_features()

        def runs(steps: int) -> dict:
            return {"spanqa_recipe_auto": lambda: ours(steps, tmp, "auto"),
                    "spanqa_recipe_fp32": lambda: ours(steps, tmp, "fp32"),
                    "hf_trainer_run_glue": lambda: hf_trainer(steps, tmp, features)}

        warm = runs(args.warmup_steps)
        load_before = load_average()
        rates = interleave(runs(args.steps), args.rounds, warmup=lambda name: warm[name](),
                           on_round=lambda r, name, v: print(f"round {r + 1} {name}: {v:.1f} examples/s", flush=True))
    result = report(rates, "hf_trainer_run_glue", load_before)
    result.update(steps=args.steps, peer_batch=PEER_BATCH, peer_length=PEER_LENGTH, unit="examples/s", task="sst2")
    print(json.dumps(result, indent=1))
    print_report(result, "examples/s")
    save_result("glue_train_cpu", result)


if __name__ == "__main__":
    main()
