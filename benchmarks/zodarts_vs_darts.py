"""ZO-DARTS+ vs ZO-DARTS vs DARTS (1st, 2nd order) on one dataset: search time per epoch and retrained accuracy.

All four methods run through the same search loop (edgenas.search.zodarts), at the same epochs, batch size, data
split and network size, in the same process, interleaved per seed (the method order rotates with the seed so that
machine-load drift does not favour one method). Timed: the training/search loop of each epoch only.
Accuracy: the derived cell retrained from scratch, final epoch, on the dataset's test split (no selection on it).

    .venv/bin/python benchmarks/zodarts_vs_darts.py --dataset mnist5k --out benchmarks/results/zodarts_vs_darts.json
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", help='"mnist5k", "digits" or "medmnist:FILE.npz"')
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=6, help="search epochs, the same for every method")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--C", type=int, default=8, help="stage-1 channels")
    p.add_argument("--N", type=int, default=1, help="cells per stage")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--search-samples", type=int, default=2000, help="train-split samples for the search (halved)")
    p.add_argument("--window", type=int, default=10, help="ZO window K (weight steps per architecture update)")
    p.add_argument("--retrain-epochs", type=int, default=5)
    p.add_argument("--retrain-samples", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", default="benchmarks/results/zodarts_vs_darts.json")
    return p.parse_args(argv)


def _mean_std(values):
    values = list(values)
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(runs: list[dict], methods, epochs: int) -> dict:
    by = {m: [r for r in runs if r["method"] == m] for m in methods}
    out = {}
    for m, rs in by.items():
        if not rs:
            continue
        out[m] = {"epoch_seconds": _mean_std(statistics.fmean(r["epoch_seconds"]) for r in rs),
                  "search_seconds": _mean_std(r["search_seconds"] for r in rs),
                  "test_accuracy": _mean_std(r["retrain"]["test_accuracy"] for r in rs),
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
        goal = {"speedup_at_equal_epochs": speed, "accuracy_gap_points": gap,
                "faster_3x": speed >= 3.0, "accuracy_within_1_point": gap >= -1.0}
    return {"per_method": out, "ratios": ratios, "goal": goal}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from edgenas.data import load_dataset
    from edgenas.search.runfolder import atomic_write_json
    from edgenas.search.zodarts import search_zodarts

    data = load_dataset(args.dataset)
    settings = dict(C=args.C, N=args.N, resolution=args.resolution, batch_size=args.batch_size,
                    search_samples=args.search_samples, window=args.window, retrain_epochs=args.retrain_epochs,
                    retrain_samples=args.retrain_samples,
                    fit_exits=False)  # compared: search + retrained accuracy; exit fitting is identical for all
    runs = []
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        order = list(args.methods[i % len(args.methods):]) + list(args.methods[:i % len(args.methods)])
        for method in order:
            t0 = time.perf_counter()
            res = search_zodarts(data, method=method, epochs=args.epochs, seed=seed, **settings)
            row = res.to_dict()
            row.pop("config")
            row["wall_seconds"] = time.perf_counter() - t0
            runs.append(row)
            print(f"seed {seed} {method:9s} {statistics.fmean(res.epoch_seconds):6.2f} s/epoch  "
                  f"test acc {res.retrain['test_accuracy']:.4f}  {res.genotype}", file=sys.stderr, flush=True)
    report = {
        "benchmark": "zodarts_vs_darts",
        "dataset": args.dataset,
        "n_train": int(len(data.train.y)), "n_val": int(len(data.val.y)), "n_test": int(len(data.test.y)),
        "settings": {**settings, "epochs": args.epochs, "seeds": args.seeds, "threads": args.threads},
        "protocol": ("same search loop, epochs, batches, split and network for every method; epoch_seconds = "
                     "training/search loop only; accuracy = derived cell retrained from scratch, final epoch, "
                     "test split; discretisation = per-edge argmax of alpha (connectivity repair if needed)"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
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
    print(json.dumps(s["ratios"], indent=1), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
