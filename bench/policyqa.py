"""Domain adaptation on PolicyQA (privacy policies), split by website, four rows at the same SQuAD budget.

    python bench/policyqa.py [--work /work/runs/policyqa] [--squad-reader DIR] [--squad-recipe cpu-30m]

PolicyQA dev (../shared/data/policyqa/dev.json.gz, 20 websites) is split by website: the first 10 for
adaptation (their policy text for masked-LM pretraining, their questions for fine-tuning), the other 10
for evaluation only; no policy text is on both sides. Rows:
  (a) SQuAD reader only (the cpu-fast recipe on the packaged MiniLM, or --squad-recipe)
  (b) masked-LM on the adaptation websites' policy text first, then the same SQuAD recipe
  (c) (a), then fine-tuned on the adaptation websites' questions (the `domain` recipe)
  (d) (b), then the same
Every step is a `spanqa` command, printed before it runs; a step whose output exists is skipped, so
the script can be re-run after an interruption. Results: bench/results/policyqa.json (policyqa-RECIPE.json
for another --squad-recipe).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "policyqa" / "dev.json.gz"
RESULTS = ROOT / "bench" / "results"
SPANQA = [sys.executable, "-m", "spanqa"]


def split_by_website(work: Path) -> tuple[Path, Path]:
    """The first 10 websites (articles) -> adapt.json, the other 10 -> eval.json (SQuAD v1.1 JSON)."""
    data = json.loads(gzip.open(DATA, "rt", encoding="utf-8").read())
    adapt, evaluate = work / "adapt.json", work / "eval.json"
    for path, articles in ((adapt, data["data"][:10]), (evaluate, data["data"][10:])):
        if not path.exists():
            path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return adapt, evaluate


def step(args: list[str], done: Path) -> float:
    """Run `spanqa ARGS` unless `done` exists; seconds taken (0 when skipped)."""
    if done.exists():
        print(f"skip (exists: {done}): spanqa {shlex.join(args)}", flush=True)
        return 0.0
    print(f"$ spanqa {shlex.join(args)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(SPANQA + args, check=True)
    return time.perf_counter() - t0


def evaluate(reader: Path, data: Path, out: Path) -> dict:
    step(["evaluate", str(reader), str(data), "--output-dir", str(out), "--precision", "bf16"], out / "metrics.json")
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/work/runs/policyqa"))
    parser.add_argument("--squad-reader", type=Path, default=None, help="Row (a)'s reader if already trained")
    parser.add_argument("--squad-recipe", default="cpu-fast", help="The SQuAD budget of rows (a) and (b)")
    parser.add_argument("--mlm-epochs", type=float, default=10)
    parser.add_argument("--domain-epochs", type=float, default=3)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    adapt, eval_set = split_by_website(work)
    seconds: dict[str, float] = {}

    domain = ["--recipe", "domain", "--train-file", str(adapt), "--dev-file", str(eval_set), "--max-seq-length", "256",
              "--doc-stride", "64", "--epochs", str(args.domain_epochs)]
    readers = {"a": args.squad_reader or work / "a-squad", "b": work / "b-squad", "c": work / "c-domain",
               "d": work / "d-domain"}
    mlm = work / "b-mlm"
    rows = {}
    # rows (a) and (c) first: an interrupted run has its SQuAD-only and domain rows before the masked-LM ones
    for row in "acbd":
        reader = readers[row]
        if row == "b":
            seconds["b_mlm"] = step(["pretrain", str(adapt), "--output-dir", str(mlm), "--epochs", str(args.mlm_epochs),
                                     "--batch-size", "16", "--learning-rate", "1e-4", "--valid-fraction", "0.1"],
                                    mlm / "metrics.json")
        if row in "ab":
            squad = ["train", "--recipe", args.squad_recipe, *(["--model", str(mlm)] if row == "b" else [])]
            seconds[f"{row}_squad"] = step([*squad, "--output-dir", str(reader)], reader / "metrics.json")
        else:
            base = readers["a" if row == "c" else "b"]
            seconds[f"{row}_domain"] = step(["train", "--model", str(base), "--output-dir", str(reader), *domain],
                                            reader / "metrics.json")
        m = evaluate(reader, eval_set, work / f"eval-{row}")
        rows[row] = {"exact_match": m["exact_match"], "f1": m["f1"], "reader": str(reader)}
        print(f"({row}) EM {m['exact_match']:.1f}  F1 {m['f1']:.1f}", flush=True)
    rows = {row: rows[row] for row in "abcd"}
    mlm_metrics = json.loads((mlm / "metrics.json").read_text())
    results = RESULTS / ("policyqa.json" if args.squad_recipe == "cpu-fast" else f"policyqa-{args.squad_recipe}.json")
    results.write_text(json.dumps({
        "split": "PolicyQA dev by website: first 10 websites adapt (policy text + questions), last 10 evaluate",
        "adapt_questions": sum(len(p["qas"]) for a in json.loads(adapt.read_text())["data"] for p in a["paragraphs"]),
        "eval_questions": sum(len(p["qas"]) for a in json.loads(eval_set.read_text())["data"] for p in a["paragraphs"]),
        "squad_recipe": args.squad_recipe, "rows": rows,
        "mlm": {k: mlm_metrics[k] for k in ("valid_loss", "masked_accuracy", "perplexity", "corpus_tokens", "steps")},
        "seconds": seconds, "command": "python bench/policyqa.py " + shlex.join(sys.argv[1:])}, indent=2) + "\n")
    print(f"written {results}")


if __name__ == "__main__":
    main()
