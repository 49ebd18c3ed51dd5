"""Distillation (issue 14): a teacher reader vs 3-layer students trained with and without it, same steps.

    python bench/distill.py --teacher READER [--work /work/runs/distill] [--questions 16000] [--layers 3]
                            [--epochs 1] [--from-teacher] [--alpha A] [--dropout 0] [--tag=-t45]

1. Two students are built from `--layers` of the packaged MiniLM's 6 (evenly spaced; with `--from-teacher`
   of the teacher reader's own 6, its QA head kept: the fine-tuned layers are a better start than the
   sentence-embedding ones) and trained on the
   same first `--questions` train-v1.1 questions for `--epochs` epochs (the same steps, seed and settings): one
   on the gold spans only, one with `--teacher` (KL at T=2 mixed with the gold loss, 50/50 as `spanqa train`
   does, or `--alpha` and 1 - alpha: such a student gets a folder of its own). Every run is
   a `spanqa train` command, printed before it runs; a finished run is skipped, an interrupted one resumed.
2. The teacher and both students are scored on all of dev-v1.1 (`spanqa evaluate`, fp32).
3. Reading speed (skipped with `--read-questions 0`): the teacher and the distilled student take turns
   (A B A B ...) answering the same `--read-questions` dev questions, with torch fp32 and with `spanqa export`'s
   default (ONNX int8), windows 384/128 as bench/infer_cpu.py; medians of `--rounds` rounds and the
   student/teacher ratios.

Results: bench/results/distill{TAG}.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
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
from infer_cpu import WARMUP_QUESTIONS, answer_with, load_readers

SPANQA = [sys.executable, "-m", "spanqa"]
STUDENT = ["--student-layers", "{layers}", "--max-train-samples", "{questions}", "--epochs", "{epochs}",
           "--batch-size", "16", "--learning-rate", "1e-4", "--warmup-ratio", "0.1", "--max-seq-length", "256",
           "--doc-stride", "64", "--max-query-length", "48", "--max-eval-samples", "500", "--save-steps", "200",
           "--seed", "42"]


def spanqa(args: list[str], done: Path) -> None:
    """Run a spanqa command unless `done` exists (resuming an interrupted training run)."""
    if done.exists():
        print(f"skip (exists): spanqa {shlex.join(args)}", flush=True)
        return
    if args[0] == "train" and any((done.parent / "checkpoints").glob("checkpoint-*")):
        args = args + ["--resume"]
    print(f"$ spanqa {shlex.join(args)}", flush=True)
    subprocess.run(SPANQA + args, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--work", type=Path, default=Path("/work/runs/distill"))
    ap.add_argument("--questions", type=int, default=16000)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="student epochs (both students)")
    ap.add_argument("--read-questions", type=int, default=1000, help="0: no reading-speed step")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="", help="suffix of the results file (bench/results/distill{TAG}.json)")
    ap.add_argument("--from-teacher", action="store_true", help="students start from the teacher's layers and head")
    ap.add_argument("--alpha", type=float, help="the distilled student's --distill-alpha (default: spanqa's)")
    ap.add_argument("--dropout", type=float, help="both students' --dropout (default: the model's own)")
    args = ap.parse_args()

    settings = [a.format(layers=args.layers, questions=args.questions, epochs=args.epochs) for a in STUDENT]
    if args.from_teacher:
        settings += ["--model", args.teacher]
    if args.dropout is not None:
        settings += ["--dropout", f"{args.dropout:g}"]
    alpha = [] if args.alpha is None else ["--distill-alpha", f"{args.alpha:g}"]
    students = {"student": args.work / f"student-{args.layers}l",
                "distilled": args.work / f"distilled{'-a' + alpha[1] if alpha else ''}-{args.layers}l"}
    spanqa(["train", *settings, "--output-dir", str(students["student"])], students["student"] / "metrics.json")
    spanqa(["train", *settings, "--teacher", args.teacher, *alpha, "--output-dir", str(students["distilled"])],
           students["distilled"] / "metrics.json")

    dev = SQUAD / "dev-v1.1.json.gz"
    models = {"teacher": Path(args.teacher), **students}
    scores, train_minutes = {}, {}
    for name, folder in models.items():
        out = args.work / f"eval-{name}" if name == "teacher" else folder / "eval-dev-full"
        spanqa(["evaluate", str(folder), str(dev), "--output-dir", str(out)], out / "metrics.json")
        scores[name] = json.loads((out / "metrics.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        train_minutes[name] = metrics.get("train_seconds", float("nan")) / 60

    speed = reading_speed(models, args.read_questions, args.rounds) if args.read_questions else None
    result = {"dev_full": {k: {"exact_match": v["exact_match"], "f1": v["f1"]} for k, v in scores.items()},
              "train_minutes": train_minutes, "speed": speed, "teacher": args.teacher, "layers": args.layers,
              "from_teacher": args.from_teacher, "alpha": args.alpha,
              "questions": args.questions, "epochs": args.epochs, "read_questions": args.read_questions,
              "student_command": "spanqa train " + shlex.join(settings),
              "command": "python bench/distill.py " + shlex.join(sys.argv[1:])}
    for name, s in result["dev_full"].items():
        print(f"{name:10s} all of dev-v1.1: EM {s['exact_match']:.1f} F1 {s['f1']:.1f}  "
              f"(training {train_minutes[name]:.1f} min)")
    print(f"distillation adds {scores['distilled']['f1'] - scores['student']['f1']:+.2f} F1; "
          f"student - teacher {scores['distilled']['f1'] - scores['teacher']['f1']:+.2f} F1"
          + ("; speed " + ", ".join(f"{p} {r['median']:.2f}x" for p, r in speed["student_x_teacher"].items())
             if speed else ""))
    save_result(f"distill{args.tag}", result)


def reading_speed(models: dict[str, Path], read_questions: int, rounds: int) -> dict:
    """The teacher and the distilled student taking turns on the first `read_questions` dev questions."""
    from spanqa.qa.squad import load_dataset

    examples = load_dataset(SQUAD / "dev-v1.1.json.gz").examples[:read_questions]
    with tempfile.TemporaryDirectory() as tmp:
        readers = {}
        for name in ("teacher", "distilled"):
            for path, reader in load_readers(str(models[name]), ["torch_fp32", "onnx_int8"], Path(tmp) / name).items():
                readers[f"{name}_{path}"] = reader
        load_before = load_average()
        rates = interleave({k: (lambda r=r: len(examples) / answer_with(r, examples)[0]) for k, r in readers.items()},
                           rounds, warmup=lambda k: answer_with(readers[k], examples[:WARMUP_QUESTIONS]),
                           on_round=lambda i, k, q: print(f"round {i + 1} {k}: {q:.2f} questions/s", flush=True))
    speed = report(rates, "teacher_torch_fp32", load_before)
    speed["student_x_teacher"] = {path: ratio(rates[f"distilled_{path}"], rates[f"teacher_{path}"])
                                  for path in ("torch_fp32", "onnx_int8")}
    print_report(speed, "questions/s")
    return speed


if __name__ == "__main__":
    main()
