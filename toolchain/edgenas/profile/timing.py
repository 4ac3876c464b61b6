"""One measuring protocol for latencies on a shared, noisy machine: `edgenas profile` (host and ssh) and the
benchmarks time with it.

    results = measure_interleaved({"a": run_a, "b": run_b}, rel_ci=0.02)
    results["a"].estimate            # seconds per call: the figure to use
    results["a"].converged           # the median's confidence interval met the target
    not_converged(results)           # the names that did not
    noise_floor(results)             # one figure for the whole set

The protocol:
  warm-up   `warmup` calls of every item, in a shuffled order, untimed.
  batch     a sample is the mean duration of `batch` consecutive calls of one item. batch=None sizes it per item
            from the warm-up, so that a batch lasts at least `min_batch_seconds` (the clock's resolution and the
            loop's own cost then stay small against it), capped at MAX_BATCH.
  rounds    every round times one batch of every item, in a freshly shuffled order: drift and interference (another
            job starting, a frequency change) then hit every item alike instead of the items measured last. Each
            batch follows `rewarm` untimed calls of its item: the item before it has evicted its weights and
            buffers from the caches, and the steady-state speed (what a deployed model that runs repeatedly sees)
            is what is measured, not the refill.
  stop      after `min_rounds`, after every round: each item's median gets a distribution-free confidence interval
            (order statistics; the rank of the true median among n samples is Binomial(n, 1/2)); the run stops when
            every item's relative half-width (ci_high - ci_low) / 2 / median is <= rel_ci, or at `max_rounds`
            rounds, or when `max_seconds` have passed (by `clock`). Items that did not get there are marked
            converged=False. With retire_converged=True a converged item leaves the rotation (large sets; the
            remaining items are still interleaved among themselves).
  estimate  the median, unless the spread is one-sided: (p90 - median) > ONE_SIDED_RATIO * (median - p10) and the
            tail matters at the precision asked for, (p90 - median) > rel_ci * median. That is a long tail of slow
            samples over a tight floor, what interference on a shared machine looks like (a sample can be slowed
            by others, never sped up). Then the low percentile p10 is the figure: it tracks the undisturbed speed,
            and the median would move with the load. A tail within rel_ci keeps the median (p10 and median then
            differ by less than the precision asked for, and switching would only add jitter between items).

This module needs only the standard library and numpy: `profile_ssh` copies it beside runner.py to boards without
edgenas. Bad arguments raise ValueError here; the callers check user input first.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Callable, Hashable, Mapping

import numpy as np

ONE_SIDED_RATIO = 3.0      # (p90 - median) > this * (median - p10) (and > rel_ci * median): one-sided, use p10
LOW_PERCENTILE = 10        # the low percentile used then
HIGH_PERCENTILE = 90
MAX_BATCH = 1000           # calls per batch at most when batch=None
DEFAULTS = {"rel_ci": 0.02, "confidence": 0.95, "min_rounds": 10, "max_rounds": 500, "max_seconds": 60.0,
            "warmup": 3, "min_batch_seconds": 2e-4, "rewarm": 1}
ESTIMATE_RULE = (f"median; p{LOW_PERCENTILE} when (p{HIGH_PERCENTILE} - median) > {ONE_SIDED_RATIO:g} * "
                 f"(median - p{LOW_PERCENTILE}) and > rel_ci * median (a one-sided tail: interference)")


@dataclass(frozen=True)
class TimingResult:
    """The samples of one item summarised; times in `unit` per call (seconds unless `scaled`)."""
    n: int                         # samples (batches) kept
    batch: int                     # calls per sample
    median: float
    ci_low: float | None           # confidence interval of the median; None when n is too small for one
    ci_high: float | None
    ci_rel_halfwidth: float | None  # (ci_high - ci_low) / 2 / median; None when there is no interval
    converged: bool                # ci_rel_halfwidth <= the rel_ci asked for
    p10: float
    p90: float
    min: float
    max: float
    mean: float
    spread_low: float              # (median - p10) / median
    spread_high: float             # (p90 - median) / median
    one_sided: bool                # (p90 - median) > ONE_SIDED_RATIO * (median - p10) and > rel_ci * median
    estimate: float                # the figure to use: p10 when one_sided, else the median
    estimate_rule: str             # "median" or "p10"
    unit: str = "s"

    def scaled(self, factor: float, unit: str) -> "TimingResult":
        """The same result in another unit, e.g. scaled(1e6, "us")."""
        times = {k: (None if getattr(self, k) is None else getattr(self, k) * factor)
                 for k in ("median", "ci_low", "ci_high", "p10", "p90", "min", "max", "mean", "estimate")}
        return replace(self, unit=unit, **times)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=4096)
def quantile_ci_ranks(n: int, q: float = 0.5, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based ranks (lo, hi) in the sorted sample of n such that [x_(lo), x_(hi)] covers the q-quantile of a
    continuous distribution with probability >= confidence; None when n is too small for any such pair.

    The number B of samples below the true q-quantile is Binomial(n, q), and P(x_(l) <= xi <= x_(u)) (1-based
    ranks) = P(l <= B <= u - 1). l is the largest rank with P(B <= l - 1) <= alpha/2, u the smallest with
    P(B <= u - 1) >= 1 - alpha/2: equal tails, each at most alpha/2."""
    if not (0.0 < q < 1.0 and 0.0 < confidence < 1.0):
        raise ValueError(f"need 0 < q < 1 and 0 < confidence < 1, got q={q}, confidence={confidence}")
    if n < 1:
        return None
    tail = (1.0 - confidence) / 2.0
    k = np.arange(1, n + 1, dtype=np.float64)
    # log C(n, k) by the recurrence C(n, k) = C(n, k - 1) * (n - k + 1) / k, so nothing overflows for large n
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((n - k + 1.0) / k))])
    ks = np.arange(n + 1, dtype=np.float64)
    cdf = np.cumsum(np.exp(log_comb + ks * math.log(q) + (n - ks) * math.log1p(-q)))
    below = np.nonzero(cdf <= tail)[0]           # values m = l - 1 with P(B <= m) <= alpha/2
    above = np.nonzero(cdf >= 1.0 - tail)[0]     # values m = u - 1 with P(B <= m) >= 1 - alpha/2
    if below.size == 0 or above.size == 0 or above[0] + 1 > n:
        return None
    lo_rank, hi_rank = int(below[-1]) + 1, int(above[0]) + 1   # 1-based
    return lo_rank - 1, hi_rank - 1


