"""Exit thresholds chosen on the validation split.

Every combination of per-exit thresholds from a grid, with "disabled" as one more choice per exit (a disabled head is
removed from the deployed network, so it costs nothing and does not enter the survival product), is scored on
validation: accuracy, exit rates and expected cost. The choice is the cheapest combination whose accuracy is at least
max(min_accuracy, accuracy without exits - max_accuracy_drop). This replaces the reference's single-epsilon grid plus
greedy repair (which can keep a rejected decrement) with an exact search over a small grid.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class ExitPolicy:
    active: tuple[bool, ...]              # per intermediate exit
    thresholds: tuple[float, ...]         # for the active intermediate exits only, in order
    accuracy: float
    exit_rates: tuple[float, ...]         # per original exit (0 for disabled ones), sums to 1
    expected_cost: float


def apply_policy(preds: np.ndarray, conf: np.ndarray, active: Sequence[bool], thresholds: Sequence[float]) -> np.ndarray:
    """Exit index (into the original exits) per sample under the cumulative rule over the active exits."""
    n, n_exits = preds.shape
    taken = np.full(n, n_exits - 1)
    undecided = np.ones(n, dtype=bool)
    survival = np.ones(n)
    thr = iter(thresholds)
    for i in range(n_exits - 1):
        if not active[i]:
            continue
        survival = survival * (1.0 - conf[:, i])
        fire = undecided & ((1.0 - survival) >= next(thr))
        taken[fire] = i
        undecided &= ~fire
    return taken


def path_costs(backbone_cost: Sequence[float], head_cost: Sequence[float], active: Sequence[bool],
               per_exit_cost: float = 0.0) -> np.ndarray:
    """Cost of leaving at each exit: backbone to that point + every active head evaluated on the way."""
    n = len(backbone_cost)
    out = np.zeros(n)
    heads = 0.0
    for i in range(n):
        on = i == n - 1 or active[i]
        if on:
            heads += head_cost[i] + per_exit_cost
        out[i] = backbone_cost[i] + heads
    return out


def choose_policy(preds: np.ndarray, conf: np.ndarray, y: np.ndarray, backbone_cost: Sequence[float],
                  head_cost: Sequence[float], min_accuracy: float | None = None, max_accuracy_drop: float = 0.01,
                  per_exit_cost: float = 0.0, grid: Sequence[float] = THRESHOLD_GRID) -> ExitPolicy:
    n, n_exits = preds.shape
    n_inter = n_exits - 1
    correct = preds == y[:, None]
    best_key, best = None, None
    base_acc = float(correct[:, -1].mean())
    floor = max(min_accuracy or 0.0, base_acc - max_accuracy_drop)
    choices = list(grid) + [None]
    for combo in itertools.product(choices, repeat=n_inter):
        active = tuple(t is not None for t in combo)
        thr = tuple(t for t in combo if t is not None)
        taken = apply_policy(preds, conf, active, thr)
        acc = float(correct[np.arange(n), taken].mean())
        rates = np.bincount(taken, minlength=n_exits) / n
        if any(a and r == 0 for a, r in zip(active, rates[:-1])):
            continue  # a head that never fires on validation only adds cost: the same combo with it disabled wins
        cost = float(rates @ path_costs(backbone_cost, head_cost, active, per_exit_cost))
        feasible = acc >= floor - 1e-12
        key = (not feasible, cost if feasible else -acc, -acc)
        if best_key is None or key < best_key:
            best_key = key
            best = ExitPolicy(active, thr, acc, tuple(float(r) for r in rates), cost)
    return best
