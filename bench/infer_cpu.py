"""CPU inference on dev-v1.1: spanqa's Reader (torch fp32, torch bf16 autocast, ONNX fp32, ONNX int8)
vs the transformers 4.x `pipeline("question-answering")` (removed in v5), same weights, same cores.

The peer runs in its own venv (`transformers<5`, created here on first use; torch is shared through
a .pth file) and answers one question at a time, as its users do. Everyone uses windows of
384/128/64 and answers of at most 30 tokens. Questions/s counts everything from text to answer
(tokenization, windows, model, decoding).

    python bench/infer_cpu.py [--model runs/quick] [--questions 2000]
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

from common import ROOT, SQUAD, save_result

PEER_VENV = Path(tempfile.gettempdir()) / "spanqa-bench-transformers4"
WINDOWS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}

PEER_SCRIPT = r"""
import json, sys, time
import torch
from transformers import pipeline
model, data, out = sys.argv[1:4]
examples = json.load(open(data))
qa = pipeline("question-answering", model=model, tokenizer=model, device=-1)
qa(question=examples[0]["question"], context=examples[0]["context"])  # warm-up
t0 = time.perf_counter()
answers = {e["id"]: qa(question=e["question"], context=e["context"], max_answer_len=30, max_seq_len=384,
                       doc_stride=128, max_question_len=64)["answer"] for e in examples}
elapsed = time.perf_counter() - t0
import transformers
json.dump({"seconds": elapsed, "predictions": answers, "transformers": transformers.__version__,
           "torch": torch.__version__, "threads": torch.get_num_threads()}, open(out, "w"))
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


def run_peer(model: str, examples, tmp: Path) -> dict:
    data = tmp / "questions.json"
    data.write_text(json.dumps([{"id": e.id, "question": e.question, "context": e.context} for e in examples]))
    script = tmp / "peer.py"
    script.write_text(PEER_SCRIPT)
    subprocess.run([str(peer_python()), str(script), model, str(data), str(tmp / "peer.json")], check=True)
    return json.loads((tmp / "peer.json").read_text())


def run_ours(path: str, examples, precision: str = "fp32") -> tuple[float, dict]:
    from spanqa.qa.reader import Reader
    from spanqa.qa.windows import WindowSettings

    reader = Reader.load(path, precision=precision)
    reader.settings.windows = WindowSettings(**WINDOWS)
    reader.predict(examples[:32])  # warm-up
    t0 = time.perf_counter()
    predictions = reader.predict(examples)
    return time.perf_counter() - t0, {p.id: p.text for p in predictions}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "quick"))
    ap.add_argument("--questions", type=int, default=2000)
    args = ap.parse_args()

    import torch

    from spanqa.export import export_onnx
    from spanqa.qa.evaluate import as_squad_data
    from spanqa.qa.metrics import squad_v1
    from spanqa.qa.squad import load_dataset

    examples = load_dataset(SQUAD / "dev-v1.1.json.gz").examples[:args.questions]
    data = as_squad_data(examples)
    rows = {}

    def record(name: str, seconds: float, predictions: dict) -> None:
        scores = squad_v1(data, predictions)
        rows[name] = {"questions_per_s": len(examples) / seconds, "seconds": seconds, "f1": scores["f1"],
                      "em": scores["exact_match"],
                      "same_answer_as_pipeline": sum(predictions[k] == v for k, v in peer["predictions"].items())}
        print(name, rows[name], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peer = run_peer(args.model, examples, tmp)
        record("d_transformers4_pipeline", peer["seconds"], peer["predictions"])
        record("a_reader_torch_fp32", *run_ours(args.model, examples))
        record("e_reader_torch_bf16_autocast", *run_ours(args.model, examples, "bf16"))
        record("b_reader_onnx_fp32", *run_ours(str(export_onnx(args.model, tmp / "onnx")), examples))
        record("c_reader_onnx_int8", *run_ours(str(export_onnx(args.model, tmp / "int8", int8=True)), examples))
        record("c2_reader_onnx_int8_everywhere",
               *run_ours(str(export_onnx(args.model, tmp / "int8-all", int8=True, int8_everywhere=True)), examples))
    base = rows["d_transformers4_pipeline"]
    for row in rows.values():
        row["speedup_vs_pipeline"] = row["questions_per_s"] / base["questions_per_s"]
        row["f1_minus_pipeline"] = row["f1"] - base["f1"]
    result = {"model": args.model, "questions": len(examples), "torch_threads": torch.get_num_threads(),
              "peer": {k: peer[k] for k in ("transformers", "torch", "threads")}, "windows": WINDOWS, "rows": rows}
    print(json.dumps(result, indent=2))
    save_result("infer_cpu", result)


if __name__ == "__main__":
    main()