def summarize(samples, batch: int = 1, rel_ci: float = DEFAULTS["rel_ci"],
              confidence: float = DEFAULTS["confidence"]) -> TimingResult:
    """A TimingResult from per-call times (one per batch)."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    if a.size == 0:
        raise ValueError("no samples to summarise")
    median = float(np.median(a))
    p_low, p_high = (float(v) for v in np.percentile(a, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    ranks = quantile_ci_ranks(int(a.size), 0.5, confidence)
    ci_low = ci_high = rel = None
    if ranks is not None:
        ci_low, ci_high = float(a[ranks[0]]), float(a[ranks[1]])
        rel = (ci_high - ci_low) / 2.0 / median if median > 0 else math.inf
    down, up = median - p_low, p_high - median
    one_sided = up > ONE_SIDED_RATIO * down and up > rel_ci * median
    scale = median if median > 0 else math.nan
    return TimingResult(n=int(a.size), batch=int(batch), median=median, ci_low=ci_low, ci_high=ci_high,
                        ci_rel_halfwidth=rel, converged=rel is not None and rel <= rel_ci, p10=p_low, p90=p_high,
                        min=float(a[0]), max=float(a[-1]), mean=float(a.mean()), spread_low=down / scale,
                        spread_high=up / scale, one_sided=bool(one_sided), estimate=p_low if one_sided else median,
                        estimate_rule=f"p{LOW_PERCENTILE}" if one_sided else "median")


def _check(rel_ci, confidence, min_rounds, max_rounds, max_seconds, batch, warmup) -> None:
    if not rel_ci > 0:
        raise ValueError(f"rel_ci must be > 0, got {rel_ci}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or None, got {batch}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def measure_interleaved(callables: Mapping[Hashable, Callable[[], object]], *,
                        rel_ci: float = DEFAULTS["rel_ci"], confidence: float = DEFAULTS["confidence"],
                        min_rounds: int = DEFAULTS["min_rounds"], max_rounds: int = DEFAULTS["max_rounds"],
                        max_seconds: float | None = DEFAULTS["max_seconds"], batch: int | None = None,
                        warmup: int = DEFAULTS["warmup"], min_batch_seconds: float = DEFAULTS["min_batch_seconds"],
                        retire_converged: bool = False, seed: int | None = 0, rewarm: int = DEFAULTS["rewarm"],
                        clock: Callable[[], float] = time.perf_counter,
                        on_round: Callable[[int, list], None] | None = None) -> dict:
    """Time every callable by the protocol of this module; {name: TimingResult} in seconds per call (in the unit
    of `clock`, which must return seconds for `max_seconds` and `min_batch_seconds` to mean what they say).

    `seed` fixes the shuffled orders (None: a fresh order every call). `on_round(round, order)` is called after
    every round with the names in the order they were timed (tests, progress)."""
    _check(rel_ci, confidence, min_rounds, max_rounds, max_seconds, batch, warmup)
    names = list(callables)
    if not names:
        return {}
    rng = random.Random(seed)
    start = clock()
    batches = {}
    for name in rng.sample(names, len(names)):
        fn = callables[name]
        warm = []
        for _ in range(max(warmup, 1) if batch is None else warmup):
            t0 = clock()
            fn()
            warm.append(clock() - t0)
        if batch is not None:
            batches[name] = int(batch)
        else:  # the fastest warm-up call sizes the batch
            fastest = min(warm)
            batches[name] = min(MAX_BATCH, max(1, math.ceil(min_batch_seconds / fastest))) if fastest > 0 else 1
    samples: dict = {name: [] for name in names}
    active = list(names)
    done: dict = {}
    rounds = 0
    while active:
        order = rng.sample(active, len(active))
        for name in order:
            fn, b = callables[name], batches[name]
            for _ in range(rewarm):  # untimed: the item's weights and buffers back in cache after the others ran
                fn()
            t0 = clock()
            for _ in range(b):
                fn()
            samples[name].append((clock() - t0) / b)
        rounds += 1
        if on_round is not None:
            on_round(rounds, order)
        out_of_time = max_seconds is not None and clock() - start >= max_seconds
        if rounds < min_rounds and not out_of_time:
            continue
        current = {name: summarize(samples[name], batches[name], rel_ci, confidence) for name in active}
        if all(r.converged for r in current.values()) or rounds >= max_rounds or out_of_time:
            done.update(current)
            break
        if retire_converged:
            for name, r in current.items():
                if r.converged:
                    done[name] = r
            active = [name for name in active if name not in done]
    return {name: done[name] for name in names}


def not_converged(results: Mapping[Hashable, TimingResult]) -> list:
    """The names whose median's interval did not reach the rel_ci asked for."""
    return [name for name, r in results.items() if not r.converged]


