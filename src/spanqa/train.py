"""Fine-tuning: a plain PyTorch loop through `accelerate` (CPU, one GPU, or many under
`accelerate launch`/`torchrun`), with atomic checkpoints, exact resume, history and a learning curve.

The epoch's batch order is a pure function of (seed, epoch), so a resumed run skips exactly the
batches already consumed: no step is lost or repeated.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import ConfigError, TrainConfig, default_data_file
from .data import DataError, Dataset, Example, ExampleStream, load_dataset
from .decode import DecodeSettings, decode
from .evaluate import write_predictions, score_examples, calibrate_threshold
from .io import atomic_write_json, read_json
from .models import load_qa_model, load_tokenizer
from .progress import progress_bar
from .reader import SETTINGS_FILE, ReaderSettings, compute_logits, model_inputs
from .windows import Windows, cached_windows, check_settings, streamed_windows

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """Where a run is; saved with every checkpoint."""

    step: int = 0             # optimizer steps done
    epoch: int = 0
    epoch_batches_done: int = 0  # micro-batches (all processes together) consumed in this epoch
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


def prepare_data(config: TrainConfig) -> tuple[Dataset | ExampleStream, Dataset]:
    """The training data and the validated dev set; clear errors before any training starts.

    A local training file stays a stream, read and validated while its windows are built (memory does
    not grow with it); it is held in memory only to be split (`valid_split`), extended with hard
    negatives, or when it comes from the hub.
    """
    train_file = config.train_file or default_data_file("train")
    stream = ExampleStream(train_file)
    train: Dataset | ExampleStream = stream
    dev: Dataset | None = None
    if stream.path is None or config.valid_split > 0 or config.negatives:
        train = load_dataset(train_file)
        if config.valid_split > 0:
            train, dev = _hold_out(train, config.valid_split, config.seed)
        if config.max_train_samples:
            train.examples = train.examples[:config.max_train_samples]
        _check_training_set(train.source, len(train.examples), sum(not e.has_answer for e in train.examples), config)
        if config.negatives:
            from .collection import hard_negatives

            train.examples = train.examples + hard_negatives(train.examples, config.negatives)
    if dev is None:
        dev = load_dataset(config.dev_file or default_data_file("dev"), split="validation")
    if config.max_eval_samples:
        dev.examples = dev.examples[:config.max_eval_samples]
    if not any(e.has_answer for e in dev.examples):
        raise DataError(f"{dev.source}: the dev set has no answers to score against "
                        "(use `spanqa predict` for data without answers)")
    return train, dev


def _hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(train.examples))
    n_dev = max(1, int(len(order) * fraction))
    dev_idx, train_idx = np.sort(order[:n_dev]), np.sort(order[n_dev:])
    return (Dataset(train.source, [train.examples[i] for i in train_idx], train.version_2),
            Dataset(train.source + f" (held out {fraction:.0%})", [train.examples[i] for i in dev_idx],
                    train.version_2))


def _check_training_set(source: str, examples: int, unanswerable: int, config: TrainConfig) -> None:
    if not examples:
        raise DataError(f"{source}: the training set is empty")
    if unanswerable and not config.version_2:
        raise DataError(f"{source}: {unanswerable} unanswerable questions; pass --version-2 to train with them")


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


def train(config: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Fine-tune `config.model` and write the reader folder; returns the final metrics."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    out = Path(config.output_dir)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    check_settings(tokenizer, config.windows, _max_positions(config))
    train_set, dev_set = prepare_data(config)

    # accelerate keeps one precision per process; reset it (not the distributed state), as transformers'
    # Trainer does, so that a second train() in the same process (notebook, tests) may use another
    AcceleratorState._reset_state()
    # cpu=True on CPU-only machines: without it accelerate ignores torchrun and every rank trains alone
    accelerator = Accelerator(mixed_precision=_mixed_precision(config.precision), cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    with accelerator.main_process_first():
        train_w = _train_windows(train_set, tokenizer, config, is_main)
        dev_w = _windows("dev windows", dev_set.examples, tokenizer, config, is_main)

    set_seed(config.seed)
    model = _load_model(config)  # re-created after seeding: the new QA head is reproducible
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate,
                                  eps=config.adam_eps)
    lengths = np.asarray(train_w.attention_mask).sum(axis=1)
    per_step = config.batch_size * config.grad_accum * accelerator.num_processes
    micro_per_epoch = math.ceil(len(train_w) / config.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // (config.grad_accum * accelerator.num_processes))
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    state = TrainState()
    if config.resume:
        state = _load_checkpoint(out, model, optimizer, scheduler) or state
    elif is_main:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    started = time.perf_counter() - state.elapsed
    window_loss, window_n = 0.0, 0
    last_eval: tuple[int, list] | None = None  # (step, predictions): the final evaluation reuses it
    bar = progress_bar(f"training ({len(train_w):,} windows, {total_steps:,} steps)", total_steps,
                       enabled=is_main, unit="step")
    bar.advance(state.step)
    model.train()
    try:
        while state.step < total_steps:
            batches = epoch_batches(lengths, config.batch_size, config.seed, state.epoch)
            usable = len(batches) - len(batches) % (config.grad_accum * accelerator.num_processes)
            position = state.epoch_batches_done
            while position < usable and state.step < total_steps:
                group = batches[position:position + config.grad_accum * accelerator.num_processes]
                mine = group[accelerator.process_index::accelerator.num_processes]
                for micro in mine:
                    loss = _train_loss(model, train_w, micro, device) / config.grad_accum
                    accelerator.backward(loss)
                    window_loss += loss.item() * config.grad_accum * len(micro)
                    window_n += len(micro)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                position += len(group)
                state.step += 1
                state.epoch_batches_done = position
                bar.advance(1)
                if on_step:
                    on_step(state.step)
                if state.step % config.log_steps == 0 or state.step == total_steps:
                    state.history.append(_log_entry(state, started, window_loss / max(window_n, 1),
                                                    scheduler.get_last_lr()[0], per_step))
                    window_loss, window_n = 0.0, 0
                if config.eval_steps and state.step % config.eval_steps == 0:
                    last_eval = _evaluate_into_history(accelerator, model, dev_set, dev_w, config, state, started)
                if config.save_steps and state.step % config.save_steps == 0:
                    state.elapsed = time.perf_counter() - started
                    _save_checkpoint(accelerator, out, model, optimizer, scheduler, state)
            if position >= usable:
                state.epoch += 1
                state.epoch_batches_done = 0
                if not config.eval_steps:
                    last_eval = _evaluate_into_history(accelerator, model, dev_set, dev_w, config, state, started)
    except KeyboardInterrupt:
        bar.close()
        raise KeyboardInterrupt(f"interrupted at step {state.step}; continue with --resume "
                                f"(last checkpoint in {out / CHECKPOINTS})") from None
    bar.close()
    state.elapsed = time.perf_counter() - started
    if not (config.save_steps and state.step % config.save_steps == 0):
        _save_checkpoint(accelerator, out, model, optimizer, scheduler, state)
    metrics = {}
    if is_main:
        evaluated = last_eval[1] if last_eval and last_eval[0] == state.step else None
        metrics = _finish(accelerator.unwrap_model(model), tokenizer, dev_set, dev_w, config, state, out, evaluated)
    accelerator.wait_for_everyone()
    return metrics


def _mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for a --precision; auto: bf16 where the hardware runs it natively."""
    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "no"
    return {"fp32": "no"}.get(precision, precision)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast trains ~1.5x faster (BENCHMARKS.md); elsewhere it is emulated."""
    # torch exposes these CPU checks only as private helpers; a missing one means "no"
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def _max_positions(config: TrainConfig) -> int | None:
    from transformers import AutoConfig

    from .models import resolve_model

    model_config = AutoConfig.from_pretrained(resolve_model(config.model), trust_remote_code=config.trust_remote_code)
    return getattr(model_config, "max_position_embeddings", None)


def _load_model(config: TrainConfig):
    return load_qa_model(config.model, config.trust_remote_code)


def _windows(label: str, examples: list[Example], tokenizer, config: TrainConfig, show: bool) -> Windows:
    bar = progress_bar(f"{label} ({len(examples):,} questions)", len(examples), enabled=show, unit="q")
    try:
        return cached_windows(examples, tokenizer, config.windows, on_batch=bar.advance)
    finally:
        bar.close()


def _train_windows(train: Dataset | ExampleStream, tokenizer, config: TrainConfig, show: bool) -> Windows:
    if isinstance(train, Dataset):
        return _windows("train windows", train.examples, tokenizer, config, show)
    limit = config.max_train_samples or None
    bar = progress_bar(f"train windows ({Path(train.source).name})", limit, enabled=show, unit="q")
    try:
        windows, held = streamed_windows(train, tokenizer, config.windows, limit, on_batch=bar.advance)
    finally:
        bar.close()
    _check_training_set(train.source, held["examples"], held["unanswerable"], config)
    return windows


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _train_loss(model, windows: Windows, index: np.ndarray, device) -> torch.Tensor:
    index = np.sort(index)
    inputs, (lo, hi) = model_inputs(windows, index, device)
    # labels index the full window; the batch is cut to columns [lo, hi) (CLS is always kept)
    starts = torch.as_tensor(np.asarray(windows.start_positions[index]) - lo, dtype=torch.long, device=device)
    ends = torch.as_tensor(np.asarray(windows.end_positions[index]) - lo, dtype=torch.long, device=device)
    return model(**inputs, start_positions=starts, end_positions=ends).loss


def _log_entry(state: TrainState, started: float, loss: float, lr: float, per_step: int) -> dict:
    elapsed = time.perf_counter() - started
    return {"step": state.step, "epoch": state.epoch, "training_loss": loss, "learning_rate": lr,
            "elapsed": elapsed, "windows_per_s": state.step * per_step / max(elapsed, 1e-9)}


def evaluate_windows(model, examples: list[Example], windows: Windows, decoding: DecodeSettings,
                     batch_size: int, autocast_dtype=None, show: bool = True) -> tuple[dict, list]:
    """Valid loss, token accuracy, EM/F1 and predictions of a model on labelled windows."""
    from .metrics import token_accuracy

    bar = progress_bar(f"evaluating ({len(windows):,} windows)", len(windows), enabled=show, unit="win")
    try:
        start, end = compute_logits(model, windows, batch_size, autocast_dtype=autocast_dtype, on_batch=bar.advance)
    finally:
        bar.close()
    was_training = model.training
    preds = decode(examples, windows, start, end, decoding)
    model.train(was_training)
    metrics = {"valid_loss": _span_loss(start, end, windows),
               **token_accuracy(start, end, np.asarray(windows.start_positions), np.asarray(windows.end_positions)),
               **score_examples(examples, preds)}
    return metrics, preds


def _span_loss(start: np.ndarray, end: np.ndarray, windows: Windows) -> float:
    """Mean of the start and end cross-entropies, as the model's training loss."""
    rows = np.arange(len(start))

    def ce(logits, labels):
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return float((lse - logits[rows, labels]).mean())

    return (ce(start, np.asarray(windows.start_positions)) + ce(end, np.asarray(windows.end_positions))) / 2


