"""Where the limit is: the cores' measured matmul peak in fp32, bf16 and int8, the reader's FLOPs per
window and per question, and each reading path's questions/s as a share of that peak.

Peak: the best of `--repeats` timed runs of a plain matmul in each precision, for a large square
shape (the kernels at their best) and for the reader's own feed-forward shape (8 windows of 384
tokens: (3072 x 384) @ (384 x 1536)), on every core torch / ONNX Runtime use by default:
  fp32, bf16   torch.matmul (oneDNN; bf16 uses AVX512-BF16/AMX where the cores have them)
  int8         torch._int_mm (int8 x int8 -> int32) and ONNX Runtime MatMulInteger (uint8 x int8 ->
               int32, the kernel behind spanqa's dynamic int8 export)
FLOPs (multiply-adds x 2) from the model's config: per layer the Q, K, V and output projections
(4 s h^2), the feed-forward (2 s h i) and attention's scores and weighted sum (2 s^2 h), plus the
span head; per question, over the real dev-v1.1 windows at 384/128/64 (tokens that are not padding).
Attention is timed apart: torch's scaled_dot_product_attention (the kernel transformers' BERT calls)
on 8 windows of the model's heads at the dev windows' mean length and at 384, with a padding mask as
the reader passes one. Its head size (32 for MiniLM) keeps its small matmuls far from the matmul peak,
so the ceiling of a path is computed from both: seconds per question = matmul FLOPs / the
feed-forward shape's peak + attention FLOPs / attention's rate.
The share table reads the medians of bench/results/infer_cpu{--results-tag}.json when it is there.

    python bench/peak.py [--model runs/quick] [--questions 2000] [--repeats 20] [--results-tag=-t45-all]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, SQUAD, load_average, save_result

# which peak bounds each reading path of bench/infer_cpu.py
PATH_PRECISION = {"pipeline": "fp32", "torch_fp32": "fp32", "onnx_fp32": "fp32", "torch_bf16": "bf16",
                  "onnx_int8": "int8", "onnx_int8_everywhere": "int8"}


def best_rate(run, ops: float, repeats: int) -> float:
    """Giga-operations per second of the fastest of `repeats` runs (after one warm-up run)."""
    run()
    best = min(_timed(run) for _ in range(repeats))
    return ops / best / 1e9


def _timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def torch_peaks(shape: tuple[int, int, int], repeats: int) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of torch matmuls of (m x k) @ (k x n)."""
    import torch

    m, k, n = shape
    ops = 2 * m * k * n
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = {"fp32_torch": best_rate(lambda: a @ b, ops, repeats)}
    a16, b16 = a.bfloat16(), b.bfloat16()
    out["bf16_torch"] = best_rate(lambda: a16 @ b16, ops, repeats)
    a8, b8 = torch.randint(-128, 128, (m, k), dtype=torch.int8), torch.randint(-128, 128, (k, n), dtype=torch.int8)
    try:
        out["int8_torch_int_mm"] = best_rate(lambda: torch._int_mm(a8, b8), ops, repeats)
    except RuntimeError as e:  # not every build has a CPU kernel for every shape
        print(f"torch._int_mm {shape}: {e}")
    return out


def onnx_int8_peak(shape: tuple[int, int, int], repeats: int) -> float:
    """GOP/s of ONNX Runtime's MatMulInteger (uint8 activations x int8 weights, as the dynamic int8 export)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from spanqa.onnx_models import physical_cores

    m, k, n = shape
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (k, n), dtype=np.int8), "B")
    zero = numpy_helper.from_array(np.array(0, dtype=np.uint8), "a_zero")
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zero"], ["Y"])
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])], [weight, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = physical_cores()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    return best_rate(lambda: session.run(None, {"A": a}), 2 * m * k * n, repeats)


def attention_rates(config, lengths: list[int], repeats: int) -> dict[str, float]:
    """GFLOP/s of scaled_dot_product_attention on 8 windows of `config`'s heads, in fp32 and bf16, at each length,
    with an additive padding mask (the last tenth of the keys masked), keyed "bf16@148"."""
    import torch

    heads, size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    out = {}
    for length in lengths:
        mask = torch.zeros(8, 1, length, length)
        mask[..., length - length // 10:] = torch.finfo(torch.float32).min
        q, k, v = (torch.randn(8, heads, length, size) for _ in range(3))
        ops = 8 * 4 * length * length * config.hidden_size  # scores and weighted sum, x2 for multiply-add
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            q_, k_, v_, mask_ = (t.to(dtype) for t in (q, k, v, mask))
            attend = torch.nn.functional.scaled_dot_product_attention
            with torch.inference_mode():
                out[f"{name}@{length}"] = best_rate(lambda: attend(q_, k_, v_, attn_mask=mask_), ops, repeats)
    return out


def flops_per_window(config, tokens: int, part: str = "all") -> float:
    """Forward FLOPs of a BERT-style reader on one window of `tokens` tokens: "all", or only its "attention"
    (scores and weighted sum) or its "matmuls" (projections, feed-forward, span head)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    attention = layers * 2 * 2 * tokens * tokens * h
    matmuls = layers * 2 * (4 * tokens * h * h + 2 * tokens * h * i) + 2 * tokens * h * 2  # + the span head (h -> 2)
    return {"all": attention + matmuls, "attention": attention, "matmuls": matmuls}[part]


