"""Self-contained profiling runner for a host / Cortex-A build folder (`edgenas compile --target x86-host|rpi4`).

This file is copied as is to a Cortex-A board by `profile_ssh` and run there with the board's Python, so it imports
nothing from edgenas but edgenas/agreement.py, which is copied beside it: only the standard library, numpy, and
whichever of onnxruntime and tvm are installed (a missing one is reported in the JSON, not fatal). `profile_host`
imports it and calls `profile_artefact`.

    python3 runner.py BUILD_DIR --threads 1,max --repeats 20 --out profile.json

The build folder holds model.onnx (nested-If graph), model.so (Relax VM library), reference.json (test inputs
and onnxruntime reference outputs) and build.json. For each thread count:

  onnxruntime  latency per input (median over `repeats` batches of the mean of BATCH runs), grouped by the exit
               taken; a second, profiling session runs every input twice and the trace of the second run gives
               per-node kernel time (nodes inside `If` branches appear under their own names, `s<i>_` = stage i;
               an `If` node's time includes its branch) and each run's duration with profiling on, attributed to
               the exit that run took.
  tvm          latency per input the same way (`VirtualMachine.time_evaluator`, number=BATCH), grouped by exit;
               per kernel: the VM is instrumented on one input per exit, each kernel call's arguments are kept
               and the kernel is timed alone with the library's `time_evaluator`. The sum of the kernels on an
               exit's path against the measured latency shows the VM overhead.
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
except ImportError:  # on a board without edgenas: profile_ssh copies agreement.py beside this file
    from agreement import agreement

FORMAT = "edgenas-host-profile/1"
BATCH = 5          # runs per timed batch
WARMUP = 3


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
def profile_ort(model: Path, x: np.ndarray, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    def session(profile_prefix=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])

    sess = session()
    name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    per_input, logits_all, exits = [], [], []
    for k in range(x.shape[0]):
        feed = {name: x[k:k + 1]}
        outs = sess.run(None, feed)
        logits_all.append(np.asarray(outs[out_names.index("logits") if "logits" in out_names else 0]).reshape(-1))
        exits.append(_exit_of(outs, out_names))
        for _ in range(WARMUP):
            sess.run(None, feed)
        batches = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(BATCH):
                sess.run(None, feed)
            batches.append((time.perf_counter_ns() - t0) / BATCH / 1e3)
        per_input.append(float(np.median(batches)))

    with tempfile.TemporaryDirectory(prefix="edgenas-ortprof-") as tmp:
        psess = session(str(Path(tmp) / "ort"))
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
            "per_input": [{"index": k, "exit": e, "latency_us": t} for k, (e, t) in enumerate(zip(exits, per_input))],
            "_outputs": (np.stack(logits_all), np.asarray(exits, np.int64))}


# ------------------------------------------------------------------------------------------------ TVM
def profile_tvm(library: Path, x: np.ndarray, threads: int, repeats: int) -> dict:
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

    timer = relax.VirtualMachine(lib, dev)  # no instrument
    per_input = []
    for k in range(x.shape[0]):
        te = timer.time_evaluator("main", dev, number=BATCH, repeat=repeats)
        per_input.append(float(te(tvm.runtime.tensor(np.ascontiguousarray(x[k:k + 1]))).median * 1e6))

    kernels: dict[str, dict] = {}
    exit_rows = {}
    for e, path in sorted(path_of_exit.items()):
        total = 0.0
        for name, args in path:
            if name not in kernels:
                te = kernels_mod.time_evaluator(name, dev, number=BATCH * 4, repeat=max(3, repeats // 4))
                us = float(te(*args).median * 1e6)
                kernels[name] = {"name": name, "mean_us": us, "calls_on_path": {}}
            kernels[name]["calls_on_path"][str(e)] = kernels[name]["calls_on_path"].get(str(e), 0) + 1
            total += kernels[name]["mean_us"]
        ks = [k for k, ee in enumerate(exits) if ee == e]
        lat = stats([per_input[k] for k in ks])
        exit_rows[str(e)] = {"n_inputs": len(ks), "latency_us": lat, "kernel_calls": len(path),
                             "kernel_sum_us": total,
                             "vm_overhead_us": (lat["median"] - total) if lat.get("n") else None}
    return {"threads": threads, "tvm_threads_reported": int(tvm.get_global_func("runtime.NumThreads")()),
            "latency_us": stats(per_input), "exits": exit_rows,
            "kernels": sorted(kernels.values(), key=lambda r: -r["mean_us"]),
            "per_input": [{"index": k, "exit": e, "latency_us": t, "kernel_calls": c}
                          for k, (e, t, c) in enumerate(zip(exits, per_input, n_calls))],
            "_outputs": (np.stack(logits_all), np.asarray(exits, np.int64))}


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


def profile_artefact(folder, threads=(1, "max"), repeats: int = 20, engines=("onnxruntime", "tvm")) -> dict:
    """Profile a build folder on this machine; a JSON-ready dict (format edgenas-host-profile/1)."""
    folder = Path(folder)
    build, x, ref = load_artefact(folder)
    ref_out = (np.asarray(ref["logits"], np.float32), np.asarray(ref["exits"], np.int64))
    doc = {"format": FORMAT, "build_target": build["target"], "library_arch": build["library_arch"],
           "machine": {"arch": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(),
                       "node": platform.node()},
           "versions": _versions(), "n_inputs": int(x.shape[0]), "repeats": repeats, "batch": BATCH,
           "timing": f"median over {repeats} batches of the mean of {BATCH} runs, per input; microseconds",
           "threads": resolve_threads(threads), "check": {}}
    outputs = {}
    for engine, fn, file in (("onnxruntime", profile_ort, build["onnx_model"]), ("tvm", profile_tvm, build["library"])):
        if engine not in engines:
            continue
        if doc["versions"].get(engine) is None:
            doc[engine] = {"error": doc["versions"].get(f"{engine}_error", "not installed")}
            continue
        runs = {}
        try:
            for t in doc["threads"]:
                res = fn(folder / file, x, t, repeats)
                outputs.setdefault(engine, res.pop("_outputs"))
                runs[str(t)] = res
            doc[engine] = {"file": file, "runs": runs}
            doc["check"][f"{engine}_vs_reference"] = _agreement(outputs[engine], ref_out)
        except Exception as exc:  # a library for another CPU, a broken file: report it, keep the other engine
            doc[engine] = {"file": file, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    if "onnxruntime" in outputs and "tvm" in outputs:
        doc["check"]["tvm_vs_onnxruntime"] = _agreement(outputs["tvm"], outputs["onnxruntime"])
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artefact")
    p.add_argument("--threads", default="1,max")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--engines", default="onnxruntime,tvm")
    p.add_argument("--out", default="-")
    a = p.parse_args(argv)
    doc = profile_artefact(a.artefact, resolve_threads(a.threads), a.repeats, tuple(a.engines.split(",")))
    text = json.dumps(doc, indent=2) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
