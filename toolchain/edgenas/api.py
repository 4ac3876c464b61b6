"""Library API: one function per pipeline step, called by the CLI and by examples/. Wires the stages together
(data -> spaces -> train -> search -> export -> compile -> profile); each stage stays ignorant of the others.

The `*_cli` functions only add printing around the library call.
"""
from __future__ import annotations

from pathlib import Path

from edgenas.errors import EdgenasError


def default_run_dir(target: str, method: str, dataset: str, seed: int) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(s).stem if s)  # noqa: E731
    return Path("runs") / f"{safe(target)}-{method}-{safe(dataset.split(':')[0])}-s{seed}"


def search(target: str | None = None, dataset: str | None = None, method: str = "nachos", out=None, seed: int = 0,
           resume: bool = False, latency=None, sram=None, flash=None, macs=None, min_accuracy=None, space=None,
           device="auto", ui=None, **options):
    """Run a search with a registered method (search.methods) and write its run folder; returns the method's result.

    options: the method's own options (its Options dataclass: e.g. pop_size, workers, executor for nachos and
    flatnas, epochs, zo_variant for zodarts; None = the method's default); an option of another method is an
    EdgenasError. `config` (a SearchConfig) gives nachos/flatnas full control of every setting; target and dataset
    then default to the config's (SearchConfig's defaults: cortex-m7, mnist5k). device: "auto", "cpu", "cuda" or
    "cuda:N" (runtime.resolve_device); neither it nor the executor changes the archive on the CPU."""
    from edgenas.runtime import resolve_device
    from edgenas.search.driver import SearchConfig
    from edgenas.search.methods import Problem, check_space, method_class, method_options
    from edgenas.search.runfolder import RunFolder
    cls = method_class(method)
    opts = method_options(method, options)
    base = getattr(opts, "config", None) or SearchConfig()
    problem = Problem(target=base.target if target is None else target,
                      dataset=base.dataset if dataset is None else dataset, space=space, seed=seed, latency=latency,
                      sram=sram, flash=flash, macs=macs, min_accuracy=min_accuracy, resume=resume,
                      device=resolve_device(device))
    check_space(method, problem.space)
    runner = cls(opts)
    executor = opts.executor_config() if hasattr(opts, "executor_config") else None  # run_search validates it
    out = Path(out) if out else default_run_dir(problem.target, runner.run_label(), problem.dataset, seed)
    from edgenas.ui import QuietUI
    return runner.run(problem, RunFolder(out), executor, ui or QuietUI())


def search_cli(json_out: bool = False, **opts) -> None:
    """Progress on stderr; the result on stdout: the method's table and summary lines, or with json_out one JSON
    object (the method's result_json) and nothing else."""
    import json

    from edgenas.search.methods import method_class
    from edgenas.ui import RichUI, make_console
    result = search(ui=RichUI(make_console(stderr=True)), **opts)
    method = method_class(opts.get("method", "nachos"))()
    if json_out:
        print(json.dumps(method.result_json(result), indent=2))
        return
    method.print_result(result, make_console())


def export_cli(run_dir, candidate, out) -> None:
    if candidate is None:
        from edgenas.search.runfolder import best_member
        record, reason = best_member(run_dir)
        print(f"--best: {reason}")
        candidate = record["id"]
    report = export(run_dir, candidate, out)
    print(report.summary())
    from edgenas.export.exits_json import read_exits_json
    meta = read_exits_json(report.out_dir).get("meta", {})
    if meta.get("weights") == "finetuned":
        inh, ft = meta["inherited"], meta["finetune"]
        print(f"weights: fine-tuned ({ft['steps']} steps, {ft['optimizer']}); with the supernet's inherited weights "
              f"the search measured test accuracy {inh['test_accuracy']:.4f}")
    else:
        print(f"weights: {meta.get('weights', 'inherited')}")


