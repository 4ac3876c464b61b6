"""Library API: one function per pipeline step, called by the CLI and by examples/. Wires the stages together
(data -> spaces -> train -> search -> export -> compile -> profile); each stage stays ignorant of the others.

The `*_cli` functions only add printing around the library call.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgenas.errors import EdgenasError


def default_run_dir(target: str, method: str, dataset: str, seed: int) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(s).stem if s)  # noqa: E731
    return Path("runs") / f"{safe(target)}-{method}-{safe(dataset.split(':')[0])}-s{seed}"


def search(target: str = "cortex-m7", dataset: str = "digits", method: str = "nachos", out=None, seed: int = 0,
           resume: bool = False, latency=None, sram=None, flash=None, macs=None, min_accuracy=None,
           pop_size=None, generations=None, supernet_epochs=None, epochs=None, ui=None, config=None):
    """Run a search and write its run folder. `config` (a SearchConfig) gives full control over every setting."""
    from edgenas.search.driver import SearchConfig, run_search
    if method not in ("nachos", "flatnas"):
        raise EdgenasError(f"search method '{method}' is not available in this version", "use --method nachos or flatnas")
    cfg = config or SearchConfig()
    changes = dict(target=target, dataset=dataset, method=method, seed=seed, latency=latency, sram=sram,
                   flash=flash, macs=macs, min_accuracy=min_accuracy)
    if pop_size is not None:
        changes["pop_size"] = pop_size
    if generations is not None:
        changes["n_gen"] = generations
    cfg = replace(cfg, **changes)
    if supernet_epochs is not None:
        cfg = replace(cfg, supernet=replace(cfg.supernet, epochs=supernet_epochs))
    for name, value in (("--pop-size", cfg.pop_size), ("--generations", cfg.n_gen), ("--supernet-epochs", cfg.supernet.epochs)):
        if value < 1:
            raise EdgenasError(f"{name} must be at least 1, got {value}", f"pass a positive {name}")
    if cfg.min_accuracy is not None and not 0.0 <= cfg.min_accuracy <= 1.0:
        raise EdgenasError(f"--min-accuracy must be a fraction in [0, 1], got {cfg.min_accuracy}", "e.g. --min-accuracy 0.9")
    out = Path(out) if out else default_run_dir(cfg.target, method, cfg.dataset, seed)
    return run_search(cfg, out, resume=resume, ui=ui)


def search_cli(**opts) -> None:
    from rich.console import Console

    from edgenas.report import print_members
    from edgenas.ui import RichUI
    console = Console(stderr=True)
    result = search(ui=RichUI(console), **opts)
    print_members(result.pareto)
    console.print(f"{result.evaluations} candidates evaluated ({result.new_evaluations} new) in "
                  f"{result.wall_seconds:.0f} s; hypervolume {result.hypervolume:.4f}; run folder: {result.run_dir}")


def export_cli(run_dir, candidate, out) -> None:
    report = export(run_dir, candidate, out)
    print(report.summary() if hasattr(report, "summary") else report)


def export(run_dir, candidate: int | None = None, out=None):
    """Export a Pareto member of a run: model.onnx (nested If exits), model.static.onnx, model.int8.onnx, exits.json."""
    import numpy as np

    from edgenas import cost
    from edgenas.data import load_dataset, resize
    from edgenas.export import export_model
    from edgenas.search.driver import load_candidate
    net, record, config = load_candidate(run_dir, candidate)
    data = load_dataset(config["dataset"])
    res = net.input_shape[-1]
    check_x = resize(data.test.x, res).numpy().astype(np.float32)
    calib_x = resize(data.train.x[:256], res).numpy().astype(np.float32)
    out = Path(out) if out else Path(run_dir) / f"export-{record['id']}"
    macs = [int(m) for m in cost.macs_per_exit(cost.from_torch(net))]
    meta = {"candidate": record["id"], "run": str(run_dir), "dataset": config["dataset"], "target": config["target"],
            "description": record["description"]}
    return export_model(net, out, check_x, data.test.y.numpy(), calib_x, macs, meta)


def targets_cli() -> None:
    from rich.console import Console
    from rich.table import Table

    from edgenas.targets import list_targets, load_target
    table = Table(title="edgenas targets")
    for col in ("name", "cpu", "clock MHz", "SRAM KiB", "flash KiB", "latency budget ms", "description"):
        table.add_column(col)
    for name in list_targets():
        t = load_target(name)
        table.add_row(name, t.cpu, f"{t.clock_hz / 1e6:.0f}", f"{t.sram_bytes / 1024:.0f}",
                      "-" if t.flash_bytes is None else f"{t.flash_bytes / 1024:.0f}",
                      "-" if t.budgets.latency_s is None else f"{t.budgets.latency_s * 1e3:g}", t.description)
    Console().print(table)


def target_show_cli(name: str) -> None:
    from edgenas.targets import load_target, target_to_toml
    print(target_to_toml(load_target(name)), end="")
