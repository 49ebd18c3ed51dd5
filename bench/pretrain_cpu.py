"""Masked-LM training throughput: `spanqa pretrain` vs HF Trainer + DataCollatorForLanguageModeling
(run_mlm.py's recipe: texts tokenized, concatenated and cut into blocks by `group_texts`).

Same corpus (the SQuAD dev contexts), same model (the packaged MiniLM with a new MLM head tied to its
word embeddings), same sequence length (128), batch (32) and precision (fp32, and bf16 autocast
where the CPU has AVX512-BF16 or AMX), one process on the 2 cores. Beside them, run_mlm.py's own
defaults (block size = the tokenizer's model_max_length, batch 8, fp32). The contenders take turns
(warm-up, then `--rounds` rounds), each a fresh run of `--steps` optimizer steps; data preparation is
done once, before, for both. Reported: tokens/s (every position of every sequence: both sides pack full blocks), medians, min-max, ratios.

    python bench/pretrain_cpu.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import chain
from pathlib import Path

from common import SQUAD, interleave, load_average, print_report, report, save_result

from spanqa.models import cpu_has_native_bf16

LENGTH, BATCH = 128, 32


def corpus_texts() -> list[str]:
    from spanqa.data.documents import iter_documents

    return [d.text for d in iter_documents([SQUAD / "dev-v1.1.json.gz"])]


def hf_dataset(texts: list[str], block: int, tmp: Path):
    """run_mlm.py's preprocessing: tokenize, then group_texts into blocks of `block` tokens."""
    import datasets

    from spanqa.models import load_tokenizer

    datasets.disable_progress_bars()
    tok = load_tokenizer(None)
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"])

    def group_texts(examples):  # as in run_mlm.py
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // block) * block
        return {k: [t[i:i + block] for i in range(0, total, block)] for k, t in concatenated.items()}

    return tok, tokenized.map(group_texts, batched=True)


def hf_run(tok, data, steps: int, batch: int, bf16: bool, tmp: Path) -> float:
    """Tokens/s of an HF Trainer run with DataCollatorForLanguageModeling."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from spanqa.models import load_mlm_model

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp / "hf_out"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=5e-5, logging_strategy="no", save_strategy="no", report_to=[],
                             bf16=bf16, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = Trainer(model=load_mlm_model(None), args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
    out = trainer.train()
    block = len(data[0]["input_ids"])
    return out.metrics["train_samples_per_second"] * block


def spanqa_run(corpus: Path, steps: int, precision: str, tmp: Path) -> float:
    """Tokens/s of `spanqa pretrain` (packed sequences of 128, batch 32; evaluation excluded)."""
    from spanqa.mlm.task import PretrainConfig, pretrain

    out = Path(tempfile.mkdtemp(dir=tmp, prefix=f"spanqa-{precision}-"))  # a fresh run each time
    pretrain(PretrainConfig(corpus=[str(corpus)], output_dir=str(out), max_steps=steps, epochs=0, batch_size=BATCH,
                            max_seq_length=LENGTH, precision=precision, save_steps=0, log_steps=steps,
                            max_valid_sequences=32, eval_batch_size=32))
    import json

    logged = [h for h in json.loads((out / "history.json").read_text()) if "sequences_per_s" in h]
    return logged[-1]["sequences_per_s"] * LENGTH  # rows are packed: every position is a token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus = SQUAD / "dev-v1.1.json.gz"
        texts = corpus_texts()
        tok, blocks = hf_dataset(texts, LENGTH, tmp)
        default_block = min(tok.model_max_length, 1024)  # run_mlm: max_seq_length defaults to this
        _, default_blocks = hf_dataset(texts, default_block, tmp)
        runs = {
            "spanqa_fp32": lambda: spanqa_run(corpus, args.steps, "fp32", tmp),
            "hf_trainer_fp32": lambda: hf_run(tok, blocks, args.steps, BATCH, False, tmp),
            f"run_mlm_defaults_fp32_len{default_block}_batch8": lambda: hf_run(tok, default_blocks, args.steps, 8,
                                                                                False, tmp),
        }
        baseline = "hf_trainer_fp32"
        if cpu_has_native_bf16():  # elsewhere bf16 is emulated, slower than fp32 on both sides: not measured
            runs = {"spanqa_bf16": lambda: spanqa_run(corpus, args.steps, "bf16", tmp),
                    "hf_trainer_bf16": lambda: hf_run(tok, blocks, args.steps, BATCH, True, tmp), **runs}
            baseline = "hf_trainer_bf16"
        warm = {"spanqa_fp32": lambda: spanqa_run(corpus, 2, "fp32", tmp),
                "hf_trainer_fp32": lambda: hf_run(tok, blocks, 2, BATCH, False, tmp)}
        measures = interleave(runs, args.rounds, warmup=lambda name: warm.get(name, lambda: None)(),
                              on_round=lambda r, name, v: print(f"round {r}: {name} {v:,.0f} tokens/s", flush=True))
    result = report(measures, baseline, load_before)
    result.update(steps=args.steps, length=LENGTH, batch=BATCH, corpus="SQuAD dev-v1.1 contexts",
                  command=f"python bench/pretrain_cpu.py --steps {args.steps} --rounds {args.rounds}")
    print_report(result, "tokens/s")
    save_result("pretrain_cpu", result)


if __name__ == "__main__":
    main()
