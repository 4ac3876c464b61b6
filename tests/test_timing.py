"""The measuring protocol of `edgenas profile` and the benchmarks (edgenas.profile.timing), driven by a fake clock:
every fake callable advances the clock by its next precomputed sample, so no test depends on this machine's speed."""
import json
import math

import numpy as np
import pytest
from scipy.stats import binom

from edgenas.profile.timing import (DEFAULTS, measure_interleaved, noise_floor, not_converged, protocol,
                                    quantile_ci_ranks, summarize)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sampler(clock: FakeClock, samples, log=None, name=None):
    """A callable whose every call lasts the next of `samples` on `clock` (and logs `name`)."""
    it = iter(samples)

    def call():
        if log is not None:
            log.append(name)
        clock.now += next(it)
    return call


def fake(clock, samples_by_name, log=None):
    return {name: sampler(clock, s, log, name) for name, s in samples_by_name.items()}


def test_tight_samples_stop_at_the_first_check():
    clock = FakeClock()
    rng = np.random.default_rng(0)
    calls = fake(clock, {"a": 1e-3 * (1 + 1e-3 * rng.standard_normal(1000)),
                         "b": 2e-3 * (1 + 1e-3 * rng.standard_normal(1000))})
    res = measure_interleaved(calls, rel_ci=0.02, min_rounds=10, max_rounds=500, max_seconds=None, batch=1,
                              warmup=0, rewarm=0, clock=clock)
    assert [res[k].n for k in ("a", "b")] == [10, 10]
    assert all(r.converged for r in res.values()) and not_converged(res) == []
    assert res["a"].median == pytest.approx(1e-3, rel=1e-2) and res["b"].median == pytest.approx(2e-3, rel=1e-2)
    assert res["a"].ci_low <= res["a"].median <= res["a"].ci_high


def test_a_wide_spread_is_reported_as_not_converged_at_max_rounds():
    clock = FakeClock()
    rng = np.random.default_rng(1)
    calls = fake(clock, {"tight": np.full(1000, 1e-3), "wide": 1e-3 * rng.lognormal(0.0, 0.8, 1000)})
    res = measure_interleaved(calls, rel_ci=0.01, min_rounds=10, max_rounds=60, max_seconds=None, batch=1,
                              warmup=0, rewarm=0, clock=clock)
    assert res["wide"].n == 60 and res["tight"].n == 60      # every item is timed every round
    assert not res["wide"].converged and res["wide"].ci_rel_halfwidth > 0.01
    assert res["tight"].converged and res["tight"].ci_rel_halfwidth == 0.0
    assert not_converged(res) == ["wide"]


def test_max_seconds_stops_the_rounds_by_the_clock_given():
    clock = FakeClock()
    rng = np.random.default_rng(2)
    calls = fake(clock, {"a": rng.uniform(0.5, 1.5, 1000)})   # ~1 s per call: ~20 rounds fit in 20 s
    res = measure_interleaved(calls, rel_ci=1e-4, min_rounds=5, max_rounds=500, max_seconds=20.0, batch=1,
                              warmup=0, rewarm=0, clock=clock)
    assert 10 <= res["a"].n <= 40 and not res["a"].converged
    # a budget that ends before min_rounds still stops, and an item without enough samples has no interval
    clock = FakeClock()
    res = measure_interleaved(fake(clock, {"a": np.ones(100)}), min_rounds=10, max_seconds=3.0, batch=1, warmup=0,
                              rewarm=0, clock=clock)
    assert res["a"].n == 3 and res["a"].ci_low is None and res["a"].ci_rel_halfwidth is None
    assert not res["a"].converged and noise_floor(res) is None


def test_one_sided_spread_uses_the_low_percentile():
    rng = np.random.default_rng(3)
    floor = 1.0 + 0.002 * rng.standard_normal(140)
    tail = rng.uniform(1.2, 2.5, 60)                          # interference: some runs slowed, none sped up
    one_sided = summarize(np.concatenate([floor, tail]))
    assert one_sided.one_sided and one_sided.estimate_rule == "p10"
    assert one_sided.estimate == one_sided.p10 < one_sided.median
    assert one_sided.p90 - one_sided.median > 3 * (one_sided.median - one_sided.p10)
    symmetric = summarize(1.0 + 0.05 * rng.standard_normal(200))
    assert not symmetric.one_sided and symmetric.estimate_rule == "median"
    assert symmetric.estimate == symmetric.median
    # the same shape with a tail inside the precision asked for keeps the median
    small_tail = summarize(np.concatenate([1.0 + 0.0002 * rng.standard_normal(140), rng.uniform(1.01, 1.015, 60)]),
                           rel_ci=0.02)
    assert small_tail.p90 - small_tail.median > 3 * (small_tail.median - small_tail.p10)
    assert not small_tail.one_sided and small_tail.estimate == small_tail.median


def test_rounds_visit_every_item_once_in_varying_order():
    clock = FakeClock()
    names = [f"m{i}" for i in range(6)]
    log, orders = [], []
    calls = fake(clock, {n: np.full(1000, 1e-3) for n in names}, log)
    measure_interleaved(calls, rel_ci=0.02, min_rounds=12, batch=1, warmup=0, rewarm=0, clock=clock,
                        on_round=lambda r, order: orders.append(tuple(order)))
    assert len(orders) == 12 and all(sorted(o) == names for o in orders)
    assert len(set(orders)) > 6                         # the order is shuffled every round
    firsts = {o[0] for o in orders}
    assert len(firsts) > 2                              # not one item always first (drift would hit it alone)
    assert log == [n for o in orders for n in o]        # the calls happened in the reported order