def export(run_dir, candidate: int | None = None, out=None):
    """Export a Pareto member of a run: model.onnx (nested If exits), model.static.onnx, model.int8.onnx, exits.json."""
    import numpy as np

    from edgenas import cost
    from edgenas.data import load_dataset, resize
    from edgenas.export import export_model
    from edgenas.search.runfolder import load_candidate
    net, record, config = load_candidate(run_dir, candidate)
    data = load_dataset(config["dataset"])
    res = net.input_shape[-1]
    check_x = resize(data.test.x, res).numpy().astype(np.float32)
    calib_x = resize(data.train.x[:256], res).numpy().astype(np.float32)
    out = Path(out) if out else Path(run_dir) / f"export-{record['id']}"
    macs = [int(m) for m in cost.macs_per_exit(cost.from_torch(net))]
    meta = {"candidate": record["id"], "run": str(run_dir), "dataset": config["dataset"], "target": config.get("target"),
            "description": record["description"], "weights": record["weights"]}
    if "finetune" in record:  # the recipe of the fine-tuned weights, and the figures of the inherited ones
        meta["finetune"] = record["finetune"]
        meta["inherited"] = {k: record["inherited"][k] for k in ("val_accuracy", "test_accuracy")}
    return export_model(net, out, check_x, data.test.y.numpy(), calib_x, macs, meta)


def targets_cli(json_out: bool = False) -> None:
    from edgenas.targets import list_targets, load_target
    from edgenas.ui import print_table
    targets = [(name, load_target(name)) for name in list_targets()]
    if json_out:  # the table's content, unrounded, in base units
        import json
        print(json.dumps([{"name": name, "cpu": t.cpu, "clock_hz": t.clock_hz, "sram_bytes": t.sram_bytes,
                           "flash_bytes": t.flash_bytes, "latency_budget_s": t.budgets.latency_s,
                           "description": t.description} for name, t in targets], indent=2))
        return
    rows = [[name, t.cpu, f"{t.clock_hz / 1e6:.0f}", f"{t.sram_bytes / 1024:.0f}",
             "-" if t.flash_bytes is None else f"{t.flash_bytes / 1024:.0f}",
             "-" if t.budgets.latency_s is None else f"{t.budgets.latency_s * 1e3:g}", t.description]
            for name, t in targets]
    print_table(["name", "cpu", "clock MHz", "SRAM KiB", "flash KiB", "latency budget ms", "description"], rows,
                title="edgenas targets")


def target_show_cli(name: str, json_out: bool = False) -> None:
    from edgenas.targets import load_target, target_to_dict, target_to_toml
    if json_out:
        import json
        print(json.dumps(target_to_dict(load_target(name)), indent=2))
        return
    print(target_to_toml(load_target(name)), end="")


# ------------------------------------------------------------------------------------------------ compile / profile
def _resolve_model(model) -> Path:
    """An export folder, an .onnx file, or a run folder (its best Pareto member, exported on first use)."""
    path = Path(model)
    if not path.exists():
        raise EdgenasError(f"{path} does not exist", "pass an export folder, an .onnx file or a run folder")
    if path.is_dir() and (path / "archive.jsonl").is_file():
        from edgenas.search.runfolder import best_member
        record, _ = best_member(path)
        out = path / f"export-{record['id']}"
        if not (out / "exits.json").is_file():
            export(path, record["id"], out)
        return out
    return path


def compile(model, target: str = "cortex-m7", out=None, codegen: str = "llvm", dtype: str | None = None,
            test_inputs: int = 16, tune_trials: int = 0, keep_failed: bool = False, calib_data=None):
    """Compile an exported model for a target: Cortex-M firmware (kind mcu) or a TVM library (host, Cortex-A).

    `dtype` (MCU): "int8", "float32", or None for int8 where the model carries int8 (an export folder with
    `stages_int8/`, a QDQ ONNX model, or `calib_data`: an .npy of inputs or a dataset spec), else float32.
    `keep_failed` (MCU): keep the project of a firmware that does not fit or does not build, instead of removing it."""
    from edgenas.compile.mcu import is_qdq_file
    from edgenas.targets import load_target
    t = load_target(target)
    if t.kind != "mcu" and (dtype == "int8" or calib_data is not None or is_qdq_file(model)):
        raise EdgenasError(f"int8 builds are for MCU targets; {t.name} ({t.kind}) gets a float32 TVM library",
                           "pass the float model (or its export folder) without --dtype int8 / --calib-data, or "
                           "compile for an MCU target such as cortex-m7")
    if test_inputs < 1:
        raise EdgenasError(f"--test-inputs must be at least 1, got {test_inputs}", "e.g. --test-inputs 16")
    if keep_failed and t.kind != "mcu":
        raise EdgenasError(f"--keep-failed applies to MCU firmware, not to {t.kind} target {t.name} (a failed "
                           "library build has no project worth keeping)", "drop --keep-failed")
    path = _resolve_model(model)
    beside = path.parent if path.is_file() else path
    from edgenas.compile.test_inputs import dataset_test_inputs
    x = dataset_test_inputs(path, test_inputs)
    if t.kind == "mcu":
        from edgenas.compile import compile_mcu
        return compile_mcu(path, t, Path(out) if out else beside / f"firmware-{t.name}", codegen=codegen, dtype=dtype,
                           test_inputs=x, keep_failed=keep_failed, calib_data=calib_data)
    from edgenas.compile.host import compile_host
    from edgenas.compile.outputs import check_writable, external_build
    out = Path(out) if out else beside / f"tvm-{t.name}"
    check_writable(out)
    with external_build(out):
        return compile_host(path, t, out, tune_trials=tune_trials, test_inputs=x)


