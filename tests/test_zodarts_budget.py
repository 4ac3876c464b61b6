"""ZO-DARTS+ under a target's budgets: macro selection, the additive cost model behind it, budget multipliers and
the budget-constrained derived cell (edgenas.search.zodarts_budget)."""
import itertools

import numpy as np
import pytest
import torch

from edgenas.cli import main as cli_main
from edgenas.errors import EdgenasError
from edgenas.search.zodarts_budget import (ADDITIVE, PRUNE_MARGIN, BudgetMultipliers, Macro, budget_checks,
                                           budget_limits, cell_costs, choose_macro, derive_cell, macro_candidates,
                                           macro_fit, network_costs)
from edgenas.spaces.nb201 import EDGES, OPS, Nb201Arch, build_early_exit_net
from edgenas.targets import load_target, target_with_budgets


@pytest.fixture(scope="module")
def m7():
    return load_target("cortex-m7")


def test_grid_is_ordered_from_the_largest_network_and_honours_fixed_values():
    grid = macro_candidates()
    assert grid[0] == Macro(16, 3, 32) and grid[-1] == Macro(4, 1, 16) and len(grid) == 5 * 3 * 5
    sizes = [m.N * m.C ** 2 * m.resolution ** 2 for m in grid]
    assert sizes == sorted(sizes, reverse=True)
    assert {m.C for m in macro_candidates(C=10)} == {10} and {m.resolution for m in macro_candidates(resolution=20)} == {20}


def test_additive_estimate_is_close_to_the_exact_cost_of_built_networks(m7):
    """The margin derive_cell prunes with must cover the estimate's error, or a fitting cell could be skipped."""
    macro = Macro(8, 2, 16)
    costs = cell_costs(macro, m7, 1, 10)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(12):
        idx = tuple(int(k) for k in rng.integers(0, len(OPS), len(EDGES)))
        arch = Nb201Arch.from_indices(idx)
        if not arch.is_connected():
            continue
        exact = network_costs(build_early_exit_net(arch, 10, 1, macro.resolution, macro.C, macro.N), m7)
        est = costs.estimate(idx)
        assert est["macs"] == exact["macs"]          # MACs are exactly additive
        worst = max(worst, *(abs(est[m] / exact[m] - 1) for m in ADDITIVE))
    assert worst < PRUNE_MARGIN / 2


def test_only_a_small_macro_fits_a_tight_target(m7):
    tight = target_with_budgets(m7, latency="12ms", flash="200KB")
    choice = choose_macro(tight, 1, 10, N=1)
    limits = budget_limits(tight.budgets)
    assert macro_fit(choice.costs, limits)[0] and choice.macro.N == 1
    grid = macro_candidates(N=1)
    assert grid.index(choice.macro) > 0
    # every larger macro of the grid misses a budget: the choice is the largest that fits
    probes: dict = {}
    for larger in grid[:grid.index(choice.macro)]:
        assert not macro_fit(cell_costs(larger, tight, 1, 10, probes), limits)[0]
    assert choice.macro.N * choice.macro.C ** 2 * choice.macro.resolution ** 2 < 16 * 16 * 32 * 32
    assert "larger macro(s) of the grid do not fit" in choice.reason


