"""Rich output for the commands: a progress bar over denoising steps, quiet off a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter:
    """What a command tells the person running it; silent with --quiet."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.out = Console(highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.out.print(message, markup=False)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        if self.quiet or not self.console.is_terminal:
            yield
            return
        with self.console.status(message):
            yield

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[StepReporter]:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            disable=self.quiet or not self.console.is_terminal,
        )
        with progress:
            task = progress.add_task(description, total=total)
            yield StepReporter(progress, task)


class StepReporter:
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress = progress
        self._task = task

    def __call__(self, step: int, total: int) -> None:
        self._progress.update(self._task, completed=step, total=total)  # type: ignore[arg-type]

    def describe(self, description: str) -> None:
        """What the bar says beside it (a remote job: queued, or its phase)."""
        self._progress.update(self._task, description=description)  # type: ignore[arg-type]
