"""An MCU latency model from our own firmware, fp32 and int8 (-> benchmarks/results/mcu_latency_model.json).

    python benchmarks/mcu_latency_model.py [--target cortex-m7] [--calibration 90] [--held-out 10] [--reuse]

What it does, per target:

1. Models. Calibration: `--calibration` random-block networks (benchmarks/foreign_models.py, seed 0), kept
   MCU-sized (inputs <= 64 px, widths <= 64 channels, <= 20 M MACs). Held out (never in a calibration set):
   `--held-out` more random-block networks (seed 1) and the four MLPerf Tiny reference architectures (ResNet-8,
   DS-CNN-S, MobileNetV1-0.25 VWW, FC autoencoder), the foreign models. Each is exported to float ONNX.
2. Firmware. Each model is compiled for the target in fp32 and in int8 (edgenas.compile.compile_mcu; int8 quantises
   the float ONNX with onnxruntime on 32 standard-normal inputs, `calib_data`), kept even when it exceeds the
   target's flash or RAM (keep_failed: the instruction count is what is measured), and run under QEMU with -icount
   (edgenas.profile.profile_qemu). One inference = the instructions of every stage, mean over the embedded inputs.
   QEMU counts instructions, not cycles: latency here is an ESTIMATE, instructions x the target's cpi / clock_hz.
   Builds run in a pool of `--processes` (2) and are cached in `--work` (runs/mcu_latency_model/TARGET): with
   `--reuse` a model whose result file is there (same architecture, target, dtype and edgenas.compile sources, by
   digest) is not built again. A build that fails (an operator the compiler lacks, a kernel error) is recorded in
   "failed_builds" and left out. `--measure-only` stops here; `--dtypes int8` does one dtype.
3. Calibration. Per dtype, an end-to-end CSV (`model,latency_s`, the float ONNX path as the model) of the
   calibration models goes through the library path of `edgenas calibrate --dtype` (edgenas.api.calibrate), which
   cross-validates the model families and writes an override TOML into the work folder (`[latency]` for fp32,
   `[latency_int8]` for int8).
4. Held-out score. Every held-out model is predicted by the fitted override (cost.predict_latency with the dtype's
   model) and by the shipped target as it is ("seed": before the first calibration, the uncalibrated seeds, whose
   int8 prediction was the fp32 model), against the QEMU estimate: share within +-10 % and +-5 %, Kendall tau,
   median |error|, per model.

The fitted tables were copied into targets/cortex-m7.toml and cortex-m4.toml with their provenance entries.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = ("float32", "int8")
N_CALIB_INPUTS = 32   # standard-normal inputs onnxruntime quantises the int8 build on
N_TEST_INPUTS = 2     # embedded in the firmware; instructions are the mean over them
MAX_RESOLUTION, MAX_WIDTH, MAX_MACS = 64, 64, 20e6   # MCU-sized random-block networks
RESULT_VERSION = 1    # bump when a cached result's meaning changes
KERNELS = {"float32": "fp32 TVM LLVM kernels", "int8": "int8 integer kernels, SMLAD micro-kernel"}  # provenance


def model_specs(n_calibration: int, n_held_out: int) -> list[tuple[str, object]]:
    """(role, ModelSpec) of every model: "calibration", "held-out" (random blocks) or "foreign" (MLPerf Tiny)."""
    from dataclasses import replace

    from foreign_models import mlperf_tiny_specs, random_block_specs
    sized = dict(max_resolution=MAX_RESOLUTION, max_width=MAX_WIDTH, max_macs=MAX_MACS)
    calibration = random_block_specs(n_calibration, seed=0, **sized)
    held = [replace(s, name=s.name.replace("random_blocks", "heldout_blocks"))
            for s in random_block_specs(n_held_out, seed=1, **sized)]
    return ([("calibration", s) for s in calibration] + [("held-out", s) for s in held]
            + [("foreign", s) for s in mlperf_tiny_specs()])


# edgenas.compile sources only int8 builds use: a change to them does not make fp32 results stale
INT8_ONLY_SOURCES = ("int8_kernels.py", "qdq.py")


def compiler_digest(dtype: str) -> str:
    """A digest of the edgenas.compile sources a `dtype` build uses: a cached result is reused only when built by
    the same compiler (the kernels change the instruction counts)."""
    import hashlib

    import edgenas.compile
    folder = Path(edgenas.compile.__file__).parent
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        if dtype == "float32" and path.name in INT8_ONLY_SOURCES:
            continue
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _result_path(work: Path, name: str, dtype: str) -> Path:
    return work / "results" / f"{name}.{dtype}.json"


def _cached(work: Path, spec, dtype: str, target_name: str) -> dict | None:
    path = _result_path(work, spec.name, dtype)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    same = (doc.get("arch") == spec.arch and doc.get("target") == target_name and doc.get("dtype") == dtype
            and doc.get("version") == RESULT_VERSION and doc.get("compiler") == compiler_digest(dtype))
    return doc if same else None


def build_and_measure(spec, dtype: str, target_name: str, work: str) -> dict:
    """Export (once per model), compile and run one model in one dtype; the result is also written to the work
    folder. A build that fails (an operator the compiler lacks, ...) is recorded with its error, not raised."""
    import numpy as np

    from edgenas.compile import compile_mcu
    from edgenas.errors import EdgenasError
    from edgenas.profile import profile_qemu
    from edgenas.targets import load_target
    from foreign_models import export_onnx

    work = Path(work)
    target = load_target(target_name)
    onnx_path = work / "onnx" / f"{spec.name}.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    marker = onnx_path.with_suffix(".arch")
    if not onnx_path.is_file() or not marker.is_file() or marker.read_text() != spec.arch:
        tmp = onnx_path.with_name(f"{spec.name}.{dtype}.tmp.onnx")  # the other dtype's job may export at once
        export_onnx(spec, tmp)
        tmp.replace(onnx_path)
        marker.write_text(spec.arch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_CALIB_INPUTS + N_TEST_INPUTS, *spec.input_shape)).astype(np.float32)
    out = work / "firmware" / f"{spec.name}_{dtype}"
    row = {"version": RESULT_VERSION, "name": spec.name, "arch": spec.arch, "family": spec.family,
           "target": target.name, "dtype": dtype, "onnx": str(onnx_path.resolve()),
           "compiler": compiler_digest(dtype)}
    t0 = time.perf_counter()
    try:
        extra = {"calib_data": x[:N_CALIB_INPUTS]} if dtype == "int8" else {}
        try:
            report = compile_mcu(onnx_path, target, out, dtype=dtype, test_inputs=x[N_CALIB_INPUTS:],
                                 build_board=False, keep_failed=True, **extra).to_dict()
            row["fits"] = True
        except EdgenasError as exc:  # over a budget: kept (keep_failed) and still measured
            if not (out / "firmware.json").is_file():
                raise
            report, row["fits"] = json.loads((out / "firmware.json").read_text()), exc.line()
        row["build_s"] = round(time.perf_counter() - t0, 1)
        profile = profile_qemu(out, target)
        stages = range(report["n_stages"])
        if profile["check"].get("kernel_errors") or any(str(s) not in profile["stages"] for s in stages):
            # a kernel failed (e.g. its workspace did not fit the board's RAM): the count is not an inference's
            raise RuntimeError(f"the firmware reported {profile['check'].get('kernel_errors')} kernel error(s) "
                               f"(workspace peak {profile.get('workspace_peak_bytes')} bytes)")
        row["instructions"] = float(sum(profile["stages"][str(s)]["instructions"]["mean"] for s in stages))
        row["estimated_latency_s"] = row["instructions"] * target.cpi / target.clock_hz
        row["flash_bytes"] = int(report["sizes"]["flash_bytes"])
        row["ram_bytes"] = int(report["sizes"]["ram_bytes"])
        row["check_passed"] = bool(profile["check"]["passed"])
    except Exception as exc:  # noqa: BLE001  a benchmark records what failed, per model, and goes on
        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
    path = _result_path(work, spec.name, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1) + "\n")
    return row


def measure_all(specs, target_name: str, work: Path, reuse: bool, processes: int, dtypes=DTYPES
                ) -> dict[tuple[str, str], dict]:
    """(model name, dtype) -> result row, building what is not cached."""
    rows, todo = {}, []
    for _, spec in specs:
        for dtype in dtypes:
            cached = _cached(work, spec, dtype, target_name) if reuse else None
            if cached is not None:
                rows[(spec.name, dtype)] = cached
            else:
                todo.append((spec, dtype))
    print(f"{len(rows)} results cached, {len(todo)} to build and run in {processes} process(es)", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, processes), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(build_and_measure, spec, dtype, target_name, str(work)): (spec.name, dtype)
                   for spec, dtype in todo}
        for i, future in enumerate(futures, 1):
            row = future.result()
            rows[futures[future]] = row
            state = row.get("error") or f"{row['instructions']:.0f} instructions, build {row['build_s']} s"
            print(f"[{i}/{len(todo)} {time.perf_counter() - t0:.0f}s] {row['name']} {row['dtype']}: {state}",
                  flush=True)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "latency_s"])
        for r in rows:
            w.writerow([r["onnx"], f"{r['estimated_latency_s']:.9g}"])


def score(rows: list[dict], key: str) -> dict:
    from edgenas.cost.calibrate import accuracy
    usable = [r for r in rows if r.get(key)]
    if not usable:
        return {"n": 0}
    return accuracy([r["estimated_latency_s"] for r in usable], [r[key] for r in usable])


def calibrate_and_score(target, rows, specs, work: Path, dtype: str) -> dict:
    from edgenas import __version__, cost
    from edgenas.api import calibrate
    from edgenas.targets import load_target

    roles = {spec.name: role for role, spec in specs}
    measured = [r for (name, d), r in rows.items() if d == dtype and "estimated_latency_s" in r]
    calib = sorted((r for r in measured if roles[r["name"]] == "calibration"), key=lambda r: r["name"])
    held = sorted((r for r in measured if roles[r["name"]] != "calibration"), key=lambda r: r["name"])
    csv_path = work / f"calibration.{dtype}.csv"
    write_csv(csv_path, calib)
    out = work / f"{target.name}-qemu-{'fp32' if dtype == 'float32' else 'int8'}.toml"
    source = os.path.relpath(csv_path) if csv_path.is_relative_to(Path.cwd()) else str(csv_path)
    cal, path = calibrate(target.name, [source], out=out, dtype=dtype,
                          device=f"qemu-system-arm {target.qemu_machine} -icount, instructions x cpi {target.cpi:g}",
                          runtime="tvm", runtime_version="tvm-static-c",
                          notes=f"edgenas {__version__} firmware ({KERNELS[dtype]}); latency = QEMU instruction count "
                                "x cpi / clock_hz, an estimate.", threads=1)
    fitted = load_target(str(path))
    seed = load_target(target.name)
    per_model = []
    for r in held:
        g = cost.from_onnx(r["onnx"])
        r = {**r, "role": roles[r["name"]],
             "predicted_s": cost.predict_latency(g, fitted, dtype).worst_s,
             "seed_predicted_s": cost.predict_latency(g, seed, dtype).worst_s}
        r["error"] = r["predicted_s"] / r["estimated_latency_s"] - 1
        r["seed_error"] = r["seed_predicted_s"] / r["estimated_latency_s"] - 1
        per_model.append(r)
    groups = {"held_out": per_model, "random_blocks": [r for r in per_model if r["role"] == "held-out"],
              "mlperf_tiny": [r for r in per_model if r["role"] == "foreign"]}
    return {"fitted_toml": str(path), "calibration_csv": str(csv_path), "n_calibration": len(calib),
            "family": cal.family, "channel_block": cal.channel_block,
            "cross_validation": cal.to_dict()["cross_validation"],
            "fitted": {g: score(m, "predicted_s") for g, m in groups.items()},
            "seed": {g: score(m, "seed_predicted_s") for g, m in groups.items()},
            "models": [{k: r[k] for k in ("name", "role", "arch", "instructions", "estimated_latency_s", "predicted_s",
                                          "error", "seed_predicted_s", "seed_error", "fits")} for r in per_model]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cortex-m7")
    ap.add_argument("--calibration", type=int, default=90, help="random-block models to calibrate on")
    ap.add_argument("--held-out", type=int, default=10, help="random-block models held out (plus MLPerf Tiny)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="build cache (default runs/mcu_latency_model/TARGET)")
    ap.add_argument("--reuse", action="store_true", help="reuse cached builds and QEMU runs from --work")
    ap.add_argument("--measure-only", action="store_true", help="build and run, do not calibrate")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default float32,int8)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default benchmarks/results/mcu_latency_model[-TARGET].json)")
    args = ap.parse_args(argv)

    from edgenas.targets import load_target
    target = load_target(args.target)
    work = (args.work or Path("runs/mcu_latency_model") / target.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    specs = model_specs(args.calibration, args.held_out)
    t0 = time.perf_counter()
    dtypes = args.dtypes.split(",")
    rows = measure_all(specs, target.name, work, args.reuse, args.processes, dtypes)
    stale = sorted(f"{name} {dtype}" for (name, dtype), r in rows.items()
                   if r.get("compiler") != compiler_digest(dtype))
    if stale:
        print(f"warning: edgenas.compile changed while building {len(stale)} result(s) (e.g. {stale[0]}): rerun "
              "with --reuse to rebuild them")
    failed = sorted(f"{name} {dtype}: {r['error']}" for (name, dtype), r in rows.items() if "error" in r)
    for line in failed:
        print("failed:", line)
    if args.measure_only:
        return 0
    doc = {"benchmark": "mcu_latency_model", "target": target.name, "cpi": target.cpi, "clock_hz": target.clock_hz,
           "qemu_machine": target.qemu_machine, "machine": platform.machine(), "work": str(work),
           "n_models": len(specs), "failed_builds": failed,
           "compiler_digest": {dtype: compiler_digest(dtype) for dtype in dtypes}, "stale_results": stale,
           "note": "latency = QEMU -icount instructions x cpi / clock_hz: an estimate, not a measurement",
           "seed_note": "'seed' is the shipped target file as it was when this ran (its int8 prediction: the "
                        "[latency_int8] model, or the fp32 model where it had none); "
                        f"its last provenance entry: {target.provenance[-1].source if target.provenance else 'none'}",
           "dtypes": {}}
    for dtype in dtypes:
        doc["dtypes"][dtype] = result = calibrate_and_score(target, rows, specs, work, dtype)
        f, s = result["fitted"]["held_out"], result["seed"]["held_out"]
        print(f"{dtype}: {result['family']} fitted on {result['n_calibration']} models; held out "
              f"({f['n']}): {f['within_10pct']:.0f}% within +-10%, tau {f['kendall_tau']:.3f}, median |error| "
              f"{100 * f['median_abs_rel_error']:.1f}% (seed: {s['within_10pct']:.0f}%, tau {s['kendall_tau']:.3f}, "
              f"median |error| {100 * s['median_abs_rel_error']:.1f}%)")
        for m in result["models"]:
            print(f"  {m['name']:<24} QEMU est. {1e3 * m['estimated_latency_s']:9.3f} ms  predicted "
                  f"{1e3 * m['predicted_s']:9.3f} ms ({100 * m['error']:+.1f}%)  seed {100 * m['seed_error']:+.1f}%")
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    suffix = "" if target.name == "cortex-m7" else f"-{target.name}"
    out = args.out or Path(__file__).parent / "results" / f"mcu_latency_model{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgenas.fileio import json_finite
    out.write_text(json.dumps(json_finite(doc), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