def test_batch_is_sized_from_the_warmup_and_divides_the_time():
    clock = FakeClock()
    calls = fake(clock, {"fast": np.full(10_000, 3e-5), "slow": np.full(10_000, 1e-3)})
    res = measure_interleaved(calls, min_rounds=10, warmup=2, min_batch_seconds=2e-4, clock=clock)
    assert res["fast"].batch == 7 and res["slow"].batch == 1          # ceil(2e-4 / 3e-5) calls per sample
    assert res["fast"].median == pytest.approx(3e-5) and res["slow"].median == pytest.approx(1e-3)


def test_retired_items_leave_the_rotation():
    clock = FakeClock()
    rng = np.random.default_rng(4)
    calls = fake(clock, {"tight": np.full(1000, 1e-3), "wide": 1e-3 * rng.lognormal(0.0, 0.3, 1000)})
    res = measure_interleaved(calls, rel_ci=0.02, min_rounds=10, max_rounds=400, batch=1, warmup=0, rewarm=0, clock=clock,
                              retire_converged=True)
    assert res["tight"].n == 10 and res["wide"].n > 10


def test_median_interval_ranks_reach_their_confidence_exactly():
    assert quantile_ci_ranks(5) is None                 # 2 * 0.5**5 > 0.05: no pair of order statistics will do
    for n in range(6, 300):
        lo, hi = quantile_ci_ranks(n, 0.5, 0.95)
        coverage = binom.cdf(hi, n, 0.5) - binom.cdf(lo, n, 0.5)   # P(lo < B <= hi), B ~ Binomial(n, 1/2)
        assert coverage >= 0.95, n
        assert binom.cdf(lo + 1, n, 0.5) > 0.025, n     # the interval is the narrowest with equal tails
        assert lo + hi == n - 1                         # symmetric for the median
    lo, hi = quantile_ci_ranks(200, 0.1, 0.95)           # another quantile: the 10th percentile
    assert lo < 20 < hi and binom.cdf(hi, 200, 0.1) - binom.cdf(lo, 200, 0.1) >= 0.95


def test_median_interval_covers_the_true_median_in_most_simulated_runs():
    """200 protocol runs on samples from a skewed distribution with a known median: the 95 % interval must cover it
    in about 95 % of them (below 90 % or a trivial always-covering interval fails)."""
    rng = np.random.default_rng(5)
    true_median = 1e-3 * (1 + math.log(2))               # 1 ms + an exponential of mean 1 ms
    covered, widths = 0, []
    for _ in range(200):
        clock = FakeClock()
        samples = {"a": 1e-3 * (1 + rng.exponential(1.0, 40)), "b": 1e-3 * (2 + rng.exponential(1.0, 40))}
        res = measure_interleaved(fake(clock, samples), rel_ci=1e-6, min_rounds=31, max_rounds=31, batch=1,
                                  warmup=0, rewarm=0, clock=clock)["a"]
        covered += res.ci_low <= true_median <= res.ci_high
        widths.append((res.ci_high - res.ci_low) / (res.max - res.min))
    assert 0.90 <= covered / 200 <= 0.995, covered
    assert np.median(widths) < 0.5                       # much narrower than the sample's range


def test_noise_floor_and_results_are_json_ready():
    clock = FakeClock()
    rng = np.random.default_rng(6)
    calls = fake(clock, {k: 1e-3 * (1 + s * rng.standard_normal(1000)) for k, s in
                         (("a", 0.01), ("b", 0.05), ("c", 0.2))})
    res = measure_interleaved(calls, rel_ci=0.5, min_rounds=50, batch=1, warmup=0, rewarm=0, clock=clock)
    rel = sorted(r.ci_rel_halfwidth for r in res.values())
    assert noise_floor(res) == rel[1]
    assert noise_floor([r.to_dict() for r in res.values()]) == rel[1]
    us = res["a"].scaled(1e6, "us")
    assert us.unit == "us" and us.median == pytest.approx(res["a"].median * 1e6) and us.n == res["a"].n
    assert us.ci_rel_halfwidth == res["a"].ci_rel_halfwidth
    doc = json.loads(json.dumps({"a": us.to_dict(), "protocol": protocol()}))
    assert doc["a"]["estimate_rule"] == "median" and doc["protocol"]["rel_ci"] == DEFAULTS["rel_ci"]


@pytest.mark.parametrize("kwargs", [{"rel_ci": 0}, {"confidence": 1.0}, {"min_rounds": 0},
                                    {"min_rounds": 20, "max_rounds": 10}, {"max_seconds": 0}, {"batch": 0},
                                    {"warmup": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        measure_interleaved({"a": lambda: None}, **kwargs)


def test_each_batch_follows_an_untimed_rewarm_call():
    """The first call after other items ran refills the caches: it is made, but not timed."""
    clock = FakeClock()
    cold, warm = 5e-3, 1e-3
    state = {"last": None}

    def item(name):
        def call():
            clock.now += warm if state["last"] == name else cold   # slow right after another item ran
            state["last"] = name
        return call
    calls = {"a": item("a"), "b": item("b")}
    rewarmed = measure_interleaved(calls, min_rounds=10, max_rounds=10, batch=1, warmup=0, clock=clock)
    assert all(r.median == pytest.approx(warm) for r in rewarmed.values())
    cold_timed = measure_interleaved(calls, min_rounds=10, max_rounds=10, batch=1, warmup=0, rewarm=0, clock=clock)
    assert all(r.median > warm for r in cold_timed.values())
