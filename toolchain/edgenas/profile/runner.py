"""Self-contained profiling runner for a host / Cortex-A build folder (`edgenas compile --target x86-host|rpi4`).

This file is copied as is to a Cortex-A board by `profile_ssh` and run there with the board's Python, so it imports
nothing from edgenas but edgenas/agreement.py and edgenas/profile/timing.py, which are copied beside it: only the
standard library, numpy, and whichever of onnxruntime and tvm are installed (a missing one is reported in the JSON,
not fatal). `profile_host` imports it and calls `profile_artefact`.

    python3 runner.py BUILD_DIR --threads 1,max --repeats 20 --ci 0.02 --max-seconds 60 --out profile.json

The build folder holds model.onnx (nested-If graph), model.so (Relax VM library), reference.json (test inputs
and onnxruntime reference outputs) and build.json. For each thread count:

  latency      every (engine, input) pair is an item of timing.measure_interleaved: rounds over all items in a
               shuffled order, one batch of calls per item per round, both engines called the same way (a Python
               loop around `InferenceSession.run` / the VM's `main`), until every item's median is known to
               +-`rel_ci` at 95 % confidence, or `max_rounds` / the time budget run out (then the item says
               converged: false). At one thread both engines are interleaved with each other; at more threads each
               engine's inputs are interleaved among themselves, because both runtimes' thread pools spin-wait
               after a call and would take the cores of the other engine's next call. Per input the figure is the
               protocol's `estimate` (the median, or p10 when the spread is one-sided), grouped by the exit taken.
  onnxruntime  per node: a second, profiling session runs every input twice and the trace of the second run gives
               per-node kernel time (nodes inside `If` branches appear under their own names, `s<i>_` = stage i;
               an `If` node's time includes its branch) and each run's duration with profiling on, attributed to
               the exit that run took.
  tvm          per kernel: the VM is instrumented on one input per exit, each kernel call's arguments are kept
               and the kernel is timed alone with the library's `time_evaluator`. The sum of the kernels on an
               exit's path against the measured latency shows the VM overhead (and the Python call's).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from edgenas.agreement import agreement
    from edgenas.profile import timing
except ImportError:  # on a board without edgenas: profile_ssh copies agreement.py and timing.py beside this file
    import timing
    from agreement import agreement

FORMAT = "edgenas-host-profile/1"
ENGINES = ("onnxruntime", "tvm")
KERNEL_NUMBER = 20   # calls per time_evaluator repeat when one TVM kernel is timed alone
DEFAULT_MAX_SECONDS = 60.0


def stats(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median": float(np.median(a)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


def load_artefact(folder: Path) -> tuple[dict, np.ndarray, dict]:
    folder = Path(folder)
    build = json.loads((folder / "build.json").read_text())
    ref = json.loads((folder / "reference.json").read_text())
    shape = [int(d) for d in build["input_shape"]]
    x = np.asarray(ref["inputs"], dtype=np.float32).reshape([-1, *shape[1:]])
    return build, x, ref


def resolve_threads(spec) -> list[int]:
    out = []
    for t in (spec.split(",") if isinstance(spec, str) else spec):
        n = (os.cpu_count() or 1) if str(t).strip() in ("max", "N", "n") else int(t)
        if n < 1:
            raise ValueError(f"thread count must be >= 1, got {t}")
        if n not in out:
            out.append(n)
    return out


def _exit_of(outputs, names) -> int:
    if "exit_index" in names:
        return int(np.asarray(outputs[names.index("exit_index")]).reshape(-1)[0])
    return 0  # a plain model has one exit


def _stage_of(node: str):
    if node.startswith("s") and "_" in node and node[1:node.index("_")].isdigit():
        return int(node[1:node.index("_")])
    return None


# ------------------------------------------------------------------------------------------------ onnxruntime
def _ort_session(model: Path, threads: int, profile_prefix=None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def setup_ort(model: Path, x: np.ndarray, threads: int) -> dict:
    """A session, every input run once (outputs, exits), and one callable per input for the timing."""
    sess = _ort_session(model, threads)
    name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    logits_all, exits = [], []
    for k in range(x.shape[0]):
        outs = sess.run(None, {name: x[k:k + 1]})
        logits_all.append(np.asarray(outs[out_names.index("logits") if "logits" in out_names else 0]).reshape(-1))
        exits.append(_exit_of(outs, out_names))
    calls = [(lambda feed=({name: x[k:k + 1]}): sess.run(None, feed)) for k in range(x.shape[0])]
    return {"model": model, "exits": exits, "calls": calls,
            "_outputs": (np.stack(logits_all), np.asarray(exits, np.int64))}


def finish_ort(setup: dict, x: np.ndarray, threads: int, timed: list) -> dict:
    """The run's rows from the timed inputs, plus the per-node breakdown of a profiling session."""
    exits = setup["exits"]
    per_input = [t.estimate for t in timed]
    with tempfile.TemporaryDirectory(prefix="edgenas-ortprof-") as tmp:
        psess = _ort_session(setup["model"], threads, str(Path(tmp) / "ort"))
        name = psess.get_inputs()[0].name
        for k in range(x.shape[0]):  # twice: the first run of an input warms caches, the second is kept
            psess.run(None, {name: x[k:k + 1]})
            psess.run(None, {name: x[k:k + 1]})
        events = json.loads(Path(psess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-2 * x.shape[0]:][1::2]
    nodes: dict[str, dict] = {}
    stage_us = [dict() for _ in runs]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        r = next((r for r, run in enumerate(runs) if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]), None)
        if r is None:
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "")
        row = nodes.setdefault(node, {"name": node, "op": op, "stage": _stage_of(node), "inclusive": op == "If",
                                      "calls": 0, "total_us": 0.0})
        row["calls"] += 1
        row["total_us"] += float(e.get("dur", 0.0))
        if op != "If":  # an If node's time includes its branch's nodes
            st = _stage_of(node)
            key = "exit_logic" if st is None else str(st)
            stage_us[r][key] = stage_us[r].get(key, 0.0) + float(e.get("dur", 0.0))
    for row in nodes.values():
        row["mean_us"] = row["total_us"] / row["calls"]
    per_exit = {}
    for k, e in enumerate(exits):
        per_exit.setdefault(e, []).append(k)
    exit_rows = {}
    for e, ks in sorted(per_exit.items()):
        keys = sorted({key for k in ks if k < len(stage_us) for key in stage_us[k]})
        exit_rows[str(e)] = {
            "n_inputs": len(ks), "latency_us": stats([per_input[k] for k in ks]),
            "profiled_run_us": stats([runs[k]["dur"] for k in ks if k < len(runs)]),
            "node_us_by_stage": {key: float(np.mean([stage_us[k].get(key, 0.0) for k in ks if k < len(stage_us)]))
                                 for key in keys},
        }
    return {"threads": threads, "latency_us": stats(per_input), "exits": exit_rows,
            "nodes": sorted(nodes.values(), key=lambda r: -r["total_us"]),
            "per_input": [{"index": k, "exit": e, "latency_us": t.estimate, "timing": t.to_dict()}
                          for k, (e, t) in enumerate(zip(exits, timed))]}


