"""CPU inference on dev-v1.1: spanqa's Reader (torch fp32, torch bf16 autocast, ONNX fp32, ONNX int8)
vs the transformers 4.x `pipeline("question-answering")` (removed in v5), same weights, same cores.

The peer runs in its own venv (`transformers<5`, created here on first use; torch is shared through
a .pth file) and answers one question at a time, as its users do. It stays loaded in a subprocess
for the whole run, so the contenders can take turns: a warm-up each, then `--rounds` rounds of
pipeline, torch fp32, bf16, ONNX fp32, int8 (feed-forward outputs fp32, or int8 too), ... (A B C A B C), each
answering the same `--questions` questions. Reported: the median and min-max questions/s of each, the ratio of medians
to the pipeline (with the range the rounds allow), the spread of the rounds and the load average,
and EM/F1 (answers are the same in every round; the script checks it). Everyone uses windows of
384/128/64 and answers of at most 30 tokens. Questions/s counts everything from text to answer
(tokenization, windows, model, decoding). `--paths ...,onnx_checked` adds `spanqa export --check`'s choice, made on
dev questions the benchmark does not read (`--check-questions`, default 5000:6000). `--paths ...,torch_bf16_compiled`
adds the bf16 reader compiled at load time (`Reader.load(compile=True)`); its load-and-compile seconds are reported
(start-up cost, not in the rates).

    python bench/infer_cpu.py [--model runs/quick] [--questions 2000] [--rounds 3] [--paths pipeline,onnx_int8] [--tag=-cpu]
"""

from __future__ import annotations

import argparse
import json
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    SQUAD,
    interleave,
    load_average,
    print_report,
    report,
    save_result,
)

PEER_VENV = Path(tempfile.gettempdir()) / "spanqa-bench-transformers4"
WINDOWS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
WARMUP_QUESTIONS = 32
DEFAULT_PATHS = ("pipeline", "torch_fp32", "torch_bf16", "onnx_fp32", "onnx_int8", "onnx_int8_everywhere")
PATHS = (*DEFAULT_PATHS, "onnx_checked", "torch_bf16_compiled")  # the last two on request (--paths)

PEER_SCRIPT = r"""
import json, sys, time
import torch
import transformers
from transformers import pipeline
model, data = sys.argv[1:3]
examples = json.load(open(data))
qa = pipeline("question-answering", model=model, tokenizer=model, device=-1)

def answer_all(items):
    return {e["id"]: qa(question=e["question"], context=e["context"], max_answer_len=30, max_seq_len=384,
                        doc_stride=128, max_question_len=64)["answer"] for e in items}

print("@@" + json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                         "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:  # one command per line: answer the first n questions, timed
    n = json.loads(line)["n"]
    t0 = time.perf_counter()
    answers = answer_all(examples[:n])
    print("@@" + json.dumps({"seconds": time.perf_counter() - t0, "predictions": answers}), flush=True)
"""


