"""How well the calibrated latency model predicts onnxruntime on this host (-> benchmarks/results/costmodel_host.json).

    nice -n 10 python benchmarks/costmodel_host.py [--mbv3 220] [--nb201 30] [--calib 100] [--seed 0]
    python benchmarks/costmodel_host.py --reuse [--models-dir DIR]   # re-fit on the cached measurements (seconds)

Measured latencies are written to benchmarks/results/costmodel_host_measurements.json; `--reuse` reads them back
instead of measuring (the models are re-exported deterministically from the seed, or taken from --models-dir when
it holds them), so the fit can be iterated on without re-measuring.

1. Random architectures: `mbv3` backbones (no exits) and `nb201` networks (backbone + final head), random weights,
   exported to ONNX (opset 18, batch 1).
2. Latency: onnxruntime CPU, 1 intra-op thread, median of repeated runs, measured twice per model in two separate
   passes over all models; the noise floor is the median |relative difference| between the two passes. The
   measured latency is the mean of the two medians.
3. Calibration on `--calib` random models through the library path `edgenas calibrate` uses:
   (a) end-to-end CSV (model, latency), (b) onnxruntime per-node profiles (MODEL.onnx=PROFILE.json).
   The written override target is loaded with `load_target` and every held-out model is predicted with
   `cost.predict_latency(cost.from_onnx(model), target)`, i.e. exactly what search and `edgenas analyze` use.
4. Held-out figures: % within +-10 % / +-5 %, Kendall tau, vs a MACs-only baseline (a + b * MACs, same fit).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


class Backbone:
    """The network without intermediate exits: segments, then the final head."""

    @staticmethod
    def wrap(net):
        import torch

        class _B(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.segments, self.head = n.segments, n.heads[-1]

            def forward(self, x):
                for s in self.segments:
                    x = s(x)
                return self.head(x)
        return _B(net).eval()


def build_models(out_dir: Path, n_mbv3: int, n_nb201: int, seed: int) -> list[dict]:
    import torch

    from edgenas.spaces import create_space
    from edgenas.spaces.nb201 import EDGES, OPS, Nb201Arch, build_early_exit_net

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    space = create_space("mbv3")
    supernet = space.supernet(3, 10)
    specs = []
    seen = set()
    while len(specs) < n_mbv3:
        x = space.sample(rng)
        x[-3:] = 0  # no intermediate exits: the backbone and its final head
        key = space.key(x)
        if key in seen:
            continue
        seen.add(key)
        arch = space.decode(x)
        specs.append(("mbv3", arch.describe(), space.build(arch, supernet), arch.resolution))
    while len(specs) < n_mbv3 + n_nb201:
        ops = [OPS[i] for i in rng.integers(0, len(OPS), len(EDGES))]
        try:
            arch = Nb201Arch.from_indices([OPS.index(o) for o in ops])
            if not arch.is_connected():
                continue
            res = int(rng.choice([16, 24, 32]))
            net = build_early_exit_net(arch, 10, 3, res, C=int(rng.choice([8, 16])), N=int(rng.choice([1, 2])))
        except Exception:  # noqa: BLE001  (an unconnected or degenerate cell: draw again)
            continue
        specs.append(("nb201", arch.to_string(), net, res))
    models = []
    for i, (family, desc, net, res) in enumerate(specs):
        path = out_dir / f"{family}_{i:03d}.onnx"
        with torch.no_grad():
            torch.onnx.export(Backbone.wrap(net.eval()), (torch.zeros(1, 3, res, res),), str(path), dynamo=False,
                              opset_version=18, input_names=["x"], output_names=["logits"])
        models.append({"family": family, "arch": desc, "path": str(path), "resolution": res})
    return models


def session(path: str, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def measure(path: str, res: int, min_runs: int, min_s: float) -> float:
    """Median seconds of one inference (after warm-up), at least min_runs runs and min_s seconds."""
    sess = session(path)
    x = np.random.default_rng(0).random((1, 3, res, res), dtype=np.float32)
    feed = {"x": x}
    for _ in range(10):
        sess.run(None, feed)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_s:
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        times.append((time.perf_counter_ns() - t0) * 1e-9)
    return statistics.median(times)


def ort_profile(path: str, res: int, prof_dir: Path, runs: int = 30) -> str:
    sess = session(path, str(prof_dir / Path(path).stem))
    feed = {"x": np.random.default_rng(0).random((1, 3, res, res), dtype=np.float32)}
    for _ in range(runs):
        sess.run(None, feed)
    return sess.end_profiling()


_KEY = ("seed", "mbv3", "nb201", "min_runs", "min_seconds")


def _models(where: Path, args) -> list[dict]:
    """The benchmark's models, exported to `where` (or taken from it when an earlier run left the same ones)."""
    index = where / "models.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        if [doc.get(k) for k in _KEY[:3]] == [getattr(args, k) for k in _KEY[:3]] and \
                all(Path(m["path"]).is_file() for m in doc["models"]):
            return doc["models"]
    where.mkdir(parents=True, exist_ok=True)
    models = build_models(where, args.mbv3, args.nb201, args.seed)
    index.write_text(json.dumps({**{k: getattr(args, k) for k in _KEY[:3]}, "models": models}, indent=1))
    return models


