"""The optimizer step on CPU: the engine's fused AdamW vs torch's default AdamW (its per-tensor loop).

    python bench/adamw.py [--steps 30] [--rounds 3] [--recipe cpu-30m] [--tag=]

Two measures, each with both optimizers taking turns (fused, loop, fused, loop, ...):
1. One AdamW step over the packaged MiniLM's parameters (22.6M, with a QA head), gradients random:
   milliseconds per step, `--rounds` rounds of 10 steps after a warm-up step.
2. Whole training steps: `spanqa train --recipe R --max-steps N` on train-v1.1, once as it is and once
   with the engine's `adamw` swapped for `torch.optim.AdamW(...)` with torch's defaults (on CPU the
   per-tensor loop: what the engine used before); windows/s over the run, a fresh run each round.

Results: bench/results/adamw{TAG}.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import interleave, load_average, print_report, ratio, report, save_result


def torch_default_adamw(groups, lr, eps):
    import torch

    return torch.optim.AdamW(groups, lr=lr, eps=eps)


def optimizer_ms(rounds: int) -> dict:
    import torch

    from spanqa.models import load_qa_model
    from spanqa.training import engine

    torch.manual_seed(0)
    model = load_qa_model(None)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"fused": engine.adamw(engine.param_groups(model, 0.01), 1e-4, 1e-8),
                  "loop": torch_default_adamw(engine.param_groups(model, 0.01), 1e-4, 1e-8)}

    def steps(name: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            optimizers[name].step()
        return (time.perf_counter() - t0) / n * 1000

    load_before = load_average()
    ms = interleave({name: (lambda name=name: steps(name, 10)) for name in optimizers}, rounds,
                    warmup=lambda name: steps(name, 1),
                    on_round=lambda r, name, v: print(f"round {r + 1} {name}: {v:.1f} ms a step", flush=True))
    result = report(ms, "loop", load_before)
    result.update(parameters=sum(p.numel() for p in model.parameters()), unit="ms per optimizer step")
    return result


def training_rate(steps: int, tmp: Path, recipe: str, fused: bool) -> float:
    from spanqa.qa.config import build_config
    from spanqa.qa.train import train
    from spanqa.training import engine

    out = Path(tempfile.mkdtemp(prefix="fused-" if fused else "loop-", dir=tmp))  # a fresh run each round
    cfg = build_config(recipe, None, output_dir=str(out), max_steps=steps, max_eval_samples=50, save_steps=0,
                       log_steps=steps)
    chosen = engine.adamw
    engine.adamw = chosen if fused else torch_default_adamw
    try:
        train(cfg)
    finally:
        engine.adamw = chosen
    history = json.loads((out / "history.json").read_text())
    return [h for h in history if "windows_per_s" in h][-1]["windows_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recipe", default="cpu-30m")
    ap.add_argument("--tag", default="", help="suffix of the results file (bench/results/adamw{TAG}.json)")
    args = ap.parse_args()

    step = optimizer_ms(args.rounds)
    print_report(step, "ms per optimizer step")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        load_before = load_average()
        rates = interleave({"fused": lambda: training_rate(args.steps, tmp, args.recipe, True),
                            "loop": lambda: training_rate(args.steps, tmp, args.recipe, False)}, args.rounds,
                           warmup=lambda name: training_rate(3, tmp, args.recipe, name == "fused"),
                           on_round=lambda r, name, w: print(f"round {r + 1} {name}: {w:.2f} windows/s", flush=True))
    training = report(rates, "loop", load_before)
    training.update(recipe=args.recipe, steps=args.steps, unit="windows/s")
    print_report(training, "windows/s")
    r = ratio(rates["fused"], rates["loop"])
    print(f"training windows/s, fused x loop: {r['median']:.2f} ({r['low']:.2f} - {r['high']:.2f})")
    save_result(f"adamw{args.tag}", {"optimizer_step": step, "training": training})


if __name__ == "__main__":
    main()
