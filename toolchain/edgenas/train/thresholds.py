"""Exit thresholds chosen on the validation split, under a statistical guard on the accuracy they cost.

Every combination of per-exit thresholds from a grid, with "disabled" as one more choice per exit (a disabled head is
removed from the deployed network, so it costs nothing and does not enter the survival product), is scored on
validation: accuracy, exit rates and expected cost. The choice is the cheapest combination whose accuracy loss against
the final exit is certified, at confidence 1 - risk_delta, to be at most max_accuracy_drop (and whose accuracy is at
least min_accuracy, when given). This replaces the reference's single-epsilon grid plus greedy repair (which can keep
a rejected decrement) with an exact search over a small grid.

Why a bound and not the observed loss: on digits' 359 validation images one image is 0.28 pt, so a raw 1-pt floor
passes a policy that loses 3 images (0.84 pt) by noise, and the standard error of one accuracy there is ~0.9 pt.
The bound is paired (both exits see the same images): with b = images the policy gets wrong and the final exit right,
c = the reverse, the loss is p_b - p_c and

    loss_ub = ClopperPearson_upper(b, n, delta / 2) - ClopperPearson_lower(c, n, delta / 2)

holds with probability >= 1 - delta (Bonferroni over the two one-sided bounds; exact, so valid at any n and
conservative). Even with no flips at all the bound is 1 - (delta/2)^(1/n): 1.02 % at n = 359 and 0.37 % at n = 1000
for delta = 0.05. So digits' 359-image validation cannot certify a 1-pt loss at delta 0.05 unless the exits also fix
some of the final exit's mistakes (c > 0), while mnist5k's 1000 images can. The all-disabled policy is the final exit
itself: its loss is exactly 0, it always passes the guard and stays the fallback.

Not corrected for multiple testing: each combination's bound is valid for that combination fixed in advance, but the
cheapest passing one is picked from the same validation data, so the guarantee of the chosen policy is weaker than
1 - delta. Learn-then-Test's fixed-sequence testing would restore it, but needs a one-parameter family (one shared
threshold, ordered from conservative to aggressive), not this per-exit grid.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgenas.stats import clopper_pearson_lower, clopper_pearson_upper

THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
RISK_DELTA = 0.05
# With the exit placement fixed (a fine-tuned member keeps its heads), an exit that cannot pass the guard at any
# threshold is kept but never fires: 1 - s <= 1 < NEVER_FIRES for every input. The exit rule needs no special case.
NEVER_FIRES = 2.0


@dataclass(frozen=True)
class ExitPolicy:
    active: tuple[bool, ...]              # per intermediate exit
    thresholds: tuple[float, ...]         # for the active intermediate exits only, in order
    accuracy: float
    exit_rates: tuple[float, ...]         # per original exit (0 for disabled ones), sums to 1
    expected_cost: float
    harmful_flips: int = 0                # b: validation images the policy gets wrong and the final exit right
    beneficial_flips: int = 0             # c: the reverse
    loss_upper_bound: float = 0.0         # upper confidence bound on the accuracy lost against the final exit


@functools.lru_cache(maxsize=4096)
def exit_loss_upper_bound(harmful: int, beneficial: int, n: int, delta: float) -> float:
    """Upper bound, at confidence 1 - delta, on the accuracy an exit policy loses against the final exit.

    Paired: harmful/beneficial count the images where only the final exit / only the policy is right. Bonferroni
    split of delta over the two one-sided Clopper-Pearson bounds (see the module docstring)."""
    return clopper_pearson_upper(harmful, n, delta / 2) - clopper_pearson_lower(beneficial, n, delta / 2)


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
                  per_exit_cost: float = 0.0, grid: Sequence[float] = THRESHOLD_GRID,
                  risk_delta: float = RISK_DELTA, allow_disable: bool = True) -> ExitPolicy:
    """Cheapest policy whose accuracy loss bound (confidence 1 - risk_delta) is <= max_accuracy_drop and whose
    accuracy is >= min_accuracy; when none is, the most accurate one (the caller's budgets then flag it).

    allow_disable False keeps every head (a fixed exit placement): instead of "disabled", an exit may get the
    threshold NEVER_FIRES, and its head's cost is still counted."""
    n, n_exits = preds.shape
    n_inter = n_exits - 1
    correct = preds == y[:, None]
    final_correct = correct[:, -1]
    best_key, best = None, None
    choices = list(grid) + [None if allow_disable else NEVER_FIRES]
    for combo in itertools.product(choices, repeat=n_inter):
        active = tuple(t is not None for t in combo)
        thr = tuple(t for t in combo if t is not None)
        taken = apply_policy(preds, conf, active, thr)
        policy_correct = correct[np.arange(n), taken]
        acc = float(policy_correct.mean())
        rates = np.bincount(taken, minlength=n_exits) / n
        if allow_disable and any(a and r == 0 for a, r in zip(active, rates[:-1])):
            continue  # a head that never fires on validation only adds cost: the same combo with it disabled wins
        cost = float(rates @ path_costs(backbone_cost, head_cost, active, per_exit_cost))
        harmful = int((~policy_correct & final_correct).sum())
        beneficial = int((policy_correct & ~final_correct).sum())
        # the final exit alone loses nothing by construction; estimating it would only add sampling slack
        bound = exit_loss_upper_bound(harmful, beneficial, n, risk_delta) if (taken < n_exits - 1).any() else 0.0
        feasible = bound <= max_accuracy_drop + 1e-12 and acc >= (min_accuracy or 0.0) - 1e-12
        key = (not feasible, cost if feasible else -acc, -acc)
        if best_key is None or key < best_key:
            best_key = key
            best = ExitPolicy(active, thr, acc, tuple(float(r) for r in rates), cost, harmful, beneficial, bound)
    return best
