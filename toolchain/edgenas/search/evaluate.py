"""Real evaluation of one NACHOS candidate: inherit supernet weights, re-calibrate BN, train the exit heads with the
backbone frozen, choose thresholds on validation, measure on test, and cost the deployed network.

Deterministic: every random choice is seeded from (run seed, genome key), so a candidate evaluates to the same
record whatever order the search visits it in (which is what makes `--resume` reproduce an uninterrupted run).

Devices (edgenas.runtime): a candidate is cut out of the supernet on the CPU (same weights, same head initialisation)
and moved to the evaluator's `device`; BN calibration, training and measuring run there, every random draw still on
CPU generators. The cost analysis traces CPU modules, and the deployed net is handed back on the CPU.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from edgenas import cost, runtime
from edgenas.cost import latency_fallback_note, latency_model_for
from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import deployed_network
from edgenas.stats import accuracy_interval
from edgenas.train.bn import recalibrate_bn
from edgenas.train.exits import (ExitTrainingConfig, exit_features, exit_outputs, train_exit_heads,
                                 train_final_head)
from edgenas.train.thresholds import RISK_DELTA, apply_policy, choose_policy, path_costs


@dataclass(frozen=True)
class EvaluationConfig:
    exits: ExitTrainingConfig = field(default_factory=ExitTrainingConfig)
    bn_batches: int = 8
    max_accuracy_drop: float = 0.01   # the most accuracy the exits may cost against the final exit ...
    risk_delta: float = RISK_DELTA    # ... certified with probability >= 1 - risk_delta (train/thresholds.py)
    # the arithmetic the network deploys in: the budgets count its bytes, and "int8" also scores the Pareto members
    # after post-training quantisation (search/int8.py). None: the target's (deployment_dtype)
    dtype: str | None = None


DTYPES = ("float32", "int8")


def deployment_dtype(target) -> str:
    """What a target runs by default: int8 on microcontrollers (kind "mcu"), as TFLite Micro, CMSIS-NN and X-CUBE-AI
    deploy, float32 elsewhere."""
    return "int8" if target.kind == "mcu" else "float32"


def resolve_dtype(dtype: str | None, target) -> str:
    """`dtype`, or the target's deployment_dtype when None; an unknown value is an EdgenasError."""
    if dtype is None:
        return deployment_dtype(target)
    if dtype not in DTYPES:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use --dtype {' or '.join(DTYPES)}")
    return dtype


def latency_dtype_note(dtype: str, target) -> str | None:
    """What to say when the latency figures are not of `dtype`: the target has no latency model of it, so
    cost.predict_latency used its [latency] model (latency_model_for); None when they are."""
    used = latency_model_for(target, dtype).dtype
    note = latency_fallback_note(dtype, used)
    return (f"{target.name}: {note}: the latency figures and the latency budget are {used} kernel predictions"
            if note else None)


def candidate_seed(run_seed: int, key: str) -> int:
    return (zlib.crc32(key.encode()) ^ (run_seed * 2654435761)) & 0x7FFFFFFF


def per_exit_costs(graph, values) -> tuple[list[float], list[float]]:
    """Split a per-layer quantity into cumulative backbone cost at each exit point and cost of each head."""
    backbone = [0.0] * graph.n_exits
    heads = [0.0] * graph.n_exits
    for layer, v in zip(graph.layers, values):
        if layer.part == "head":
            heads[layer.index] += float(v)
        else:
            backbone[layer.index] += float(v)
    return list(np.cumsum(backbone)), heads


