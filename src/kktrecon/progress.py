"""Progress for long stages: a rich bar on a terminal, a plain line every ~15 s in a log; silent when disabled.

A log (CI, a pipe, nohup) cannot show a live bar: rich would print the bar once, at the end, after
minutes of silence. There each stage prints one line per interval instead (what it has done, its
rate, the time left, its loss terms) and a last line when it ends. ``KKTRECON_PROGRESS_EVERY`` sets the
interval in seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["Bar", "LogBar", "progress_bar"]

#: Seconds between two lines of a stage's progress in a log.
LOG_EVERY_S = 15.0


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


class LogBar(Bar):
    """Progress as plain lines, at most one per ``every_s`` seconds, for consoles that are no terminal."""

    def __init__(
        self,
        description: str,
        *,
        total: int,
        completed: int,
        console: Console,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(None, None)
        self.description, self.total, self.done, self.first = description, total, completed, completed
        self.console, self.every_s, self.clock = console, every_s, clock
        self.start = self.last = clock()
        self.postfix = ""

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.clock() - self.last >= self.every_s:
            self.emit()

    def update(self, *, postfix: str) -> None:
        self.postfix = postfix

    def emit(self, *, final: bool = False) -> None:
        now = self.last = self.clock()
        elapsed = now - self.start
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        if final:
            when = f"done in {_clock(elapsed)}"
        else:
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            when = f"{_clock(elapsed)} elapsed, ~{_clock(left)} left"
        speed = f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.2g}/s"
        parts = [f"{self.description}: {self.done}/{self.total}", speed, when, self.postfix]
        self.console.print(" · ".join(p for p in parts if p), markup=False, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: no rate yet
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _log_every() -> float:
    try:
        return max(0.0, float(os.environ.get("KKTRECON_PROGRESS_EVERY", LOG_EVERY_S)))
    except ValueError:
        return LOG_EVERY_S


@contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True, completed: int = 0) -> Iterator[Bar]:
    """A progress bar with elapsed and remaining time and a free-text ``postfix`` (the loss terms)."""
    if not enabled:
        yield Bar(None, None)
        return
    console = Console()
    if not console.is_terminal:
        bar = LogBar(description, total=total, completed=completed, console=console, every_s=_log_every())
        yield bar
        bar.emit(final=True)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[postfix]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, postfix="")
        yield Bar(progress, task)
