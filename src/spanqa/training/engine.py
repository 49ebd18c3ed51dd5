"""The one training loop: every task (QA, masked-LM, classification, distillation) runs through it.

A plain PyTorch loop through `accelerate` (CPU, one GPU, or many under `accelerate launch`/`torchrun`)
with autocast precision, gradient accumulation, length-grouped batches, atomic checkpoints, exact
resume, history and a learning curve. A task supplies the model, the training table, the loss, the
evaluation and its own output files (`Task`); the loop knows nothing else about it.

The epoch's batch order is a pure function of (seed, epoch), so a resumed run skips exactly the
batches already consumed: no step is lost or repeated.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from spanqa.files import atomic_write_json
from spanqa.models import EMULATED_BF16, cpu_has_native_bf16
from spanqa.progress import progress_bar
from spanqa.training.checkpoints import (
    TrainState,
    begin_run,
    load_checkpoint,
    save_checkpoint,
)
from spanqa.training.config import LoopConfig
from spanqa.training.history import plot_learning_curve, plot_time_to_accuracy
from spanqa.training.schedule import TimeBudget, linear_factor


class Task(Protocol):
    """What a task gives the engine. `prepare` runs on every process (main first, so caches are built
    once); `evaluate` and `finish` only on the main process."""

    unit: str          # what a training row is ("windows", "sequences", "examples"): names the rate
    curve_metric: str  # history key drawn beside the losses in learning_curve.png ("f1", "accuracy", ...)

    def prepare(self, show: bool) -> None:
        """Validate data and settings (clear errors before any training) and build the tables."""

    def lengths(self) -> np.ndarray:
        """Tokens of each training row: batches group rows of similar length."""

    def build_model(self) -> torch.nn.Module:
        """The model to train (called after seeding, so new heads are reproducible)."""

    def loss(self, model: torch.nn.Module, rows: np.ndarray, device: torch.device, epoch: int) -> torch.Tensor:
        """Mean loss of the training rows `rows` (a pure function of them and `epoch`)."""

    def evaluate(self, model: torch.nn.Module, autocast_dtype: torch.dtype | None) -> tuple[dict, Any]:
        """Dev metrics (floats, into the history) and whatever `finish` needs of this evaluation."""

    def finish(self, model: torch.nn.Module, out: Path, metrics: dict, evaluated: Any) -> dict:
        """Write the trained model and the task's own files to `out`; extra entries for metrics.json."""


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of similar lengths (less padding), a pure function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for lo in range(0, len(order), chunk):
        part = order[lo:lo + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every Dropout module of `model` drops with probability `p` while training; its config (what is saved, what
    later fine-tuning starts from) keeps its own. transformers' attention reads its rate from these modules too.
    On CPUs `p = 0` is also a speed lever: scaled_dot_product_attention with dropout leaves its fused kernel
    (the cpu-30m recipe: 1.44x the steps in 30 minutes on 2 cores, BENCHMARKS.md)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def run(task: Task, config: LoopConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Train `task` as `config` says and write its folder; returns what metrics.json holds."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    out = Path(config.output_dir)
    # accelerate keeps one precision per process; reset it (not the distributed state), as transformers'
    # Trainer does, so that a second run in the same process (notebook, tests) may use another
    AcceleratorState._reset_state()
    # cpu=True on CPU-only machines: without it accelerate ignores torchrun and every rank trains alone
    accelerator = Accelerator(mixed_precision=mixed_precision(config.precision), cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"{EMULATED_BF16}: --precision auto trains in fp32 here", stacklevel=2)
    # refuse a new run over another run's checkpoints, or a resume with other settings, before any work
    run_settings = begin_run(out, config, is_main, accelerator.wait_for_everyone)
    with accelerator.main_process_first():
        task.prepare(is_main)
    lengths = np.asarray(task.lengths())

    set_seed(config.seed)
    model = task.build_model()
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    optimizer = adamw(param_groups(model, config.weight_decay), config.learning_rate, config.adam_eps)
    processes = accelerator.num_processes
    per_step = config.batch_size * config.grad_accum * processes
    micro_per_epoch = math.ceil(len(lengths) / config.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // (config.grad_accum * processes))
    budget = None
    if config.time_budget_seconds:
        # the schedule follows elapsed time; epochs are not counted (max_steps, if given, still caps the run)
        budget = TimeBudget(config.time_budget_seconds)
        total_steps = config.max_steps if config.max_steps > 0 else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: budget.factor)
    else:
        total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * steps_per_epoch)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    state = TrainState()
    if config.resume:
        state = load_checkpoint(out, model, optimizer, scheduler) or state
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    autocast = autocast_dtype(accelerator)

    if budget:  # what the final outputs import would otherwise be paid from the budget
        import matplotlib.pyplot  # noqa: F401
    started = time.perf_counter() - state.elapsed
    window_loss, window_n = state.window_loss, state.window_n  # a resume continues the checkpoint's window
    last_eval: tuple[int, Any] | None = None  # (step, what evaluate returned): the final outputs reuse it

    def evaluate_into_history() -> tuple[int, Any] | None:
        evaluated = None
        if is_main:
            t0 = time.perf_counter()
            metrics, payload = task.evaluate(accelerator.unwrap_model(model), autocast)
            state.history.append(_eval_entry(state, time.perf_counter() - started, time.perf_counter() - t0, metrics))
            evaluated = (state.step, payload)
            if budget:
                budget.last_eval_seconds = time.perf_counter() - t0
        model.train()
        accelerator.wait_for_everyone()
        return evaluated

    def budget_used() -> float:
        """Share of the time budget used: the main process's clock and reserve (only it evaluates), so that
        every process takes the same learning rate and stops at the same step."""
        used = budget.progress(time.perf_counter() - started)
        if processes > 1:
            from accelerate.utils import broadcast

            used = broadcast(torch.tensor([used], dtype=torch.float64, device=device)).item()
        return used

    def finished() -> bool:
        if total_steps is not None and state.step >= total_steps:
            return True
        return budget is not None and budget_used() >= 1.0

    plan = f"{total_steps:,} steps" if total_steps else f"time budget {config.time_budget}"
    bar = progress_bar(f"training ({len(lengths):,} {task.unit}, {plan})", total_steps, enabled=is_main, unit="step")
    bar.advance(state.step)
    model.train()
    try:
        while not finished():
            batches = epoch_batches(lengths, config.batch_size, config.seed, state.epoch)
            usable = len(batches) - len(batches) % (config.grad_accum * processes)
            position = state.epoch_batches_done
            while position < usable and not finished():
                group = batches[position:position + config.grad_accum * processes]
                for micro in group[accelerator.process_index::processes]:
                    with accelerator.autocast():  # also for tasks that call parts of the model directly
                        loss = task.loss(model, micro, device, state.epoch) / config.grad_accum
                    accelerator.backward(loss)
                    window_loss += loss.item() * config.grad_accum * len(micro)
                    window_n += len(micro)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                if budget:  # the learning rate for this step, from the share of the budget used so far
                    budget.factor = linear_factor(budget_used(), config.warmup_ratio)
                    for param_group in optimizer.param_groups:
                        param_group["lr"] = param_group["initial_lr"] * budget.factor
                optimizer.step()
                if not budget:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                position += len(group)
                state.step += 1
                state.epoch_batches_done = position
                bar.advance(1)
                if on_step:
                    on_step(state.step)
                if state.step % config.log_steps == 0 or finished():
                    elapsed = time.perf_counter() - started
                    lr = optimizer.param_groups[0]["lr"] if budget else scheduler.get_last_lr()[0]
                    state.history.append({"step": state.step, "epoch": state.epoch,
                                          "training_loss": window_loss / max(window_n, 1),
                                          "learning_rate": lr, "elapsed": elapsed,
                                          f"{task.unit}_per_s": state.step * per_step / max(elapsed, 1e-9)})
                    window_loss, window_n = 0.0, 0
                if config.eval_steps and state.step % config.eval_steps == 0:
                    last_eval = evaluate_into_history()
                if config.save_steps and state.step % config.save_steps == 0:
                    state.elapsed = time.perf_counter() - started
                    state.window_loss, state.window_n = window_loss, window_n
                    save_checkpoint(accelerator, out, model, optimizer, scheduler, state, config.keep_checkpoints,
                                    run_settings)
                    if budget:
                        budget.last_save_seconds = time.perf_counter() - started - state.elapsed
            if position >= usable:
                state.epoch += 1
                state.epoch_batches_done = 0
                if not config.eval_steps:
                    last_eval = evaluate_into_history()
    except KeyboardInterrupt:
        bar.close()
        raise KeyboardInterrupt(f"interrupted at step {state.step}; continue with --resume "
                                f"(last checkpoint in {out / 'checkpoints'})") from None
    bar.close()
    state.elapsed = time.perf_counter() - started
    if not (config.save_steps and state.step % config.save_steps == 0):
        state.window_loss, state.window_n = window_loss, window_n
        save_checkpoint(accelerator, out, model, optimizer, scheduler, state, config.keep_checkpoints, run_settings)
    summary: dict = {}
    if is_main:
        reused = last_eval if last_eval and last_eval[0] == state.step else None
        summary = _finish(task, accelerator.unwrap_model(model), state, out, reused, autocast, started)
    accelerator.wait_for_everyone()
    return summary


def _finish(task: Task, model, state: TrainState, out: Path, reused: tuple[int, Any] | None, autocast,
            started: float) -> dict:
    """Final dev metrics (reusing `reused`, an evaluation of this very step: (step, what evaluate returned,
    which may be None)), the task's outputs, history.json, metrics.json and learning_curve.png; returns what
    metrics.json holds."""
    eval_seconds = sum(h.get("eval_seconds", 0.0) for h in state.history)  # evaluations inside state.elapsed
    if reused is not None:
        evaluated = reused[1]
        metrics = {k: v for k, v in state.history[-1].items() if k not in EVAL_KEYS}
    else:
        t0 = time.perf_counter()
        metrics, evaluated = task.evaluate(model, autocast)
        seconds = time.perf_counter() - t0  # elapsed, as for the evaluations while training, includes this one
        state.history.append(_eval_entry(state, state.elapsed + seconds, seconds, metrics))
    extra = task.finish(model, out, metrics, evaluated)
    atomic_write_json(out / "history.json", state.history)
    plot_learning_curve(state.history, out / "learning_curve.png", task.curve_metric)
    plot_time_to_accuracy(state.history, out / "time_to_accuracy.png", task.curve_metric)
    # run_seconds: from the first step to the last file written (what a time budget bounds)
    summary = {**metrics, "train_seconds": state.elapsed, "eval_seconds_while_training": eval_seconds,
               "run_seconds": time.perf_counter() - started, "steps": state.step, **extra}
    atomic_write_json(out / "metrics.json", summary)
    return summary


EVAL_KEYS = ("step", "epoch", "elapsed", "eval_seconds", "train_seconds")


def _eval_entry(state: TrainState, elapsed: float, eval_seconds: float, metrics: dict) -> dict:
    """A history entry for an evaluation; `train_seconds` is the training time so far, evaluations excluded
    (the time-to-accuracy clock, as DAWNBench counts it)."""
    spent = sum(h.get("eval_seconds", 0.0) for h in state.history)
    return {"step": state.step, "epoch": state.epoch, "elapsed": elapsed, "eval_seconds": eval_seconds,
            "train_seconds": elapsed - spent - eval_seconds, **metrics}


def mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for a --precision; auto: bf16 where the hardware runs it natively."""
    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "no"
    return {"fp32": "no"}.get(precision, precision)


def autocast_dtype(accelerator) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)


def autocast_dtype_for(precision: str) -> torch.dtype | None:
    """The autocast dtype a run with this --precision uses on this machine (None: fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(precision))


def adamw(groups: list[dict], lr: float, eps: float) -> torch.optim.AdamW:
    """AdamW on torch's fused kernel (CPU since torch 2.4, CUDA): one pass over every parameter. torch's
    default on CPU is its per-tensor loop, several passes over each tensor: 77-92 ms a step for MiniLM's
    22.6M parameters on 2 cores, against 13-15 fused (bench/adamw.py; BENCHMARKS.md, "Fused AdamW")."""
    return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=True)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
