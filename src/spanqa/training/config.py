"""Settings of the training engine as a dataclass, loadable from YAML, with named recipes.

Each task extends `LoopConfig` with its own fields (QA windows, masked-LM packing, labels, ...);
`build_config` layers defaults < recipe < YAML file < explicit flags for any of them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from spanqa.models import DEFAULT_ENCODER

C = TypeVar("C", bound="LoopConfig")


class ConfigError(ValueError):
    """A setting that cannot work."""


@dataclass
class LoopConfig:
    """What every training run needs, whatever the task; `spanqa train --help` documents each flag."""

    model: str = DEFAULT_ENCODER
    output_dir: str = "runs/reader"
    epochs: float = 2.0
    max_steps: int = -1                # > 0: stop after this many optimizer steps
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    seed: int = 42
    precision: str = "auto"            # auto | fp32 | bf16 | fp16 (auto: bf16 where the GPU or CPU has it)
    save_steps: int = 500
    eval_steps: int = 0                # 0: evaluate at the end of each epoch
    eval_batch_size: int = 64
    resume: bool = False
    force: bool = False                # start over in a folder holding a run's checkpoints, or resume with other settings
    keep_checkpoints: int = 2          # the newest K checkpoints are kept: a damaged one falls back to the one before
    trust_remote_code: bool = False
    log_steps: int = 20
    time_budget: str | None = None     # e.g. "30m": the schedule follows elapsed time and the run ends within it
    dropout: float | None = None       # dropout while training (every Dropout, attention's too); None: the model's own

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "log_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.epochs <= 0 and self.max_steps <= 0 and self.time_budget is None:
            raise ConfigError("give epochs > 0, max_steps > 0 or a time budget")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate must be > 0")
        if self.time_budget is not None and parse_duration(self.time_budget) <= 0:
            raise ConfigError("time_budget must be positive")

    @property
    def time_budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds in "90s", "30m", "1h30m", "2h" or a plain number of seconds; None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not parts or not any(parts.groups()):
        raise ConfigError(f"time budget {text!r}: write it like 90s, 30m, 1h30m or 2h")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("spanqa.recipes").iterdir() if p.name.endswith(".yaml"))


def load_yaml(path_or_recipe: str) -> dict[str, Any]:
    """Keys of a YAML config file, or of a packaged recipe by name."""
    path = Path(path_or_recipe)
    if not path.exists():
        if path_or_recipe not in recipe_names():
            raise ConfigError(f"{path_or_recipe}: no such config file or recipe (recipes: {', '.join(recipe_names())})")
        text = (resources.files("spanqa.recipes") / f"{path_or_recipe}.yaml").read_text()
    else:
        text = path.read_text()
    try:
        values = yaml.safe_load(text) or {}
    except (yaml.YAMLError, RecursionError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else "nested too deeply"
        raise ConfigError(f"{path_or_recipe}: not a YAML file of settings ({why})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path_or_recipe}: expected a mapping of settings")
    return values


def layered_config(cls: type[C], recipe: str | None = None, config: str | None = None, **overrides: Any) -> C:
    """Defaults < recipe < YAML config < explicit overrides (None means not given)."""
    values: dict[str, Any] = {}
    for source in (recipe, config):
        if source:
            values.update(load_yaml(source))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls.from_dict(values, source=config or recipe or "flags")