def dev_window_flops(model: str, questions: int) -> dict[str, float]:
    """FLOPs per question over the real windows (384/128/64) of the first `questions` dev-v1.1 questions."""
    from transformers import AutoConfig

    from spanqa.models import load_tokenizer
    from spanqa.qa.squad import load_dataset
    from spanqa.qa.windows import WindowSettings, build_windows

    config = AutoConfig.from_pretrained(model)
    examples = load_dataset(SQUAD / "dev-v1.1.json.gz").examples[:questions]
    windows = build_windows(examples, load_tokenizer(model), WindowSettings(384, 128, 64))
    lengths = np.asarray(windows.attention_mask).sum(axis=1)
    total = sum(flops_per_window(config, int(t)) for t in lengths)
    attention = sum(flops_per_window(config, int(t), "attention") for t in lengths)
    return {"attention_flops_per_question": attention / len(examples), "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "intermediate": config.intermediate_size, "flops_per_384_window": flops_per_window(config, 384),
            "questions": len(examples), "windows": len(windows), "mean_tokens_per_window": float(lengths.mean()),
            "flops_per_question": total / len(examples)}


def ceilings(flops: dict, ffn_peaks: dict[str, float], attention: dict[str, float]) -> dict[str, dict]:
    """Questions/s a reader could reach in fp32 and bf16 if every matmul ran at the feed-forward shape's peak and
    attention at its measured rate (at the windows' mean length), nothing else costing time."""
    length = round(flops["mean_tokens_per_window"])
    attention_flops = flops["attention_flops_per_question"]
    matmul_flops = flops["flops_per_question"] - attention_flops
    out = {}
    for precision in ("fp32", "bf16"):
        attention_seconds = attention_flops / (attention[f"{precision}@{length}"] * 1e9)
        seconds = matmul_flops / (ffn_peaks[f"{precision}_torch"] * 1e9) + attention_seconds
        out[precision] = {"questions_per_s": 1 / seconds, "attention_share": attention_seconds / seconds}
    return out


def shares(flops_per_question: float, peaks: dict[str, float], tag: str = "") -> dict[str, dict]:
    """Each infer_cpu path's median questions/s as GFLOP/s and as a share of its precision's best peak."""
    path = RESULTS / f"infer_cpu{tag}.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())
    rows = rows.get("contenders") or rows.get("rows", {})
    out = {}
    for name, row in rows.items():
        rate = row["median"] if "median" in row else row.get("questions_per_s")
        precision = next((p for key, p in PATH_PRECISION.items() if key in name), None)
        if rate is None or precision is None:
            continue
        peak = max(v for k, v in peaks.items() if k.startswith(precision))
        achieved = rate * flops_per_question / 1e9
        out[name] = {"questions_per_s": rate, "gflops": achieved, "precision": precision, "peak_gops": peak,
                     "share_of_peak": achieved / peak}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "quick"))
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--square", type=int, default=2048, help="side of the square matmul")
    ap.add_argument("--results-tag", default="", help="read bench/results/infer_cpu{TAG}.json for the share table")
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig

    from spanqa.models import resolve_model

    load_before = load_average()
    shapes = {"square": (args.square,) * 3, "reader_ffn": (8 * 384, 384, 1536)}
    peaks_by_shape = {}
    for name, shape in shapes.items():
        peaks_by_shape[name] = {**torch_peaks(shape, args.repeats), "int8_onnxruntime": onnx_int8_peak(shape, args.repeats)}
        print(name, shape, {k: round(v, 1) for k, v in peaks_by_shape[name].items()}, flush=True)
    peaks = {k: max(p[k] for p in peaks_by_shape.values() if k in p) for p in peaks_by_shape.values() for k in p}
    flops = dev_window_flops(resolve_model(args.model), args.questions)
    config = AutoConfig.from_pretrained(resolve_model(args.model))
    attention = attention_rates(config, [round(flops["mean_tokens_per_window"]), 384], args.repeats)
    print("attention", {k: round(v, 1) for k, v in attention.items()}, flush=True)
    ceiling = ceilings(flops, peaks_by_shape["reader_ffn"], attention)
    table = shares(flops["flops_per_question"], peaks, args.results_tag)
    cpu_flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    result = {"peaks_gops": peaks, "peaks_by_shape": peaks_by_shape, "shapes": shapes, "model": flops,
              "attention_gflops": attention, "ceilings": ceiling, "shares": table, "results_tag": args.results_tag,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "cpu_flags": sorted(cpu_flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                                                "amx_int8", "amx_tile"}),
              "load_average_before": load_before, "load_average_after": load_average()}
    print(json.dumps(result, indent=2))
    print(f"\nMiniLM: {flops['flops_per_384_window'] / 1e9:.2f} GFLOP per 384-token window, "
          f"{flops['flops_per_question'] / 1e9:.2f} GFLOP per dev question ({flops['mean_tokens_per_window']:.0f} "
          "tokens per window)")
    for precision, row in ceiling.items():
        print(f"ceiling {precision}: {row['questions_per_s']:.1f} q/s (matmuls at the feed-forward peak, attention at "
              f"its rate: {row['attention_share']:.0%} of the time)")
    for name, row in table.items():
        print(f"{name:34s} {row['questions_per_s']:7.1f} q/s = {row['gflops']:6.1f} GFLOP/s = "
              f"{row['share_of_peak']:.0%} of the {row['precision']} peak ({row['peak_gops']:.0f})")
    save_result(f"peak{args.results_tag}", result)


if __name__ == "__main__":
    main()
