"""Genome operators for integer genomes with per-gene bounds (pymoo Sampling / Mutation / Repair).

Every offspring is repaired into the space's canonical form (inactive genes zeroed), so pymoo's duplicate
elimination sees two genomes of the same network as equal.
"""
from __future__ import annotations

import numpy as np
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling


class SpaceSampling(Sampling):
    def __init__(self, space):
        super().__init__()
        self.space = space

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        # The sandwich rule trains the largest and smallest subnets at every step, so they are the best-trained
        # members of the supernet: they anchor both ends of the front; the rest of the population is random.
        anchors = [self.space.encode(a) for a in (self.space.largest(exits=True), self.space.smallest(exits=True))]
        randoms = [self.space.sample(random_state) for _ in range(n_samples)]
        return np.array((anchors + randoms)[:n_samples])


class ResetMutation(Mutation):
    """Each gene, with probability 1/n_var (at least one gene), is redrawn uniformly among its *other* values."""

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = np.array(X, dtype=int, copy=True)
        xl, xu = problem.xl.astype(int), problem.xu.astype(int)
        n, m = X.shape
        for r in range(n):
            mask = random_state.random(m) < 1.0 / m
            if not mask.any():
                mask[random_state.integers(m)] = True
            for j in np.flatnonzero(mask & (xu > xl)):
                choices = [v for v in range(xl[j], xu[j] + 1) if v != X[r, j]]
                X[r, j] = choices[random_state.integers(len(choices))]
        return X


class CanonicalRepair(Repair):
    """Round and clip to the bounds, then the space's canonical form. With `open_exits`, every exit slot gene is set:
    each candidate then gets a head at every slot and the threshold search decides which to keep ("disabled" is one
    of its choices), so no backbone is judged without its best exit configuration."""

    def __init__(self, space, open_exits: bool = False):
        super().__init__()
        self.space, self.open_exits = space, open_exits and hasattr(space, "exit_genes")

    def _do(self, problem, X, **kwargs):
        X = np.clip(np.rint(np.asarray(X, dtype=float)), problem.xl, problem.xu).astype(int)
        X = np.array([self.space.canonical(x) for x in X])
        if self.open_exits:
            X[:, self.space.exit_genes] = 1
        return X