def compile_cli(json_out: bool = False, **opts) -> None:
    import json
    report = compile(**opts)
    print(json.dumps(report.to_dict(), indent=2, default=str) if json_out or not hasattr(report, "summary")
          else report.summary())


def profile(artefact, target: str = "cortex-m7", device: str = "qemu", n_inputs: int | None = None, out=None,
            threads: str = "1,max", repeats: int = 20, ci: float = 0.02, max_seconds: float | None = 60.0,
            runtime: str = "both") -> dict:
    """Run a compiled artefact on a device (qemu, serial:PORT, host, ssh:USER@HOST) and return its JSON profile.

    host/ssh: `repeats` is the fewest timed rounds, `ci` the relative half-width of the median's 95 % interval at
    which timing stops, `max_seconds` the time budget of all timed rounds, `runtime` the engine(s) timed (ort, tvm,
    both); edgenas.profile.timing is the protocol. An MCU's firmware reports instruction counts, not timings."""
    import json

    from edgenas.targets import load_target
    t = load_target(target)
    if out is not None:
        from edgenas.profile.artefact import check_output_file
        check_output_file(Path(out))
    if device == "qemu":
        from edgenas.profile import profile_qemu
        result = profile_qemu(artefact, t, n_inputs=n_inputs)
    elif device.startswith("serial:") and len(device) > len("serial:"):
        from edgenas.profile import profile_serial
        result = profile_serial(device.split(":", 1)[1], artefact, t, n_inputs=n_inputs)
    elif device == "host" or device.startswith("ssh:"):
        from edgenas.profile.host import profile_device
        result = profile_device(artefact, t, device, threads=threads.split(","), repeats=repeats, rel_ci=ci,
                                max_seconds=max_seconds, runtime=runtime)
    else:
        raise EdgenasError(f"unknown device '{device}'", "use qemu, serial:PORT, host or ssh:USER@HOST")
    if out is not None:
        from edgenas.fileio import atomic_write_json
        atomic_write_json(Path(out), json.loads(json.dumps(result, default=str)))
    return result


def profile_cli(**opts) -> None:
    """`edgenas profile`: the JSON profile on stdout; for host/ssh devices also a summary (latency per exit, whether
    the CI target was met, the noise floor) on stderr."""
    import json
    import sys
    result = profile(**opts)
    print(json.dumps(result, indent=2, default=str))
    if opts.get("device", "qemu") == "host" or opts.get("device", "").startswith("ssh:"):
        from edgenas.profile.host import summary
        print(summary(result), file=sys.stderr)


