"""The pymoo Problem of a search: decode, evaluate (injected), set F and G. No I/O here.

The method decides the objectives (NACHOS: validation error and expected latency; FlatNAS: the flatness-aware figure
of merit and params) and both share the constraints: expected latency, peak SRAM, flash, expected MACs against the
target's budgets (each normalised by its budget), the accuracy floor, and the method's own caps. Constraint handling
is pymoo's constraint domination (feasible beats infeasible, infeasible ones compare by total violation), not the
paper's adaptive penalty: budgets are hard device limits, and a penalty mixing latency with MACs needs a scale that
the reference tunes by hand (P = 1e10 at HEAD).
"""
from __future__ import annotations

import numpy as np
from pymoo.core.problem import Problem


class SearchProblem(Problem):
    def __init__(self, space, evaluate_genome, method, budgets):
        xl, xu = space.bounds
        self.evaluate_genome = evaluate_genome  # genome -> record (cached and archived by the caller)
        self.method, self.budgets = method, budgets
        super().__init__(n_var=space.n_var, n_obj=2, n_ieq_constr=method.n_constraints, xl=xl, xu=xu, vtype=int)

    def _evaluate(self, X, out, *args, **kwargs):
        records = [self.evaluate_genome(np.asarray(x, dtype=int)) for x in X]
        out["F"] = np.array([self.method.objectives(r) for r in records], dtype=float)
        out["G"] = np.array([self.method.constraints(r, self.budgets) for r in records], dtype=float)