def _evaluate_into_history(accelerator, model, dev_set, dev_w, config, state, started) -> tuple[int, list] | None:
    """Evaluate on dev (main process), record it in the history; (step, predictions) for reuse."""
    evaluated = None
    if accelerator.is_main_process:
        t0 = time.perf_counter()
        metrics, preds = evaluate_windows(accelerator.unwrap_model(model), dev_set.examples, dev_w, config.decoding,
                                          config.eval_batch_size, _autocast(accelerator))
        state.history.append({"step": state.step, "epoch": state.epoch, "elapsed": time.perf_counter() - started,
                              "eval_seconds": time.perf_counter() - t0, **metrics})
        evaluated = (state.step, preds)
    model.train()
    accelerator.wait_for_everyone()
    return evaluated


def _autocast(accelerator):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)


# --- checkpoints ---------------------------------------------------------------------------------

def _save_checkpoint(accelerator, out: Path, model, optimizer, scheduler, state: TrainState) -> None:
    """Write checkpoint-<step> then point `latest` at it (atomically); older checkpoints go."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    root = out / CHECKPOINTS
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / "training_state.pt")
    atomic_write_json(tmp / "state.json", state.__dict__)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_json(root / "latest.json", {"checkpoint": final.name})
    for old in root.glob("checkpoint-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out: Path, model, optimizer, scheduler) -> TrainState | None:
    from safetensors.torch import load_file

    latest = out / CHECKPOINTS / "latest.json"
    if not latest.exists():
        return None
    folder = out / CHECKPOINTS / read_json(latest)["checkpoint"]
    weights = load_file(folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ConfigError(f"{folder}: checkpoint does not match the model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); resume with the same --model")
    saved = torch.load(folder / "training_state.pt", weights_only=True)  # our own file, tensors only
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return TrainState(**read_json(folder / "state.json"))


# --- final outputs -------------------------------------------------------------------------------

def _finish(model, tokenizer, dev_set: Dataset, dev_w: Windows, config: TrainConfig, state: TrainState,
            out: Path, evaluated: list | None = None) -> dict:
    """Final dev metrics (reusing an evaluation of this very step), v2 calibration, and every output file;
    returns what metrics.json holds."""
    eval_seconds = sum(h.get("eval_seconds", 0.0) for h in state.history)  # evaluations inside state.elapsed
    if evaluated is None:
        t0 = time.perf_counter()
        metrics, preds = evaluate_windows(model, dev_set.examples, dev_w, config.decoding, config.eval_batch_size)
        state.history.append({"step": state.step, "epoch": state.epoch, "elapsed": state.elapsed,
                              "eval_seconds": time.perf_counter() - t0, **metrics})
    else:
        preds = evaluated
        metrics = {k: v for k, v in state.history[-1].items() if k not in ("step", "epoch", "elapsed", "eval_seconds")}
    decoding = config.decoding
    if config.version_2:
        threshold, calibrated = calibrate_threshold(dev_set.examples, preds)
        decoding = replace(decoding, null_threshold=threshold)
        metrics.update(calibrated)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    atomic_write_json(out / SETTINGS_FILE, {**ReaderSettings(config.windows, decoding).to_dict(),
                                            "training": config.to_dict(), "version_2": config.version_2})
    atomic_write_json(out / "history.json", state.history)
    write_predictions(out, preds, config.version_2)
    summary = {**metrics, "train_seconds": state.elapsed, "eval_seconds_while_training": eval_seconds,
               "steps": state.step, "train_questions": config.max_train_samples}
    atomic_write_json(out / "metrics.json", summary)
    plot_learning_curve(state.history, out / "learning_curve.png")
    return summary


def plot_learning_curve(history: list[dict], path: Path) -> None:
    """Training vs validation loss, and dev F1, against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["training_loss"]) for h in history if "training_loss" in h]
    valid = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    f1 = [(h["step"], h["f1"]) for h in history if "f1" in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for points, label in ((train, "training loss"), (valid, "validation loss")):
        if points:
            ax1.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    if f1:
        ax2.plot(*zip(*f1), marker="o", color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel("dev F1")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
