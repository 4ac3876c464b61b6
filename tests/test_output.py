"""Output in a terminal and in a pipe (issue 15): every table is a rich table on a terminal and TSV in a pipe, nothing
cut ("…") or folded, lines not wrapped at 80 columns; `search --json` prints the Pareto members as JSON on stdout."""
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.search.report import HEADER, member_rows, print_members
from edgenas.targets import list_targets, load_target
from edgenas.ui import RichUI, make_console, print_table

from tests.onnx_models import conv_model
from tests.tiny_settings import TINY, ZODARTS_TINY

LONG = "a-very-long-architecture-description " * 8  # ~300 characters: wider than any default console


def tsv(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines()]


def assert_whole_tsv(text: str, header: list[str]) -> list[list[str]]:
    """Header first, then one row per line with as many cells as the header, nothing cut."""
    assert "…" not in text
    table = tsv(text)
    assert table[0] == header
    assert all(len(row) == len(header) for row in table), text
    return table[1:]


def rich_console(terminal: bool, width: int = 60):
    from rich.console import Console
    return Console(file=io.StringIO(), force_terminal=terminal, width=width, color_system=None)


def test_print_table_is_tsv_in_a_pipe_with_every_cell_whole():
    console = rich_console(terminal=False)
    print_table(["name", "MACs", "note"], [["cortex-m7", "1,234,567", LONG], ["x\ty", "2", "line\nbreak"]], console,
                title="a title")
    rows = assert_whole_tsv(console.file.getvalue(), ["name", "MACs", "note"])
    assert rows == [["cortex-m7", "1,234,567", LONG], ["x y", "2", "line break"]]  # tabs, breaks would split cells


def test_print_table_on_a_narrow_terminal_folds_but_never_cuts():
    console = rich_console(terminal=True, width=40)
    print_table(["name", "description"], [["cortex-m7-with-a-long-name", "Cortex-M7 @216 MHz, 320 KB SRAM"]], console,
                title="targets [all]")
    text = console.file.getvalue()
    assert "…" not in text and "targets [all]" in text  # the title's brackets are text, not rich markup
    assert max(len(line) for line in text.splitlines()) <= 40
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") == 3)
    assert cells == "cortex-m7-with-a-long-name"  # folded over lines, every character kept


def test_summary_lines_are_not_wrapped_in_a_pipe(capsys):
    line = "run folder: /" + "/".join(["deep-folder-name"] * 12) + " hypervolume 0.1234567890"
    make_console().print(line, markup=False)
    make_console(stderr=True).print(line, markup=False)
    out, err = capsys.readouterr()
    assert out == line + "\n" and err == line + "\n"


def test_progress_in_a_log_is_one_line_per_task_without_bars():
    console = rich_console(terminal=False)
    ui = RichUI(console)
    with ui.task("evaluating candidates", 3) as advance:
        for i in range(3):
            advance(f"#{i}")
    with ui.task("training", None) as advance:
        advance()
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"evaluating candidates: 3/3 done in \d+ s; #2", lines[0])
    assert re.fullmatch(r"training: 1 done in \d+ s", lines[1])