def noise_floor(results) -> float | None:
    """One figure for a measurement set: the median over items of the relative half-width of the median's
    confidence interval (0.02 = the typical item's median is known to +-2 %). Differences between items smaller
    than about twice this are within noise. Accepts TimingResults or their dicts; None when no item has an
    interval (too few samples)."""
    values = results.values() if isinstance(results, Mapping) else results
    rel = [r["ci_rel_halfwidth"] if isinstance(r, Mapping) else r.ci_rel_halfwidth for r in values]
    rel = [v for v in rel if v is not None]
    return float(np.median(rel)) if rel else None


def protocol(rel_ci: float = DEFAULTS["rel_ci"], confidence: float = DEFAULTS["confidence"],
             min_rounds: int = DEFAULTS["min_rounds"], max_rounds: int = DEFAULTS["max_rounds"],
             max_seconds: float | None = DEFAULTS["max_seconds"], batch: int | None = None,
             warmup: int = DEFAULTS["warmup"], rewarm: int = DEFAULTS["rewarm"]) -> dict:
    """The settings of a measurement, as recorded beside its figures."""
    return {"method": "interleaved rounds (shuffled order each round), one batch per item per round; stop when "
                      "every median's order-statistic CI is within rel_ci",
            "rel_ci": rel_ci, "confidence": confidence, "min_rounds": min_rounds, "max_rounds": max_rounds,
            "max_seconds": max_seconds, "batch": "auto" if batch is None else batch, "warmup": warmup,
            "rewarm": rewarm, "estimate_rule": ESTIMATE_RULE}
