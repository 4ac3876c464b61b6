"""TVM (MetaSchedule-tuned Relax VM, exits composed with relax.If) vs onnxruntime on the host, one thread. Writes JSON.

    python benchmarks/tvm_vs_ort.py [--export-dir runs/demo/export] [--tune-trials 96] [--repeats 15] \
        [--out benchmarks/results/tvm_vs_ort.json]

Model: --export-dir (an `edgenas export` folder); default runs/demo/export when present, else a tiny 3-exit CNN
trained here on sklearn digits (16x16) for a few seconds. Inputs: the export's test split when exits.json names
its dataset, else the digits test split (trained model) or random inputs at several scales.

Both engines run the same early-exit network on the same inputs, in the same process, with one thread
(onnxruntime intra_op_num_threads=1; TVM: thread pool of 1, kernels tuned for num-cores=1): onnxruntime on the
nested-If model.onnx, TVM on the library `edgenas compile --tune-trials N` builds. For every input both are timed
alternately from the same Python loop (`repeats` batches of BATCH calls; per-input latency = median batch mean).
The figure is ratio = mean over inputs of TVM latency / mean over inputs of onnxruntime latency (the expected
latency over the input distribution); per exit as well. The goal is ratio <= 1.0; the untuned build is measured
beside it. Tuning uses this machine's cores for measuring candidates; keep the trial count modest on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 10
DEFAULT_EXPORT = Path("runs/demo/export")
TARGET_1T = 'extends = "x86-host"\nname = "x86-host-1t"\ndescription = "x86-host, kernels tuned for one core"\n' \
            '\n[tvm_target]\nkind = "llvm"\nnum-cores = 1\n'


def train_tiny_export(out: Path) -> tuple[Path, np.ndarray]:
    """A 3-exit CNN on digits upsampled to 16x16, trained ~10 s; thresholds put inputs on every exit."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn

    from edgenas.export.stages import export_stages
    from edgenas.nn.early_exit import EarlyExitNet

    torch.manual_seed(0)
    torch.set_num_threads(1)
    d = load_digits()
    x = F.interpolate(torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None], size=(16, 16),
                      mode="bilinear", align_corners=False)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]

    def cbr(ci, co, s):
        return nn.Sequential(nn.Conv2d(ci, co, 3, s, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU())

    def head(ci, n, pool=2):
        return nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(ci * pool * pool, n))

    net = EarlyExitNet([nn.Sequential(cbr(1, 16, 1), cbr(16, 16, 1)), nn.Sequential(cbr(16, 32, 2), cbr(32, 32, 1)),
                        nn.Sequential(cbr(32, 64, 2), cbr(64, 64, 1))],
                       [head(16, 11), head(32, 11), head(64, 10, 1)], 10, (1, 16, 16), [0.5, 0.5])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, 1200, (64,))
        logits, conf = net.forward_all(x[idx])
        correct = torch.stack([(lg.argmax(1) == y[idx]).float() for lg in logits[:-1]], dim=1)
        loss = sum(F.cross_entropy(lg, y[idx]) for lg in logits) + F.binary_cross_entropy(conf, correct)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x_test = x[1200:1264].numpy()
    with torch.no_grad():
        _, conf = net.forward_all(torch.from_numpy(x_test))
    c = conf.numpy().astype(np.float64)
    thr0 = float(np.quantile(c[:, 0], 0.6))
    rest = c[:, 0] < thr0
    thr1 = float(np.quantile(1 - (1 - c[rest, 0]) * (1 - c[rest, 1]), 0.5))
    net.thresholds = [thr0, thr1]
    export_stages(net, out)
    return out, x_test


def test_inputs(export_dir: Path, n: int) -> np.ndarray | None:
    try:
        from edgenas.compile.test_inputs import dataset_test_inputs
        return dataset_test_inputs(export_dir, n)
    except Exception:  # no dataset named, or not loadable here: random inputs instead
        return None


