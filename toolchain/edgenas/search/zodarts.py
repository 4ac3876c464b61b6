"""ZO-DARTS+ as a search method (`--method zodarts`): fit the macro to the target, run the architecture search
(search/zodarts_loop.py: ZO-DARTS+ and its baselines), derive the cell that fits the budgets
(search/zodarts_budget.py), retrain it from scratch (train/retrain.py), give it exits as NACHOS does, and write a
run folder that `edgenas export` reads like any other (one member, id 0).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from edgenas import runtime
from edgenas.data import load_dataset
from edgenas.errors import EdgenasError
from edgenas.fileio import publish_folder, temp_folder
from edgenas.search.methods import Problem, option, register_method
from edgenas.search.runfolder import CONFIG, PARETO, RunFolder, checkpoint_dict
from edgenas.search.zodarts_budget import budget_checks, budget_limits, choose_macro, derive_cell
from edgenas.search.zodarts_loop import METHODS, ZodartsConfig, run_search_loop, validate_config
from edgenas.spaces.nb201 import N_STAGES, Nb201NetConfig
from edgenas.targets import as_target
from edgenas.train.retrain import retrain

RESULT = "result.json"


@dataclass(frozen=True)
class ZodartsResult:
    method: str
    seed: int
    genotype: str                          # NAS-Bench-201 string of the derived cell (zodarts_budget.derive_cell)
    argmax_genotype: str                   # plain per-edge argmax of alpha
    derivation: dict                       # why the derived cell differs from the argmax, if it does (Derivation)
    net_config: Nb201NetConfig
    alpha: list                            # final alpha (6 x 5)
    probabilities: list                    # per epoch: 6 x 5 probabilities at the end of the epoch
    temperatures: list[float]
    epoch_seconds: list[float]             # search loop only, per epoch
    alpha_updates: int
    net: nn.Module = field(repr=False)     # derived EarlyExitNet (retrained when retrain_epochs > 0), eval mode
    retrain: dict | None = None
    exits: dict | None = None              # fit_exit_policy fields of the deployed net (thresholds, exit rates, MACs)
    cost: dict | None = None               # edgenas.cost.analyze of the derived net on the target
    violations: dict | None = None         # target budgets exceeded by the derived net (worst case: final exit)
    run_dir: Path | None = None
    config: dict = field(default_factory=dict)

    @property
    def search_seconds(self) -> float:
        return float(sum(self.epoch_seconds))

    def to_dict(self) -> dict:
        """JSON-ready summary (the network itself excluded)."""
        return {"method": self.method, "seed": self.seed, "genotype": self.genotype,
                "argmax_genotype": self.argmax_genotype, "derivation": self.derivation,
                "net_config": self.net_config.to_dict(), "alpha": self.alpha, "probabilities": self.probabilities,
                "temperatures": self.temperatures, "epoch_seconds": self.epoch_seconds,
                "search_seconds": self.search_seconds, "alpha_updates": self.alpha_updates,
                "retrain": self.retrain, "exits": self.exits, "cost": self.cost,
                "violations": None if self.violations is None else {k: list(v) for k, v in self.violations.items()},
                "config": self.config}


def make_config(config: ZodartsConfig | None = None, **overrides) -> ZodartsConfig:
    cfg = config or ZodartsConfig()
    known = {f.name for f in fields(ZodartsConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EdgenasError(f"unknown zodarts setting(s): {', '.join(unknown)}",
                           f"use one of {', '.join(sorted(known))}")
    return validate_config(replace(cfg, **{k: v for k, v in overrides.items() if v is not None}))


def search_zodarts(dataset, method: str = "zodarts+", epochs: int | None = None, seed: int = 0, target=None,
                   out_dir=None, config: ZodartsConfig | None = None, progress: bool = False, ui=None,
                   device: str = "cpu", threads: int = runtime.JOB_THREADS, **overrides) -> ZodartsResult:
    """Search a NAS-Bench-201 cell with ZO-DARTS+ (or a baseline), derive it, retrain it, check it on a target.

    dataset: a name for edgenas.data.load_dataset ("mnist5k", "digits", "medmnist:FILE.npz") or a loaded Dataset.
    target: a target name/path or a loaded Target: the macro is fitted to its budgets (unless C, N and resolution
    are given), the search penalises the expected cell past them and the derived cell fits them.
    out_dir: when given, a new folder written atomically: config.json, result.json, archive.jsonl, pareto.json and
    checkpoints/candidate_0.pt (the format `edgenas export` reads).
    device: "cpu" or "cuda:N" (edgenas.runtime.resolve_device) for the search, the retraining and the exit fitting;
    the cost analysis, the result and the run folder get the net on the CPU. threads: intra-op threads of the
    training (runtime's policy for one job; a caller running several searches side by side passes 1).
    overrides: any ZodartsConfig field (None leaves the default). Deterministic for a seed on a given machine (and
    device kind; on CUDA up to the non-deterministic kernels edgenas.runtime documents).
    """
    cfg = make_config(config, method=method, epochs=epochs, **overrides)
    if out_dir is not None and Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise EdgenasError(f"output folder {out_dir} exists and is not empty", "choose another --out")
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    tgt = None if target is None else as_target(target)
    if ui is None and progress:
        from edgenas.ui import RichUI
        ui = RichUI()
    if ui is None:
        from edgenas.ui import QuietUI
        ui = QuietUI()
    choice = choose_macro(tgt, data.in_channels, data.n_classes, cfg.C, cfg.N, cfg.resolution)
    cfg = replace(cfg, C=choice.macro.C, N=choice.macro.N, resolution=choice.macro.resolution)
    ui.note(f"macro {choice.reason}")
    limits = budget_limits(tgt.budgets) if tgt is not None else None
    runtime.use_deterministic_kernels(device)
    with runtime.torch_threads(threads):  # one job: the search, retraining and exit fitting
        with ui.task(f"search {cfg.method}", total=cfg.epochs) as advance:
            history = run_search_loop(data, cfg, seed, choice.costs, limits, device=device, on_epoch=lambda e, h: (
                advance(f"{h['epoch_seconds'][-1]:.1f} s, T={h['temperatures'][-1]:.3f}, "
                        f"{h['alpha_updates'][-1]} alpha updates")))
        checks = (None, None) if tgt is None else budget_checks(choice.costs, tgt, data.in_channels, data.n_classes)
        derived = derive_cell(history["probabilities"][-1], history["alpha"][-1], fits=checks[1], estimate=checks[0])
        arch = derived.arch
        if derived.reason != "argmax":
            ui.note(f"derived cell: {arch.to_string()} instead of the argmax {derived.argmax.to_string()} "
                    f"({derived.reason}: {derived.rank} more probable connected cell(s) skipped)")
        net_cfg = Nb201NetConfig(arch, cfg.C, cfg.N, cfg.resolution)
        torch.manual_seed(seed)
        net = net_cfg.build(data.in_channels, data.n_classes)
        retrained = None
        if cfg.retrain_epochs > 0:
            with ui.task("retrain derived cell", total=cfg.retrain_epochs) as advance:
                retrained = retrain(net, data, cfg.retrain_config(), seed, device=device,
                                    on_epoch=lambda e, loss: advance(f"loss {loss:.3f}"))
            ui.note(f"{cfg.method}: {arch.to_string()}, test accuracy {retrained['test_accuracy']:.4f} (final epoch)")
        net.eval()
        exits = None
        if cfg.retrain_epochs > 0 and cfg.fit_exits:
            # the same exit training and threshold choice as NACHOS candidates (the target's cost model, or cortex-m7)
            from edgenas.search.evaluate import EvaluationConfig, fit_exit_policy
            exit_target = tgt if tgt is not None else as_target("cortex-m7")
            with ui.task("train exit heads, choose thresholds", total=None):
                # float32: ZO-DARTS+ fits its macro to the target's budgets in float32 bytes
                net, exits = fit_exit_policy(net.to(device), data, exit_target, exit_target.budgets,
                                             EvaluationConfig(dtype="float32"), seed)
                net = net.cpu()
            ui.note(f"exits: {exits['n_exits']} kept, test accuracy {exits['test_accuracy']:.4f}, expected MACs "
                    f"{exits['macs_expected']:.0f} of {exits['macs_worst']} worst case")
    cost_dict, bad = None, None
    if tgt is not None:
        from edgenas import cost
        report = cost.analyze(cost.from_torch(net), tgt)
        cost_dict, bad = report.to_dict(), cost.violations(report, tgt.budgets)
    result = ZodartsResult(
        method=cfg.method, seed=seed, genotype=arch.to_string(), argmax_genotype=derived.argmax.to_string(),
        derivation={"reason": derived.reason, "rank": derived.rank, "exact_checks": derived.checked},
        net_config=net_cfg, alpha=history["alpha"][-1], probabilities=history["probabilities"],
        temperatures=history["temperatures"], epoch_seconds=history["epoch_seconds"],
        alpha_updates=history["alpha_updates"][-1], net=net, retrain=retrained, exits=exits, cost=cost_dict,
        violations=bad,
        config={**cfg.to_dict(), "seed": seed, "dataset": dataset if isinstance(dataset, str) else "<in-memory>",
                "target": getattr(tgt, "name", None), "space": "nb201", "device": device,
                "macro_choice": choice.reason, "multipliers": history["multipliers"],
                "expected_over_budget": history["expected_over_budget"]})
    if out_dir is not None:
        write_run(Path(out_dir), result, data)
        result = replace(result, run_dir=Path(out_dir))
    return result


def write_run(out: Path, result: ZodartsResult, data) -> None:
    """Write the run folder in a temporary sibling, then rename it into place: no partial output on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(temp_folder(out))
    try:
        retrain_info = result.retrain or {}
        record = {"id": 0, "arch": result.net_config.to_dict(), "description": result.net_config.describe(),
                  "active_exits": [False] * (N_STAGES - 1), "thresholds": [], "truncated_after_exit": None,
                  "val_accuracy": retrain_info.get("val_accuracy"), "test_accuracy": retrain_info.get("test_accuracy"),
                  "latency_expected_s": None if result.cost is None else result.cost["latency_worst_s"],
                  "search_seconds": result.search_seconds}
        net = result.net
        if result.exits is None:  # untrained exit heads are never taken: deploy the backbone alone
            from edgenas.nn.early_exit import drop_exits
            net = drop_exits(net, record["active_exits"], [])
        else:
            record.update(result.exits)
        folder.write_json(CONFIG, result.config)
        folder.write_json(RESULT, result.to_dict())
        folder.write_json(PARETO, {"members": [0]})
        folder.rewrite_archive([record])
        folder.write_checkpoint(0, checkpoint_dict("nb201", data.n_classes, data.in_channels,
                                                   {**record, "weights": "retrained"}, net))
        publish_folder(folder.path, out)  # an --out that exists is empty (checked before the search started)
    except BaseException:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ZodartsOptions:
    epochs: int | None = option("zodarts: search epochs.", type=int)
    zo_variant: str | None = option("zodarts: the estimator (ZO-DARTS+ by default, ZO-DARTS, DARTS 1st/2nd order "
                                    "baselines).", choices=METHODS)
    macro_c: int | None = option("zodarts: stage-1 channels (default: the largest macro that fits the target's "
                                 "budgets).", type=int, flag="--C")
    macro_n: int | None = option("zodarts: cells per stage (default: fitted, as --C).", type=int, flag="--N")
    resolution: int | None = option("zodarts: input side in pixels (default: fitted, as --C).", type=int)


@register_method
class ZodartsMethod:
    """One gradient search of a NAS-Bench-201 cell shared by the whole network: no candidates to spread over
    workers (its Options have no executor fields), no --resume (a run is one short search)."""
    name = "zodarts"
    Options = ZodartsOptions
    spaces = ("nb201",)

    def __init__(self, options: ZodartsOptions | None = None):
        self.options = options or ZodartsOptions()

    def run_label(self) -> str:
        return self.options.zo_variant or "zodarts+"

    def run(self, problem: Problem, folder: RunFolder, executor, ui) -> ZodartsResult:
        opts = self.options
        if problem.resume:
            raise EdgenasError("--resume is not supported by --method zodarts (a run is one short gradient search)",
                               "start a new run with another --out")
        if problem.space not in (None, *self.spaces):
            raise EdgenasError(f"--space {problem.space}: --method zodarts fits its nb201 sizes to the target",
                               "drop the space settings, or fix the sizes with --C, --N and --resolution")
        if opts.epochs is not None and opts.epochs < 1:
            raise EdgenasError(f"--epochs must be at least 1, got {opts.epochs}", "pass a positive --epochs")
        return search_zodarts(problem.dataset, method=self.run_label(), epochs=opts.epochs, seed=problem.seed,
                              target=problem.resolved_target(), out_dir=folder.path, ui=ui, device=problem.device,
                              C=opts.macro_c, N=opts.macro_n, resolution=opts.resolution)

    def result_json(self, result: ZodartsResult) -> dict:
        return {**result.to_dict(), "run_dir": str(result.run_dir)}

    def print_result(self, result: ZodartsResult, console) -> None:
        ex = result.exits or {}
        net = result.net_config
        console.print(f"{result.method}: cell {result.genotype} (C={net.C} N={net.N} resolution={net.resolution}); "
                      f"test accuracy {ex.get('test_accuracy', float('nan')):.4f} with {ex.get('n_exits', 1)} exits "
                      f"(expected MACs {ex.get('macs_expected', float('nan')):.0f} of {ex.get('macs_worst', 0)}); "
                      f"search {result.search_seconds:.0f} s; budget violations: {result.violations or 'none'}; "
                      f"run folder: {result.run_dir}", markup=False)
