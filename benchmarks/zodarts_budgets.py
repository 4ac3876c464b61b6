"""ZO-DARTS+ under a target's budgets, end to end, as a user runs it: search, export, firmware, QEMU.

For each target (default cortex-m7 and cortex-m4, run side by side, one intra-op thread each):
    edgenas search --method zodarts --target T --dataset mnist5k --out DIR --json
    edgenas export DIR --best --out DIR/export
    edgenas compile DIR/export --target T --out DIR/firmware --json
    edgenas profile DIR/firmware --target T --device qemu --out DIR/profile.json
and records the macro the search fitted and why, the derived cell (and how many more probable cells the budgets
ruled out), the cost-model figures against every budget, the firmware's measured flash and RAM against the same
budgets, and the QEMU check against onnxruntime (same exit, logits within tolerance) with instruction counts.

    .venv/bin/python benchmarks/zodarts_budgets.py [--targets cortex-m7 cortex-m4] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EDGENAS = str(Path(sys.executable).with_name("edgenas"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=["cortex-m7", "cortex-m4"])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--epochs", type=int, default=None, help="search epochs (default: the CLI's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the run folders (default: a temporary one, removed)")
    p.add_argument("--out", default="benchmarks/results/zodarts_budgets.json")
    return p.parse_args(argv)


def _run(args: list[str], log: Path) -> tuple[float, str]:
    """Run one edgenas command (an argument list, no shell) with one intra-op thread; stdout, stderr to `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(args)}\n{proc.stdout}\n{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}; see {log}")
    return seconds, proc.stdout


def one_target(target: str, work: Path, dataset: str, epochs: int | None, seed: int) -> dict:
    run = work / target
    seconds = {}
    search = [EDGENAS, "search", "--method", "zodarts", "--target", target, "--dataset", dataset, "--seed", str(seed),
              "--out", str(run), "--json"] + (["--epochs", str(epochs)] if epochs else [])
    seconds["search"], out = _run(search, work / f"{target}-search.log")
    result = json.loads(out)
    seconds["export"], _ = _run([EDGENAS, "export", str(run), "--best", "--out", str(run / "export")],
                                work / f"{target}-export.log")
    seconds["compile"], out = _run([EDGENAS, "compile", str(run / "export"), "--target", target, "--out",
                                    str(run / "firmware"), "--json"], work / f"{target}-compile.log")
    firmware = json.loads(out)
    seconds["profile"], _ = _run([EDGENAS, "profile", str(run / "firmware"), "--target", target, "--device", "qemu",
                                  "--out", str(run / "profile.json")], work / f"{target}-profile.log")
    profile = json.loads((run / "profile.json").read_text())
    from edgenas.targets import load_target
    budgets = load_target(target).budgets
    cost = result["cost"]
    sizes = firmware["sizes"]
    figures = {"latency_worst_s": (cost["latency_worst_s"], budgets.latency_s),
               "peak_sram_bytes": (cost["peak_sram_bytes"], budgets.sram_bytes),
               "flash_bytes": (cost["flash_bytes"], budgets.flash_bytes)}
    return {
        "target": target,
        "macro": result["net_config"], "macro_choice": result["config"]["macro_choice"],
        "genotype": result["genotype"], "argmax_genotype": result["argmax_genotype"],
        "derivation": result["derivation"],
        "multipliers_final": (result["config"]["multipliers"] or [None])[-1],
        "expected_over_budget_final": (result["config"]["expected_over_budget"] or [None])[-1],
        "retrained_test_accuracy": result["retrain"]["test_accuracy"],
        "deployed_test_accuracy": (result["exits"] or {}).get("test_accuracy"),
        "n_exits": (result["exits"] or {}).get("n_exits"),
        "cost_model": {k: {"value": v, "budget": b, "within": b is None or v <= b} for k, (v, b) in figures.items()},
        "violations": result["violations"],
        "firmware": {"flash_bytes": sizes["flash_bytes"], "flash_budget": sizes["flash_budget"],
                     "ram_bytes": sizes["ram_bytes"], "ram_budget": sizes["ram_budget"], "fits": firmware["fits"]},
        "qemu": {"check": profile["check"],
                 "exits": {k: {"instructions_mean": v["instructions"]["mean"], "macs": v["macs"],
                               "estimated_latency_s": v["estimated_latency_s"]} for k, v in profile["exits"].items()}},
        "within_every_budget": not result["violations"] and firmware["fits"] and profile["check"]["passed"],
        "seconds": seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgenas-zodarts-budgets-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(len(args.targets)) as pool:  # one process tree per target, side by side
            rows = list(pool.map(lambda t: one_target(t, work, args.dataset, args.epochs, args.seed), args.targets))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "zodarts_budgets", "dataset": args.dataset, "seed": args.seed, "epochs": args.epochs,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__},
              "total_wall_seconds": time.perf_counter() - t0, "targets": rows}
    from edgenas.fileio import atomic_write_json
    atomic_write_json(Path(args.out), report)
    for r in rows:
        m = r["macro"]
        print(f"{r['target']}: C={m['C']} N={m['N']} r={m['resolution']} {r['genotype']} ({r['derivation']['reason']}); "
              f"test acc {r['deployed_test_accuracy']}; latency {r['cost_model']['latency_worst_s']['value'] * 1e3:.1f} "
              f"of {r['cost_model']['latency_worst_s']['budget'] * 1e3:.0f} ms; firmware flash "
              f"{r['firmware']['flash_bytes'] / 1024:.0f}/{r['firmware']['flash_budget'] / 1024:.0f} KiB, RAM "
              f"{r['firmware']['ram_bytes'] / 1024:.0f}/{r['firmware']['ram_budget'] / 1024:.0f} KiB; QEMU check "
              f"{r['qemu']['check']['passed']}; within every budget: {r['within_every_budget']}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["within_every_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