def time_pair(build: Path, x: np.ndarray, repeats: int) -> dict:
    """Per-input latency of onnxruntime (model.onnx) and TVM (model.so), one thread, timed alternately."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    tvm.get_global_func("runtime.config_threadpool")(0, 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(build / "model.onnx"), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(build / "model.so")), tvm.cpu())
    main = vm["main"]
    rows = []
    for k in range(x.shape[0]):
        feed = {name: np.ascontiguousarray(x[k:k + 1])}
        xt = tvm.runtime.tensor(feed[name])
        exit_ort = int(sess.run(None, feed)[1].reshape(-1)[0])
        exit_tvm = int(main(xt)[1].numpy().reshape(-1)[0])
        for _ in range(3):
            sess.run(None, feed)
            main(xt)
        t_ort, t_tvm = [], []
        for r in range(repeats):
            for engine in (("ort", "tvm") if r % 2 == 0 else ("tvm", "ort")):
                t0 = time.perf_counter_ns()
                if engine == "ort":
                    for _ in range(BATCH):
                        sess.run(None, feed)
                    t_ort.append((time.perf_counter_ns() - t0) / BATCH / 1e3)
                else:
                    for _ in range(BATCH):
                        main(xt)
                    t_tvm.append((time.perf_counter_ns() - t0) / BATCH / 1e3)
        te = vm.time_evaluator("main", tvm.cpu(), number=BATCH, repeat=repeats)(xt).median * 1e6
        rows.append({"index": k, "exit_ort": exit_ort, "exit_tvm": exit_tvm, "ort_us": float(np.median(t_ort)),
                     "tvm_us": float(np.median(t_tvm)), "tvm_time_evaluator_us": float(te)})
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    ort_us = np.array([r["ort_us"] for r in rows])
    tvm_us = np.array([r["tvm_us"] for r in rows])
    per_exit = {}
    for e in sorted({r["exit_ort"] for r in rows}):
        sel = [i for i, r in enumerate(rows) if r["exit_ort"] == e]
        o, t = float(ort_us[sel].mean()), float(tvm_us[sel].mean())
        per_exit[str(e)] = {"n_inputs": len(sel), "ort_us": o, "tvm_us": t, "ratio": t / o}
    return {"ort_us_mean": float(ort_us.mean()), "tvm_us_mean": float(tvm_us.mean()),
            "tvm_time_evaluator_us_mean": float(np.mean([r["tvm_time_evaluator_us"] for r in rows])),
            "ratio": float(tvm_us.mean() / ort_us.mean()),
            "exit_agreement": float(np.mean([r["exit_ort"] == r["exit_tvm"] for r in rows])),
            "per_exit": per_exit, "per_input": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-dir", default=None)
    p.add_argument("--tune-trials", type=int, default=96)
    p.add_argument("--max-trials-per-task", type=int, default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--n-inputs", type=int, default=24)
    p.add_argument("--out", default="benchmarks/results/tvm_vs_ort.json")
    a = p.parse_args(argv)

    from edgenas.compile.host import compile_host
    from edgenas.compile.mcu import load_model_source
    from edgenas.compile.test_inputs import default_test_inputs
    from edgenas.targets import load_target

    work = Path(tempfile.mkdtemp(prefix="edgenas-tvm-vs-ort-"))
    load_before = os.getloadavg()
    x = None
    if a.export_dir:
        export_dir, source = Path(a.export_dir), "argument"
    elif (DEFAULT_EXPORT / "exits.json").is_file():
        export_dir, source = DEFAULT_EXPORT, "runs/demo/export"
    else:
        t0 = time.perf_counter()
        export_dir, x = train_tiny_export(work / "export")
        source = f"tiny 3-exit CNN on digits 16x16, trained here in {time.perf_counter() - t0:.0f} s"
    if x is None:
        x = test_inputs(export_dir, a.n_inputs)
    if x is None:
        x = default_test_inputs(load_model_source(export_dir, "float32").input_shape, 3)
    x = np.asarray(x, np.float32)[: a.n_inputs]
    (work / "x86-host-1t.toml").write_text(TARGET_1T)
    target = load_target(str(work / "x86-host-1t.toml"))

    results = {}
    for label, trials in (("untuned", 0), ("tuned", a.tune_trials)):
        t0 = time.perf_counter()
        report = compile_host(export_dir, target, work / f"build-{label}", tune_trials=trials, test_inputs=x,
                              max_trials_per_task=a.max_trials_per_task)
        build_s = time.perf_counter() - t0
        timing = time_pair(work / f"build-{label}", x, a.repeats)
        results[label] = {"tune_trials": trials, "build_seconds": round(build_s, 1), "check": report.check,
                          "tvm_target": report.tvm_target, **timing}
        exits = ", ".join(f"{e}: {r['ratio']:.2f}" for e, r in timing["per_exit"].items())
        print(f"{label:8s} trials={trials:4d} build {build_s:6.1f} s  ORT {timing['ort_us_mean']:8.1f} us  "
              f"TVM {timing['tvm_us_mean']:8.1f} us  ratio {timing['ratio']:.3f}  (per exit: {exits})")
    import onnxruntime
    import tvm
    doc = {
        "benchmark": "tvm_vs_ort", "model": None if export_dir.is_relative_to(work) else str(export_dir), "model_source": source, "n_inputs": int(x.shape[0]),
        "threads": 1, "repeats": a.repeats, "batch": BATCH,
        "timing": "per input: median over repeats of the mean of BATCH calls from the same Python loop, engines "
                  "alternating; latency = mean over inputs; ratio = TVM / onnxruntime",
        "ratio_tuned": results["tuned"]["ratio"], "ratio_untuned": results["untuned"]["ratio"],
        "goal": "ratio_tuned <= 1.0", "goal_met": results["tuned"]["ratio"] <= 1.0,
        "results": results,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "versions": {"tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"ratio (tuned TVM / ORT, 1 thread): {doc['ratio_tuned']:.3f}  -> {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
