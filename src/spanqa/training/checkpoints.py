"""Atomic checkpoints of a training run (weights, optimizer, scheduler, RNG, position) and exact resume.

Only our own files are read back: weights as safetensors, the optimizer state with
`torch.load(weights_only=True)` (tensors and plain containers, never arbitrary pickled objects).
Each checkpoint records the sha256 of its files, checked before a resume uses it; the last
`keep_checkpoints` are kept, so a damaged one falls back to the one before. Each checkpoint's `run.json`
records the settings it was made with (data files by content), so `--resume` with other settings is
refused, and a new run into a folder that holds another run's checkpoints is refused unless asked
(`--force`).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spanqa.data.cache import file_sha256
from spanqa.files import atomic_write_json, read_json, remove_stale, remove_stale_writes
from spanqa.training.config import ConfigError, LoopConfig

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"          # the settings a checkpoint was made with
CHECKSUMS = "checksums.json"   # sha256 of every other file of a checkpoint
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# settings that change neither the weights nor the training losses: a resume may change them
FREE_TO_CHANGE = frozenset({"resume", "force", "output_dir", "eval_batch_size", "save_steps", "keep_checkpoints",
                            "log_steps", "trust_remote_code"})


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used and an older one was (or a resume goes on with other settings)."""


@dataclass
class TrainState:
    """Where a run is; saved with every checkpoint."""

    step: int = 0             # optimizer steps done
    epoch: int = 0
    epoch_batches_done: int = 0  # micro-batches (all processes together) consumed in this epoch
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0
    window_loss: float = 0.0  # training-loss sum and rows since the last log: the first log after a
    window_n: int = 0         # resume averages the same steps as an uninterrupted run's


def checkpoint_folders(out: Path) -> list[Path]:
    """The complete checkpoints of the run in `out`, newest first."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def begin_run(out: Path, config: LoopConfig, is_main: bool, wait=lambda: None) -> dict:
    """Before any training: refuse a new run into another run's checkpoints (unless `force`) and a resume
    with other settings (unless `force`); then (main process) clean what a killed save left and clear the
    old checkpoints of a forced new run. Returns the run's settings, for `save_checkpoint` to record."""
    existing = checkpoint_folders(out)
    identity = run_identity(config)
    if not config.resume and existing and not config.force:
        raise ConfigError(f"{out} holds the checkpoints of an earlier run (the last at step "
                          f"{existing[0].name.split('-')[1]}): continue it with --resume, start over with --force "
                          "(its checkpoints are deleted), or choose another --output-dir")
    if config.resume and existing:
        saved = _saved_identity(existing[0])
        differing = [] if saved is None else differences(saved, identity)
        if differing and not config.force:
            raise ConfigError(f"--resume: these settings differ from those of the run in {out}:\n  "
                              + "\n  ".join(differing) + "\nresume with the run's settings, add --force to go on "
                              "with the new ones anyway, or start a new run with another --output-dir")
        if differing:
            warnings.warn(f"resuming {out} with other settings (--force): {'; '.join(differing)}",
                          CheckpointWarning, stacklevel=2)
    wait()
    root = out / CHECKPOINTS
    started = time.time()  # this run owns `out`: what was written into it before now, nobody is writing
    if is_main:  # what a killed run's atomic writes left (latest.json, outputs), also when nothing is written again
        remove_stale_writes(out, older_than=started)
    if is_main and root.is_dir():
        # a killed save leaves .tmp-checkpoint-N: older than this run, so nobody is writing it
        remove_stale(root, re.compile(r"\.tmp-checkpoint-\d+"), older_than=started)
        remove_stale_writes(root, older_than=started)
        if not config.resume:
            for folder in existing:
                shutil.rmtree(folder, ignore_errors=True)
            (root / "latest.json").unlink(missing_ok=True)
    return {"identity": identity, "config": config.to_dict()}


