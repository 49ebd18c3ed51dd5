"""What every command module shares: the Typer app, the console for messages, and `fail`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fine-tune, evaluate and serve extractive question-answering readers, and adapt their encoders.")
console = Console(stderr=True, soft_wrap=True)
PRECISION_HELP = "fp32, or bf16 autocast for torch models (~1.5x faster on CPUs with AVX512-BF16/AMX)"


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` (no markup interpreted in it) and exit with `code`."""
    console.print("[bold red]error:[/] ", end="", markup=True, highlight=False)
    console.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


def load_index(folder: Path):
    from spanqa.data.documents import CollectionError
    from spanqa.retrieval.index import Index

    try:
        return Index.load(folder)
    except CollectionError as e:
        fail(str(e))
