"""Progress bars for long stages (rich), silent when disabled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["Bar", "progress_bar"]


class Bar:
    """A handle on one task of a rich progress display (no-op when ``progress`` is None)."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, *, postfix: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, postfix=postfix)


@contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True, completed: int = 0) -> Iterator[Bar]:
    """A progress bar with elapsed and remaining time and a free-text ``postfix`` (the loss terms)."""
    if not enabled:
        yield Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[postfix]}"),
    )
    console = Console()
    if not console.is_terminal:  # logs (CI, pipes): wide enough that the loss terms are not cut
        console = Console(width=max(console.width, 140))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, postfix="")
        yield Bar(progress, task)