class CandidateEvaluator:
    """Callable genome -> (record, deployed net on the CPU). Holds the trained supernet (on the CPU) and the data; no
    I/O.

    `device` ("cpu" or "cuda:N") may be changed at any time, e.g. by a worker after unpickling (a GPU worker sets its
    own): the data is moved to a device lazily, once per device, and such copies are never pickled."""

    def __init__(self, space, supernet, data, target, budgets, config: EvaluationConfig, seed: int,
                 device: str = "cpu"):
        self.space, self.supernet, self.data, self.target = space, supernet, data, target
        self.budgets, self.config, self.seed = budgets, config, seed
        self.device = device
        self.params_cap: int | None = None
        self._data_on: dict[str, object] = {}  # device -> self.data with its splits there (device_data)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_data_on"] = {}  # device tensors stay in this process (the receiver may have no such device)
        return state

    def device_data(self):
        """self.data with every split that fits on self.device moved there (runtime.data_on_device), once per
        device; on the CPU, self.data itself."""
        if not runtime.is_cuda(self.device):
            return self.data
        if self.device not in self._data_on:
            def moved(split):
                x, y = runtime.data_on_device(self.device, split.x, split.y)
                return dataclasses.replace(split, x=x, y=y)
            d = self.data
            self._data_on[self.device] = dataclasses.replace(d, train=moved(d.train), val=moved(d.val),
                                                             test=moved(d.test))
        return self._data_on[self.device]

    def build(self, genome):
        """(arch, key, seed, net): the candidate cut out of the supernet on the CPU, moved to self.device, its BN
        re-calibrated there (batches drawn from the CPU split in a CPU generator's order)."""
        runtime.use_deterministic_kernels(self.device)  # before this process's first GPU work (a no-op on the CPU)
        arch = self.space.decode(genome)
        key = self.space.key(genome)
        seed = candidate_seed(self.seed, key)
        net = self.space.build(arch, self.supernet, head_seed=seed).to(self.device)
        recalibrate_bn(net, self.data.train, arch.resolution, max_batches=self.config.bn_batches, seed=seed)
        net.eval()
        return arch, key, seed, net

    def finetune(self, net, seed: int) -> None:
        """Hook before exit-head training: NACHOS keeps the inherited backbone as it is."""

    def extra_metrics(self, deployed, record: dict, seed: int) -> dict:
        """Hook for method-specific fields of the archive record (`deployed` is on self.device)."""
        return {}

    def __call__(self, genome) -> tuple[dict, object]:
        arch, key, seed, net = self.build(genome)
        self.finetune(net, seed)
        deployed, fitted = fit_exit_policy(net, self.device_data(), self.target, self.budgets, self.config, seed)
        record = {
            "key": key,
            "genome": [int(v) for v in self.space.canonical(genome)],
            "arch": arch.to_dict(),
            "description": arch.describe(),
            "exits_in_genome": int(sum(arch.exits)),
            **fitted,
        }
        record.update(self.extra_metrics(deployed, record, seed))
        record["violations"] = budget_violations(record, self.budgets, self.params_cap)
        record["feasible"] = not record["violations"]
        return record, deployed.cpu()


