"""Candidate evaluations per minute on each executor: local pool and Ray, 1 and 2 workers, on this machine.

What is timed is what `edgenas search` does between generations: the NACHOS evaluator of the default search
(mnist5k, cortex-m7, default EvaluationConfig: BN re-calibration, exit heads, thresholds, costing) mapped over a batch
of genomes through `search.executors`. The supernet is freshly initialised (seeded): an evaluation's work does not
depend on how trained the weights are. Every configuration evaluates the same genomes.

- Each executor is opened, warmed up on `workers` genomes not timed (worker start-up, the evaluator's transfer), then
  timed on `--genomes` others: the steady-state rate a search sees. Start-up is reported on its own.
- Ray runs on an instance started here with 2 CPUs (its start is reported, not counted).
- The machine is shared and noisy: the configurations are interleaved, `--rounds` times in rotated order, and each
  round's Ray/local ratio is reported, with the median of the rounds.
Goal (issue 12): Ray at 2 workers >= 0.9x the local pool at 2 workers.

    python benchmarks/scaling.py                 # writes benchmarks/results/scaling.json
    python benchmarks/scaling.py --genomes 4 --rounds 1 --out /tmp/s.json   # a quick look
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


def evaluator_and_genomes(n: int, seed: int):
    from edgenas.data import load_dataset
    from edgenas.search.driver import SearchConfig, method_for, target_and_budgets
    from edgenas.spaces import create_space
    cfg = SearchConfig()
    target, budgets = target_and_budgets(cfg)
    data = load_dataset(cfg.dataset)
    space = create_space(cfg.space)
    torch.manual_seed(seed)
    supernet = space.supernet(data.in_channels, data.n_classes).eval()
    evaluator = method_for(cfg).make_evaluator(space, supernet, data, target, budgets, cfg)
    rng = np.random.default_rng(seed)
    genomes, keys = [], set()
    while len(genomes) < n:
        g = space.canonical(space.sample(rng))
        if space.key(g) not in keys:
            keys.add(space.key(g))
            genomes.append(g)
    return evaluator, genomes


def timed_rate(kind: str, workers: int, evaluator, warmup: list, genomes: list) -> dict:
    from edgenas.search.executors import ExecutorConfig, open_executor
    t0 = time.perf_counter()
    with open_executor(ExecutorConfig(kind, workers), evaluator) as pool:
        list(pool.imap(warmup))
        t1 = time.perf_counter()
        records = list(pool.imap(genomes))
        t2 = time.perf_counter()
    return {"executor": kind, "workers": workers, "evaluations": len(records), "seconds": round(t2 - t1, 2),
            "per_minute": round(60 * len(records) / (t2 - t1), 2), "warmup_seconds": round(t1 - t0, 2),
            "records_sha256": hashlib.sha256(json.dumps([{k: v for k, v in r.items() if k != "eval_seconds"}
                                                        for r in records], sort_keys=True).encode()).hexdigest(),
            "mean_eval_seconds": round(statistics.mean(r["eval_seconds"] for r in records), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genomes", type=int, default=12, help="timed evaluations per configuration and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = parser.parse_args()
    import ray

    evaluator, genomes = evaluator_and_genomes(2 + args.genomes, args.seed)
    warmup, timed = genomes[:2], genomes[2:]
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    ray_start = time.perf_counter() - t0
    runs = []
    try:
        for r in range(args.rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            for kind, workers in order:
                row = {"round": r, **timed_rate(kind, workers, evaluator, warmup[:workers], timed)}
                runs.append(row)
                print(f"round {r} {kind:5s} x{workers}: {row['per_minute']:6.1f} evaluations/min "
                      f"({row['evaluations']} in {row['seconds']:.1f} s; warm-up {row['warmup_seconds']:.1f} s)", flush=True)
    finally:
        ray.shutdown()
    same_records = len({r["records_sha256"] for r in runs}) == 1  # timing aside, every executor gives the same records
    rate = lambda kind, w, rnd: next(x["per_minute"] for x in runs if (x["executor"], x["workers"], x["round"]) == (kind, w, rnd))  # noqa: E731
    ratios = [rate("ray", 2, r) / rate("local", 2, r) for r in range(args.rounds)]
    summary = {f"{kind}_{w}": round(statistics.median(rate(kind, w, r) for r in range(args.rounds)), 2) for kind, w in CONFIGS}
    doc = {"benchmark": "scaling", "machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                               "cores": len(__import__("os").sched_getaffinity(0)),
                                               "python": platform.python_version(), "torch": torch.__version__,
                                               "ray": ray.__version__},
           "workload": "NACHOS evaluation of the default search (mnist5k, cortex-m7), fresh supernet",
           "ray_start_seconds": round(ray_start, 2), "runs": runs, "same_records_everywhere": same_records,
           "median_per_minute": summary, "ray2_over_local2_per_round": [round(x, 3) for x in ratios],
           "ray2_over_local2_median": round(statistics.median(ratios), 3),
           "local2_over_local1_median": round(summary["local_2"] / summary["local_1"], 3),
           "goal": "ray2_over_local2_median >= 0.9", "goal_met": statistics.median(ratios) >= 0.9}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print("median evaluations/min: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.items())
          + f"; ray2/local2 {doc['ray2_over_local2_median']:.3f} (goal >= 0.9: {'met' if doc['goal_met'] else 'MISSED'}); "
          f"records identical on every executor: {same_records}; Ray start {ray_start:.1f} s; CPU {doc['machine']['cpu_capability']}; wrote {args.out}")


if __name__ == "__main__":
    main()
