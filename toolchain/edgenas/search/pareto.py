"""Pareto set of the archive (the ground truth of real evaluations) and its hypervolume."""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgenas.errors import EdgenasError
from edgenas.stats import ACCURACY_CONFIDENCE


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows (minimisation), duplicates kept once (first occurrence)."""
    keep = []
    for i, p in enumerate(points):
        dominated = np.any(np.all(points <= p, axis=1) & np.any(points < p, axis=1))
        duplicate = any(np.array_equal(points[j], p) for j in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return np.array(keep, dtype=int)


def pareto_members(records: list[dict], objectives: Callable[[dict], list[float]]) -> list[dict]:
    """Feasible, non-dominated records under `objectives`, sorted by the second objective."""
    feasible = [r for r in records if r["feasible"]]
    if not feasible:
        return []
    pts = np.array([objectives(r) for r in feasible])
    members = [feasible[i] for i in non_dominated(pts)]
    return sorted(members, key=lambda r: objectives(r)[1])


def hypervolume_2d(points: np.ndarray, ref: tuple[float, float]) -> float:
    """Area dominated by `points` (minimisation) inside the box bounded by `ref`."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts[:, 0] < ref[0]) & (pts[:, 1] < ref[1])]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 1], kind="stable")]
    hv, prev = 0.0, ref[0]
    for f0, f1 in pts:  # sweep along objective 2; each point adds the strip below the best objective 1 so far
        if f0 < prev:
            hv += (prev - f0) * (ref[1] - f1)
            prev = f0
    return float(hv)


def closest_misses(records: list[dict], n: int = 3) -> list[dict]:
    """Infeasible records that miss their budgets by the least total relative excess."""
    bad = [r for r in records if not r["feasible"]]
    return sorted(bad, key=lambda r: sum(max(v["excess"], 0.0) for v in r["violations"].values()))[:n]


def choose_best(members: list[dict]) -> tuple[dict, str]:
    """The Pareto member `edgenas export --best` takes, and a one-line reason.

    The most accurate member on validation is not trusted over members a few images behind it: on digits' 359
    validation images one image is 0.28 pt, so "most accurate" alone can flip with one image. Members whose validation
    accuracy reaches the lower end of the best member's interval (`val_accuracy_ci`: 95 % two-sided Clopper-Pearson,
    so a one-sided 97.5 % lower bound) are tied with it. Among those, members with early exits come first (what the
    search is for), then the lowest expected latency, then the lowest id. When only some members were fine-tuned
    (the rest wait for `--resume`), only those compete: the figures of inherited and fine-tuned weights are not
    comparable, and what ships should be trained.
    """
    if not members:
        raise ValueError("choose_best needs at least one Pareto member")
    # fine-tuning re-chooses the thresholds, so a member's expected latency can move past a budget
    within = [r for r in members if r.get("feasible", True)]
    if not within:
        raise EdgenasError("no Pareto member meets the budgets with its fine-tuned weights",
                           "pass --candidate ID, or re-run the search with --finetune-steps 0")
    tuned = [r for r in within if r.get("weights") == "finetuned"]
    members = tuned or within
    if len(members) == 1:  # e.g. ZO-DARTS+ runs: nothing to compare, whatever the record holds
        only = ("the only fine-tuned Pareto member (`edgenas search --resume` fine-tunes the others)"
                if len(within) > 1 else "the only Pareto member")
        return members[0], f"#{members[0]['id']}: {only}"
    top = max(members, key=lambda r: (r["val_accuracy"], -r["latency_expected_s"], -r["id"]))
    if "val_accuracy_ci" not in top:
        raise EdgenasError(f"candidate #{top['id']} has no validation accuracy interval (the run predates them)",
                           "pass --candidate ID, or re-run the search")
    lower = top["val_accuracy_ci"][0]
    tied = [r for r in members if r["val_accuracy"] >= lower]
    chosen = min(tied, key=lambda r: (r["n_exits"] <= 1, r["latency_expected_s"], r["id"]))
    level = f"{ACCURACY_CONFIDENCE * 100:.0f} %"
    whose = "its own" if chosen is top else f"#{top['id']}"
    best = (f"the best validation accuracy ({whose}, {top['val_accuracy'] * 100:.1f} %, "
            f"lower bound {lower * 100:.1f} %)")
    with_exits = [r for r in tied if r["n_exits"] > 1]
    if len(tied) == 1:
        how = f"no other member within the {level} interval of {best}"
    elif any(r["n_exits"] <= 1 and r["latency_expected_s"] < chosen["latency_expected_s"] for r in tied):
        which = "the only member" if len(with_exits) == 1 else f"cheapest of {len(with_exits)} members"
        how = f"{which} with exits among {len(tied)} within the {level} interval of {best}"
    else:
        how = f"cheapest of {len(tied)} members within the {level} interval of {best}"
    exits = f"has {chosen['n_exits']} exits" if chosen["n_exits"] > 1 else "no early exits"
    among = f" (among the {len(tuned)} fine-tuned members)" if tuned and len(tuned) < len(within) else ""
    return chosen, f"#{chosen['id']}: {how}{among}; {exits}"
