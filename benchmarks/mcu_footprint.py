"""Cortex-M footprint of an exported early-exit network: instructions per MAC per exit, flash and RAM.

    python benchmarks/mcu_footprint.py [--export-dir export/ ...] [--out results.json] [--target cortex-m7]

Without --export-dir, four mbv3 candidates with random weights and early exits (the smallest network of the space
and three random genomes, seeds 2, 6, 8) are exported to a temporary folder and measured; the JSON goes to
benchmarks/results/mcu_footprint.json.

For each kernel codegen (TVM LLVM for the target CPU, TVM C source + arm-none-eabi-gcc -O2) and each dtype the
export folder has (float32; int8 when stages_int8/ exists), the network is compiled with every threshold set to 2
(no early exit fires), so every test input runs every stage and QEMU counts each stage's instructions
(-icount shift=0, 40-instruction resolution). The instructions to reach exit i are the sum over stages 0..i, exit
decisions included; dividing by the cost model's MACs to exit i gives instructions per MAC (goal: fp32 <= 2,
int8 <= 1). Sizes from the linker are compared with the cost model's prediction (goal: within +-5%):
  flash  = the image (code + rodata + .data image) less the harness's embedded test vectors (test_io.o)
           vs  predicted weights + per-kernel code + target code_size_bytes
  RAM    = .data + .bss + heap + stack reserves  vs  predicted activations + kernel scratch + driver + workspace_bytes
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


def mbv3_exports(work: Path) -> list[Path]:
    """Export the smallest mbv3 network and three random genomes (all with exits), random weights."""
    import numpy as np
    import torch

    from edgenas.export.exits_json import read_exits_json, write_exits_json
    from edgenas.export.stages import export_stages
    from edgenas.spaces.mbv3 import N_STAGES, Mbv3Space

    torch.manual_seed(0)
    space = Mbv3Space()
    supernet = space.supernet(3, 10)
    archs = [("smallest", space.smallest(exits=True))]
    for seed in (2, 6, 8):
        rng = np.random.default_rng(seed)
        g = space.sample(rng)
        g[-(N_STAGES - 1):] = rng.integers(0, 2, N_STAGES - 1)
        g[-(N_STAGES - 1) + int(rng.integers(0, N_STAGES - 1))] = 1
        archs.append((f"rand{seed}", space.decode(g)))
    out = []
    for name, arch in archs:
        net = space.build(arch, supernet)
        net.thresholds = [0.5] * (net.n_exits - 1)
        export_stages(net, work / name)
        doc = read_exits_json(work / name)
        doc.setdefault("meta", {})["arch"] = arch.describe()
        write_exits_json(work / name, doc)
        out.append(work / name)
    return out


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
    test_data = sizes["flash_parts"].get("test_data", 0)
    width = 1 if dtype == "int8" else 4
    size_rows = {}
    if "flash_bytes" in pred:
        size_rows = {
            "flash": {"linker": sizes["flash_bytes"] - test_data, "predicted": pred["flash_bytes"],
                      "rel_error": rel(sizes["flash_bytes"] - test_data, pred["flash_bytes"]),
                      "linker_with_test_vectors": sizes["flash_bytes"]},
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
    ap.add_argument("--export-dir", type=Path, action="append", help="export folder (repeatable); default: mbv3 nets")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mcu_footprint.json")
    ap.add_argument("--target", default="cortex-m7")
    ap.add_argument("--inputs", type=int, default=2, help="random test inputs per build (counts are deterministic)")
    args = ap.parse_args(argv)

    from edgenas.targets import load_target

    target = load_target(args.target)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exports = args.export_dir or mbv3_exports(work)
        for k, export_dir in enumerate(exports):
            doc = json.loads((export_dir / "exits.json").read_text())
            dtypes = ["float32"] + (["int8"] if all(s.get("int8_file") for s in doc["stages"]) else [])
            sub = work / f"m{k}"
            sub.mkdir()
            export = no_exit_copy(export_dir, sub)
            print(f"== {export_dir.name}: {doc.get('meta', {}).get('arch', '')}")
            for dtype in dtypes:
                for codegen in ("llvm", "c"):
                    r = measure(export, target, codegen, dtype, args.inputs, sub)
                    r["model"] = export_dir.name
                    r["arch"] = doc.get("meta", {}).get("arch")
                    print_row(r)
                    results.append(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # generated models live in a temporary folder: the results name them ("model", "arch"), not their paths
    args.out.write_text(json.dumps({"target": target.name, "export_dirs": [str(e) for e in args.export_dir or []],
                                    "unit": "QEMU instructions (-icount shift=0), not cycles",
                                    "int8": "no int8 stage files measured: TVM 0.27 lowers QDQ to float (fake quant)",
                                    "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