def head_training_features(net, data, exits: ExitTrainingConfig) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(features at every exit point, labels) of the training images the final-head re-fit and the exit heads use.

    At most `exits.max_train_samples` images (a prefix of the shuffled train split): the cost of a candidate then
    does not grow with the dataset, and a few thousand images are plenty for these small heads. Both on the net's
    device."""
    n_head = min(len(data.train.y), exits.max_train_samples)
    feats = exit_features(net, data.train.x[:n_head])
    return feats, data.train.y[:n_head].to(feats[0].device)


def cost_graph(net):
    """cost.from_torch(net) for a net on any device: the analysis traces with CPU tensors, so the net visits the CPU
    and goes back (a no-op move on the CPU path)."""
    device = runtime.module_device(net)
    try:
        return cost.from_torch(net.cpu())
    finally:
        net.to(device)


def fit_exit_policy(net, data, target, budgets, config: EvaluationConfig, seed: int,
                    keep_placement: bool = False) -> tuple[object, dict]:
    """Train the exit heads of `net` (backbone frozen), choose thresholds on validation, measure on test, cost the
    deployed network. Returns (deployed net, record fields). Shared by every search method that emits exits.

    Deployed = inactive heads dropped and, when no validation image reaches the final exit, the network cut after
    the last active exit (`truncated_after_exit`); test rates, accuracy and every cost are those of that network.

    keep_placement: `net` is already a deployed network (a fine-tuned Pareto member): every head stays, the network
    is not cut, and the final head, trained with the backbone, is not re-fitted; only the intermediate heads and
    the thresholds are chosen again (an exit that cannot pass the guard gets a threshold that never fires).

    Runs on the net's device (data anywhere); the deployed net is on that device too."""
    net.eval()
    t = target
    dtype = resolve_dtype(config.dtype, t)
    latency_model = latency_model_for(t, dtype)  # the target's model of dtype, else its [latency] one
    full_graph = cost_graph(net)
    lat = cost.predict_latency(full_graph, t, dtype)
    backbone_s, head_s = per_exit_costs(full_graph, lat.layer_s)
    backbone_s = [b + latency_model.per_inference_cycles / t.clock_hz for b in backbone_s]
    per_exit_s = latency_model.per_exit_cycles / t.clock_hz

    feats = {name: exit_features(net, getattr(data, name).x) for name in ("val", "test")}
    feats["train"], y_head = head_training_features(net, data, config.exits)
    if not keep_placement:
        train_final_head(net, feats["train"][-1], y_head, config.exits, seed)
    train_exit_heads(net, feats["train"], y_head,
                     path_costs(backbone_s, head_s, [True] * (net.n_exits - 1), per_exit_s),
                     budgets.latency_s, config.exits, seed)
    val_pred, val_conf = exit_outputs(net, feats["val"])
    test_pred, test_conf = exit_outputs(net, feats["test"])
    y_val, y_test = data.val.y.cpu().numpy(), data.test.y.cpu().numpy()
    policy = choose_policy(val_pred, val_conf, y_val, backbone_s, head_s, min_accuracy=budgets.min_accuracy,
                           max_accuracy_drop=config.max_accuracy_drop, per_exit_cost=per_exit_s,
                           risk_delta=config.risk_delta, allow_disable=not keep_placement)
    n_exits = net.n_exits
    active = [i for i, a in enumerate(policy.active) if a]
    # no validation image reaches the final exit: the layers after the last active exit would ship as dead weight
    truncated = active[-1] if active and policy.exit_rates[-1] == 0 and not keep_placement else None
    keep = active + ([n_exits - 1] if truncated is None else [])
    thresholds = policy.thresholds[:len(keep) - 1]
    test_taken = apply_policy(test_pred, test_conf, policy.active, policy.thresholds)
    if truncated is not None:  # test images that would go on leave at the truncated network's final exit
        test_taken[test_taken == n_exits - 1] = truncated
    test_rates = np.bincount(test_taken, minlength=n_exits) / len(y_test)
    test_acc = float((test_pred[np.arange(len(y_test)), test_taken] == y_test).mean())

    deployed = deployed_network(net, policy.active, thresholds, truncated)
    graph = cost_graph(deployed)
    val_rates = [policy.exit_rates[i] for i in keep]
    test_rates_kept = [float(test_rates[i]) for i in keep]
    report = cost.analyze(graph, t, dtype)
    macs_per_exit = [int(m) for m in report.macs_per_exit]
    latency_per_exit = [float(v) for v in report.latency_per_exit_s]
    return deployed, {
        "dtype": dtype,  # of peak_sram_bytes and flash_bytes, which the budgets check
        "latency_model_dtype": report.latency_dtype,  # of every latency figure: dtype's, or [latency]'s without one
        "active_exits": [bool(a) for a in policy.active],
        "n_exits": len(keep),
        "truncated_after_exit": truncated,
        "thresholds": [float(v) for v in thresholds],
        "exit_loss_upper_bound": float(policy.loss_upper_bound),
        "exit_harmful_flips": policy.harmful_flips,
        "exit_beneficial_flips": policy.beneficial_flips,
        "n_val": len(y_val),
        "n_test": len(y_test),
        "val_accuracy": float(policy.accuracy),
        "val_accuracy_ci": accuracy_interval(policy.accuracy, len(y_val)),
        "val_accuracy_no_exit": float((val_pred[:, -1] == y_val).mean()),
        "test_accuracy": test_acc,
        "test_accuracy_ci": accuracy_interval(test_acc, len(y_test)),
        "test_accuracy_no_exit": float((test_pred[:, -1] == y_test).mean()),
        "val_exit_rates": val_rates,
        "test_exit_rates": test_rates_kept,
        "macs_per_exit": macs_per_exit,
        "macs_worst": macs_per_exit[-1],
        "macs_expected": float(np.dot(val_rates, macs_per_exit)),
        "macs_expected_test": float(np.dot(test_rates_kept, macs_per_exit)),
        "params": int(report.params),
        "peak_sram_bytes": int(report.peak_sram_bytes),
        "peak_sram_bytes_int8": int(report.peak_sram_bytes_int8),
        "flash_bytes": int(report.flash_bytes),
        "flash_bytes_int8": int(report.flash_bytes_int8),
        "flash_bytes_fp32": int(report.flash_bytes_fp32),
        "latency_per_exit_s": latency_per_exit,
        "latency_worst_s": latency_per_exit[-1],
        "latency_expected_s": float(np.dot(val_rates, latency_per_exit)),
        "latency_expected_test_s": float(np.dot(test_rates_kept, latency_per_exit)),
        # the target latency model's 90 % prediction interval around the expected latency (None: it has none)
        "latency_expected_interval_s": None if report.latency_interval is None else
        [float(v) for v in cost.latency_interval(float(np.dot(val_rates, latency_per_exit)),
                                                 report.latency_interval)],
    }


