"""Full SQuAD v1.1 fine-tuning on one GPU: spanqa (`--recipe full`) vs an HF Trainer with run_qa.py's
defaults (batch 12, lr 3e-5, 2 epochs, every window padded to 384, fp32), and that Trainer with bf16.

The GPU machine has no network, no `datasets` and no packaged encoder, so what it needs travels in a
git-ignored folder made here first (MiniLM as fp16 safetensors, train/dev-v1.1 as JSONL.gz):

    python bench/train_gpu.py prepare .gpu
    # then on the GPU machine (device tool, carry [".gpu"]), one command each:
    PYTHONPATH=src python bench/train_gpu.py run .gpu --which ours --out $OUT
    PYTHONPATH=src python bench/train_gpu.py run .gpu --which hf --out $OUT        # or hf-bf16

Reported for each: epoch time (training only: evaluations excluded), real (non-pad) tokens/s,
model FLOP utilisation (6 N + 12 L d n FLOPs per real token of an n-token window, N = non-embedding
parameters; against the GPU's dense bf16 peak) and EM/F1 on all of dev-v1.1. The peer's F1 uses
run_qa's post-processing (spanqa's decoder with the peer's algorithm: bench/decode.py shows the
same predictions). `--smoke` runs a few steps on a few questions (any machine) to test the script.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import SQUAD

DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # FLOP/s, vendor specifications
SMOKE = {"max_train_samples": 64, "max_eval_samples": 32, "max_steps": 4}


def prepare(folder: Path) -> None:
    from spanqa.models import load_encoder, load_tokenizer
    from spanqa.qa.squad import load_dataset, write_jsonl

    load_encoder(None).half().save_pretrained(folder / "encoder")
    load_tokenizer(None).save_pretrained(folder / "encoder")
    for kind, name in (("train", "train-v1.1.reconstructed.json.gz"), ("dev", "dev-v1.1.json.gz")):
        plain = folder / f"{kind}.jsonl"
        write_jsonl(load_dataset(SQUAD / name).examples, plain)
        (folder / f"{kind}.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    print(f"{folder}: {sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def run_ours(folder: Path, out: Path, smoke: bool, epochs: float | None) -> dict:
    from spanqa.qa.config import build_config
    from spanqa.qa.train import train

    extra = {**(SMOKE if smoke else {}), **({"epochs": epochs} if epochs else {})}
    cfg = build_config("full", None, model=str(folder / "encoder"), train_file=str(folder / "train.jsonl.gz"),
                       dev_file=str(folder / "dev.jsonl.gz"), output_dir=str(out / "ours"), **extra)
    metrics = train(cfg)
    history = json.loads((out / "ours" / "history.json").read_text())
    return {"recipe": "full", "train_seconds": metrics["train_seconds"] - metrics["eval_seconds_while_training"],
            "steps": metrics["steps"],
            "batch_size": cfg.batch_size, "precision": cfg.precision, "exact_match": metrics["exact_match"],
            "f1": metrics["f1"], "history": history}


def run_hf(folder: Path, out: Path, bf16: bool, smoke: bool, epochs: float | None) -> dict:
    import torch
    from preprocess import prepare_train_features_factory
    from transformers import Trainer, TrainingArguments, default_data_collator

    from spanqa.models import load_qa_model, load_tokenizer
    from spanqa.qa.decode import DecodeSettings
    from spanqa.qa.evaluate import score_examples
    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import load_dataset
    from spanqa.qa.windows import WindowSettings

    tokenizer = load_tokenizer(str(folder / "encoder"))
    examples = load_dataset(folder / "train.jsonl.gz").examples[:SMOKE["max_train_samples"] if smoke else None]
    features = _run_qa_features(examples, prepare_train_features_factory(tokenizer))
    args = TrainingArguments(output_dir=str(out / "hf-trainer"), per_device_train_batch_size=12, learning_rate=3e-5,
                             num_train_epochs=epochs or 2, max_steps=SMOKE["max_steps"] if smoke else -1, bf16=bf16,
                             save_strategy="no", report_to=[], logging_steps=500, disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=load_qa_model(str(folder / "encoder")), args=args, train_dataset=features,
                      data_collator=default_data_collator)
    result = trainer.train()
    trainer.save_model(str(out / "hf"))
    tokenizer.save_pretrained(str(out / "hf"))
    reader = Reader.load(str(out / "hf"))
    reader.settings.windows, reader.batch_size = WindowSettings(384, 128, 64), 256
    dev = load_dataset(folder / "dev.jsonl.gz").examples[:SMOKE["max_eval_samples"] if smoke else None]
    run_qa_decoding = DecodeSettings(n_best=20, max_answer_length=30, use_max_context=False, align_to_words=False,
                                     merge_same_text=False)
    scores = score_examples(dev, reader.predict(dev, run_qa_decoding))
    return {"recipe": "run_qa defaults" + (" + bf16" if bf16 else ""), "train_seconds": result.metrics["train_runtime"],
            "steps": result.global_step, "batch_size": 12, "precision": "bf16" if bf16 else "fp32",
            "exact_match": scores["exact_match"], "f1": scores["f1"]}


def _run_qa_features(examples, prepare) -> list[dict]:
    """run_qa's padded training features, 1,000 questions at a time (no `datasets` on the GPU machine)."""
    rows = []
    for lo in range(0, len(examples), 1000):
        chunk = examples[lo:lo + 1000]
        batch = prepare({"question": [e.question for e in chunk], "context": [e.context for e in chunk],
                         "answers": [{"text": list(e.answer_texts), "answer_start": list(e.answer_starts)}
                                     for e in chunk]})
        keys = [k for k in batch.keys() if k != "offset_mapping"]
        rows.extend(dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys)))
    return rows


