"""Benchmark the default search (`edgenas search --target=cortex-m7` on digits): wall time, evaluations per minute,
best test accuracy, hypervolume, and the early-exit saving of the best exit-carrying member. Writes JSON.

    python benchmarks/search_default.py [--out benchmarks/results/search_default.json] [--run-dir runs/bench-default]
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

from edgenas import api


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/search_default.json")
    parser.add_argument("--run-dir", default="runs/bench-default")
    parser.add_argument("--resume", action="store_true", help="summarise an existing run instead of a fresh one")
    args = parser.parse_args()

    t0 = time.time()
    result = api.search(target="cortex-m7", dataset="digits", out=args.run_dir, resume=args.resume)
    wall = time.time() - t0
    # the member `edgenas export --best` takes: selected on validation accuracy, never on test
    best = max(result.pareto, key=lambda r: (r["val_accuracy"], -r["latency_expected_s"]))
    with_exits = [r for r in result.pareto if r["n_exits"] > 1]
    saving = max(with_exits, key=lambda r: 1 - r["macs_expected_test"] / r["macs_worst"], default=None)
    summary = {
        "benchmark": "search_default",
        "command": "edgenas search --target=cortex-m7 (dataset digits, seed 0)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_after": os.getloadavg()},
        "wall_seconds": round(wall, 1),
        "evaluations": result.evaluations,
        "new_evaluations": result.new_evaluations,
        "evaluations_per_minute": round(result.new_evaluations / (wall / 60), 2) if result.new_evaluations else None,
        "pareto_size": len(result.pareto),
        "hypervolume": result.hypervolume,
        "best": {k: best[k] for k in ("id", "test_accuracy", "val_accuracy", "latency_expected_s", "latency_worst_s",
                                      "peak_sram_bytes", "flash_bytes", "macs_expected", "macs_worst", "description")},
        "best_exit_saving": None if saving is None else {
            "id": saving["id"], "n_exits": saving["n_exits"], "test_accuracy": saving["test_accuracy"],
            "macs_expected_test": saving["macs_expected_test"], "macs_worst": saving["macs_worst"],
            "expected_below_worst": 1 - saving["macs_expected_test"] / saving["macs_worst"],
            "test_exit_rates": saving["test_exit_rates"]},
        "all_members_within_budgets": all(r["feasible"] for r in result.pareto),
        "members": [{k: r[k] for k in ("id", "val_accuracy", "test_accuracy", "n_exits", "test_exit_rates",
                                       "macs_expected_test", "macs_worst", "latency_expected_s", "peak_sram_bytes",
                                       "flash_bytes", "description")} for r in result.pareto],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
