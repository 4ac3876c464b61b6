"""Cortex-M footprint of an exported early-exit network: instructions per MAC per exit, flash and RAM.

    python benchmarks/mcu_footprint.py --export-dir export/ --out results.json [--target cortex-m7]

For each kernel codegen (TVM LLVM for the target CPU, TVM C source + arm-none-eabi-gcc -O2) and each dtype the
export folder has (float32; int8 when stages_int8/ exists), the network is compiled with every threshold set to 2
(no early exit fires), so every test input runs every stage and QEMU counts each stage's instructions
(-icount shift=0, 40-instruction resolution). The instructions to reach exit i are the sum over stages 0..i, exit
decisions included; dividing by the cost model's MACs to exit i gives instructions per MAC (goal: fp32 <= 2,
int8 <= 1). Sizes from the linker are compared with the cost model's prediction (goal: within +-5%):
  flash  = the whole image (code + rodata + .data image)  vs  predicted weights + target code_size_bytes
  RAM    = .data + .bss + heap + stack reserves            vs  predicted peak activations + target workspace_bytes
  and, model parts only: weights in flash vs params x width; activation arena vs predicted peak activations.
QEMU counts instructions, not cycles: no latency is claimed here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def no_exit_copy(export_dir: Path, work: Path) -> Path:
    """A copy of the export folder whose thresholds never fire, so every stage runs."""
    dst = work / "export_all_stages"
    shutil.copytree(export_dir, dst)
    doc = json.loads((dst / "exits.json").read_text())
    doc["thresholds"] = [2.0] * len(doc["thresholds"])
    (dst / "exits.json").write_text(json.dumps(doc))
    return dst


def rel(measured: float, predicted: float) -> float:
    return (measured - predicted) / predicted if predicted else float("inf")


def measure(export_dir: Path, target, codegen: str, dtype: str, n_inputs: int, work: Path) -> dict:
    import numpy as np

    from edgenas.compile import compile_mcu
    from edgenas.profile import profile_qemu

    out = work / f"fw_{codegen}_{dtype}"
    doc = json.loads((export_dir / "exits.json").read_text())
    x = np.random.default_rng(0).standard_normal((n_inputs, *doc["input_shape"][1:])).astype(np.float32)
    report = compile_mcu(export_dir, target, out, codegen=codegen, dtype=dtype, test_inputs=x, build_board=False)
    profile = profile_qemu(out, target)
    stage_instr = [profile["stages"][str(s)]["instructions"]["mean"] for s in range(report.n_stages)]
    macs = report.macs_per_exit or []
    exits = []
    for i in range(report.n_stages):
        instr = float(sum(stage_instr[: i + 1]))
        row = {"exit": i, "instructions": instr}
        if i < len(macs) and macs[i]:
            row.update(macs=int(macs[i]), instructions_per_mac=instr / macs[i])
        exits.append(row)
    pred, sizes = report.predicted or {}, report.sizes
    width = 1 if dtype == "int8" else 4
    size_rows = {}
    if "flash_bytes" in pred:
        size_rows = {
            "flash": {"linker": sizes["flash_bytes"], "predicted": pred["flash_bytes"],
                      "rel_error": rel(sizes["flash_bytes"], pred["flash_bytes"])},
            "ram": {"linker": sizes["ram_bytes"], "predicted": pred["peak_sram_bytes"],
                    "rel_error": rel(sizes["ram_bytes"], pred["peak_sram_bytes"])},
            "weights": {"linker": sizes["flash_parts"].get("weights", 0), "predicted": pred["params"] * width,
                        "rel_error": rel(sizes["flash_parts"].get("weights", 0), pred["params"] * width)},
            "activations": {"linker": report.arena_bytes, "predicted": pred["activation_sram_bytes"],
                            "rel_error": rel(report.arena_bytes, pred["activation_sram_bytes"])},
        }
    return {"codegen": codegen, "dtype": dtype, "exits": exits, "stage_instructions": stage_instr,
            "check_passed": profile["check"]["passed"], "sizes": size_rows,
            "flash_parts": sizes["flash_parts"], "ram_parts": sizes["ram_parts"],
            "workspace_pool_bytes": report.workspace_pool_bytes,
            "workspace_peak_bytes": profile["workspace_peak_bytes"], "prediction_method": pred.get("method")}


def print_row(r: dict) -> None:
    ipm = ", ".join(f"exit {e['exit']}: {e['instructions']:.0f} instr / {e.get('macs', 0)} MACs = "
                    f"{e.get('instructions_per_mac', float('nan')):.2f}" for e in r["exits"])
    print(f"[{r['codegen']:4s} {r['dtype']:7s}] check {'PASS' if r['check_passed'] else 'FAIL'}; {ipm}")
    for name, s in r["sizes"].items():
        print(f"    {name:11s} linker {s['linker']:8d} B  predicted {s['predicted']:8d} B  "
              f"({100 * s['rel_error']:+.1f}%)")
    print(f"    kernel workspace pool {r['workspace_pool_bytes']} B (peak used {r['workspace_peak_bytes']} B)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--target", default="cortex-m7")
    ap.add_argument("--inputs", type=int, default=2, help="random test inputs per build (counts are deterministic)")
    args = ap.parse_args(argv)

    from edgenas.targets import load_target

    target = load_target(args.target)
    doc = json.loads((args.export_dir / "exits.json").read_text())
    dtypes = ["float32"] + (["int8"] if all(s.get("int8_file") for s in doc["stages"]) else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export = no_exit_copy(args.export_dir, work)
        for dtype in dtypes:
            for codegen in ("llvm", "c"):
                r = measure(export, target, codegen, dtype, args.inputs, work)
                print_row(r)
                results.append(r)
    args.out.write_text(json.dumps({"target": target.name, "export_dir": str(args.export_dir),
                                    "unit": "QEMU instructions (-icount shift=0), not cycles",
                                    "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
