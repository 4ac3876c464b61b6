"""pymoo Problem for NACHOS: decode, evaluate (injected), set F and G. No I/O here.

Objectives (both minimised): validation error of the early-exit network and its expected latency on the target.
Constraints (G <= 0): expected latency, peak SRAM, flash, expected MACs against the target's budgets (each normalised
by its budget) and the accuracy floor. Constraint handling is pymoo's constraint domination (feasible beats infeasible,
infeasible ones compare by total violation), not the paper's adaptive penalty: budgets are hard device limits, and a
penalty mixing latency with MACs needs a scale that the reference tunes by hand (P = 1e10 at HEAD).
"""
from __future__ import annotations

import numpy as np
from pymoo.core.problem import Problem

from edgenas.search.evaluate import constraint_values, objective_values

N_CONSTRAINTS = 5


class NachosProblem(Problem):
    def __init__(self, space, evaluate_genome, budgets):
        xl, xu = space.bounds
        super().__init__(n_var=space.n_var, n_obj=2, n_ieq_constr=N_CONSTRAINTS, xl=xl, xu=xu, vtype=int)
        self.evaluate_genome = evaluate_genome  # genome -> record (cached, archived by the caller)
        self.budgets = budgets

    def _evaluate(self, X, out, *args, **kwargs):
        records = [self.evaluate_genome(np.asarray(x, dtype=int)) for x in X]
        out["F"] = np.array([objective_values(r) for r in records], dtype=float)
        out["G"] = np.array([constraint_values(r, self.budgets) for r in records], dtype=float)
