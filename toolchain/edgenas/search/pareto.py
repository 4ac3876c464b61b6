"""Pareto set of the archive (the ground truth of real evaluations) and its hypervolume."""
from __future__ import annotations

from typing import Callable

import numpy as np


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