def peer_python() -> Path:
    """A venv with transformers<5 that sees this venv's torch (no second torch install)."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "transformers<5"], check=True)
        peer_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        Path(peer_site, "spanqa-torch.pth").write_text(site.getsitepackages()[0] + "\n")  # after its own packages
    return python


class Peer:
    """The 4.x pipeline, loaded once in a subprocess of its own venv, answering on request."""

    def __init__(self, model: str, examples, tmp: Path):
        data, script = tmp / "questions.json", tmp / "peer.py"
        data.write_text(json.dumps([{"id": e.id, "question": e.question, "context": e.context} for e in examples]))
        script.write_text(PEER_SCRIPT)
        self.process = subprocess.Popen([str(peer_python()), str(script), model, str(data)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.versions = self._reply()

    def _reply(self) -> dict:
        for line in self.process.stdout:  # anything the libraries print to stdout is skipped
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"the pipeline process ended (exit code {self.process.wait()})")

    def answer(self, n: int) -> tuple[float, dict]:
        self.process.stdin.write(json.dumps({"n": n}) + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        return reply["seconds"], reply["predictions"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def load_readers(model: str, paths: list[str], tmp: Path, check: list | None = None) -> dict:
    """Every spanqa path asked for, loaded before the first round (exports written under `tmp`).
    onnx_checked is `spanqa export --check` on the `check` examples (dev questions the benchmark does not read):
    the fastest export within 0.5 F1 of fp32 there; what it measured is returned under "check"."""
    from dataclasses import asdict

    from spanqa.export import export_onnx
    from spanqa.export_check import export_checked
    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import write_jsonl
    from spanqa.qa.windows import WindowSettings

    folders = {"torch_fp32": (model, "fp32"), "torch_bf16": (model, "bf16"), "torch_bf16_compiled": (model, "bf16")}
    if "onnx_checked" in paths:
        write_jsonl(check, tmp / "check.jsonl")
        checked = export_checked(model, str(tmp / "check.jsonl"), tmp / "onnx_checked", max_loss=0.5)
        folders["onnx_checked"] = (checked.path, "fp32")
    # onnx_int8 is `spanqa export`'s default
    exports = {"onnx_fp32": {}, "onnx_int8": {"int8": True}, "onnx_int8_everywhere": {"int8": True, "int8_everywhere": True}}
    readers = {}
    for name in paths:
        if name in exports:
            folders[name] = (str(export_onnx(model, tmp / name, **exports[name])), "fp32")
        if name in folders:
            compiled, t0 = name.endswith("_compiled"), time.perf_counter()
            readers[name] = Reader.load(folders[name][0], precision=folders[name][1], compile=compiled)
            if compiled:  # compiling is start-up cost, reported beside the rates
                readers.setdefault("load_seconds", {})[name] = time.perf_counter() - t0
            readers[name].settings.windows = WindowSettings(**WINDOWS)
    if "onnx_checked" in paths:
        readers["check"] = asdict(checked)
    return readers


def answer_with(reader, examples) -> tuple[float, dict]:
    t0 = time.perf_counter()
    predictions = reader.predict(examples)
    return time.perf_counter() - t0, {p.id: p.text for p in predictions}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "quick"))
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    ap.add_argument("--tag", default="", help="suffix of the results file (bench/results/infer_cpu{TAG}.json)")
    ap.add_argument("--check-questions", default="5000:6000",
                    help="onnx_checked: the dev questions `spanqa export --check` scores (never the benchmark's)")
    args = ap.parse_args()
    paths = args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        ap.error(f"unknown paths {sorted(unknown)}")
    if "pipeline" not in paths:
        paths.insert(0, "pipeline")  # the ratios are to the pipeline

    import torch

    from spanqa.models import resolve_model
    from spanqa.qa.evaluate import as_squad_data
    from spanqa.qa.metrics import squad_v1
    from spanqa.qa.squad import load_dataset

    model = resolve_model(args.model)  # a folder both sides can read ("default": the packaged MiniLM)
    dev = load_dataset(SQUAD / "dev-v1.1.json.gz").examples
    examples = dev[:args.questions]
    lo, hi = map(int, args.check_questions.split(":"))
    if lo < args.questions:
        ap.error("--check-questions must not overlap the benchmark's questions")
    data = as_squad_data(examples)
    predictions: dict[str, dict] = {}
    stable: dict[str, bool] = {}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        readers = load_readers(model, paths, tmp, dev[lo:hi])
        check = readers.pop("check", None)
        load_seconds = readers.pop("load_seconds", None)
        peer = Peer(model, examples, tmp)

        def one_run(name: str, n: int) -> tuple[float, dict]:
            return peer.answer(n) if name == "pipeline" else answer_with(readers[name], examples[:n])

        def timed(name: str) -> float:
            seconds, got = one_run(name, len(examples))
            stable[name] = stable.get(name, True) and predictions.setdefault(name, got) == got
            return len(examples) / seconds

        load_before = load_average()
        try:
            rates = interleave({name: (lambda name=name: timed(name)) for name in paths}, args.rounds,
                               warmup=lambda name: one_run(name, WARMUP_QUESTIONS),
                               on_round=lambda r, name, q: print(f"round {r + 1} {name}: {q:.2f} questions/s",
                                                                  flush=True))
        finally:
            peer.close()
    result = report(rates, "pipeline", load_before)
    base_f1 = squad_v1(data, predictions["pipeline"])["f1"]
    for name, row in result["contenders"].items():
        scores = squad_v1(data, predictions[name])
        row.update(f1=scores["f1"], em=scores["exact_match"], f1_minus_pipeline=scores["f1"] - base_f1,
                   same_answer_as_pipeline=sum(predictions[name][k] == v for k, v in predictions["pipeline"].items()),
                   same_answers_every_round=stable[name])
    result.update(model=args.model, questions=len(examples), unit="questions/s", torch_threads=torch.get_num_threads(),
                  peer=peer.versions, windows=WINDOWS)
    if load_seconds:
        result["compile_seconds"] = load_seconds  # Reader.load(compile=True): loading and compiling, before round 1
    if check:
        result["export_check"] = check
        print(f"onnx_checked: export --check on dev questions {args.check_questions} chose {check['chosen']} "
              f"({check['scores']})")
    print(json.dumps(result, indent=2))
    print_report(result, "questions/s")
    for name, row in result["contenders"].items():
        print(f"{name:34s} F1 {row['f1']:.2f} ({row['f1_minus_pipeline']:+.2f} vs pipeline)")
    save_result(f"infer_cpu{args.tag}", result)


if __name__ == "__main__":
    main()