def _budget_checks(record: dict, budgets, params_cap: int | None = None) -> list[tuple[str, float, float | None]]:
    return [("latency", record["latency_expected_s"], budgets.latency_s),
            ("sram", record["peak_sram_bytes"], budgets.sram_bytes),
            ("flash", record["flash_bytes"], budgets.flash_bytes),
            ("macs", record["macs_expected"], budgets.macs),
            ("params", record["params"], params_cap)]


def budget_violations(record: dict, budgets, params_cap: int | None = None) -> dict:
    """Budget -> {value, limit, excess} (relative excess) for every budget the candidate misses."""
    out = {}
    checks = _budget_checks(record, budgets, params_cap)
    for name, value, limit in checks:
        if limit is not None and value > limit:
            out[name] = {"value": value, "limit": limit, "excess": value / limit - 1.0}
    if budgets.min_accuracy is not None and record["val_accuracy"] < budgets.min_accuracy:
        out["accuracy"] = {"value": record["val_accuracy"], "limit": budgets.min_accuracy,
                           "excess": budgets.min_accuracy - record["val_accuracy"]}
    return out


N_CONSTRAINTS = 6


def constraint_values(record: dict, budgets, params_cap: int | None = None) -> list[float]:
    """pymoo G (<= 0 is satisfied), each normalised by its budget so the constraint-violation sum is unit-free."""
    g = [0.0 if limit is None else value / limit - 1.0 for _, value, limit in _budget_checks(record, budgets, params_cap)]
    g.append(0.0 if budgets.min_accuracy is None else budgets.min_accuracy - record["val_accuracy"])
    return g


def objective_values(record: dict) -> list[float]:
    return [1.0 - record["val_accuracy"], record["latency_expected_s"]]


@torch.no_grad()
def predict_exits(net, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Eager early-exit inference over a batch on the net's device: (predicted class, exit index)."""
    from edgenas.data import resize
    logits, taken = net(resize(x.to(runtime.module_device(net)), net.input_shape[-1]))
    return logits.argmax(1).cpu().numpy(), taken.cpu().numpy()
