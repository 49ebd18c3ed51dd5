"""The `spanqa` command line: each command parses its options and calls the library.

One module per command group registers its commands on the shared Typer app.
"""

from __future__ import annotations

import sys

from spanqa.cli import adapt, classify, collections, data, qa, use  # noqa: F401  (registers the commands)
from spanqa.cli.common import app, console


def main() -> None:
    """Entry point of the `spanqa` console script."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
