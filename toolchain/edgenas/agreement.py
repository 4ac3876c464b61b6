"""Whether two runs of one early-exit network on the same inputs agree: the rule of every output check (the export
against PyTorch, a compiled build against onnxruntime, a profiled build against the compile-time reference).

    ag = agreement(logits, exits, ref_logits, ref_exits)   # logits (N, K), exits (N,)
    ag.passed                                             # same exit everywhere, logits within LOGIT_TOLERANCE

One rule: the exit agreement counts every sample; the logit difference counts only the samples whose exits matched,
because logits of different exits are not comparable, and a sample whose exit differs already fails the exit check.

This module needs only numpy: `profile_ssh` copies it beside the profiling runner to boards without edgenas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOGIT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Agreement:
    n_samples: int
    exit_agreement: float      # share of samples taking the same exit (1.0 for no samples)
    max_abs_diff: float        # max |logit difference| over the samples that took the same exit (0.0 for none)
    n_exit_mismatches: int
    tolerance: float = LOGIT_TOLERANCE  # an int8 build's is one quantisation step of its logits

    @property
    def passed(self) -> bool:
        """At least one sample, the same exit on all, logits within the tolerance (a NaN difference fails)."""
        return self.n_samples > 0 and self.n_exit_mismatches == 0 and self.max_abs_diff <= self.tolerance


def agreement(logits_a, exits_a, logits_b, exits_b, tolerance: float = LOGIT_TOLERANCE) -> Agreement:
    same = np.asarray(exits_a).reshape(-1) == np.asarray(exits_b).reshape(-1)
    diff = float(np.abs(np.asarray(logits_a)[same] - np.asarray(logits_b)[same]).max()) if same.any() else 0.0
    return Agreement(n_samples=len(same), exit_agreement=float(same.mean()) if len(same) else 1.0,
                     max_abs_diff=diff, n_exit_mismatches=int((~same).sum()), tolerance=float(tolerance))