# ------------------------------------------------------------------------------------------------ TVM
def setup_tvm(library: Path, x: np.ndarray, threads: int) -> dict:
    """The VM with its thread pool set, every input run once (outputs, exits, kernel calls), every exit's kernel
    calls captured with their arguments, and one callable per input (an uninstrumented VM) for the timing."""
    import tvm
    from tvm import relax

    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    dev = tvm.cpu()
    lib = tvm.runtime.load_module(str(library))
    kernels_mod = lib.imports[0] if lib.imports else lib

    def is_kernel(name: str) -> bool:
        return not name.startswith("vm.") and kernels_mod.implements_function(name)

    vm = relax.VirtualMachine(lib, dev)
    captured: list[tuple[str, list]] = []
    capture = [False]
    calls = [0]

    def instrument(func, name, before_run, ret, *args):
        if before_run and is_kernel(name):
            calls[0] += 1
            if capture[0]:
                captured.append((name, [tvm.runtime.tensor(a.numpy(), dev) for a in args]))
        return relax.VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    logits_all, exits, n_calls, path_of_exit = [], [], [], {}
    for k in range(x.shape[0]):
        calls[0] = 0
        lg, ex = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[k:k + 1])))
        e = int(ex.numpy().reshape(-1)[0])
        logits_all.append(lg.numpy().reshape(-1))
        exits.append(e)
        n_calls.append(calls[0])
        if e not in path_of_exit:  # run again, keeping every kernel call's arguments
            captured.clear()
            capture[0] = True
            vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[k:k + 1])))
            capture[0] = False
            path_of_exit[e] = list(captured)

    main = relax.VirtualMachine(lib, dev)["main"]  # no instrument
    inputs = [tvm.runtime.tensor(np.ascontiguousarray(x[k:k + 1])) for k in range(x.shape[0])]
    return {"dev": dev, "kernels_mod": kernels_mod, "exits": exits, "n_calls": n_calls, "path_of_exit": path_of_exit,
            "calls": [(lambda xt=xt: main(xt)) for xt in inputs],
            "tvm_threads_reported": int(tvm.get_global_func("runtime.NumThreads")()),
            "_outputs": (np.stack(logits_all), np.asarray(exits, np.int64))}


