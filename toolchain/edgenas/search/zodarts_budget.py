"""ZO-DARTS+ under a target's budgets: the macro it searches, the multipliers of its hardware penalty, the cell it
derives.

Cost of a derived nb201 network (every cell the same) as a function of the cell, per budgeted metric m:
    cost_m(cell) ~= base_m + N * sum_stages sum_edges table_m[stage][op(edge)]
table_m[s][o] is the cost of one deployed edge (the op and the node addition it feeds, `edge_probe`) at stage s's
shape, through the target's cost model; base_m is everything else (stem, reductions, exit heads, final head),
read off the *dense* network (a 3x3 conv on every edge) as its exact cost minus its cell part. Latency (worst case,
final exit, exit heads included), MACs and flash are additive this way; peak SRAM is not (it follows the live
tensors, not the ops) and is taken from the dense network, whose cell keeps every node alive. Under per-edge op
probabilities p the expectation is linear: E_p[cost_m] = base_m + N * sum_s sum_e p[e] . table_m[s] (differentiable).

1. Macro. The grid C x N x resolution below is tried from the largest network down, by N * C^2 * resolution^2
   (the cells' MACs), ties to the larger resolution, then C. The first macro whose cell at the initial, uniform
   probabilities fits in expectation (every additive budget) and whose dense network fits the SRAM budget is
   searched. A value fixed by the user (--C, --N, --resolution) replaces that axis of the grid; when nothing fits,
   the search refuses with the figures.
2. Penalty. The architecture objective is the Lagrangian L_val + sum_m lambda_m * E_p[cost_m] / budget_m, with
   lambda_m >= 0 raised by projected dual ascent after every architecture step,
       lambda_m <- max(0, lambda_m + step * (E_p[cost_m] / budget_m - 1)),
   so the penalty is off while the expected cell fits and grows for as long as it does not.
3. Derived cell. Connected cells are ranked by probability (sum over edges of log p, ties by the sum of alpha, so the
   first is the per-edge argmax when it is connected) and the first one whose derived network fits every budget
   exactly (edgenas.cost on the built network, worst case, all exit heads) is returned. Cells that deploy the same
   way (same useful edges and ops) are checked once; a cell whose additive estimate is more than PRUNE_MARGIN over a
   budget is skipped without building it, which at that margin never drops a fitting cell (the estimate is within a
   few per cent of the exact figure, checked by tests/test_zodarts_budget.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from edgenas.errors import EdgenasError
from edgenas.spaces.nb201 import (EDGES, OPS, Nb201Arch, build_early_exit_net, edge_probe, stage_channels,
                                  stage_sides)

GRID_C = (16, 12, 8, 6, 4)
GRID_N = (3, 2, 1)
GRID_RESOLUTION = (32, 28, 24, 20, 16)
DEFAULT_MACRO = (16, 3, 32)          # the reference search network (research/zodarts.md), used without a target
ADDITIVE = ("latency_s", "macs", "flash_bytes")
BUDGET_NAMES = {"latency_s": "latency", "macs": "MACs", "flash_bytes": "flash", "sram_bytes": "SRAM"}
PRUNE_MARGIN = 0.25
DENSE = Nb201Arch(("nor_conv_3x3",) * len(EDGES))


@dataclass(frozen=True)
class Macro:
    C: int
    N: int
    resolution: int

    def describe(self) -> str:
        return f"C={self.C} N={self.N} resolution={self.resolution}"


def budget_limits(budgets) -> dict[str, float]:
    """The budgets the derived network must meet, by metric (latency and MACs at the worst case)."""
    limits = {"latency_s": budgets.latency_s, "macs": budgets.macs, "flash_bytes": budgets.flash_bytes,
              "sram_bytes": budgets.sram_bytes}
    return {k: float(v) for k, v in limits.items() if v is not None}


def network_costs(net, target) -> dict[str, float]:
    """The budgeted figures of one network: worst-case latency and MACs, flash, peak SRAM."""
    from edgenas import cost
    report = cost.analyze(cost.from_torch(net), target)
    return {"latency_s": report.latency_worst_s, "macs": float(report.macs_worst),
            "flash_bytes": float(report.flash_bytes), "sram_bytes": float(report.peak_sram_bytes)}


def _edge_costs(op: str, c: int, side: int, target) -> dict[str, float]:
    from edgenas import cost
    if op == "none":
        return dict.fromkeys(ADDITIVE, 0.0)
    graph = cost.from_torch(edge_probe(op, c), input_shape=(c, side, side))
    report = cost.analyze(graph, target)
    return {"latency_s": float(sum(cost.predict_latency(graph, target).layer_s)), "macs": float(report.macs_worst),
            "flash_bytes": float(cost.BYTES_PER_ELEMENT["float32"] * report.params)}


@dataclass(frozen=True)
class CellCosts:
    """Additive cost model of one macro's derived network (module docstring): base + N * per-(stage, op) table."""
    macro: Macro
    base: Mapping[str, float]
    table: Mapping[str, tuple[tuple[float, ...], ...]]     # metric -> stages x OPS
    dense_sram_bytes: float

    def estimate(self, indices) -> dict[str, float]:
        """Additive estimate for one cell (op indices per edge, EDGES order); edges off every input-output path
        are not built (Nb201Arch.useful_edges), so they count as `none`."""
        arch = Nb201Arch.from_indices(indices)
        live = [OPS.index(arch.ops[EDGES.index(e)]) for e in arch.useful_edges()]
        return {m: self.base[m] + self.macro.N * sum(row[k] for row in self.table[m] for k in live)
                for m in ADDITIVE}

    def expected(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """E_p[cost] per additive metric under per-edge op probabilities (6 x 5), differentiable in probs."""
        out = {}
        for m in ADDITIVE:
            table = torch.tensor(self.table[m], dtype=probs.dtype, device=probs.device)  # stages x ops
            out[m] = self.base[m] + self.macro.N * (probs @ table.T).sum()
        return out

    def uniform(self) -> dict[str, float]:
        probs = torch.full((len(EDGES), len(OPS)), 1.0 / len(OPS), dtype=torch.float64)
        return {m: float(v) for m, v in self.expected(probs).items()}


def cell_costs(macro: Macro, target, in_channels: int, n_classes: int, cache: dict | None = None) -> CellCosts:
    """Build the additive model of `macro` on `target` (one dense network and 4 edge probes per stage)."""
    cache = {} if cache is None else cache
    table = {m: [] for m in ADDITIVE}
    for c, side in zip(stage_channels(macro.C), stage_sides(macro.resolution)):
        row = {m: [] for m in ADDITIVE}
        for op in OPS:
            key = (op, c, side)
            if key not in cache:
                cache[key] = _edge_costs(op, c, side, target)
            for m in ADDITIVE:
                row[m].append(cache[key][m])
        for m in ADDITIVE:
            table[m].append(tuple(row[m]))
    dense_net = build_early_exit_net(DENSE, n_classes, in_channels, macro.resolution, macro.C, macro.N)
    dense = network_costs(dense_net, target)
    dense_k = OPS.index("nor_conv_3x3")
    base = {m: dense[m] - macro.N * len(EDGES) * sum(row[dense_k] for row in table[m]) for m in ADDITIVE}
    return CellCosts(macro, base, {m: tuple(rows) for m, rows in table.items()}, dense["sram_bytes"])


def _over(figures: Mapping[str, float], limits: Mapping[str, float]) -> list[str]:
    return [m for m in limits if m in figures and figures[m] > limits[m]]


def _fmt(metric: str, value: float) -> str:
    if metric == "latency_s":
        return f"{1e3 * value:.1f} ms"
    if metric == "macs":
        return f"{value / 1e6:.2f} M"
    return f"{value / 1024:.0f} KiB"


def macro_fit(costs: CellCosts, limits: Mapping[str, float]) -> tuple[bool, str]:
    """Whether the macro fits (uniform expectation for the additive budgets, dense network for SRAM), and why."""
    figures = {**costs.uniform(), "sram_bytes": costs.dense_sram_bytes}
    over = _over(figures, limits)
    parts = [f"{BUDGET_NAMES[m]} {_fmt(m, figures[m])} {'>' if m in over else '<='} {_fmt(m, limits[m])}"
             for m in limits]
    return not over, "; ".join(parts)


def macro_candidates(C: int | None = None, N: int | None = None, resolution: int | None = None) -> list[Macro]:
    """The grid (module docstring), restricted to the fixed values, largest network first."""
    cs, ns, rs = ((C,) if C else GRID_C), ((N,) if N else GRID_N), ((resolution,) if resolution else GRID_RESOLUTION)
    grid = [Macro(c, n, r) for c, n, r in itertools.product(cs, ns, rs)]
    return sorted(grid, key=lambda m: (m.N * m.C ** 2 * m.resolution ** 2, m.resolution, m.C), reverse=True)


@dataclass(frozen=True)
class MacroChoice:
    macro: Macro
    costs: CellCosts | None
    reason: str


def choose_macro(target, in_channels: int, n_classes: int, C: int | None = None, N: int | None = None,
                 resolution: int | None = None) -> MacroChoice:
    """The largest macro of the grid that fits `target`'s budgets (None target: the reference macro)."""
    fixed = {k: v for k, v in (("C", C), ("N", N), ("resolution", resolution)) if v is not None}
    if target is None:
        macro = Macro(*(fixed.get(k, d) for k, d in zip(("C", "N", "resolution"), DEFAULT_MACRO)))
        return MacroChoice(macro, None, "no target: the reference macro (and the values given)")
    limits = budget_limits(target.budgets)
    cache: dict = {}
    grid = macro_candidates(C, N, resolution)
    # the smallest first: when it does not fit, nothing does, and the refusal comes without costing the grid
    smallest = grid[-1]
    ok, why = macro_fit(cell_costs(smallest, target, in_channels, n_classes, cache), limits)
    for i, macro in enumerate(grid if ok else ()):
        costs = cell_costs(macro, target, in_channels, n_classes, cache)
        fit, reason = macro_fit(costs, limits)
        if fit:
            skipped = f"{i} larger macro(s) of the grid do not fit" if i else "the largest macro tried"
            return MacroChoice(macro, costs, f"{macro.describe()}: uniform cell {reason} on {target.name} ({skipped})")
    if fixed:
        given = ", ".join(f"--{k} {v}" for k, v in fixed.items())
        raise EdgenasError(f"no zodarts macro with {given} fits {target.name}: {smallest.describe()} expects {why}",
                           "leave C, N and resolution to the search or raise the budgets (--latency, --sram, --flash)")
    raise EdgenasError(f"no zodarts macro fits {target.name}: even the smallest, {smallest.describe()}, expects {why}",
                       "raise the budgets (--latency, --sram, --flash) or choose a larger --target")


# ------------------------------------------------------------------------------------------------ multipliers
@dataclass
class BudgetMultipliers:
    """Lagrange multipliers of E_p[cost_m] <= budget_m for the additive budgets (module docstring, point 2)."""
    costs: CellCosts
    limits: Mapping[str, float]
    step: float
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.limits = {m: v for m, v in self.limits.items() if m in ADDITIVE}
        self.values = {m: self.values.get(m, 0.0) for m in self.limits}

    def ratios(self, probs: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            expected = self.costs.expected(probs.detach().double())
        return {m: float(expected[m]) / self.limits[m] for m in self.limits}

    def penalty(self, probs: torch.Tensor) -> torch.Tensor:
        expected = self.costs.expected(probs)
        total = probs.new_zeros(())
        for m, lam in self.values.items():
            if lam:
                total = total + lam * expected[m] / self.limits[m]
        return total

    def update(self, probs: torch.Tensor) -> None:
        for m, r in self.ratios(probs).items():
            self.values[m] = max(0.0, self.values[m] + self.step * (r - 1.0))


# ------------------------------------------------------------------------------------------------ derived cell
@dataclass(frozen=True)
class Derivation:
    arch: Nb201Arch
    argmax: Nb201Arch
    rank: int             # connected cells more probable than the one derived (skipped: over a budget)
    checked: int          # distinct deployed networks costed exactly
    reason: str           # "argmax", "connectivity" (argmax cell disconnected) or "budget"


def ranked_cells(probs: np.ndarray, alpha: np.ndarray):
    """Every cell (op indices), most probable first: sum of log p per edge, ties by the sum of alpha."""
    cells = np.array(list(itertools.product(range(len(OPS)), repeat=len(EDGES))))
    rows = np.arange(len(EDGES))
    with np.errstate(divide="ignore"):
        log_p = np.log(np.asarray(probs, dtype=np.float64))
    score = log_p[rows, cells].sum(axis=1)
    tie = np.asarray(alpha, dtype=np.float64)[rows, cells].sum(axis=1)
    for i in np.lexsort((-tie, -score)):
        yield tuple(int(k) for k in cells[i])


def derive_cell(probs, alpha, fits: Callable[[Nb201Arch], bool] | None = None,
                estimate: Callable[[tuple[int, ...]], bool] | None = None) -> Derivation:
    """The most probable connected cell for which `fits` holds (module docstring, point 3).

    estimate(indices) -> False skips a cell without calling `fits` (a cheap, conservative pre-check)."""
    probs, alpha = np.asarray(probs, dtype=np.float64), np.asarray(alpha, dtype=np.float64)
    if probs.shape != (len(EDGES), len(OPS)) or alpha.shape != probs.shape:
        raise EdgenasError(f"alpha has shape {alpha.shape}, expected {(len(EDGES), len(OPS))}",
                           "one row per nb201 edge")
    argmax = Nb201Arch.from_indices(alpha.argmax(axis=1))
    seen: dict[tuple, bool] = {}
    rank = checked = 0
    for indices in ranked_cells(probs, alpha):
        arch = Nb201Arch.from_indices(indices)
        deployed = tuple((e, arch.ops[EDGES.index(e)]) for e in arch.useful_edges())
        if not deployed:
            continue
        if deployed not in seen:
            promising = fits is not None and (estimate is None or estimate(indices))
            checked += promising
            seen[deployed] = fits is None or (promising and fits(arch))
        if seen[deployed]:
            reason = "argmax" if arch == argmax else ("budget" if rank else "connectivity")
            return Derivation(arch, argmax, rank, checked, reason)
        rank += 1
    raise EdgenasError("no connected nb201 cell of this macro fits the budgets",
                       "raise the budgets or fix a smaller macro (--C, --N, --resolution)")


def budget_checks(costs: CellCosts, target, in_channels: int, n_classes: int):
    """(estimate, fits) for derive_cell: the additive pre-check with PRUNE_MARGIN, and the exact check."""
    limits = budget_limits(target.budgets)
    additive = {m: v for m, v in limits.items() if m in ADDITIVE}
    macro = costs.macro

    def estimate(indices) -> bool:
        figures = costs.estimate(indices)
        return all(figures[m] <= (1 + PRUNE_MARGIN) * v for m, v in additive.items())

    def fits(arch: Nb201Arch) -> bool:
        # the same worst-case check search_zodarts applies to the deployed network
        from edgenas import cost
        net = build_early_exit_net(arch, n_classes, in_channels, macro.resolution, macro.C, macro.N)
        return not cost.violations(cost.analyze(cost.from_torch(net), target), target.budgets)

    return estimate, fits
