"""The "BERT from scratch" tutorial, reproduced: a WordPiece tokenizer and a small BERT pretrained from
scratch on the SQuAD train contexts (about the size of WikiText-2) within a time budget on these cores,
then fine-tuned on SST-2 (beside the same architecture trained on SST-2 from random weights) and SQuAD.

    python bench/scratch.py [--work /work/runs/scratch] [--budget 60m] [--size mini] [--pre-ln] [--dropout 0]
                            [--batch-size 32 --eval-steps 400]
                            [--answer-windows-only --tag=-answer-windows] [--no-sst2]

Every step is a `spanqa` command, printed before it runs; a step whose output exists is skipped, so the
script can be re-run after an interruption (an interrupted pretraining continues with --resume).
Results: bench/results/scratch.json (add --tag to keep several variants apart).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SQUAD_TRAIN = SHARED / "squad" / "train-v1.1.reconstructed.json.gz"
SPANQA = [sys.executable, "-m", "spanqa"]


def step(args: list[str], done: Path, resume_from: Path | None = None) -> float:
    """Run `spanqa ARGS` unless `done` exists (with --resume when a checkpoint is there); seconds taken."""
    if done.exists():
        print(f"skip (exists: {done}): spanqa {shlex.join(args)}", flush=True)
        return 0.0
    if resume_from is not None and (resume_from / "checkpoints" / "latest.json").exists():
        args = [*args, "--resume"]
    print(f"$ spanqa {shlex.join(args)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(SPANQA + args, check=True)
    return time.perf_counter() - t0


def random_init(mlm: Path, out: Path) -> None:
    """The pretrained model's architecture with fresh random weights (the no-pretraining baseline)."""
    if (out / "config.json").exists():
        return
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(mlm)).save_pretrained(out)
    AutoTokenizer.from_pretrained(mlm).save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/work/runs/scratch"))
    parser.add_argument("--budget", default="60m", help="Pretraining time budget")
    parser.add_argument("--size", default="mini")
    parser.add_argument("--pre-ln", action="store_true")
    parser.add_argument("--dropout", help="Dropout while pretraining (spanqa pretrain's flag; default 0.1)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--learning-rate", default="5e-4")
    parser.add_argument("--batch-size", help="Pretraining batch (the pretrain-scratch recipe's is 64)")
    parser.add_argument("--eval-steps", help="Pretraining steps between held-out evaluations (the recipe's is 200)")
    parser.add_argument("--squad-budget", default="15m", help="SQuAD fine-tuning time budget")
    parser.add_argument("--tag", default="", help="Suffix of the results file")
    parser.add_argument("--pretrain-only", action="store_true")
    parser.add_argument("--no-sst2", action="store_true", help="Pretraining and SQuAD only")
    parser.add_argument("--answer-windows-only", action="store_true",
                        help="Fine-tune SQuAD on the windows that hold the answer only (spanqa train's flag)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    tokenizer = work / "wordpiece"
    seconds["tokenizer"] = step(["tokenizer", "train", str(SQUAD_TRAIN), "--out", str(tokenizer),
                                 "--vocab-size", str(args.vocab_size)], tokenizer / "tokenizer.json")
    mlm = work / "mlm"
    seconds["pretrain"] = step(["pretrain", str(SQUAD_TRAIN), "--recipe", "pretrain-scratch", "--tokenizer", str(tokenizer),
                                "--size", args.size, *(["--pre-ln"] if args.pre_ln else []), "--output-dir", str(mlm),
                                *(["--dropout", args.dropout] if args.dropout else []),
                                *(["--batch-size", args.batch_size] if args.batch_size else []),
                                *(["--eval-steps", args.eval_steps] if args.eval_steps else []),
                                "--time-budget", args.budget, "--learning-rate", args.learning_rate],
                               mlm / "metrics.json", resume_from=mlm)
    results: dict = {"pretrain": json.loads((mlm / "metrics.json").read_text())}
    results["pretrain_curve"] = [{k: h[k] for k in ("step", "train_seconds", "masked_accuracy", "valid_loss")}
                                 for h in json.loads((mlm / "history.json").read_text()) if "masked_accuracy" in h]
    if not args.pretrain_only:
        random_model = work / "random-init"
        if not args.no_sst2:
            random_init(mlm, random_model)
        sst2 = ["classify", "train", "--task", "sst2", "--max-seq-length", "64", "--batch-size", "32",
                "--learning-rate", "1e-4", "--epochs", "2", "--save-steps", "1000"]
        for name, model in () if args.no_sst2 else (("sst2_pretrained", mlm), ("sst2_random", random_model)):
            out = work / name
            seconds[name] = step([*sst2, "--model", str(model), "--output-dir", str(out)], out / "metrics.json")
            results[name] = json.loads((out / "metrics.json").read_text())
        # SQuAD: all of train-v1.1 available and a time budget instead of cpu-fast's 4,000 questions; windows
        # of 128 tokens, the length the encoder was pretrained at (its position embeddings past 128 never
        # trained); then scored on all of dev-v1.1
        squad = work / ("squad-answer-windows" if args.answer_windows_only else "squad")
        seconds["squad"] = step(["train", "--recipe", "cpu-30m", "--time-budget", args.squad_budget, "--model", str(mlm),
                                 "--output-dir", str(squad), "--learning-rate", "3e-4", "--max-seq-length", "128",
                                 "--doc-stride", "32", "--max-query-length", "32", "--eval-steps", "0",
                                 "--max-eval-samples", "1000",
                                 *(["--answer-windows-only"] if args.answer_windows_only else [])], squad / "metrics.json")
        dev = squad / "dev-full"
        seconds["squad_dev"] = step(["evaluate", str(squad), str(SHARED / "squad" / "dev-v1.1.json.gz"),
                                     "--output-dir", str(dev)], dev / "metrics.json")
        results["squad_dev"] = json.loads((dev / "metrics.json").read_text())
        results["squad"] = json.loads((squad / "metrics.json").read_text())
    results.update(seconds=seconds, command="python bench/scratch.py " + shlex.join(sys.argv[1:]))
    out = ROOT / "bench" / "results" / f"scratch{args.tag}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
