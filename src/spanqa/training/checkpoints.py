"""Atomic checkpoints of a training run (weights, optimizer, scheduler, RNG, position) and exact resume.

Only our own files are read back: weights as safetensors, the optimizer state with
`torch.load(weights_only=True)` (tensors and plain containers, never arbitrary pickled objects).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spanqa.files import atomic_write_json, read_json
from spanqa.training.config import ConfigError

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """Where a run is; saved with every checkpoint."""

    step: int = 0             # optimizer steps done
    epoch: int = 0
    epoch_batches_done: int = 0  # micro-batches (all processes together) consumed in this epoch
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


def clear_checkpoints(out: Path) -> None:
    """A fresh run starts without the checkpoints of an earlier one."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def save_checkpoint(accelerator, out: Path, model, optimizer, scheduler, state: TrainState) -> None:
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


def load_checkpoint(out: Path, model, optimizer, scheduler) -> TrainState | None:
    """Restore the latest checkpoint into model, optimizer and scheduler; None when there is none."""
    from safetensors.torch import load_file

    latest = out / CHECKPOINTS / "latest.json"
    if not latest.exists():
        return None
    folder = out / CHECKPOINTS / read_json(latest)["checkpoint"]
    weights = load_file(folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied weights (a masked-LM decoder tied to the word embeddings) are saved once, under one name
    tied = {k for k in missing if _tied(model, k)}
    if unexpected or [m for m in missing if "position_ids" not in m and m not in tied]:
        raise ConfigError(f"{folder}: checkpoint does not match the model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); resume with the same --model")
    saved = torch.load(folder / "training_state.pt", weights_only=True)  # our own file, tensors only
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return TrainState(**read_json(folder / "state.json"))


def _tied(model, name: str) -> bool:
    """Is parameter `name` the same tensor as another parameter that was loaded?"""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target for k, p in params.items() if k != name)