def save_checkpoint(accelerator, out: Path, model, optimizer, scheduler, state: TrainState, keep: int = 2,
                    run: dict | None = None) -> None:
    """Write checkpoint-<step> (files, the run's settings `run` from `begin_run`, then their checksums) into
    a temporary folder, rename it into place, point `latest.json` at it, keep only the newest `keep`."""
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
    if run is not None:
        atomic_write_json(tmp / RUN_FILE, run)
    atomic_write_json(tmp / CHECKSUMS, {f.name: file_sha256(f) for f in sorted(tmp.iterdir())
                                        if f.is_file() and f.name != CHECKSUMS})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_json(root / "latest.json", {"checkpoint": final.name})
    for old in checkpoint_folders(out)[max(keep, 1):]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, model, optimizer, scheduler) -> TrainState | None:
    """Restore the newest intact checkpoint into model, optimizer and scheduler (a damaged one is reported
    with a `CheckpointWarning` and the one before is used); None when there is none. `ConfigError` when
    no checkpoint is intact, or when they do not fit the model."""
    folders = checkpoint_folders(out)
    if not folders:
        return None
    damaged = []
    for folder in folders:
        try:
            verify_checkpoint(folder)
            state = _restore(folder, model, optimizer, scheduler)
        except DamagedCheckpoint as e:
            damaged.append(str(e))
            continue
        if damaged:
            warnings.warn(f"{'; '.join(damaged)}; resuming from {folder} (step {state.step}) instead",
                          CheckpointWarning, stacklevel=2)
        return state
    raise ConfigError("no intact checkpoint to resume from:\n  " + "\n  ".join(damaged)
                      + "\nstart the run over with --force (its checkpoints are deleted)")


class DamagedCheckpoint(Exception):
    """A checkpoint whose files are missing, changed since they were written, or unreadable."""


def verify_checkpoint(folder: Path) -> None:
    """`DamagedCheckpoint` naming the first file whose sha256 differs from the one recorded at save."""
    try:
        recorded = read_json(folder / CHECKSUMS)
    except FileNotFoundError:  # written before checksums were recorded: nothing to compare
        return
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{folder / CHECKSUMS}: unreadable ({e})") from None
    if not isinstance(recorded, dict):
        raise DamagedCheckpoint(f"{folder / CHECKSUMS}: not a checksum list")
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path}: missing from the checkpoint")
        if file_sha256(path) != digest:
            raise DamagedCheckpoint(f"{path}: damaged (its sha256 differs from the one recorded when it was saved)")


def _restore(folder: Path, model, optimizer, scheduler) -> TrainState:
    from safetensors.torch import load_file

    try:
        weights = load_file(folder / "model.safetensors")
    except Exception as e:  # noqa: BLE001  safetensors' own error type, OSError, ...
        raise DamagedCheckpoint(f"{folder / 'model.safetensors'}: unreadable ({e})") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied weights (a masked-LM decoder tied to the word embeddings) are saved once, under one name
    tied = {k for k in missing if _tied(model, k)}
    if unexpected or [m for m in missing if "position_ids" not in m and m not in tied]:
        raise ConfigError(f"{folder}: checkpoint does not match the model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); resume with the same --model")
    try:
        saved = torch.load(folder / "training_state.pt", weights_only=True)  # our own file, tensors only
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        return TrainState(**read_json(folder / "state.json"))
    except Exception as e:  # noqa: BLE001  a damaged pickle or JSON raises anything from EOFError to KeyError
        raise DamagedCheckpoint(f"{folder}: unreadable training state ({type(e).__name__}: {e})") from None


def _tied(model, name: str) -> bool:
    """Is parameter `name` the same tensor as another parameter that was loaded?"""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target for k, p in params.items() if k != name)


# --- what a run is made of ------------------------------------------------------------------------------

def run_identity(config: LoopConfig) -> dict[str, Any]:
    """The settings that shape the trained weights, files and folders by their content (a data file
    moved elsewhere is the same data; the same path with other bytes is not)."""
    return {k: _identity(v) for k, v in config.to_dict().items() if k not in FREE_TO_CHANGE}


def _identity(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_identity(v) for v in value]
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        try:
            if path.is_file():
                return {"file": value, "sha256": file_sha256(path)}
            if path.is_dir():
                return {"folder": value, "files": _listing(path)}
        except OSError:
            pass
    return value


def _listing(folder: Path) -> str:
    """A digest of a folder's file names and sizes (its content would cost a read of every file)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(folder)}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()


def _saved_identity(checkpoint: Path) -> dict | None:
    try:
        return read_json(checkpoint / RUN_FILE)["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # checkpoints of an older spanqa: nothing to compare


def differences(saved: dict, now: dict) -> list[str]:
    """`key: saved -> now` for each setting that differs (files compared by content)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "(not set)"), now.get(key, "(not set)")
        if _comparable(a) != _comparable(b):
            out.append(f"{key}: {_shown(a)} -> {_shown(b)}")
    return out


def _comparable(value: Any) -> Any:
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return value.get("sha256") or value.get("files")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        if "sha256" in value:
            return f"{value['file']} (sha256 {value['sha256'][:12]})"
        return f"{value['folder']}/ (files {value['files'][:12]})"
    return json.dumps(value)