def test_no_macro_fits_is_a_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["search", "--method", "zodarts", "--dataset", "digits", "--latency", "0.05ms",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no zodarts macro fits cortex-m7" in err and "--latency" in err
    assert not out.exists()
    assert cli_main(["search", "--method", "zodarts", "--dataset", "digits", "--C", "16", "--N", "3",
                     "--resolution", "32", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no zodarts macro with --C 16, --N 3, --resolution 32 fits cortex-m7" in err and "latency" in err
    assert not out.exists()
    assert cli_main(["search", "--method", "nachos", "--C", "8", "--out", str(out)]) == 2
    assert "--C" in capsys.readouterr().err and not out.exists()


def test_multipliers_rise_only_while_the_expected_cell_is_over_budget(m7):
    costs = cell_costs(Macro(4, 1, 8), m7, 1, 4)
    uniform = costs.uniform()
    mult = BudgetMultipliers(costs, {"latency_s": uniform["latency_s"] * 1.1, "sram_bytes": 1e9}, step=2.0)
    assert set(mult.values) == {"latency_s"}  # SRAM is not additive: it is fitted by the macro, not penalised
    uniform_p = torch.full((len(EDGES), len(OPS)), 0.2)
    mult.update(uniform_p)
    assert mult.values["latency_s"] == 0.0 and float(mult.penalty(uniform_p)) == 0.0
    dense = torch.zeros(len(EDGES), len(OPS))
    dense[:, OPS.index("nor_conv_3x3")] = 1.0
    ratio = mult.ratios(dense)["latency_s"]
    assert ratio > 1.0
    mult.update(dense)
    assert mult.values["latency_s"] == pytest.approx(2.0 * (ratio - 1.0))
    # the penalty's gradient points away from the expensive op
    p = dense.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mult.penalty(p), p)
    assert torch.all(g[:, OPS.index("nor_conv_3x3")] > g[:, OPS.index("skip_connect")])
    for _ in range(20):
        mult.update(uniform_p)
    assert mult.values["latency_s"] == 0.0  # projected: never negative


def _alpha_preferring(order):
    """alpha whose per-edge preference is `order` (best first), with distinct margins so ranks are unique."""
    alpha = np.zeros((len(EDGES), len(OPS)))
    for e in range(len(EDGES)):
        for rank, op in enumerate(order):
            alpha[e, OPS.index(op)] = 3.0 - rank * (1.0 + 0.1 * e)
    return alpha


def _softmax(a):
    z = np.exp(a - a.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_derived_cell_is_the_most_probable_cell_that_fits():
    alpha = _alpha_preferring(["nor_conv_3x3", "nor_conv_1x1", "skip_connect", "avg_pool_3x3", "none"])
    probs = _softmax(alpha)
    c3 = OPS.index("nor_conv_3x3")

    def fits(arch):  # a constructed budget: at most two 3x3 convs actually built
        return sum(arch.ops[EDGES.index(e)] == "nor_conv_3x3" for e in arch.useful_edges()) <= 2

    derived = derive_cell(probs, alpha, fits)
    assert fits(derived.arch) and derived.reason == "budget" and derived.rank > 0
    assert derived.argmax == Nb201Arch.from_indices([c3] * len(EDGES))
    # brute force over every cell: none that fits is more probable
    best = max((sum(np.log(probs[e, k]) for e, k in enumerate(idx)), idx)
               for idx in itertools.product(range(len(OPS)), repeat=len(EDGES))
               if Nb201Arch.from_indices(idx).is_connected() and fits(Nb201Arch.from_indices(idx)))
    assert derived.arch == Nb201Arch.from_indices(best[1])
    with pytest.raises(EdgenasError, match="no connected nb201 cell"):
        derive_cell(probs, alpha, lambda arch: False)


def test_derived_cell_fits_the_exact_cost_model(m7):
    macro = Macro(8, 2, 16)
    costs = cell_costs(macro, m7, 1, 10)
    dense_latency = costs.estimate((OPS.index("nor_conv_3x3"),) * len(EDGES))["latency_s"]
    tight = target_with_budgets(m7, latency=f"{1e3 * 0.8 * dense_latency}ms")
    alpha = _alpha_preferring(["nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "skip_connect", "none"])
    estimate, fits = budget_checks(costs, tight, 1, 10)
    derived = derive_cell(_softmax(alpha), alpha, fits, estimate)
    net = build_early_exit_net(derived.arch, 10, 1, macro.resolution, macro.C, macro.N)
    figures = network_costs(net, tight)
    assert figures["latency_s"] <= tight.budgets.latency_s and figures["flash_bytes"] <= tight.budgets.flash_bytes
    assert derived.reason == "budget" and not fits(derived.argmax)
    assert derived.checked <= derived.rank + 1  # the estimate spared exact costings
