"""ZO-DARTS+ vs ZO-DARTS vs DARTS (1st, 2nd order) on one dataset: search time per epoch and retrained accuracy.

All methods run through the same search loop (edgenas.search.zodarts), at the same epochs, batch size, data split
and network size, interleaved per seed (the method order rotates with the seed so that machine-load drift does not
favour one method). `--jobs` processes (one intra-op thread each) take the (seed, method) runs in that order, so both
cores of a 2-core machine work and every method meets the same contention. Timed: the training/search loop of each
epoch only. Accuracy: the derived cell retrained from scratch, final epoch, on the dataset's test split (no selection
on it), with its 95 % Clopper-Pearson interval per run and a t-interval over seeds for the difference.

The default is the configuration `edgenas search --method zodarts` runs without a target (the reference network of
research/zodarts.md: C = 16, N = 3, 32 px, batch 64, the whole train split, 10 retraining epochs); `--quick` is the
toy configuration (C = 8, N = 1, 16 px, batch 32, 2,000 search samples, 6 epochs).

    .venv/bin/python benchmarks/zodarts_vs_darts.py --methods zodarts+ darts2 --epochs 3
    .venv/bin/python benchmarks/zodarts_vs_darts.py --quick --out benchmarks/results/zodarts_vs_darts_quick.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

METHODS = ("zodarts+", "zodarts", "darts1", "darts2")
# the CLI's configuration (ZodartsConfig defaults without a target) and the toy one of --quick
DEFAULT = dict(epochs=10, resolution=32, C=16, N=3, batch_size=64, search_samples=None, retrain_epochs=10,
               retrain_samples=None, out="benchmarks/results/zodarts_vs_darts.json")
QUICK = dict(epochs=6, resolution=16, C=8, N=1, batch_size=32, search_samples=2000, retrain_epochs=5,
             retrain_samples=3000, out="benchmarks/results/zodarts_vs_darts_quick.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", help='"mnist5k", "digits" or "medmnist:FILE.npz"')
    p.add_argument("--quick", action="store_true", help="the toy configuration (C=8, N=1, 16 px, 2,000 samples)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, help="search epochs, the same for every method (default 10, --quick 6)")
    p.add_argument("--resolution", type=int)
    p.add_argument("--C", type=int, help="stage-1 channels")
    p.add_argument("--N", type=int, help="cells per stage")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--search-samples", type=int, help="train-split samples for the search (halved; default all)")
    p.add_argument("--window", type=int, default=10, help="ZO window K (weight steps per architecture update)")
    p.add_argument("--retrain-epochs", type=int)
    p.add_argument("--retrain-samples", type=int)
    p.add_argument("--jobs", type=int, default=2, help="processes running (seed, method) runs side by side")
    p.add_argument("--out")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else DEFAULT).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def _mean_std(values):
    """Mean, standard deviation and the 95 % t-interval of the mean over runs (seeds)."""
    from scipy import stats
    values = list(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(values) - 1)) * std / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "values": values}


def _paired_difference(a: list[dict], b: list[dict], key) -> dict:
    """a - b over the seeds both ran, with a t-interval (the seed fixes the data split and initialisation)."""
    by_seed = {r["seed"]: key(r) for r in b}
    return _mean_std(key(r) - by_seed[r["seed"]] for r in a if r["seed"] in by_seed)


def _paired_ratio(a: list[dict], b: list[dict]) -> dict:
    """Mean s/epoch of a over b, seed by seed (the same seed ran both in the same interleaved order)."""
    per = {r["seed"]: statistics.fmean(r["epoch_seconds"]) for r in b}
    return _mean_std(statistics.fmean(r["epoch_seconds"]) / per[r["seed"]] for r in a if r["seed"] in per)


def summarise(runs: list[dict], methods, epochs: int) -> dict:
    by = {m: [r for r in runs if r["method"] == m] for m in methods}
    out = {}
    for m, rs in by.items():
        if not rs:
            continue
        out[m] = {"epoch_seconds": _mean_std(statistics.fmean(r["epoch_seconds"]) for r in rs),
                  "search_seconds": _mean_std(r["search_seconds"] for r in rs),
                  "test_accuracy": _mean_std(r["retrain"]["test_accuracy"] for r in rs),
                  "test_accuracy_run_ci95": [r["test_accuracy_ci95"] for r in rs],
                  "val_accuracy": _mean_std(r["retrain"]["val_accuracy"] for r in rs),
                  "alpha_updates": rs[0]["alpha_updates"],
                  "genotypes": [r["genotype"] for r in rs]}
    ratios = {}
    if "zodarts+" in out:
        zp = out["zodarts+"]
        for m in methods:
            if m == "zodarts+" or m not in out:
                continue
            ratios[f"{m}_over_zodarts+_epoch_time"] = out[m]["epoch_seconds"]["mean"] / zp["epoch_seconds"]["mean"]
            ratios[f"zodarts+_minus_{m}_test_accuracy_points"] = 100 * (zp["test_accuracy"]["mean"] -
                                                                       out[m]["test_accuracy"]["mean"])
            ratios[f"zodarts+_minus_{m}_test_accuracy_points_paired"] = _paired_difference(
                by["zodarts+"], by[m], lambda r: 100 * r["retrain"]["test_accuracy"])
        if "darts2" in out:
            # the reference's protocol: ZO-DARTS+ read at 80% of the epochs (40 of 50), DARTS-2nd at all of them
            cut = max(1, round(0.8 * epochs))
            zp_cut = statistics.fmean(sum(r["epoch_seconds"][:cut]) for r in by["zodarts+"])
            darts2_full = out["darts2"]["search_seconds"]["mean"]
            ratios["darts2_full_over_zodarts+_80pct_epochs_search_time"] = darts2_full / zp_cut
            ratios["reference_protocol_epochs"] = {"zodarts+": cut, "darts2": epochs}
    goal = None
    if "darts2_over_zodarts+_epoch_time" in ratios:
        speed = ratios["darts2_over_zodarts+_epoch_time"]
        gap = ratios["zodarts+_minus_darts2_test_accuracy_points"]
        paired = ratios["zodarts+_minus_darts2_test_accuracy_points_paired"]
        speed_by_seed = _paired_ratio(by["darts2"], by["zodarts+"])
        goal = {"speedup_at_equal_epochs": speed, "speedup_per_seed": speed_by_seed,
                "speedup_reference_protocol": ratios["darts2_full_over_zodarts+_80pct_epochs_search_time"],
                "accuracy_gap_points": gap, "accuracy_gap_points_ci95": paired["ci95"],
                "faster_3x": speed >= 3.0, "accuracy_within_1_point": gap >= -1.0}
    return {"per_method": out, "ratios": ratios, "goal": goal}


def run_one(dataset: str, method: str, seed: int, epochs: int, settings: dict) -> dict:
    """One (seed, method) search + retraining in a worker process with one intra-op thread."""
    import torch
    torch.set_num_threads(1)
    from edgenas.data import load_dataset
    from edgenas.search.zodarts import search_zodarts
    from edgenas.stats import accuracy_interval
    data = load_dataset(dataset)
    t0 = time.perf_counter()
    res = search_zodarts(data, method=method, epochs=epochs, seed=seed, threads=1, **settings)
    row = res.to_dict()
    row.pop("config")
    row["wall_seconds"] = time.perf_counter() - t0
    row["test_accuracy_ci95"] = accuracy_interval(res.retrain["test_accuracy"], len(data.test.y))
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch
    from edgenas.data import load_dataset
    from edgenas.fileio import atomic_write_json

    data = load_dataset(args.dataset)
    settings = dict(C=args.C, N=args.N, resolution=args.resolution, batch_size=args.batch_size,
                    search_samples=args.search_samples, window=args.window, retrain_epochs=args.retrain_epochs,
                    retrain_samples=args.retrain_samples,
                    fit_exits=False)  # compared: search + retrained accuracy; exit fitting is identical for all
    tasks = []
    for i, seed in enumerate(args.seeds):
        order = list(args.methods[i % len(args.methods):]) + list(args.methods[:i % len(args.methods)])
        tasks += [(method, seed) for method in order]
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, args.dataset, m, seed, args.epochs, settings) for m, seed in tasks]
        for fut in futures:
            row = fut.result()
            runs.append(row)
            print(f"seed {row['seed']} {row['method']:9s} {statistics.fmean(row['epoch_seconds']):6.2f} s/epoch  "
                  f"test acc {row['retrain']['test_accuracy']:.4f}  {row['genotype']}", file=sys.stderr, flush=True)
    report = {
        "benchmark": "zodarts_vs_darts",
        "configuration": "quick (toy)" if args.quick else "default (the CLI's: C=16, N=3, 32 px)",
        "dataset": args.dataset,
        "n_train": int(len(data.train.y)), "n_val": int(len(data.val.y)), "n_test": int(len(data.test.y)),
        "settings": {**settings, "epochs": args.epochs, "seeds": args.seeds, "jobs": args.jobs,
                     "threads_per_job": 1},
        "protocol": ("same search loop, epochs, batches, split and network for every method; epoch_seconds = "
                     "training/search loop only; accuracy = derived cell retrained from scratch, final epoch, "
                     "test split; discretisation = the most probable connected cell (the argmax when connected)"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "total_wall_seconds": time.perf_counter() - t_start,
        "summary": summarise(runs, args.methods, args.epochs),
        "runs": runs,
    }
    out = Path(args.out)
    atomic_write_json(out, report)
    s = report["summary"]
    for m, v in s["per_method"].items():
        print(f"{m:9s} {v['epoch_seconds']['mean']:6.2f} ± {v['epoch_seconds']['std']:.2f} s/epoch   "
              f"test acc {100 * v['test_accuracy']['mean']:.2f} ± {100 * v['test_accuracy']['std']:.2f} %",
              file=sys.stderr)
    print(json.dumps({"ratios": s["ratios"], "goal": s["goal"]}, indent=1), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
