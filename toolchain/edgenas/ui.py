"""Progress display: the library reports through a small UI object; the CLI passes a rich one, tests a quiet one."""
from __future__ import annotations

from contextlib import contextmanager


PIPE_WIDTH = 250  # columns when the output is a pipe or a log: rich would wrap every table at 80 otherwise


def make_console(stderr: bool = False):
    """A rich Console: the terminal's width on a terminal, PIPE_WIDTH in a pipe or log (no folded names or rows)."""
    from rich.console import Console
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


class QuietUI:
    @contextmanager
    def task(self, description: str, total: int | None):
        yield lambda message="": None

    def note(self, message: str) -> None:
        pass


class RichUI:
    def __init__(self, console=None):
        self.console = console or make_console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[message]}"), console=self.console, transient=False) as progress:
            tid = progress.add_task(description, total=total, message="")

            def advance(message: str = "") -> None:
                progress.update(tid, advance=1, message=message)
                if total is not None and progress.tasks[0].completed > total:
                    progress.update(tid, total=progress.tasks[0].completed)
            yield advance

    def note(self, message: str) -> None:
        self.console.print(message)
