"""What every command module shares: the Typer app, the console for messages, and `fail`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fine-tune, evaluate and serve extractive question-answering readers, and adapt their encoders.")
console = Console(stderr=True, soft_wrap=True)
PRECISION_HELP = "fp32, or bf16 autocast for torch models (~1.5x faster on CPUs with AVX512-BF16/AMX)"

# The training engine's flags, one definition for `train`, `classify train` and `pretrain`
TimeBudget = Annotated[Optional[str], typer.Option(
    help="e.g. 30m or 1h30m: the learning-rate schedule follows elapsed time and the run ends, evaluated and written, within it")]
Dropout = Annotated[Optional[float], typer.Option(
    help="Dropout while training, every dropout of the model (default: the model's own; the saved model keeps it). "
         "0 for short budgets: on CPUs also faster steps (1.4x for QA on 2 cores: attention with dropout leaves its fused kernel)")]
TrainPrecision = Annotated[Optional[str], typer.Option(
    help="auto | fp32 | bf16 | fp16 (auto: bf16 on GPUs that have it, else fp16; on CPUs bf16 with AVX512-BF16/AMX, else fp32)")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output-dir")]
Force = Annotated[bool, typer.Option("--force", help="Start over in a folder that holds a run's checkpoints (they are "
                                     "deleted), or --resume with settings that differ from the run's")]
KeepCheckpoints = Annotated[Optional[int], typer.Option(help="How many of the newest checkpoints to keep (default 2): "
                                                             "a damaged one falls back to the one before")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the hub")]


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` (no markup interpreted in it) and exit with `code`."""
    console.print("[bold red]error:[/] ", end="", markup=True, highlight=False)
    console.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as `warning: message` lines (a checkpoint fallback, a resume with other settings, ...)."""
    console.print("[yellow]warning:[/] ", end="", markup=True, highlight=False)
    console.print(str(message), markup=False, highlight=False)


warnings.showwarning = _show_warning

SWITCHES = ("resume", "force", "trust_remote_code", "from_scratch", "pre_ln", "whole_word_mask", "version_2", "regression",
            "answer_windows_only")


def run_training(build_config, train, recipe: str | None, config: str | None, flags: dict) -> tuple:
    """Build a run's settings from recipe < YAML < flags and train it, turning every error a user can fix
    into a message; returns (settings, metrics). On/off flags count as given only when on."""
    from spanqa.data.documents import CollectionError
    from spanqa.data.sources import DataError
    from spanqa.models import ModelError
    from spanqa.qa.windows import WindowError
    from spanqa.training.config import ConfigError

    flags = {k: (v or None) if k in SWITCHES else v for k, v in flags.items()
             if k not in ("recipe", "config") and not callable(v)}
    try:
        settings = build_config(recipe, config, **flags)
        return settings, train(settings)
    except (ConfigError, DataError, ModelError, CollectionError, WindowError) as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        fail(str(e) or "interrupted", 130)


def load_index(folder: Path):
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.index import Index

    try:
        return Index.load(folder)
    except CollectionError as e:
        fail(str(e))


def load_store(location: str, **kwargs):
    """The document store at `location`: a postgresql:// URL (?schema=NAME optional) or an index folder."""
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.stores import open_store

    try:
        return open_store(str(location), **kwargs)
    except CollectionError as e:
        fail(str(e))
    except ImportError as e:
        fail(f"the PostgreSQL store needs its extra ({e.name} is missing): pip install 'spanqa[postgres]'")


def load_collection(index: Path | None, store: str | None, **kwargs):
    """The collection of `--index DIR` or `--store URL` (one of them), or None when neither is given."""
    if index is not None and store is not None:
        fail("give a collection with --index DIR or --store URL, not both")
    if store is not None:
        return load_store(store, **kwargs)
    return load_index(index) if index is not None else None


STORE_HELP = "A document store: postgresql://user@host/db[?schema=NAME] (or an index folder)"