def test_targets_in_a_pipe_list_every_target_in_full():
    """`edgenas targets | cat`: a real pipe, as the user runs it (names were cut to "cortex-…")."""
    proc = subprocess.run([sys.executable, "-m", "edgenas.cli", "targets"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120, env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    rows = assert_whole_tsv(proc.stdout, ["name", "cpu", "clock MHz", "SRAM KiB", "flash KiB", "latency budget ms",
                                          "description"])
    assert [r[0] for r in rows] == list_targets()
    assert [r[6] for r in rows] == [load_target(name).description for name in list_targets()]


def test_analyze_tables_in_a_pipe_are_tsv_and_lines_whole(tmp_path, capsys):
    path = conv_model(tmp_path / ("model-" + "x" * 120 + ".onnx"), 3, 8, 16, 2, [True, True])
    assert cli_main(["analyze", str(path), "--target", "x86-host"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = ["layer", "kind", "part", "out shape", "MACs", "params", "out KiB", "live SRAM KiB", "pred. us"]
    layers = api.analyze(str(path), target="x86-host")["layers"]
    rows = assert_whole_tsv("\n".join(lines[:1 + len(layers)]), header)
    assert [r[0] for r in rows] == [layer["name"] for layer in layers]
    assert rows[0][4] == f"{layers[0]['macs']:,}"  # a number in one cell, not broken over lines
    summary = lines[1 + len(layers):]
    assert summary[-1] == "fits the target's budgets" and all("\t" not in line for line in summary)
    assert any(line.startswith("params ") and line.endswith(" KiB") for line in summary)


# ------------------------------------------------------------------------------------------------ search
@pytest.mark.e2e
def test_pareto_table_in_a_pipe_has_one_line_per_member(tiny_run, capsys):
    _, result = tiny_run
    members = [{**m, "description": m["description"] + " " + LONG} for m in result.pareto]
    print_members(members)
    rows = assert_whole_tsv(capsys.readouterr().out, HEADER)
    assert rows == member_rows(members)


@pytest.fixture
def search_with_tiny_config(monkeypatch):
    """The CLI cannot express TINY (exit-training epochs, batch sizes): the CLI's search runs with TINY's settings,
    the options given on the command line applied on top, as `api.search(config=TINY, ...)` does in test_search."""
    real_search = api.search
    monkeypatch.setattr(api, "search", lambda **opts: real_search(config=TINY, **opts))


@pytest.mark.e2e
def test_search_json_and_table_on_stdout_progress_on_stderr(tiny_run, tmp_path, capsys, search_with_tiny_config):
    run, result = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = ["search", "--dataset", "digits", "--out", str(copy), "--resume", "--workers", "1"]
    assert cli_main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is the JSON alone
    members = doc["members"]
    assert doc["run_dir"] == str(copy) and doc["new_evaluations"] == 0 and doc["evaluations"] == result.evaluations
    assert doc["hypervolume"] == pytest.approx(result.hypervolume)
    assert [m["id"] for m in members] == [m["id"] for m in result.pareto]
    for m in members:  # the resume fine-tunes the members tiny_run left with inherited weights
        assert m["weights"] == "finetuned" and set(m["inherited"]) >= {"val_accuracy", "test_accuracy"}
        assert m["finetune"]["steps"] == TINY.finetune.steps
        assert {"description", "test_accuracy", "test_accuracy_ci", "val_accuracy", "n_exits", "test_exit_rates",
                "macs_expected", "macs_worst", "latency_expected_s", "latency_worst_s", "peak_sram_bytes",
                "flash_bytes"} <= set(m)
    assert "━" not in captured.err  # stderr is not a terminal here: no progress bars, only lines

    assert cli_main(args) == 0  # the archive is complete now: prints at once
    out = capsys.readouterr().out.splitlines()
    rows = assert_whole_tsv("\n".join(out[:1 + len(members)]), HEADER)
    assert [int(r[0]) for r in rows] == [m["id"] for m in members]
    assert [r[HEADER.index("exits")] for r in rows] == [str(m["n_exits"]) for m in members]
    assert len(out) == 2 + len(members)  # the summary, one whole line after the table
    assert out[-1].startswith(f"{result.evaluations} candidates evaluated (0 new)") and out[-1].endswith(str(copy))



@pytest.fixture
def zodarts_on_toy_data(monkeypatch, toy_data):
    """The CLI's --method zodarts on test_zodarts' toy data with its tiny network (the real search, a few seconds)."""
    from edgenas.search import zodarts
    real_search = zodarts.search_zodarts
    monkeypatch.setattr(zodarts, "search_zodarts",
                        lambda dataset, **opts: real_search(toy_data, **{**opts, **ZODARTS_TINY}))


def test_zodarts_search_json_on_stdout(tmp_path, capsys, zodarts_on_toy_data):
    out = tmp_path / "run"
    assert cli_main(["search", "--method", "zodarts", "--epochs", "1", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run_dir"] == str(out) and doc["method"] == "zodarts+"
    assert doc["genotype"] == json.loads((out / "result.json").read_text())["genotype"]
    assert cli_main(["search", "--method", "zodarts", "--epochs", "1", "--out", str(tmp_path / "text")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zodarts+: cell ") and lines[0].endswith(str(tmp_path / "text"))
