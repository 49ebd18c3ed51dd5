"""Settings as dataclasses, loadable from YAML, with named recipes for common runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .decode import DecodeSettings
from .windows import WindowSettings


class ConfigError(ValueError):
    """A setting that cannot work."""


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs; `spanqa train --help` documents each flag."""

    model: str = "all-MiniLM-L6-v2"
    train_file: str | None = None      # default: train-v1.1 in the data directory ($SPANQA_DATA)
    dev_file: str | None = None        # default: dev-v1.1 in the data directory, unless valid_split > 0
    valid_split: float = 0.0           # hold out this share of the training questions instead
    output_dir: str = "runs/reader"
    epochs: float = 2.0
    max_steps: int = -1                # > 0: stop after this many optimizer steps
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    seed: int = 42
    precision: str = "auto"            # auto | fp32 | bf16 | fp16 (auto: bf16 where the GPU or CPU has it)
    save_steps: int = 500
    eval_steps: int = 0                # 0: evaluate at the end of each epoch
    eval_batch_size: int = 64
    resume: bool = False
    version_2: bool = False            # train with unanswerable questions (CLS labels)
    negatives: int = 0                 # > 0: per question, that many retrieved wrong passages as unanswerable
    trust_remote_code: bool = False
    log_steps: int = 20

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if not 0 <= self.valid_split < 1:
            raise ConfigError("valid_split must be in [0, 1)")
        for name in ("batch_size", "grad_accum", "max_seq_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("give epochs > 0 or max_steps > 0")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate must be > 0")
        if self.negatives < 0:
            raise ConfigError("negatives must be >= 0")
        if self.negatives:
            self.version_2 = True  # a wrong passage is labelled "no answer" (CLS)

    @property
    def windows(self) -> WindowSettings:
        return WindowSettings(self.max_seq_length, self.doc_stride, self.max_query_length)

    @property
    def decoding(self) -> DecodeSettings:
        return DecodeSettings(n_best=self.n_best, max_answer_length=self.max_answer_length, version_2=self.version_2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


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
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path_or_recipe}: expected a mapping of settings")
    return values


def build_config(recipe: str | None = None, config: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe < YAML config < explicit overrides (None means not given)."""
    values: dict[str, Any] = {}
    for source in (recipe, config):
        if source:
            values.update(load_yaml(source))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values, source=config or recipe or "flags")


def data_dir() -> Path:
    """Where the default SQuAD files live: $SPANQA_DATA, else ../shared/data/squad beside the project."""
    env = os.environ.get("SPANQA_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "squad"


def default_data_file(kind: str) -> str:
    """The train or dev SQuAD v1.1 file in the data directory."""
    folder = data_dir()
    names = {"train": ["train-v1.1.json", "train-v1.1.json.gz", "train-v1.1.reconstructed.json.gz"],
             "dev": ["dev-v1.1.json", "dev-v1.1.json.gz"]}[kind]
    for name in names:
        if (folder / name).exists():
            return str(folder / name)
    raise ConfigError(f"no SQuAD {kind} file in {folder} (looked for {', '.join(names)}); "
                      f"set SPANQA_DATA to a folder that has one, or pass --{kind}-file")
