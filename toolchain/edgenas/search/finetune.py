"""Fine-tuning of the Pareto members after the search, before export (train/finetune.py says what trains and why).

Each member starts from its inherited weights (sliced out of the supernet, BN re-calibrated: the network the search
scored), is cut to the network its exit policy deploys (same heads, same truncation), and is fine-tuned on the train
split (optionally distilled from the supernet's largest subnet). Then its intermediate heads are re-trained on the
fine-tuned backbone's frozen features and the thresholds re-chosen on validation under the same guard as in the
search (search/evaluate.fit_exit_policy with keep_placement): the architecture and the exit placement never change.

The archive keeps the inherited figures the search ranked by; a fine-tuned member's record (finetuned.jsonl) holds the
figures of the weights that ship, and `member_view` merges the two, the inherited ones under "inherited".
Deterministic: the seed comes from (run seed, genome key), each member trains on one thread, so the weights do not
depend on the order, the number of workers, or an interruption (`--resume` gives the same weights).
Devices: members train and are measured on the evaluator's `device`; the nets handed back (and saved) are on the CPU.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import deployed_network
from edgenas.search.evaluate import budget_violations, fit_exit_policy
from edgenas.train.finetune import FinetuneConfig, finetune_network, teacher_probabilities

# archive fields a fine-tuned member replaces; the merged view keeps the archive's values under "inherited"
INHERITED_FIELDS = ("val_accuracy", "val_accuracy_ci", "test_accuracy", "test_accuracy_ci", "val_accuracy_no_exit",
                    "test_accuracy_no_exit", "thresholds", "val_exit_rates", "test_exit_rates", "macs_expected",
                    "macs_expected_test", "latency_expected_s", "latency_expected_test_s", "exit_loss_upper_bound",
                    "feasible", "violations",
                    "flatness", "perturbed_val_accuracy_mean", "ood_accuracy", "ood_per_corruption")  # FlatNAS's
# the field of a member job's record that carries its checkpoint back to the process that writes the run folder (which
# pops it before archiving the record): a worker on another machine of a Ray cluster needs no shared filesystem
CHECKPOINT = "checkpoint"
FINETUNE_SEED_OFFSET = 7919  # a different stream from the candidate's head initialisation and BN batches


def resolve_config(config: FinetuneConfig, method_name: str, flatnas=None) -> FinetuneConfig:
    """optimizer "auto": SAM with the FlatNAS settings for FlatNAS members (its search trains with SAM), SGD else."""
    if config.optimizer != "auto":
        return config
    if method_name == "flatnas" and flatnas is not None:
        return replace(config, optimizer="sam", sam_rho=flatnas.rho, sam_adaptive=flatnas.adaptive)
    return replace(config, optimizer="sgd")


def largest_subnet_probabilities(space, evaluator, data):
    """The teacher's soft predictions on the train split (on the CPU, computed on the evaluator's device): the
    supernet's largest subnet (no exits), BN re-calibrated as every candidate is."""
    genome = space.encode(space.largest(exits=False))
    arch, _, _, net = evaluator.build(genome)
    return teacher_probabilities(net, data.train.x, arch.resolution)


