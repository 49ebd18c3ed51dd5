"""A tried-and-dropped int8 scheme, kept measurable: every encoder Linear as an int8 x int8 -> int32
matmul (`torch._int_mm`, oneDNN: VNNI/AMX) with one activation scale per token and one weight scale
per output channel (W8A8 with per-token activations, SmoothQuant's O1 setting).

ONNX Runtime's int8 kernels (`spanqa export`) take one activation scale per tensor, over a whole
batch: that is where their F1 goes (BENCHMARKS.md, issue 17). Per-token scales fix the accuracy;
this script measures whether torch can run them fast enough. It reads the same dev questions with
the Reader in fp32, bf16 and this int8 (the rest of the model in bf16 where the CPU has it), in
interleaved rounds, and times the three matmul kinds on the reader's feed-forward shape.

    python bench/int8_per_token.py --model /work/runs/squad-cpufast --questions 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch

from common import SQUAD, interleave, load_average, print_report, report, save_result
from infer_cpu import WINDOWS


class Int8Linear(torch.nn.Module):
    """y = x W^T + b, W int8 (symmetric, per output channel), x quantized to int8 per row at each call."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).clamp(-127, 127)
                             .to(torch.int8).t().contiguous())  # (in, out): what _int_mm multiplies by
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
        y = torch._int_mm(torch.round(rows / scale).to(torch.int8), self.weight_t).float() * scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def quantize_encoder(model: torch.nn.Module) -> None:
    """Every Linear of the encoder (not the QA head) as an Int8Linear, in place."""
    for parent in list(model.base_model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear(child))


def matmul_ms(rounds: int = 20) -> dict[str, float]:
    """Best time of one (8 x 384) x 384 @ 384 x 1536 matmul (the feed-forward input) per precision."""
    a, w = torch.randn(8 * 384, 384), torch.randn(1536, 384)
    qa, qw = torch.randint(-127, 127, a.shape, dtype=torch.int8), torch.randint(-127, 127, (384, 1536), dtype=torch.int8)
    ab, wb, int8 = a.bfloat16(), w.bfloat16(), Int8Linear(torch.nn.Linear(384, 1536))
    runs = {"fp32": lambda: torch.nn.functional.linear(a, w), "bf16": lambda: torch.nn.functional.linear(ab, wb),
            "int8 (_int_mm)": lambda: torch._int_mm(qa, qw),
            "int8 per-token quantize + _int_mm + dequantize": lambda: int8(a)}
    with torch.inference_mode():
        return {name: _best_ms(run, rounds) for name, run in runs.items()}


def _best_ms(run, rounds: int) -> float:
    run()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/runs/squad-cpufast")
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from spanqa.models import cpu_has_native_bf16
    from spanqa.qa.evaluate import as_squad_data
    from spanqa.qa.metrics import squad_v1
    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import load_dataset
    from spanqa.qa.windows import WindowSettings

    examples = load_dataset(SQUAD / "dev-v1.1.json.gz").examples[:args.questions]
    readers = {"torch_fp32": Reader.load(args.model), "torch_bf16": Reader.load(args.model, precision="bf16")}
    int8 = Reader.load(args.model, precision="bf16" if cpu_has_native_bf16() else "fp32")
    quantize_encoder(int8.model)
    readers["torch_int8_per_token"] = int8
    predictions: dict[str, dict] = {}
    for reader in readers.values():
        reader.settings.windows = WindowSettings(**WINDOWS)  # bench/infer_cpu.py's windows

    def timed(name: str) -> float:
        t0 = time.perf_counter()
        predictions[name] = {p.id: p.text for p in readers[name].predict(examples)}
        return len(examples) / (time.perf_counter() - t0)

    load_before = load_average()
    rates = interleave({name: (lambda name=name: timed(name)) for name in readers}, args.rounds,
                       warmup=lambda name: readers[name].predict(examples[:32]))
    result = report(rates, "torch_fp32", load_before)
    data = as_squad_data(examples)
    base_f1 = squad_v1(data, predictions["torch_fp32"])["f1"]
    for name, row in result["contenders"].items():
        f1 = squad_v1(data, predictions[name])["f1"]
        row.update(f1=f1, f1_minus_fp32=f1 - base_f1,
                   same_answer_as_fp32=sum(predictions[name][k] == v for k, v in predictions["torch_fp32"].items()))
    result.update(model=args.model, questions=len(examples), unit="questions/s", matmul_ms=matmul_ms())
    print_report(result, "questions/s")
    for name, row in result["contenders"].items():
        print(f"{name:24s} F1 {row['f1']:.2f} ({row['f1_minus_fp32']:+.2f} vs fp32), same answer {row['same_answer_as_fp32']}")
    for name, ms in result["matmul_ms"].items():
        print(f"matmul (8x384)x384 @ 384x1536, {name}: {ms:.2f} ms")
    save_result("int8_per_token", result)


if __name__ == "__main__":
    main()
