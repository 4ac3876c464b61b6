"""Benchmark the default run exactly as a new user meets it: `make demo` (search on the default dataset for
cortex-m7, export of the member `--best` picks, firmware compile), timed end to end, then what it produced.

Writes JSON with: the wall time of the whole `make demo` (goal <= 10 min on a 2-core machine, `.venv` already
built), Spearman rho between worst-case MACs and test accuracy over every evaluated candidate (does extra cost buy
accuracy?), the exported member's test accuracy with its 95 % interval, exit rates and realised expected-MAC saving
(goal >= 30 % at <= 1 pt test-accuracy loss), and whether any shipped member keeps an exit whose test rate is 0 on a
costed path.

    python benchmarks/search_default.py [--fresh]     # --fresh deletes runs/demo first
    python benchmarks/search_default.py --no-run     # summarise an existing runs/demo
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "runs" / "demo"


def no_exit_macs(record: dict, in_channels: int, n_classes: int) -> int:
    """MACs of the member's architecture with every exit head removed: what the user would run without exits."""
    from edgenas import cost
    from edgenas.spaces import create_space
    space = create_space("mbv3")
    arch = space.arch_from_dict({**record["arch"], "exits": [False] * len(record["arch"]["exits"])})
    return int(cost.macs_per_exit(cost.from_torch(space.build_empty(arch, in_channels, n_classes)))[-1])


def member_summary(r: dict, in_channels: int, n_classes: int) -> dict:
    base = no_exit_macs(r, in_channels, n_classes)
    kept_rates = r["test_exit_rates"]
    return {
        "id": r["id"], "description": r["description"], "n_exits": r["n_exits"], "weights": r.get("weights"),
        "inherited_test_accuracy": r.get("inherited", r)["test_accuracy"],
        "truncated_after_exit": r.get("truncated_after_exit"),
        "val_accuracy": r["val_accuracy"], "val_accuracy_ci": r.get("val_accuracy_ci"),
        "test_accuracy": r["test_accuracy"], "test_accuracy_ci": r.get("test_accuracy_ci"),
        "test_accuracy_no_exit": r["test_accuracy_no_exit"],
        "test_loss_vs_no_exit_pt": (r["test_accuracy_no_exit"] - r["test_accuracy"]) * 100,
        "test_exit_rates": kept_rates, "val_exit_rates": r["val_exit_rates"],
        "macs_expected_test": r["macs_expected_test"], "macs_worst": r["macs_worst"], "macs_no_exit": base,
        "expected_macs_saving_vs_no_exit": 1 - r["macs_expected_test"] / base,
        "latency_expected_s": r["latency_expected_s"], "peak_sram_bytes": r["peak_sram_bytes"],
        "flash_bytes": r["flash_bytes"],
        # a kept exit no test input takes is a costed path (flash, a head evaluated, layers) that nothing uses
        "dead_exit_on_test": any(rate == 0 for rate in kept_rates) and r["n_exits"] > 1,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_default.json"))
    parser.add_argument("--fresh", action="store_true", help="delete runs/demo before timing make demo")
    parser.add_argument("--no-run", action="store_true", help="summarise the existing runs/demo")
    args = parser.parse_args()

    wall = None
    if not args.no_run:
        if RUN.exists():
            if not args.fresh:
                sys.exit(f"{RUN} exists: pass --fresh to delete it (the benchmark times a fresh run)")
            shutil.rmtree(RUN)
        t0 = time.time()
        subprocess.run(["make", "demo"], cwd=ROOT, check=True)
        wall = time.time() - t0

    import torch
    from scipy.stats import spearmanr

    from edgenas.data import load_dataset
    from edgenas.search.runfolder import pareto_records
    from edgenas.search.pareto import choose_best
    config = json.loads((RUN / "config.json").read_text())
    records = [json.loads(line) for line in (RUN / "archive.jsonl").read_text().splitlines() if line.strip()]
    members = pareto_records(RUN)  # fine-tuned figures when the run fine-tuned its members
    data = load_dataset(config["dataset"])
    best, reason = choose_best(members)
    exported = json.loads((RUN / "export" / "exits.json").read_text())
    rho = spearmanr([r["macs_worst"] for r in records], [r["test_accuracy"] for r in records])
    summaries = [member_summary(m, data.in_channels, data.n_classes) for m in members]
    paying = [s for s in summaries if s["n_exits"] > 1 and s["test_loss_vs_no_exit_pt"] <= 1.0]
    summary = {
        "benchmark": "search_default",
        "command": "make demo (edgenas search --target=cortex-m7; export --best; compile)",
        "dataset": config["dataset"], "seed": config["seed"],
        "machine": {"cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "platform": platform.platform(), "load_average_after": os.getloadavg()},
        "make_demo_wall_seconds": None if wall is None else round(wall, 1),
        "goal_make_demo_within_600s": None if wall is None else wall <= 600,
        "evaluations": len(records),
        "spearman_macs_worst_vs_test_accuracy": {"rho": float(rho.statistic), "p_value": float(rho.pvalue)},
        "pareto_size": len(members),
        "exported": {"id": best["id"], "why": reason, "exits_json_n_exits": exported.get("n_exits"),
                     "exits_json_weights": exported.get("meta", {}).get("weights"),
                     **member_summary(best, data.in_channels, data.n_classes)},
        "best_paying_member": max(paying, key=lambda s: s["expected_macs_saving_vs_no_exit"], default=None),
        "goal_exit_saving_30pct_within_1pt": any(s["expected_macs_saving_vs_no_exit"] >= 0.30 for s in paying),
        "any_shipped_dead_exit_on_test": any(s["dead_exit_on_test"] for s in summaries),
        "members": summaries,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "members"}, indent=2))


if __name__ == "__main__":
    main()
