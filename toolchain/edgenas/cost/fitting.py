"""Fitting a latency model to observations (edgenas.cost.measurements), judging it, and choosing the model family.

Families (edgenas.targets.LATENCY_FAMILIES), from the simplest:

- macs-only: seconds = a + b * MACs for the whole network (the baseline every other family must beat);
- per-kind: per latency kind, non-negative coefficients of the LINEAR_FEATURES (calls, MACs, bytes read, written,
  of weights), plus a per-inference constant;
- per-kind-shape: the same with the SHAPE_FEATURES too (per output channel and row, and extra per-MAC costs of thin
  reductions, strides and small planes: the shapes at which kernels change);
- boosted-trees: per-kind-shape plus a learned per-layer correction, gradient-boosted regression trees over each
  layer's kind and shape (TREE_DESCRIPTORS), in the manner of nn-Meter's per-kernel regressors. Observations are
  sums over layers (a whole network, or a profiled layer group), so each round distributes every observation's
  residual over its layers in proportion to their predicted time, fits a shallow tree to those per-layer targets to
  find a partition of layers, and then solves the leaf values by least squares on the observations' relative error
  (the additive structure is kept: a layer's correction does not depend on the network it is in).

The linear families are fitted by non-negative least squares on *relative* error (latencies span orders of
magnitude) with a Huber loss, so that a few disturbed measurements do not pull the coefficients. Held-out error
comes from K-fold cross-validation over models (a model's observations never straddle folds). `select_family` keeps
the family with the best held-out figures for the objective, among those no worse than MACs-only in both Kendall tau
and share within +-10 %; when none is, it falls back to MACs-only and says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from edgenas.cost.analysis import ALL_FEATURES, FEATURES
from edgenas.cost.measurements import Measurements, ModelTotal, Observation
from edgenas.errors import EdgenasError
from edgenas.targets import LATENCY_FAMILIES, RegressionTree, TreeCorrection

N_FEATURES = len(ALL_FEATURES)
# columns of ALL_FEATURES each linear family fits (the others stay 0)
FAMILY_FEATURES = {"per-kind": len(FEATURES), "per-kind-shape": N_FEATURES, "boosted-trees": N_FEATURES}
OBJECTIVES = ("both", "ranking", "budgets")
INTERVAL_LEVEL = 0.9  # the prediction interval's coverage: held-out ratio quantiles 5 % and 95 %
# Boosting settings: shallow trees, shrunk leaf values, and leaves that hold enough layers to mean something
TREE_ROUNDS = 40
TREE_DEPTH = 3
TREE_LEARNING_RATE = 0.3
TREE_MIN_LEAF_FRACTION = 0.02
# two families whose selection scores differ by less than this are a tie, which the simpler one wins
SCORE_TIE = 0.01


def _vector(f: Sequence[float]) -> tuple[float, ...]:
    """A feature vector at the full width (callers may give only the LINEAR_FEATURES)."""
    return (*f, *(0.0,) * (N_FEATURES - len(f))) if len(f) < N_FEATURES else tuple(f)


@dataclass(frozen=True)
class Fit:
    """Fitted coefficients in seconds: kind -> one per ALL_FEATURES, the per-inference constant; for boosted-trees
    the trees (leaf values in seconds) over descriptors whose kind index is into `tree_kinds`; for macs-only one
    coefficient per MAC (`macs_s`) on the model's plain MACs."""
    kinds: Mapping[str, tuple[float, ...]]
    per_inference_s: float
    per_exit_s: float          # fixed (from the base target), not fitted
    family: str = "per-kind"
    trees: tuple[RegressionTree, ...] = ()
    tree_kinds: tuple[str, ...] = ()
    macs_s: float = 0.0

    def layer_seconds(self, kind: str, features: Sequence[float], descriptor: Sequence[float] = ()) -> float:
        s = sum(c * x for c, x in zip(self.kinds.get(kind, (0.0,) * N_FEATURES), features))
        if self.trees and descriptor:
            d = (float(self.tree_kinds.index(kind)) if kind in self.tree_kinds else -1.0, *descriptor[1:])
            s += sum(t.evaluate(d) for t in self.trees)
        return max(s, 0.0) if self.trees else s

    def predict(self, features: Mapping[str, Sequence[float]], overhead: int = 0, exits: int = 0,
                layers: Sequence = (), macs: float | None = None) -> float:
        """Seconds of what an observation or model total covers (its summed features, or its layers for trees)."""
        s = overhead * self.per_inference_s + exits * self.per_exit_s
        if self.family == "macs-only":
            plain = macs if macs is not None else sum(_vector(f)[1] for f in features.values())
            return s + self.macs_s * plain
        if self.trees and layers:
            return s + sum(self.layer_seconds(kind, f, d) for kind, f, d in layers)
        for kind, f in features.items():
            s += sum(c * x for c, x in zip(self.kinds.get(kind, (0.0,) * N_FEATURES), _vector(f)))
        return s

    def predict_total(self, t: ModelTotal) -> float:
        return self.predict(t.features, t.overhead, t.exits, t.layers, t.macs)


