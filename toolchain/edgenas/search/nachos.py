"""NACHOS: NSGA-II over backbone genes + early-exit placement, objectives validation error and expected latency.

Differences from the reference (research/nachos_flatnas.md), each deliberate:
- Candidates are real evaluations with weights inherited from one weight-sharing supernet (BN re-calibrated, exit
  heads trained with the backbone frozen), cheap enough that no accuracy surrogate is needed: the archive of real
  evaluations is the ground truth and the Pareto set is taken from it.
- Integer genes with per-gene bounds, rounding repair and canonical form (the reference's float genes with xu=2 for
  every gene never reach some values).
- Objective 2 is the expected latency from the target's cost model, counting every exit head evaluated before the
  exit taken; budgets are constraints with pymoo's constraint domination (see problem.py).
- Thresholds are chosen per candidate on validation by an exact grid search (train/thresholds.py).
"""
from __future__ import annotations

from edgenas.search.evaluate import N_CONSTRAINTS, CandidateEvaluator, constraint_values, objective_values
from edgenas.search.methods import register_method
from edgenas.search.nsga2 import Nsga2Method


@register_method
class NachosMethod(Nsga2Method):
    name = "nachos"
    objective_names = ("val_error", "latency_expected_s")
    n_constraints = N_CONSTRAINTS

    def make_evaluator(self, space, supernet, data, target, budgets, cfg, device: str = "cpu") -> CandidateEvaluator:
        return CandidateEvaluator(space, supernet, data, target, budgets, cfg.evaluation, cfg.seed, device=device)

    def objectives(self, record: dict) -> list[float]:
        return objective_values(record)

    def constraints(self, record: dict, budgets) -> list[float]:
        return constraint_values(record, budgets)

    def refresh(self, records: list[dict]) -> None:
        """NACHOS objectives do not depend on the rest of the archive."""

    def hypervolume_reference(self, records: list[dict], budgets) -> tuple[float, float]:
        return 1.0, budgets.latency_s or max(r["latency_expected_s"] for r in records) * 1.01
