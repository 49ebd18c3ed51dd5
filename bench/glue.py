"""GLUE dev with the packaged MiniLM: SST-2, MRPC, RTE, CoLA, STS-B, each with its `glue-*` recipe.

    python bench/glue.py [--work /work/runs/glue] [--tasks sst2 mrpc rte cola stsb] [--seeds 3]
    python bench/glue.py --work /work/runs/glue-adapted --adapt 60m --tasks cola mrpc --seeds 1 --tag=-adapted
    python bench/glue.py --work /work/runs/glue-mean --tasks mrpc --pooling mean --tag=-mean-mrpc
    python bench/glue.py --work /work/runs/glue-lr5e-5 --tasks mrpc --train-args="--learning-rate 5e-5" --tag=-lr5e-5

`--adapt 30m` first continues the packaged MiniLM with masked-LM on English text (the SQuAD train
contexts: Wikipedia) for that time budget, and starts every task from it: all-MiniLM-L6-v2's contrastive
sentence training kept meaning and lost token-level knowledge that CoLA needs.

MRPC, RTE and STS-B (small, noisy) are run with `--seeds` seeds and reported as the median; SST-2 and
CoLA once. Every run is a `spanqa classify train` command, printed before it runs; a run whose output
exists is skipped and an interrupted one resumed (re-run the script after an interruption). Results, with the published dev numbers
beside them and the training minutes of each run: bench/results/glue.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPANQA = [sys.executable, "-m", "spanqa"]
SQUAD_TRAIN = ROOT.parent / "shared" / "data" / "squad" / "train-v1.1.reconstructed.json.gz"
# the main metric of each task, and published dev numbers (MiniLM-L6xH384, DistilBERT, HF run_glue bert-base-cased)
MAIN = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "matthews_correlation", "stsb": "pearson"}
PUBLISHED = {"minilm_l6_h384": {"sst2": 91.5, "mrpc": 88.9, "rte": 68.8, "cola": 47.5},
             "distilbert": {"sst2": 91.3, "mrpc": 87.5, "rte": 59.9, "cola": 51.3, "stsb": 86.9},
             "bert_base_cased_run_glue": {"sst2": 92.32, "mrpc": 88.85, "rte": 65.70, "cola": 56.53, "stsb": 88.64}}
SEEDED = {"mrpc", "rte", "stsb"}


def run(task: str, seed: int, work: Path, model: Path | None = None, pooling: str | None = None,
        extra: list[str] = ()) -> dict:
    out = work / f"{task}-seed{seed}"
    args = ["classify", "train", "--recipe", f"glue-{task}", "--seed", str(seed), "--output-dir", str(out),
            *(["--model", str(model)] if model else []), *(["--pooling", pooling] if pooling else []), *extra]
    if not (out / "metrics.json").exists():
        if any((out / "checkpoints").glob("checkpoint-*")):
            args.append("--resume")  # an interrupted run continues from its last checkpoint
        print(f"$ spanqa {shlex.join(args)}", flush=True)
        subprocess.run(SPANQA + args, check=True)
    else:
        print(f"skip (exists): spanqa {shlex.join(args)}", flush=True)
    return json.loads((out / "metrics.json").read_text())


def adapt(work: Path, budget: str) -> Path:
    """The packaged MiniLM after `budget` of whole-word masked-LM on the SQuAD train contexts."""
    out = work / f"mlm-en-{budget}"
    args = ["pretrain", str(SQUAD_TRAIN), "--output-dir", str(out), "--time-budget", budget, "--batch-size", "32",
            "--learning-rate", "1e-4", "--whole-word-mask", "--save-steps", "100000", "--eval-steps", "100000"]
    if (out / "metrics.json").exists():
        print(f"skip (exists): spanqa {shlex.join(args)}", flush=True)
    else:
        print(f"$ spanqa {shlex.join(args)}", flush=True)
        subprocess.run(SPANQA + args, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/work/runs/glue"))
    parser.add_argument("--tasks", nargs="+", default=list(MAIN))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--adapt", metavar="BUDGET", help="Masked-LM on English text first, for this long (e.g. 30m)")
    parser.add_argument("--pooling", choices=("cls", "mean"), help="`classify train --pooling` (default: the encoder's own, mean for the packaged MiniLM)")
    parser.add_argument("--train-args", default="", help="More `classify train` options for every run, e.g. \"--epochs 3\"")
    parser.add_argument("--tag", default="", help="Suffix of the results file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    t0 = time.perf_counter()
    model = adapt(args.work, args.adapt) if args.adapt else None
    for task in args.tasks:
        seeds = range(42, 42 + (args.seeds if task in SEEDED else 1))
        runs = [run(task, seed, args.work, model, args.pooling, shlex.split(args.train_args)) for seed in seeds]
        main_metric = MAIN[task]
        values = [100 * r[main_metric] for r in runs]  # metrics are fractions; published numbers are percents
        results[task] = {"metric": main_metric, "median": statistics.median(values), "runs": values,
                         "all_metrics": runs, "train_minutes": [r["train_seconds"] / 60 for r in runs]}
        print(f"{task}: {main_metric} median {results[task]['median']:.1f} of {values}", flush=True)
    out = ROOT / "bench" / "results" / f"glue{args.tag}.json"
    adapted = {"masked_lm": json.loads((model / "metrics.json").read_text())} if model else {}
    out.write_text(json.dumps({"tasks": results, **adapted, "published": PUBLISHED,
                               "wall_minutes": (time.perf_counter() - t0) / 60,
                               "command": "python bench/glue.py " + shlex.join(sys.argv[1:])}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