def robust_nnls(a: np.ndarray, y: np.ndarray, huber_k: float = 1.345, rounds: int = 20, ridge: float = 1e-10
                ) -> np.ndarray:
    """min sum_i rho((a_i . beta - y_i) / y_i) over beta >= 0, rho = Huber, by iteratively reweighted non-negative
    least squares (scipy.optimize.nnls; each round weights a row by min(1, threshold / |residual|), the Huber
    weight, which converges to the Huber estimate).

    Rows are divided by y (relative error), columns scaled to unit norm; a tiny ridge keeps collinear columns
    (e.g. every conv followed by an activation) determined. The Huber threshold is huber_k times the residual scale
    (MAD of the relative residuals, at least 1e-4), estimated from the plain fit and re-estimated each round. Rounds
    stop when the coefficients settle (at most `rounds`). A bounded trust-region solver gave the same estimates at
    ~50x the time (SVDs of the full design each iteration), too slow to cross-validate several families."""
    from scipy.optimize import nnls

    a, y = np.asarray(a, float), np.asarray(y, float)
    rel = a / y[:, None]
    norms = np.linalg.norm(rel, axis=0)
    live = norms > 0
    beta = np.zeros(a.shape[1])
    if not live.any():
        return beta
    r_a = rel[:, live] / norms[live]
    n_live = int(live.sum())
    ridge_rows = math.sqrt(ridge * len(y)) * np.eye(n_live)
    ones = np.ones(len(y))

    def solve(weights):
        w = np.sqrt(weights)
        jac = np.vstack([r_a * w[:, None], ridge_rows])
        b, _ = nnls(jac, np.concatenate([w, np.zeros(n_live)]), maxiter=50 * n_live)
        return b

    b = solve(ones)
    for _ in range(rounds):
        resid = r_a @ b - 1.0
        scale = max(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 1e-4)
        weights = np.minimum(1.0, huber_k * scale / np.maximum(np.abs(resid), 1e-300))
        new = solve(weights)
        settled = np.allclose(new, b, rtol=1e-6, atol=1e-9 * max(float(np.abs(b).max()), 1e-30))
        b = new
        if settled:
            break
    beta[live] = b / norms[live]
    return beta


def _design(observations, kinds: Sequence[str], per_exit_s: float, n_f: int):
    a = np.zeros((len(observations), len(kinds) * n_f + 1))
    y = np.zeros(len(observations))
    for r, o in enumerate(observations):
        for kind, f in o.features.items():
            k = kinds.index(kind)
            a[r, k * n_f:(k + 1) * n_f] = _vector(f)[:n_f]
        a[r, -1] = o.overhead
        y[r] = o.seconds - o.exits * per_exit_s
    return a, y