def calibrate(target: str, profiles, out=None, device: str = "", runtime: str = "", threads: int | None = None,
              name: str | None = None, runtime_version: str = "", families=None, objective: str = "both",
              dtype: str = "float32", notes: str = ""):
    """Fit the target's latency model from profiles (per-layer JSON, MODEL.onnx=ORT.json, end-to-end CSV) and write
    an override target TOML (`out`, default ./<target>-calibrated.toml) that `extends` the target.

    runtime: the engine measured ("ort" or "tvm"); runtime_version: free text for the provenance; families: the
    model families to choose from (default all, edgenas.targets.LATENCY_FAMILIES); objective: what the choice
    optimises ("both", "ranking", "budgets"; edgenas.cost.fitting.select_family); dtype: the arithmetic measured,
    "float32" (the override's [latency]) or "int8" ([latency_int8]); notes: free text for the provenance.

    Returns (Calibration, path written). Nothing is written when a file is malformed or the fit fails."""
    import os

    from edgenas.cost.calibrate import calibrate as fit_latency
    from edgenas.cost.calibrate import write_override
    from edgenas.targets import TARGET_NAME, check_target_name, list_targets, load_target
    t = load_target(target)
    out = Path(out) if out else Path(f"{t.name}-calibrated.toml")
    if out.suffix != ".toml":
        raise EdgenasError(f"--out {out} must end in .toml", "e.g. --out my-board.toml")
    if name is not None:
        check_target_name(name, "--name")
    elif not TARGET_NAME.fullmatch(out.stem):  # the default name is the file's stem
        raise EdgenasError(f"the --out file name '{out.stem}' is not a valid target name",
                           "pass --name (letters, digits, '.', '_' or '-', e.g. my-board)")
    if str(target) in list_targets():
        extends = str(target)
    else:
        extends = os.path.relpath(Path(t.source_path).resolve(), out.resolve().parent)
    cal = fit_latency(t, [str(p) for p in profiles], device=device, runtime=runtime, threads=threads,
                      name=name or out.stem, extends=extends, runtime_version=runtime_version,
                      families=list(families) if families else None, objective=objective, dtype=dtype,
                      notes=notes)
    return cal, write_override(cal, out)


def calibrate_cli(json_out: bool = False, **opts) -> None:
    cal, path = calibrate(**opts)
    if json_out:
        import json
        print(json.dumps({**cal.to_dict(), "wrote": str(path)}, indent=2))
        return
    print(cal.summary())
    print(f"wrote {path} (use it as --target {path})")


def analyze(model, target: str = "cortex-m7", dtype: str = "float32", latency=None, sram=None, flash=None,
            macs=None, allow_unknown: bool = False) -> dict:
    """Per-layer and total cost of any ONNX model (plain, or early-exit with If) on a target, with a budget check.

    Budgets are the target's, overridden by the given strings ("50ms", "256KB", "1MB", "2.5M"); latency and MACs
    are checked at the worst case (final exit, every earlier head evaluated). Operators the cost model does not
    know are an error, unless `allow_unknown`: then they are listed in "unknown_ops" and "complete" is False (their
    MACs and weights are not counted, so every total is a lower bound and "fits" is only a necessary condition)."""
    from edgenas import cost
    from edgenas.targets import engine_mismatch, load_target, target_with_budgets
    t = target_with_budgets(load_target(target), latency=latency, sram=sram, flash=flash, macs=macs)
    g = cost.from_onnx(model)
    if g.unknown_ops and not allow_unknown:
        raise EdgenasError(f"{model}: the cost model does not know {len(g.unknown_ops)} operator(s): "
                           f"{', '.join(g.unknown_ops[:5])}{', ...' if len(g.unknown_ops) > 5 else ''}; "
                           "their MACs and weights would be missing from every figure",
                           "pass --allow-unknown for a report marked incomplete, or replace those operators")
    report = cost.analyze(g, t, dtype)
    model = cost.analysis.latency_model_for(t, dtype)  # the fp32 one when the target has no model of dtype
    over = cost.violations(report, t.budgets)
    b = t.budgets
    checks = {}
    for key, value, limit in (("latency_s", report.latency_worst_s, b.latency_s),
                              ("sram_bytes", report.peak_sram_bytes, b.sram_bytes),
                              ("flash_bytes", report.flash_bytes, b.flash_bytes),
                              ("macs", report.macs_worst, b.macs)):
        checks[key] = {"value": value, "limit": limit, "ok": key not in over}
    interval = report.latency_interval
    checks["latency_s"]["interval"] = None if interval is None else list(cost.latency_interval(
        report.latency_worst_s, interval))
    checks["latency_s"]["near_edge"] = cost.near_edge(report.latency_worst_s, b.latency_s, interval)
    return {"model": str(model), "target": t.name, "target_file": t.source_path, "dtype": dtype,
            "latency_model": {"family": model.family, "runtime": model.runtime or None, "dtype": model.dtype,
                              "note": report.latency_note or None, "warning": engine_mismatch(t) or None,
                              "interval": None if interval is None else list(interval),
                              "calibrated": model.selection is not None},
            "n_exits": g.n_exits, "input_shape": list(g.input_shape), "layers": cost.layer_table(g, t, dtype),
            "totals": report.to_dict(), "budgets": checks, "fits": not over,
            "unknown_ops": list(g.unknown_ops), "complete": not g.unknown_ops}


