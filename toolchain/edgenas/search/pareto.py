"""Pareto set of the archive (the ground truth of real evaluations) and its hypervolume."""
from __future__ import annotations

import numpy as np

from edgenas.search.evaluate import objective_values


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows (minimisation), duplicates kept once (first occurrence)."""
    keep = []
    for i, p in enumerate(points):
        dominated = np.any(np.all(points <= p, axis=1) & np.any(points < p, axis=1))
        duplicate = any(np.array_equal(points[j], p) for j in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return np.array(keep, dtype=int)


def pareto_members(records: list[dict]) -> list[dict]:
    """Feasible, non-dominated records in (val error, expected latency), sorted by latency."""
    feasible = [r for r in records if r["feasible"]]
    if not feasible:
        return []
    pts = np.array([objective_values(r) for r in feasible])
    members = [feasible[i] for i in non_dominated(pts)]
    return sorted(members, key=lambda r: r["latency_expected_s"])


def hypervolume(records: list[dict], latency_ref_s: float, error_ref: float = 1.0) -> float:
    """Hypervolume of the feasible front in (error, latency / latency_ref), reference point (error_ref, 1)."""
    members = pareto_members(records)
    if not members:
        return 0.0
    pts = np.array([[1.0 - r["val_accuracy"], r["latency_expected_s"] / latency_ref_s] for r in members])
    pts = pts[(pts[:, 0] < error_ref) & (pts[:, 1] < 1.0)]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 1])]
    hv, prev_err = 0.0, error_ref
    for err, lat in pts:  # sweep by latency; each point adds the rectangle below the previous best error
        if err < prev_err:
            hv += (prev_err - err) * (1.0 - lat)
            prev_err = err
    return float(hv)


def closest_misses(records: list[dict], n: int = 3) -> list[dict]:
    """Infeasible records that miss their budgets by the least total relative excess."""
    bad = [r for r in records if not r["feasible"]]
    return sorted(bad, key=lambda r: sum(max(v["excess"], 0.0) for v in r["violations"].values()))[:n]