def fit(observations: Sequence[Observation], per_exit_s: float = 0.0, family: str = "per-kind") -> Fit:
    """The family's coefficients (seconds) from observations, robust to outliers, on relative error."""
    if family == "macs-only":
        raise EdgenasError("the macs-only family is fitted on model totals", "call fit_macs_only_model(totals)")
    if family not in FAMILY_FEATURES:
        raise EdgenasError(f"unknown latency model family '{family}'", f"use one of {', '.join(LATENCY_FAMILIES)}")
    n_f = FAMILY_FEATURES[family]
    kinds = sorted({k for o in observations for k in o.features})
    a, y = _design(observations, kinds, per_exit_s, n_f)
    keep = y > 0
    if not keep.any():
        raise EdgenasError("no usable measurement (every time is below the fixed per-exit cost)",
                           "check the units of the measurements")
    beta = robust_nnls(a[keep], y[keep])
    linear = Fit({k: _vector(tuple(float(v) for v in beta[i * n_f:(i + 1) * n_f])) for i, k in enumerate(kinds)},
                 float(beta[-1]), per_exit_s, family="per-kind-shape" if family == "boosted-trees" else family)
    if family != "boosted-trees":
        return linear
    return boost_trees(linear, _usable(observations, per_exit_s))


def _usable(observations: Sequence[Observation], per_exit_s: float) -> list[Observation]:
    """The observations a fit can use: a time above the fixed per-exit cost it includes."""
    return [o for o in observations if o.seconds - o.exits * per_exit_s > 0]


def boost_trees(base: Fit, observations: Sequence[Observation], rounds: int = TREE_ROUNDS, depth: int = TREE_DEPTH,
                learning_rate: float = TREE_LEARNING_RATE, seed: int = 0) -> Fit:
    """`base` (a linear fit) plus boosted per-layer trees, fitted to the observations that list their layers."""
    from sklearn.tree import DecisionTreeRegressor

    obs = [o for o in observations if o.layers]
    tree_kinds = tuple(sorted({kind for o in obs for kind, _, _ in o.layers}))
    if not obs:
        return Fit(base.kinds, base.per_inference_s, base.per_exit_s, "boosted-trees", (), tree_kinds)
    owner = np.concatenate([np.full(len(o.layers), i) for i, o in enumerate(obs)])
    x = np.array([(float(tree_kinds.index(kind)), *d[1:]) for o in obs for kind, _, d in o.layers])
    layer_base = np.array([base.layer_seconds(kind, f) for o in obs for kind, f, _ in o.layers])
    fixed = np.array([o.overhead * base.per_inference_s + o.exits * base.per_exit_s for o in obs])
    y = np.array([o.seconds for o in obs])
    pred = fixed + np.bincount(owner, layer_base, len(obs))
    share = layer_base / np.maximum(np.bincount(owner, layer_base, len(obs))[owner], 1e-30)
    min_leaf = max(2, int(TREE_MIN_LEAF_FRACTION * len(x)))
    trees = []
    for r in range(rounds):
        target = (y - pred)[owner] * share
        reg = DecisionTreeRegressor(max_depth=depth, min_samples_leaf=min_leaf, random_state=seed + r)
        # weight each layer by its observation's 1/y^2: the loss is relative error
        reg.fit(x, target, sample_weight=1.0 / y[owner] ** 2)
        leaves = reg.apply(x)
        ids = np.unique(leaves)
        counts = np.zeros((len(obs), len(ids)))
        np.add.at(counts, (owner, np.searchsorted(ids, leaves)), 1.0)
        design = counts / y[:, None]
        ridge = 1e-6 * max(float(np.trace(design.T @ design)), 1e-30) / len(ids)
        values = np.linalg.solve(design.T @ design + ridge * np.eye(len(ids)), design.T @ ((y - pred) / y))
        values *= learning_rate
        pred = pred + counts @ values
        tree = reg.tree_
        leaf_value = np.zeros(tree.node_count)
        leaf_value[ids] = values
        trees.append(RegressionTree(
            feature=tuple(int(f) if f >= 0 else 0 for f in tree.feature),
            threshold=tuple(float(t) if f >= 0 else 0.0 for f, t in zip(tree.feature, tree.threshold)),
            left=tuple(int(v) for v in tree.children_left), right=tuple(int(v) for v in tree.children_right),
            value=tuple(float(v) for v in leaf_value)))
    return Fit(base.kinds, base.per_inference_s, base.per_exit_s, "boosted-trees", tuple(trees), tree_kinds)