def _save(cache: Path, models: list[dict], args, ort_version: str) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    doc = {"what": "measured onnxruntime latencies of benchmarks/costmodel_host.py (re-used with --reuse)",
           "date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpu_count": os.cpu_count(),
           "runtime": f"onnxruntime {ort_version} CPUExecutionProvider, 1 thread",
           **{k: getattr(args, k) for k in _KEY},
           "models": [{"file": Path(m["path"]).name, "family": m["family"], "arch": m["arch"],
                       "resolution": m["resolution"], "latency_a_s": m["latency_a_s"], "latency_b_s": m["latency_b_s"]}
                      for m in models]}
    cache.write_text(json.dumps(doc, indent=1))


def _reuse(cache: Path, models: list[dict], args) -> None:
    if not cache.is_file():
        raise SystemExit(f"--reuse: {cache} not found; run once without --reuse to measure")
    doc = json.loads(cache.read_text())
    if [doc.get(k) for k in _KEY[:3]] != [getattr(args, k) for k in _KEY[:3]] or len(doc["models"]) != len(models):
        raise SystemExit(f"--reuse: {cache} was measured with other settings "
                         f"({', '.join(f'{k}={doc.get(k)}' for k in _KEY[:3])})")
    for m, c in zip(models, doc["models"]):
        if (Path(m["path"]).name, m["arch"]) != (c["file"], c["arch"]):
            raise SystemExit(f"--reuse: model {c['file']} ({c['arch']}) is not the one exported now ({m['arch']})")
        m["latency_a_s"], m["latency_b_s"] = c["latency_a_s"], c["latency_b_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbv3", type=int, default=220)
    ap.add_argument("--nb201", type=int, default=30)
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="x86-host")
    ap.add_argument("--min-runs", type=int, default=40)
    ap.add_argument("--min-seconds", type=float, default=0.12)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "costmodel_host.json"))
    ap.add_argument("--measurements", default=str(ROOT / "benchmarks" / "results" / "costmodel_host_measurements.json"),
                    help="cache of the measured latencies (written after measuring, read with --reuse)")
    ap.add_argument("--reuse", action="store_true", help="take the latencies from --measurements, do not measure")
    ap.add_argument("--models-dir", default=None, help="keep the exported models here (reused when they match)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from edgenas import cost
    from edgenas.api import calibrate
    from edgenas.cost.calibrate import ModelTotal, accuracy, fit_macs_only
    from edgenas.targets import load_target

    torch.set_num_threads(1)
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgenas-costmodel-"))
    models = _models(Path(args.models_dir) if args.models_dir else work, args)
    t_export = time.time() - t_start
    print(f"exported {len(models)} models in {t_export:.0f} s", file=sys.stderr)

    cache = Path(args.measurements)
    if args.reuse:
        _reuse(cache, models, args)
        print(f"reusing the latencies measured {json.loads(cache.read_text())['date']} from {cache}", file=sys.stderr)
    else:
        for rep in ("a", "b"):  # two passes over all models: the second is the re-measurement
            for m in models:
                m[f"latency_{rep}_s"] = measure(m["path"], m["resolution"], args.min_runs, args.min_seconds)
        _save(cache, models, args, ort.__version__)
    for m in models:
        m["latency_s"] = 0.5 * (m["latency_a_s"] + m["latency_b_s"])
        g = cost.from_onnx(m["path"])
        m["macs"] = cost.macs_per_exit(g)[-1]
        m["params"] = cost.total_params(g)
        m["n_layers"] = len(g.layers)
    noise = [abs(m["latency_a_s"] / m["latency_b_s"] - 1.0) for m in models]
    t_measure = time.time() - t_start - t_export
    print(f"measured in {t_measure:.0f} s; noise floor {100 * statistics.median(noise):.2f}%", file=sys.stderr)

    order = np.random.default_rng(args.seed + 1).permutation(len(models))
    calib = [models[i] for i in order[:args.calib]]
    test = [models[i] for i in order[args.calib:]]
    base = load_target(args.target)

    results = {}
    csv_path = work / "calib.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "latency_ms"])
        for m in calib:
            w.writerow([os.path.relpath(m["path"], work), f"{m['latency_s'] * 1e3:.6f}"])
    prof_dir = work / "profiles"
    prof_dir.mkdir()
    pairs = [f"{m['path']}={ort_profile(m['path'], m['resolution'], prof_dir)}" for m in calib]
    device = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    runtime = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    per_exit_s = base.latency.per_exit_cycles / base.clock_hz
    a, b = fit_macs_only([ModelTotal(m["path"], m["latency_s"], {}, 1, 1, m["macs"]) for m in calib], per_exit_s)
    baseline_pred = [a + b * m["macs"] + per_exit_s for m in test]
    measured = [m["latency_s"] for m in test]
    for variant, sources in (("end_to_end_csv", [str(csv_path)]), ("ort_profiles", pairs)):
        out_toml = work / f"{args.target}-{variant}.toml"
        cal, path = calibrate(args.target, sources, out=out_toml, device=device, runtime=runtime, threads=1)
        target = load_target(str(path))
        pred = [cost.predict_latency(cost.from_onnx(m["path"]), target).worst_s for m in test]
        for m, p in zip(test, pred):
            m[f"predicted_{variant}_s"] = p
        results[variant] = {"held_out": accuracy(measured, pred), "cv_on_calibration_set": cal.cv,
                            "channel_block": cal.channel_block,
                            "channel_block_cv_within_10pct": {str(b): cv["model"]["within_10pct"]
                                                              for b, cv in sorted(cal.block_cv.items())},
                            "n_observations": cal.n_observations,
                            # the provenance names the calibration files, which lived in the temporary work folder
                            "override_toml": path.read_text().replace(str(work), "<work>")}
        print(f"{variant}: held-out {results[variant]['held_out']}", file=sys.stderr)
    baseline = accuracy(measured, baseline_pred)
    print(f"MACs-only baseline: {baseline}", file=sys.stderr)

    doc = {
        "benchmark": "costmodel_host",
        "what": "held-out accuracy of the calibrated per-kind latency model vs a MACs-only baseline on onnxruntime",
        "host": {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor(),
                 "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "runtime": runtime, "threads": 1, "base_target": args.target, "seed": args.seed,
        "reused_measurements": str(cache) if args.reuse else None,
        "n_models": len(models), "n_mbv3": args.mbv3, "n_nb201": args.nb201,
        "n_calibration": len(calib), "n_held_out": len(test),
        "measurement": {"passes": 2, "min_runs": args.min_runs, "min_seconds": args.min_seconds,
                        "statistic": "median per pass; measured = mean of the two pass medians",
                        "noise_floor_median_abs_rel_diff": statistics.median(noise),
                        "noise_p90_abs_rel_diff": float(np.percentile(noise, 90)),
                        "latency_ms_range": [1e3 * min(m["latency_s"] for m in models),
                                             1e3 * max(m["latency_s"] for m in models)]},
        "results": results,
        "macs_only_baseline": {"held_out": baseline, "a_s": a, "b_s_per_mac": b},
        "seconds": {"export": t_export, "measure": t_measure, "total": time.time() - t_start},
        "models": [{k: v for k, v in m.items() if k != "path"} | {"file": Path(m["path"]).name,
                                                                  "calibration": m in calib} for m in models],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    shutil.rmtree(work, ignore_errors=True)  # exported models are kept only in --models-dir
    print(f"wrote {out} in {time.time() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
