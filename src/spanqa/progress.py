"""Progress bars with rates and ETA (Rich), silent when disabled."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, description: str, total: int | None, enabled: bool, unit: str):
        self.progress = None
        if enabled:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                                     TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self.task = self.progress.add_task(description, total=total, rate="")
            self.unit = unit
            self.progress.start()

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)
            speed = self.progress.tasks[0].speed
            if speed:
                self.progress.update(self.task, rate=f"{speed:,.1f} {self.unit}/s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def progress_bar(description: str, total: int | None, enabled: bool = True, unit: str = "it") -> _Bar:
    """A started progress bar; call `advance(n)` and finally `close()`."""
    return _Bar(description, total, enabled, unit)