def tree_correction(fitted: Fit, clock_hz: float) -> TreeCorrection | None:
    """The fit's trees as a target's TreeCorrection (leaf values in cycles at clock_hz)."""
    if fitted.family != "boosted-trees":
        return None
    trees = tuple(RegressionTree(t.feature, t.threshold, t.left, t.right, tuple(v * clock_hz for v in t.value))
                  for t in fitted.trees)
    return TreeCorrection(kinds=fitted.tree_kinds, trees=trees)


def fit_macs_only(totals: Sequence[ModelTotal], per_exit_s: float = 0.0) -> tuple[float, float]:
    """Baseline: seconds = a + b * MACs per model (same robust relative-error fit)."""
    a = np.array([[1.0, t.macs] for t in totals])
    y = np.array([t.seconds - t.exits * per_exit_s for t in totals])
    keep = y > 0
    beta = robust_nnls(a[keep], y[keep])
    return float(beta[0]), float(beta[1])


def fit_macs_only_model(totals: Sequence[ModelTotal], per_exit_s: float = 0.0) -> Fit:
    """fit_macs_only as a Fit of the macs-only family."""
    a, b = fit_macs_only(totals, per_exit_s)
    return Fit({"default": _vector((0.0, b))}, a, per_exit_s, "macs-only", macs_s=b)


def fit_family(meas_or_obs, per_exit_s: float, family: str, totals: Sequence[ModelTotal] = ()) -> Fit:
    """Any family: macs-only from the model totals, the others from the observations."""
    if family == "macs-only":
        return fit_macs_only_model(totals, per_exit_s)
    return fit(meas_or_obs, per_exit_s, family)


def fit_families(observations: Sequence[Observation], totals: Sequence[ModelTotal], per_exit_s: float,
                 families: Sequence[str]) -> dict[str, Fit]:
    """The given families and macs-only (the baseline), each fitted once: boosted-trees grows its trees on the
    per-kind-shape fit when that family is fitted too."""
    fits: dict[str, Fit] = {}
    for family in sorted({*families, "macs-only"}, key=LATENCY_FAMILIES.index):
        if family == "boosted-trees" and "per-kind-shape" in fits:
            fits[family] = boost_trees(fits["per-kind-shape"], _usable(observations, per_exit_s))
        else:
            fits[family] = fit_family(observations, per_exit_s, family, totals)
    return fits


# ------------------------------------------------------------------------------------------------ metrics
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled); NaN for fewer than 2 values or a constant ranking."""
    import warnings

    from scipy.stats import kendalltau

    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():  # a constant ranking gives NaN, which `accuracy` reports as such
        warnings.simplefilter("ignore")
        return float(kendalltau(np.asarray(x, float), np.asarray(y, float)).statistic)


def accuracy(measured: Sequence[float], predicted: Sequence[float]) -> dict:
    """Share of predictions within +-5 % / +-10 % of the measurement (percent), Kendall tau, error quantiles, and
    the 90 % interval of measured / predicted (what a prediction interval built from these would be)."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    rel = np.abs(p / m - 1.0)
    ratio = m / np.maximum(p, 1e-30)
    tail = (1 - INTERVAL_LEVEL) / 2
    return {"n": int(len(m)), "within_5pct": float(100.0 * np.mean(rel <= 0.05)),
            "within_10pct": float(100.0 * np.mean(rel <= 0.10)), "kendall_tau": kendall_tau(m, p),
            "median_abs_rel_error": float(np.median(rel)), "max_abs_rel_error": float(rel.max()),
            "ratio_low": float(np.quantile(ratio, tail)), "ratio_high": float(np.quantile(ratio, 1 - tail))}