def finish_tvm(setup: dict, threads: int, timed: list, kernel_repeats: int) -> dict:
    """The run's rows from the timed inputs, plus every kernel on an exit's path timed alone."""
    exits, per_input = setup["exits"], [t.estimate for t in timed]
    kernels: dict[str, dict] = {}
    exit_rows = {}
    for e, path in sorted(setup["path_of_exit"].items()):
        total = 0.0
        for name, args in path:
            if name not in kernels:
                te = setup["kernels_mod"].time_evaluator(name, setup["dev"], number=KERNEL_NUMBER,
                                                         repeat=kernel_repeats)
                us = float(te(*args).median * 1e6)
                kernels[name] = {"name": name, "mean_us": us, "calls_on_path": {}}
            kernels[name]["calls_on_path"][str(e)] = kernels[name]["calls_on_path"].get(str(e), 0) + 1
            total += kernels[name]["mean_us"]
        ks = [k for k, ee in enumerate(exits) if ee == e]
        lat = stats([per_input[k] for k in ks])
        exit_rows[str(e)] = {"n_inputs": len(ks), "latency_us": lat, "kernel_calls": len(path),
                             "kernel_sum_us": total,
                             "vm_overhead_us": (lat["median"] - total) if lat.get("n") else None}
    return {"threads": threads, "tvm_threads_reported": setup["tvm_threads_reported"],
            "latency_us": stats(per_input), "exits": exit_rows,
            "kernels": sorted(kernels.values(), key=lambda r: -r["mean_us"]),
            "per_input": [{"index": k, "exit": e, "latency_us": t.estimate, "kernel_calls": c, "timing": t.to_dict()}
                          for k, (e, t, c) in enumerate(zip(exits, timed, setup["n_calls"]))]}


# ------------------------------------------------------------------------------------------------ both
def _agreement(a, b) -> dict:
    """edgenas.agreement's rule: max_abs_diff over the inputs whose exit matched."""
    ag = agreement(a[0], a[1], b[0], b[1])
    return {"exit_agreement": ag.exit_agreement, "max_abs_diff": ag.max_abs_diff}