def analyze_cli(as_json: bool = False, **opts) -> bool:
    """Print the analysis (JSON or tables); True when the model fits every budget."""
    import json
    result = analyze(**opts)
    if as_json:
        print(json.dumps(result, indent=2))
        return result["fits"]
    from edgenas.ui import make_console, print_table
    numeric = ("MACs", "params", "out KiB", "live SRAM KiB", "pred. us")
    rows = [[r["name"], r["kind"], f"{r['part']} {r['index']}", "x".join(map(str, r["out_shape"])) or "1",
             f"{r['macs']:,}", f"{r['params']:,}", f"{r['output_bytes'] / 1024:.1f}",
             f"{r['live_sram_bytes'] / 1024:.1f}", f"{r['latency_s'] * 1e6:.1f}"] for r in result["layers"]]
    console = make_console()
    print_table(["layer", "kind", "part", "out shape", *numeric], rows, console,
                title=f"{result['model']} on {result['target']} ({result['dtype']})", right=numeric)
    tot = result["totals"]
    intervals = tot["latency_interval_per_exit_s"]
    for i in range(result["n_exits"]):
        band = "" if intervals is None else \
            f", 90% interval {intervals[i][0] * 1e3:.3f}-{intervals[i][1] * 1e3:.3f} ms"
        console.print(f"exit {i}: {tot['macs_per_exit'][i]:,} MACs, predicted "
                      f"{tot['latency_per_exit_s'][i] * 1e3:.3f} ms{band} (worst case: every earlier head evaluated)")
    lm = result["latency_model"]
    if lm["interval"] is None:
        console.print(f"latency model: {lm['family']}, no prediction interval (calibrate the target with `edgenas "
                      "calibrate` to get one)")
    else:
        console.print(f"latency model: {lm['family']}"
                      f"{' for ' + lm['runtime'] if lm['runtime'] else ''}, 90% prediction interval "
                      f"{100 * (lm['interval'][0] - 1):+.1f}% .. {100 * (lm['interval'][1] - 1):+.1f}%")
    if lm["note"]:
        console.print(f"note: {lm['note']}")
    if lm["warning"]:
        console.print(f"warning: {lm['warning']}")
    console.print(f"params {tot['params']:,}; peak SRAM {tot['peak_sram_bytes'] / 1024:.1f} KiB "
                  f"(activations {tot['activation_sram_bytes'] / 1024:.1f} KiB + workspace); "
                  f"flash {tot['flash_bytes'] / 1024:.1f} KiB")
    units = {"latency_s": (1e3, "ms"), "sram_bytes": (1 / 1024, "KiB"), "flash_bytes": (1 / 1024, "KiB"),
             "macs": (1e-6, "M")}
    for key, c in result["budgets"].items():
        if c["limit"] is None:
            continue
        scale, unit = units[key]
        edge = " - near the edge: the budget lies inside the 90% prediction interval" if c.get("near_edge") else ""
        console.print(f"{'ok  ' if c['ok'] else 'OVER'} {key}: {c['value'] * scale:.3f} {unit} "
                      f"(budget {c['limit'] * scale:.3f} {unit}){edge}")
    if result["unknown_ops"]:
        console.print(f"unknown operators (MACs and weights not counted): {', '.join(result['unknown_ops'])}")
    verdict = "fits the target's budgets" if result["fits"] else "does NOT fit the target's budgets"
    console.print(verdict if result["complete"] else
                  f"{verdict} (incomplete: {len(result['unknown_ops'])} unknown operator(s) not counted)")
    return result["fits"]