def folds(models: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Models split into k folds (deterministic shuffle)."""
    uniq = sorted(set(models))
    order = np.random.default_rng(seed).permutation(len(uniq))
    return [[uniq[i] for i in order[j::k]] for j in range(k)]


def cross_validate(meas: Measurements, per_exit_s: float = 0.0, k: int = 5, seed: int = 0,
                   families: Sequence[str] = ("per-kind",)) -> dict | None:
    """Held-out accuracy on model totals of each family and of MACs-only (None: fewer than 3 models):
    {"folds": k, "families": {family: accuracy}, "model": the first family's, "macs_only": ...}."""
    models = sorted({t.model for t in meas.totals})
    if len(models) < 3:
        return None
    k = min(k, len(models))
    measured: list[float] = []
    pred: dict[str, list[float]] = {f: [] for f in families}
    base: list[float] = []
    for held in folds(models, k, seed):
        held_set = set(held)
        train_obs = [o for o in meas.observations if o.model not in held_set]
        train_totals = [t for t in meas.totals if t.model not in held_set]
        fits = fit_families(train_obs, train_totals, per_exit_s, families)
        for t in meas.totals:
            if t.model in held_set:
                measured.append(t.seconds)
                base.append(fits["macs-only"].predict_total(t))
                for f in families:
                    pred[f].append(fits[f].predict_total(t))
    out = {"folds": k, "families": {f: accuracy(measured, p) for f, p in pred.items()},
           "macs_only": accuracy(measured, base)}
    out["model"] = out["families"][families[0]]
    return out


def selection_score(acc: Mapping, objective: str = "both") -> float:
    """How good held-out figures are for the search's use of latency: ranking (Kendall tau), budgets (share within
    +-10 %), or both (their mean, each on 0..1)."""
    tau = acc["kendall_tau"] if math.isfinite(acc["kendall_tau"]) else -1.0
    within = acc["within_10pct"] / 100.0
    return {"ranking": tau, "budgets": within, "both": 0.5 * (tau + within)}[objective]


@dataclass(frozen=True)
class Selection:
    family: str
    objective: str
    scores: Mapping[str, float] = field(default_factory=dict)
    fallback: str = ""          # why MACs-only was kept ("" when a richer family qualified)


def select_family(family_cv: Mapping[str, Mapping], macs_only: Mapping, objective: str = "both") -> Selection:
    """The family to write: among those whose held-out Kendall tau and share within +-10 % are both at least
    MACs-only's, the best selection_score (ties within SCORE_TIE go to the simpler family); MACs-only if none."""
    if objective not in OBJECTIVES:
        raise EdgenasError(f"unknown selection objective '{objective}'", f"use one of {', '.join(OBJECTIVES)}")
    scores = {f: selection_score(acc, objective) for f, acc in family_cv.items()}
    base_tau = macs_only["kendall_tau"] if math.isfinite(macs_only["kendall_tau"]) else -1.0

    def no_worse(acc):
        tau = acc["kendall_tau"] if math.isfinite(acc["kendall_tau"]) else -1.0
        return tau >= base_tau and acc["within_10pct"] >= macs_only["within_10pct"]
    richer = [f for f in family_cv if f != "macs-only"]
    if not richer:  # only MACs-only was asked for: nothing to fall back from
        return Selection("macs-only", objective, scores)
    fit_ok = [f for f in richer if no_worse(family_cv[f])]
    if not fit_ok:
        worse = ", ".join(f"{f}: tau {family_cv[f]['kendall_tau']:.3f}, {family_cv[f]['within_10pct']:.0f}% within "
                          f"+-10%" for f in family_cv if f != "macs-only")
        reason = (f"no richer family was at least as good as MACs-only on cross-validation (MACs-only: tau "
                  f"{macs_only['kendall_tau']:.3f}, {macs_only['within_10pct']:.0f}% within +-10%; {worse})")
        return Selection("macs-only", objective, scores, reason)
    best = max(scores[f] for f in fit_ok)
    order = [f for f in LATENCY_FAMILIES if f in fit_ok]
    chosen = next(f for f in order if scores[f] >= best - SCORE_TIE)
    return Selection(chosen, objective, scores)