def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "tvm"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # not installed on this machine
            out[mod] = None
            out[f"{mod}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return out


def measurement_groups(thread_counts, engines) -> list[tuple[int, tuple[str, ...]]]:
    """(threads, engines timed interleaved with each other): both engines together at one thread; at more threads
    one engine at a time (their thread pools spin-wait after a call and would take the other's cores)."""
    out = []
    for t in thread_counts:
        out += [(t, tuple(engines))] if t == 1 or len(engines) < 2 else [(t, (e,)) for e in engines]
    return out


def profile_artefact(folder, threads=(1, "max"), repeats: int = 20, engines=ENGINES,
                     rel_ci: float = timing.DEFAULTS["rel_ci"], max_seconds: float | None = DEFAULT_MAX_SECONDS,
                     max_rounds: int = timing.DEFAULTS["max_rounds"], seed: int | None = 0) -> dict:
    """Profile a build folder on this machine; a JSON-ready dict (format edgenas-host-profile/1).

    `repeats`: the fewest timed rounds per input; `rel_ci`: the relative half-width of the 95 % interval of each
    input's median at which timing stops; `max_seconds`: the time budget of all timed rounds together (split evenly
    over the measurement groups; setup and the per-node / per-kernel breakdowns are not counted); None = none."""
    folder = Path(folder)
    build, x, ref = load_artefact(folder)
    ref_out = (np.asarray(ref["logits"], np.float32), np.asarray(ref["exits"], np.int64))
    engines = tuple(e for e in ENGINES if e in engines)
    thread_counts = resolve_threads(threads)
    settings = {"rel_ci": rel_ci, "min_rounds": repeats, "max_rounds": max(repeats, max_rounds),
                "max_seconds": max_seconds}
    doc = {"format": FORMAT, "build_target": build["target"], "library_arch": build["library_arch"],
           "machine": {"arch": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(),
                       "node": platform.node()},
           "versions": _versions(), "n_inputs": int(x.shape[0]), "engines": list(engines), "repeats": repeats,
           "timing": {**timing.protocol(**settings), "unit": "us"},  # latency_us per input = its estimate
           "threads": thread_counts, "check": {}}
    runnable = []
    for engine in engines:
        if doc["versions"].get(engine) is None:
            doc[engine] = {"error": doc["versions"].get(f"{engine}_error", "not installed")}
        else:
            doc[engine] = {"file": build["onnx_model" if engine == "onnxruntime" else "library"], "runs": {}}
            runnable.append(engine)
    groups = measurement_groups(thread_counts, runnable)
    per_group = None if max_seconds is None else max_seconds / max(1, len(groups))
    outputs, all_timed = {}, []

    def failed(engine, exc):  # a library for another CPU, a broken file: report it, keep the other engine
        message = " ".join(str(exc).split())[:300]
        doc[engine] = {"file": doc[engine]["file"], "error": f"{type(exc).__name__}: {message}"}

    for t, group in groups:
        setups = {}
        for engine in group:
            if "error" in doc[engine]:
                continue
            try:
                setups[engine] = (setup_ort(folder / build["onnx_model"], x, t) if engine == "onnxruntime"
                                  else setup_tvm(folder / build["library"], x, t))
                outputs.setdefault(engine, setups[engine].pop("_outputs"))
            except Exception as exc:
                failed(engine, exc)
                setups.pop(engine, None)
        if not setups:
            continue
        callables = {(engine, k): fn for engine, s in setups.items() for k, fn in enumerate(s["calls"])}
        t0 = time.perf_counter()
        try:
            results = timing.measure_interleaved(callables, rel_ci=rel_ci, min_rounds=repeats,
                                                 max_rounds=settings["max_rounds"], max_seconds=per_group, seed=seed)
        except Exception as exc:  # a call that failed while timed: it could be either engine's
            for engine in setups:
                failed(engine, exc)
            continue
        seconds = time.perf_counter() - t0
        for engine, s in setups.items():
            timed = [results[(engine, k)].scaled(1e6, "us") for k in range(x.shape[0])]
            try:
                run = (finish_ort(s, x, t, timed) if engine == "onnxruntime"
                       else finish_tvm(s, t, timed, kernel_repeats=max(3, repeats // 4)))
            except Exception as exc:
                failed(engine, exc)
                continue
            run["timing"] = {"converged": all(r.converged for r in timed),
                             "inputs_not_converged": sum(not r.converged for r in timed),
                             "noise_floor": timing.noise_floor(timed), "rounds": max(r.n for r in timed),
                             "seconds": seconds, "interleaved_with": list(setups)}
            doc[engine]["runs"][str(t)] = run
            all_timed += timed
    for engine in runnable:
        if "error" not in doc[engine]:
            doc["check"][f"{engine}_vs_reference"] = _agreement(outputs[engine], ref_out)
    if all(e in doc["check"] for e in ("onnxruntime_vs_reference", "tvm_vs_reference")):
        doc["check"]["tvm_vs_onnxruntime"] = _agreement(outputs["tvm"], outputs["onnxruntime"])
    doc["timing"].update({"converged": bool(all_timed) and all(r.converged for r in all_timed),
                          "items_not_converged": sum(not r.converged for r in all_timed),
                          "noise_floor": timing.noise_floor(all_timed)})
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artefact")
    p.add_argument("--threads", default="1,max")
    p.add_argument("--repeats", type=int, default=20, help="fewest timed rounds per input")
    p.add_argument("--ci", type=float, default=timing.DEFAULTS["rel_ci"],
                   help="stop when every median's 95%% interval is within +-CI (relative)")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help="time budget of all timed rounds; 0 = none")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--out", default="-")
    a = p.parse_args(argv)
    doc = profile_artefact(a.artefact, resolve_threads(a.threads), a.repeats, tuple(a.engines.split(",")),
                           rel_ci=a.ci, max_seconds=a.max_seconds or None)
    text = json.dumps(doc, indent=2) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