class MemberFinetuner:
    """Callable member record -> (fine-tuned record carrying its checkpoint under CHECKPOINT, deployed net on the
    CPU).

    `checkpoint(record, net) -> dict` builds the member's checkpoint; it must be picklable (a module-level function
    or a functools.partial of one)."""

    def __init__(self, evaluator, config: FinetuneConfig, teacher_probs, checkpoint):
        self.evaluator, self.config, self.teacher_probs, self.checkpoint = evaluator, config, teacher_probs, checkpoint

    def __call__(self, member: dict):
        ev = self.evaluator
        genome = np.array(member["genome"])
        _, key, seed, net = ev.build(genome)  # on ev.device
        net = deployed_network(net, member["active_exits"], member["thresholds"], member["truncated_after_exit"])
        data = ev.device_data()
        losses = finetune_network(net, data.train, self.config, seed + FINETUNE_SEED_OFFSET, self.teacher_probs)
        net, fitted = fit_exit_policy(net, data, ev.target, ev.budgets, ev.config, seed, keep_placement=True)
        # the placement is the member's: every head kept, the same cut (fit_exit_policy saw the deployed net only)
        fitted["active_exits"] = list(member["active_exits"])
        fitted["truncated_after_exit"] = member["truncated_after_exit"]
        record = {"id": member["id"], "key": key, "arch": member["arch"], "weights": "finetuned", **fitted,
                  "finetune": {"steps": self.config.steps, "optimizer": self.config.optimizer,
                               "distill_weight": self.config.distill_weight if self.teacher_probs is not None else 0.0,
                               "final_loss": losses[-1] if losses else None}}
        record.update(ev.extra_metrics(net, record, seed))
        record["violations"] = budget_violations(record, ev.budgets, ev.params_cap)
        record["feasible"] = not record["violations"]
        net = net.cpu()  # the checkpoint and the caller get CPU weights
        record[CHECKPOINT] = self.checkpoint(record, net)
        return record, net


class InheritedCheckpoint:
    """Callable member record -> (record, deployed net) with the inherited weights, re-evaluated exactly as the
    search did (the same seed, one thread); the record carries its checkpoint like MemberFinetuner's."""

    def __init__(self, evaluator, checkpoint):
        self.evaluator, self.checkpoint = evaluator, checkpoint

    def __call__(self, member: dict):
        record, deployed = self.evaluator(np.array(member["genome"]))
        for k in ("test_accuracy", "val_accuracy", "thresholds", "truncated_after_exit", "macs_per_exit"):
            if record[k] != member[k]:
                raise EdgenasError(f"candidate #{member['id']} did not re-evaluate to its archived {k} "
                                   f"({record[k]} vs {member[k]})", "the evaluation is not deterministic on this machine")
        record = {**member, "weights": "inherited"}
        record[CHECKPOINT] = self.checkpoint(record, deployed)
        return record, deployed


class MemberJobs:
    """Callable (kind, member) -> (record, net): "finetune" or "inherited", so one worker pool does both."""

    def __init__(self, finetuner: MemberFinetuner, inherited: InheritedCheckpoint):
        self.handlers = {"finetune": finetuner, "inherited": inherited}

    @property
    def device(self) -> str:
        return self.handlers["finetune"].evaluator.device

    @device.setter
    def device(self, device: str) -> None:
        """A worker sets the device it was given (search.executors), as on an evaluator: the handlers' follow."""
        for handler in self.handlers.values():
            handler.evaluator.device = device

    def __call__(self, job: tuple[str, dict]):
        kind, member = job
        return self.handlers[kind](member)


def member_view(archived: dict, finetuned: dict | None) -> dict:
    """The record of a Pareto member as reported and exported: the fine-tuned figures when it was fine-tuned (the
    archive's under "inherited"), else the archive's with weights "inherited"."""
    if finetuned is None:
        return {**archived, "weights": "inherited"}
    inherited = {k: archived[k] for k in INHERITED_FIELDS if k in archived}
    merged = {**archived, **{k: v for k, v in finetuned.items() if k not in ("id", "key")}, "inherited": inherited}
    if "eval_seconds" in finetuned:
        merged["finetune_seconds"] = finetuned["eval_seconds"]
        merged["eval_seconds"] = archived.get("eval_seconds")
    return merged


def finetune_order(members: list[dict], first: dict | None) -> list[dict]:
    """`first` (the member --best takes on inherited figures) if it is among `members`, then the rest in id order: if
    the run is stopped early, the member most likely to be exported is done."""
    head = [m for m in members if first is not None and m["id"] == first["id"]]
    return head + sorted((m for m in members if m not in head), key=lambda m: m["id"])
