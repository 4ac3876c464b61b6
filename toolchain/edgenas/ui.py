"""Console output. The library reports progress through a small UI object (the CLI passes a rich one, tests a quiet
one); every table edgenas prints goes through print_table.

One rule for terminals and pipes: on a terminal, rich tables and text wrapped to the terminal's width; in a pipe or a
log, plain full-width text: tables as TSV (header first, one row per line, nothing cut or folded) and lines never
wrapped, so `edgenas ... | cat`, `| cut -f`, `| grep` and log files read as well as the terminal does.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager


def make_console(stderr: bool = False):
    """A rich Console for stdout (or stderr): the terminal's width on a terminal; in a pipe or log, soft wrap (a line
    is written whole, rich would otherwise wrap it at 80 columns)."""
    from rich.console import Console
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, soft_wrap=True)


def tsv_cell(value) -> str:
    """A cell as TSV text: tabs and line breaks inside it would split the cell or the row."""
    return re.sub(r"\r\n|[\t\n\r]", " ", str(value))


def print_table(header: list[str], rows: list[list[str]], console=None, title: str | None = None,
                right: tuple[str, ...] = ()) -> None:
    """A table on `console` (default: stdout). Terminal: a rich Table with `title`, columns named in `right`
    right-aligned, cells folded at the terminal's width (never cut). Pipe or log: TSV, header first, no title (it
    would not be a row of the TSV; the command says what it prints) and every cell whole."""
    console = console or make_console()
    if not console.is_terminal:
        # written to the file directly: rich expands tabs to spaces even in Console.out
        console.file.write("".join("\t".join(tsv_cell(c) for c in row) + "\n" for row in [header, *rows]))
        console.file.flush()
        return
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=title and escape(title), title_justify="left")
    for h in header:  # escaped: rich would read "E[lat]" or "[95% CI]" as markup and drop the brackets
        table.add_column(escape(h), overflow="fold", justify="right" if h in right else "left")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    console.print(table)


class QuietUI:
    @contextmanager
    def task(self, description: str, total: int | None):
        yield lambda message="": None

    def note(self, message: str) -> None:
        pass


class RichUI:
    """Progress bars on a terminal (stderr by default). When the console is not a terminal (a log), no bars: one line
    per finished task, which is what a log needs, instead of a bar redrawn into the file."""

    def __init__(self, console=None):
        self.console = console or make_console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None):
        if not self.console.is_terminal:
            with self._logged_task(description, total) as advance:
                yield advance
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[message]}"), console=self.console, transient=False) as progress:
            tid = progress.add_task(description, total=total, message="")

            def advance(message: str = "") -> None:
                progress.update(tid, advance=1, message=message)
                if total is not None and progress.tasks[0].completed > total:
                    progress.update(tid, total=progress.tasks[0].completed)
            yield advance

    @contextmanager
    def _logged_task(self, description: str, total: int | None):
        completed, last_message, start = 0, "", time.monotonic()

        def advance(message: str = "") -> None:
            nonlocal completed, last_message
            completed += 1
            last_message = message
        yield advance
        count = f"{completed}" if total is None else f"{completed}/{max(total, completed)}"
        last = f"; {last_message}" if last_message else ""
        self.note(f"{description}: {count} done in {time.monotonic() - start:.0f} s{last}")

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)