def throughput(folder: Path, result: dict, padded: bool) -> dict:
    """Epoch time, real tokens/s and MFU from the windows each run trained on."""
    import torch
    from transformers import AutoConfig

    from spanqa.models import load_tokenizer
    from spanqa.qa.squad import ExampleStream
    from spanqa.qa.windows import WindowSettings, streamed_windows

    windows, _ = streamed_windows(ExampleStream(folder / "train.jsonl.gz"), load_tokenizer(str(folder / "encoder")),
                                  WindowSettings(384, 128, 64))
    lengths = np.asarray(windows.attention_mask).sum(axis=1).astype(np.float64)
    epochs = result["steps"] * result["batch_size"] / len(lengths)
    config = AutoConfig.from_pretrained(folder / "encoder")
    layers, width = config.num_hidden_layers, config.hidden_size
    non_embedding = 12 * layers * width ** 2  # attention 4 d^2 + feed-forward 8 d^2 (4d inner) per layer
    flops = epochs * (6 * non_embedding * lengths.sum() + 12 * layers * width * (lengths ** 2).sum())
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in DENSE_BF16_PEAK.items() if k in name), None)
    seconds = result["train_seconds"]
    return {"device": name, "epochs": epochs, "epoch_seconds": seconds / epochs,
            "real_tokens_per_s": epochs * lengths.sum() / seconds,
            "padded_tokens_per_s": epochs * len(lengths) * 384 / seconds if padded else None,
            "mfu": flops / seconds / peak if peak else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["prepare", "run"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--which", choices=["ours", "hf", "hf-bf16"], default="ours")
    ap.add_argument("--out", type=Path, default=Path("runs/train_gpu"))
    ap.add_argument("--epochs", type=float, help="instead of the recipe's (spanqa full: 3, run_qa: 2)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.action == "prepare":
        return prepare(args.folder)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.which == "ours":
        result = run_ours(args.folder, args.out, args.smoke, args.epochs)
    else:
        result = run_hf(args.folder, args.out, args.which == "hf-bf16", args.smoke, args.epochs)
    result.update(throughput(args.folder, result, padded=args.which != "ours"), wall_seconds=time.perf_counter() - t0)
    for model_dir in ("ours", "hf", "hf-trainer"):  # only the numbers come back
        shutil.rmtree(args.out / model_dir, ignore_errors=True)
    (args.out / f"train_gpu_{args.which}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
