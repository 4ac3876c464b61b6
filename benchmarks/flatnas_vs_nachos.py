"""FlatNAS vs NACHOS on digits with the same budgets and number of evaluations: mean corruption accuracy of the
Pareto members at matched clean accuracy. Writes JSON.

    python benchmarks/flatnas_vs_nachos.py [--pop-size 12 --generations 5] [--out benchmarks/results/flatnas_vs_nachos.json]

NACHOS members get the same corruption benchmark after the search (same test images, same corruption seed).
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgenas import api
from edgenas.data import load_dataset, resize
from edgenas.data.corruptions import corrupted_accuracy
from edgenas.search.driver import SearchConfig
from edgenas.search.runfolder import load_candidate
from edgenas.search.flatnas import FlatnasConfig


def ood_of(run_dir, member_id, data, n, seed):
    net, record, _ = load_candidate(run_dir, member_id)
    res = net.input_shape[-1]
    test = type(data.test)(x=resize(data.test.x[:n], res), y=data.test.y[:n])

    @torch.no_grad()
    def predict(x):
        return net(x)[0].argmax(1)
    return float(corrupted_accuracy(predict, test, seed=seed)["mean"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pop-size", type=int, default=12)
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--target", default="cortex-m7")
    p.add_argument("--runs", default="runs/bench-flatnas")
    p.add_argument("--ood-samples", type=int, default=200)
    p.add_argument("--out", default="benchmarks/results/flatnas_vs_nachos.json")
    a = p.parse_args()
    base = SearchConfig(target=a.target, dataset="digits", pop_size=a.pop_size, n_gen=a.generations,
                        flatnas=FlatnasConfig(ood_samples=a.ood_samples))
    data = load_dataset("digits")
    out = {"benchmark": "flatnas_vs_nachos", "dataset": "digits", "target": a.target,
           "pop_size": a.pop_size, "generations": a.generations, "methods": {}}
    for method in ("nachos", "flatnas"):
        t0 = time.time()
        run = Path(a.runs) / method
        result = api.search(config=replace(base, method=method), method=method, out=run, resume=True)
        members = []
        for m in result.pareto:
            ood = m.get("ood_accuracy")
            if ood is None or m.get("ood_samples") != a.ood_samples:
                ood = ood_of(run, m["id"], data, a.ood_samples, seed=0)
            members.append({"id": m["id"], "test_accuracy": m["test_accuracy"], "ood_accuracy": ood,
                            "params": m["params"], "flatness": m.get("flatness"), "n_exits": m["n_exits"]})
        out["methods"][method] = {"wall_seconds": round(time.time() - t0, 1), "evaluations": result.evaluations,
                                  "members": members,
                                  "mean_ood_accuracy": float(np.mean([m["ood_accuracy"] for m in members])),
                                  "best_test_accuracy": max(m["test_accuracy"] for m in members)}
    # matched clean accuracy: each FlatNAS member against the NACHOS member closest in test accuracy
    pairs = []
    for f in out["methods"]["flatnas"]["members"]:
        n = min(out["methods"]["nachos"]["members"], key=lambda m: abs(m["test_accuracy"] - f["test_accuracy"]))
        pairs.append({"flatnas": f["id"], "nachos": n["id"], "clean_gap": f["test_accuracy"] - n["test_accuracy"],
                      "ood_gain": f["ood_accuracy"] - n["ood_accuracy"]})
    matched = [q for q in pairs if q["clean_gap"] >= -0.01]
    out["matched_pairs"] = pairs
    out["mean_ood_gain_at_matched_accuracy"] = float(np.mean([q["ood_gain"] for q in matched])) if matched else None
    out["goal"] = "higher OOD accuracy at <= 1 point clean accuracy loss"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
