"""Fitting the latency model's coefficients to observations (edgenas.cost.measurements) and judging the fit.

Non-negative least squares on *relative* error (latencies span orders of magnitude) with a Huber loss, so that a few
disturbed measurements do not pull the coefficients; held-out error by K-fold cross-validation over models (a
model's observations never straddle folds), against a MACs-only baseline (seconds = a + b * MACs, fitted the same
way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from edgenas.cost.analysis import FEATURES
from edgenas.cost.measurements import Measurements, ModelTotal, Observation
from edgenas.errors import EdgenasError


@dataclass(frozen=True)
class Fit:
    """Fitted coefficients in seconds: kind -> one per FEATURES, the per-inference constant."""
    kinds: Mapping[str, tuple[float, ...]]
    per_inference_s: float
    per_exit_s: float          # fixed (from the base target), not fitted

    def predict(self, features: Mapping[str, Sequence[float]], overhead: int = 0, exits: int = 0) -> float:
        s = overhead * self.per_inference_s + exits * self.per_exit_s
        for kind, f in features.items():
            s += sum(c * x for c, x in zip(self.kinds.get(kind, (0.0,) * len(FEATURES)), f))
        return s


def robust_nnls(a: np.ndarray, y: np.ndarray, huber_k: float = 1.345, rounds: int = 3, ridge: float = 1e-10
                ) -> np.ndarray:
    """min sum_i rho((a_i . beta - y_i) / y_i) over beta >= 0, rho = Huber, by scipy's bounded least squares.

    Rows are divided by y (relative error), columns scaled to unit norm; a tiny ridge keeps collinear columns
    (e.g. every conv followed by an activation) determined. The Huber threshold is huber_k times the residual scale
    (MAD of the relative residuals, at least 1e-4), estimated first from the plain non-negative least-squares fit,
    then from each Huber fit until it settles (at most `rounds` Huber fits)."""
    from scipy.optimize import least_squares, nnls

    a, y = np.asarray(a, float), np.asarray(y, float)
    rel = a / y[:, None]
    norms = np.linalg.norm(rel, axis=0)
    live = norms > 0
    beta = np.zeros(a.shape[1])
    if not live.any():
        return beta
    r_a = rel[:, live] / norms[live]
    n_live = int(live.sum())
    jac = np.vstack([r_a, math.sqrt(ridge * len(y)) * np.eye(n_live)])
    rhs = np.concatenate([np.ones(len(y)), np.zeros(n_live)])
    b, _ = nnls(jac, rhs, maxiter=50 * n_live)
    scale = None
    for _ in range(rounds):
        resid = r_a @ b - 1.0
        new_scale = max(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 1e-4)
        if scale is not None and math.isclose(new_scale, scale, rel_tol=1e-3):
            break
        scale = new_scale
        res = least_squares(lambda v: jac @ v - rhs, b, jac=lambda v: jac, bounds=(0.0, np.inf), loss="huber",
                            f_scale=huber_k * scale, method="trf", tr_solver="exact", ftol=1e-15, xtol=1e-15,
                            gtol=1e-15, max_nfev=200 * n_live)
        b = np.where(res.active_mask == -1, 0.0, res.x)  # trf stays inside the bounds: a bound it rests on is 0
    beta[live] = b / norms[live]
    return beta


def _design(observations, kinds: Sequence[str], per_exit_s: float):
    n_f = len(FEATURES)
    a = np.zeros((len(observations), len(kinds) * n_f + 1))
    y = np.zeros(len(observations))
    for r, o in enumerate(observations):
        for kind, f in o.features.items():
            k = kinds.index(kind)
            a[r, k * n_f:(k + 1) * n_f] = f
        a[r, -1] = o.overhead
        y[r] = o.seconds - o.exits * per_exit_s
    return a, y


def fit(observations: Sequence[Observation], per_exit_s: float = 0.0) -> Fit:
    """Non-negative per-kind coefficients (seconds) from observations, robust to outliers, on relative error."""
    kinds = sorted({k for o in observations for k in o.features})
    a, y = _design(observations, kinds, per_exit_s)
    keep = y > 0
    if not keep.any():
        raise EdgenasError("no usable measurement (every time is below the fixed per-exit cost)",
                           "check the units of the measurements")
    beta = robust_nnls(a[keep], y[keep])
    n_f = len(FEATURES)
    return Fit({k: tuple(float(v) for v in beta[i * n_f:(i + 1) * n_f]) for i, k in enumerate(kinds)},
               float(beta[-1]), per_exit_s)


def fit_macs_only(totals: Sequence[ModelTotal], per_exit_s: float = 0.0) -> tuple[float, float]:
    """Baseline: seconds = a + b * MACs per model (same robust relative-error fit)."""
    a = np.array([[1.0, t.macs] for t in totals])
    y = np.array([t.seconds - t.exits * per_exit_s for t in totals])
    keep = y > 0
    beta = robust_nnls(a[keep], y[keep])
    return float(beta[0]), float(beta[1])


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
    """Share of predictions within +-5 % / +-10 % of the measurement (percent), Kendall tau, error quantiles."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    rel = np.abs(p / m - 1.0)
    return {"n": int(len(m)), "within_5pct": float(100.0 * np.mean(rel <= 0.05)),
            "within_10pct": float(100.0 * np.mean(rel <= 0.10)), "kendall_tau": kendall_tau(m, p),
            "median_abs_rel_error": float(np.median(rel)), "max_abs_rel_error": float(rel.max())}


def folds(models: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Models split into k folds (deterministic shuffle)."""
    uniq = sorted(set(models))
    order = np.random.default_rng(seed).permutation(len(uniq))
    return [[uniq[i] for i in order[j::k]] for j in range(k)]


def cross_validate(meas: Measurements, per_exit_s: float = 0.0, k: int = 5, seed: int = 0) -> dict | None:
    """Held-out accuracy of the fitted model and of the MACs-only baseline on model totals (None: < 3 models)."""
    models = sorted({t.model for t in meas.totals})
    if len(models) < 3:
        return None
    k = min(k, len(models))
    measured, pred, base = [], [], []
    for held in folds(models, k, seed):
        held_set = set(held)
        f = fit([o for o in meas.observations if o.model not in held_set], per_exit_s)
        a, b = fit_macs_only([t for t in meas.totals if t.model not in held_set], per_exit_s)
        for t in meas.totals:
            if t.model in held_set:
                measured.append(t.seconds)
                pred.append(f.predict(t.features, t.overhead, t.exits))
                base.append(t.overhead * a + b * t.macs + t.exits * per_exit_s)
    return {"folds": k, "model": accuracy(measured, pred), "macs_only": accuracy(measured, base)}
