"""The search driver shared by the NSGA-II methods (NACHOS, FlatNAS): run folder, supernet, ask/tell loop with an
archive callback, Pareto set, checkpoints, reports. A method object supplies the evaluator and the objectives.
"""
from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgenas.errors import EdgenasError
from edgenas.fileio import missing_folders
from edgenas.runtime import JOB_THREADS, torch_threads
from edgenas.search.evaluate import EvaluationConfig, latency_dtype_note, resolve_dtype
from edgenas.search.executors import ExecutorConfig, open_executor, timed_record
from edgenas.search.flatnas import FlatnasConfig
from edgenas.search.int8 import INT8, score_members_int8
from edgenas.search.nsga2 import run_nsga2
from edgenas.search.pareto import choose_best, closest_misses, hypervolume_2d, pareto_members
from edgenas.search.finetune import member_view
from edgenas.search.runfolder import ARCHIVE, CONFIG, FINETUNED, PARETO, SUPERNET, RunFolder, checkpoint_dict
from edgenas.train.exits import ExitTrainingConfig
from edgenas.train.finetune import FinetuneConfig
from edgenas.train.supernet import SupernetConfig

RESULT_FIELDS_IGNORED_ON_COMPARE = ("id", "eval_seconds")


@dataclass(frozen=True)
class SearchConfig:
    target: str = "cortex-m7"
    dataset: str = "mnist5k"  # 1,000 validation images: enough to certify a 1-pt exit loss (digits has 359)
    method: str = "nachos"
    space: str = "mbv3"
    seed: int = 0
    latency: str | None = None      # budget overrides, as strings ("50ms", "256KB", "1MB", "2.5M")
    sram: str | None = None
    flash: str | None = None
    macs: str | None = None
    min_accuracy: float | None = None
    pop_size: int = 16
    n_gen: int = 8
    # "policy": a head at every exit slot, the threshold search keeps the ones that pay; "genome": the exit genes decide
    exit_slots: str = "policy"
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    flatnas: FlatnasConfig = field(default_factory=FlatnasConfig)
    # Pareto members are fine-tuned before export (search/finetune.py); optimizer "auto": SAM for FlatNAS, else SGD
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(optimizer="auto"))
    # "best": the run that evaluates the candidates fine-tunes the member `export --best` takes (what `make demo`
    # ships, within its time goal), a --resume that finds the search done the rest; "all": every member at once
    finetune_members: str = "best"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as config.json stores them

    @staticmethod
    def from_dict(d: dict) -> "SearchConfig":
        d = dict(d)
        d.pop("versions", None)
        ev = dict(d.pop("evaluation"))
        ev["exits"] = ExitTrainingConfig(**ev["exits"])
        flat = dict(d.pop("flatnas"))
        flat["ood_severities"] = tuple(flat["ood_severities"])
        # runs written before member fine-tuning existed shipped inherited weights: steps 0 says so
        finetune = FinetuneConfig(**d.pop("finetune", {"steps": 0}))
        d.setdefault("finetune_members", "all")
        return SearchConfig(supernet=SupernetConfig(**d.pop("supernet")), evaluation=EvaluationConfig(**ev),
                            flatnas=FlatnasConfig(**flat), finetune=finetune, **d)


def method_for(cfg: SearchConfig):
    """The registered method object (search.methods) that scores candidates for `cfg`."""
    from edgenas.search.methods import check_space, method_class
    if cfg.exit_slots not in ("policy", "genome"):
        raise EdgenasError(f"unknown exit_slots '{cfg.exit_slots}'", "use 'policy' or 'genome'")
    cls = method_class(cfg.method)
    if not hasattr(cls, "for_config"):
        raise EdgenasError(f"--method {cfg.method} is not an NSGA-II search method", "use nachos or flatnas")
    check_space(cfg.method, cfg.space)
    return cls.for_config(cfg)


class NoFeasibleCandidate(EdgenasError):
    exit_code = 3


@dataclass
class SearchResult:
    run_dir: Path
    records: list[dict]
    pareto: list[dict]
    hypervolume: float
    wall_seconds: float
    evaluations: int
    new_evaluations: int


def versions() -> dict:
    import pymoo
    import torch

    import edgenas
    return {"edgenas": edgenas.__version__, "torch": torch.__version__, "pymoo": pymoo.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def target_and_budgets(cfg: SearchConfig):
    from edgenas.targets import load_target, target_with_budgets
    target = load_target(cfg.target)
    target = target_with_budgets(target, latency=cfg.latency, sram=cfg.sram, flash=cfg.flash, macs=cfg.macs,
                                 min_accuracy=cfg.min_accuracy)
    return target, target.budgets


def with_resolved_dtype(cfg: SearchConfig, target) -> SearchConfig:
    """cfg with evaluation.dtype set (None: the target's deployment dtype), as config.json records it."""
    return replace(cfg, evaluation=replace(cfg.evaluation, dtype=resolve_dtype(cfg.evaluation.dtype, target)))


def check_budgets_reachable(space, target, budgets, in_channels: int, n_classes: int,
                            dtype: str = "float32") -> None:
    """Fail fast, before any training, when even the smallest network of the space cannot fit (bytes at `dtype`)."""
    from edgenas import cost
    smallest = space.build_empty(space.smallest(exits=False), in_channels, n_classes)
    graph = cost.from_torch(smallest)
    report = cost.analyze(graph, target, dtype)
    lat = cost.predict_latency(graph, target, dtype).per_exit_s[-1]
    first_exit = space.build_empty(space.smallest(exits=True), in_channels, n_classes)
    lat_floor = min(lat, cost.predict_latency(cost.from_torch(first_exit), target, dtype).per_exit_s[0])
    misses = []
    if budgets.sram_bytes is not None and report.peak_sram_bytes > budgets.sram_bytes:
        misses.append(f"SRAM {report.peak_sram_bytes / 1024:.1f} KiB > budget {budgets.sram_bytes / 1024:.1f} KiB")
    if budgets.flash_bytes is not None and report.flash_bytes > budgets.flash_bytes:
        misses.append(f"flash {report.flash_bytes / 1024:.1f} KiB > budget {budgets.flash_bytes / 1024:.1f} KiB")
    if budgets.latency_s is not None and lat_floor > budgets.latency_s:
        misses.append(f"latency {lat_floor * 1e3:.2f} ms > budget {budgets.latency_s * 1e3:.2f} ms")
    if misses:
        raise EdgenasError(f"impossible budgets: even the smallest {space.name} network needs " + "; ".join(misses),
                           "relax --sram/--flash/--latency or choose a bigger target")


def _prepare_folder(folder: RunFolder, cfg: SearchConfig, resume: bool, ui) -> list[Path] | None:
    """Check that the search may write `folder`; returns the folders it had to create for a new run (outermost first;
    [] when --out was an empty folder), None for a resumed one. config.json is written by the caller, under the lock."""
    if folder.path.exists() and not folder.path.is_dir():
        raise EdgenasError(f"--out {folder.path} is a file, not a folder", "choose another --out")
    if folder.exists():
        if not resume:
            raise EdgenasError(f"run folder {folder.path} already holds a search",
                               "pass --resume to continue it, or choose another --out")
        saved = dict(folder.read_config())
        saved.pop("versions", None)
        # runs written before --dtype existed counted float32 bytes (their config says "float32"); a config written
        # by hand may say None, the target's dtype: cfg's when the targets agree (if not, the check below refuses)
        saved_eval = saved.get("evaluation")
        saved_dtype = saved_eval.get("dtype", "float32") if isinstance(saved_eval, dict) else "float32"
        saved_dtype = saved_dtype or cfg.evaluation.dtype
        if isinstance(saved_eval, dict):
            saved["evaluation"] = {**saved_eval, "dtype": saved_dtype}
        if saved_dtype != cfg.evaluation.dtype:
            raise EdgenasError(f"--resume with --dtype {cfg.evaluation.dtype}, but the run in {folder.path} was "
                               f"searched in {saved_dtype} (its budgets count {saved_dtype} bytes)",
                               f"resume with --dtype {saved_dtype}, or start a new run with another --out")
        if saved != cfg.to_dict():
            diff = sorted(k for k in set(saved) | set(cfg.to_dict()) if saved.get(k) != cfg.to_dict().get(k))
            raise EdgenasError(f"--resume with settings that differ from the run in {folder.path}: {', '.join(diff)}",
                               "resume with the original settings, or start a new run with another --out")
        return None
    if folder.path.exists() and any(folder.path.iterdir()):
        raise EdgenasError(f"output folder {folder.path} exists and is not an edgenas run", "choose another --out")
    if resume:  # `make demo` resumes whether or not a run exists: a mistyped --out must not pass unnoticed
        ui.note(f"--resume: {folder.path} holds no run yet; starting a new search there")
    created = missing_folders(folder.path)
    folder.path.mkdir(parents=True, exist_ok=True)
    return created


@contextlib.contextmanager
def _opened_folder(folder: RunFolder, cfg: SearchConfig, resume: bool, ui):
    """The run folder prepared and locked for the whole search, the torn last line a kill may leave in a JSON-lines
    file cut (an append after it would glue the next record to it). A search that created the folder and fails
    before it has a supernet or an evaluated candidate removes it again, with the parent folders it created."""
    created = _prepare_folder(folder, cfg, resume, ui)
    try:
        with folder.locked():
            if created is not None:
                folder.write_json(CONFIG, {**cfg.to_dict(), "versions": versions()})
            for name in (ARCHIVE, FINETUNED, INT8):
                cut = folder.cut_torn_tail(name)
                if cut:
                    ui.note(f"{folder.file(name)}: cut its torn last line ({cut} bytes, written when a search was "
                            "killed); that record is made again")
            yield
    except BaseException:
        archive = folder.file(ARCHIVE)
        if created is not None and not folder.file(SUPERNET).is_file() and not (archive.is_file() and archive.stat().st_size):
            if created:
                shutil.rmtree(created[0], ignore_errors=True)
            else:  # --out was an empty folder: what is in it now is this search's
                for path in folder.path.iterdir():
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        raise


def load_or_train_supernet(folder: RunFolder, space, data, cfg: SearchConfig, ui, device: str = "cpu"):
    import torch

    from edgenas.train.supernet import train_supernet
    supernet = space.supernet(data.in_channels, data.n_classes)
    path = folder.file(SUPERNET)
    if path.is_file():
        try:
            supernet.load_state_dict(torch.load(path, weights_only=True))
        except Exception as exc:  # torch raises several types for corrupt files and mismatched state_dicts
            raise EdgenasError(f"cannot load supernet weights {path} ({type(exc).__name__})",
                               "the file is corrupt or from another space: delete it and --resume retrains it") from None
        supernet.eval()
        ui.note(f"supernet loaded from {path}")
        return supernet
    every = 50
    # a fixed thread count (cfg.supernet.threads), not the core count: the same seed gives the same supernet anywhere
    where = f"{cfg.supernet.threads} threads" if device == "cpu" else device
    with ui.task(f"training supernet ({cfg.supernet.steps} steps, {where})", -(-cfg.supernet.steps // every)) as advance:
        train_supernet(space, supernet, data, cfg.supernet, cfg.seed, progress_every=every,
                       progress=lambda step, loss: advance(f"step {step} loss {loss:.3f}"), device=device)
    folder.write_supernet(supernet.state_dict())
    return supernet


def run_search(cfg: SearchConfig, out: str | Path, resume: bool = False, ui=None,
               executor: ExecutorConfig | None = None, device: str = "cpu") -> SearchResult:
    """The library entry point behind `edgenas search`: writes the run folder and returns its Pareto set.

    executor: where candidates are evaluated (search.executors; default: local worker processes, one per core, at
    most 4); the archive does not depend on it. device: "cpu" or "cuda:N" (runtime.resolve_device) for the supernet,
    the evaluations and the fine-tuning."""
    from edgenas.data import load_dataset
    from edgenas.ui import QuietUI
    from edgenas.spaces import create_space
    ui = ui or QuietUI()
    method = method_for(cfg)
    executor = (executor or ExecutorConfig()).validate()
    if cfg.finetune_members not in ("best", "all"):
        raise EdgenasError(f"unknown finetune_members '{cfg.finetune_members}'", "use 'best' or 'all'")
    t0 = time.time()
    target, budgets = target_and_budgets(cfg)
    cfg = with_resolved_dtype(cfg, target)
    data = load_dataset(cfg.dataset)
    space = create_space(cfg.space)
    check_budgets_reachable(space, target, budgets, data.in_channels, data.n_classes, cfg.evaluation.dtype)
    folder = RunFolder(out)
    with _opened_folder(folder, cfg, resume, ui):
        return _search_in_folder(folder, cfg, method, target, budgets, data, space, ui, executor, device, t0)


def _search_in_folder(folder: RunFolder, cfg: SearchConfig, method, target, budgets, data, space, ui,
                      executor: ExecutorConfig, device: str, t0: float) -> SearchResult:
    """run_search's work once the folder is prepared and locked."""
    import torch

    from edgenas.search.report import write_pareto_plot, write_report
    # a corrupt archive is refused before any work (finetuned.jsonl is read again when the members are prepared)
    records = folder.read_archive(required=("key",))
    folder.read_archive(FINETUNED)
    torch.manual_seed(cfg.seed)
    supernet = load_or_train_supernet(folder, space, data, cfg, ui, device)
    # said once the folder and its files are accepted (a refused run prints its one error line only)
    ui.note(f"dtype {cfg.evaluation.dtype}: the SRAM and flash budgets count {cfg.evaluation.dtype} bytes"
            + (", and the Pareto members are also scored after int8 post-training quantisation"
               if cfg.evaluation.dtype == "int8" else ""))
    note = latency_dtype_note(cfg.evaluation.dtype, target)
    if note:
        ui.note(note)
    evaluator = method.make_evaluator(space, supernet, data, target, budgets, cfg, device=device)

    cache = {r["key"]: r for r in records}
    new = 0
    n_total = cfg.pop_size * cfg.n_gen

    with ui.task("evaluating candidates", n_total) as advance, open_executor(executor, evaluator, device) as pool:
        def evaluate_new(genomes) -> None:
            """Evaluate the genomes not in the archive yet (in parallel), appending them in the given order."""
            nonlocal new
            missing, keys = [], set()
            for g in genomes:
                key = space.key(g)
                if key not in cache and key not in keys:
                    missing.append(g)
                    keys.add(key)
            for record in pool.imap(missing):
                record["id"] = len(records)
                folder.append_record(record)
                records.append(record)
                cache[record["key"]] = record
                new += 1

        def evaluate_genome(genome: np.ndarray, count: bool = True) -> dict:
            key = space.key(genome)
            if key not in cache:
                evaluate_new([genome])
            r = cache[key]
            if not count:
                return r
            advance(f"#{r['id']} acc {r['val_accuracy']:.3f} {r['latency_expected_s'] * 1e3:.1f} ms"
                    + ("" if r["feasible"] else " (over budget)"))
            return r

        run_nsga2(space, evaluate_genome, method, budgets, cfg.pop_size, cfg.n_gen, cfg.seed,
                  archive=lambda: records, prefetch=evaluate_new, open_exits=cfg.exit_slots == "policy")

    method.refresh(records)
    members = pareto_members(records, method.objectives)
    ref = method.hypervolume_reference(records, budgets)
    feasible = [r for r in records if r["feasible"]]
    hv = hypervolume_2d(np.array([[f / q for f, q in zip(method.objectives(r), ref)] for r in feasible]).reshape(-1, 2),
                        (1.0, 1.0))
    # "best": the invocation that ran the search fine-tunes the member --best takes; one that finds the search done
    # (a --resume, e.g. the next `make demo`) fine-tunes the rest
    only_best = cfg.finetune_members == "best" and new > 0
    members = prepare_members(folder, space, method, evaluator, members, data, cfg, ui, executor, device, only_best)
    if cfg.evaluation.dtype == "int8":
        members = score_members_int8(folder, members, data, ui)
    folder.write_json(PARETO, {"members": [m["id"] for m in members], "hypervolume": hv,
                               "hypervolume_reference": list(ref), "objectives": list(method.objective_names),
                               "method": method.name, "weights": "finetuned" if cfg.finetune.steps > 0 else "inherited",
                               "dtype": cfg.evaluation.dtype})
    write_pareto_plot(folder.file("pareto.png"), records, members, budgets, target.name)
    write_report(folder.file("report.md"), cfg, target, budgets, records, members, hv)
    result = SearchResult(folder.path, records, members, hv, time.time() - t0, len(records), new)
    if not members:
        miss = closest_misses(records)
        detail = "; ".join(f"#{r['id']} misses " + ", ".join(f"{k} by {v['excess'] * 100:.1f}%" for k, v in r["violations"].items())
                           for r in miss)
        raise NoFeasibleCandidate(f"no candidate meets the budgets ({len(records)} evaluated); closest: {detail}",
                                  "relax the budgets or raise --pop-size/--generations; the archive is kept in " + str(folder.path))
    return result


def prepare_members(folder: RunFolder, space, method, evaluator, members: list[dict], data, cfg: SearchConfig,
                    ui, executor: ExecutorConfig, device: str = "cpu", only_best: bool = False) -> list[dict]:
    """Give every Pareto member its deployable checkpoint: fine-tuned (finetune.steps > 0; with only_best just the
    member --best takes) or with its inherited weights. A fine-tuned member also gets its line in finetuned.jsonl.
    The member --best takes is one job and goes first, in this process with runtime.JOB_THREADS threads; the others
    run in parallel on the executor, one thread each (runtime's policy: every core busy, and a member's weights do
    not depend on the mode or the machine). Returns the members as reported (search.finetune.member_view)."""
    import functools

    from edgenas.search.finetune import (CHECKPOINT, InheritedCheckpoint, MemberFinetuner, MemberJobs, finetune_order,
                                         largest_subnet_probabilities, resolve_config)
    has_checkpoint = lambda i: folder.checkpoint_path(i).is_file()  # noqa: E731
    # a line without its checkpoint was cut short between the two writes: fine-tune that member again
    done = {r["id"]: r for r in folder.read_archive(FINETUNED) if has_checkpoint(r["id"])}
    first = choose_best(members)[0] if members else None
    tune = [] if cfg.finetune.steps == 0 else [m for m in members if m["id"] not in done and (not only_best or m is first)]
    tuned_now = {m["id"] for m in tune}
    keep = [m for m in members if m["id"] not in done and m["id"] not in tuned_now and not has_checkpoint(m["id"])]
    if tune or keep:
        config = resolve_config(cfg.finetune, method.name, cfg.flatnas)
        with torch_threads(JOB_THREADS):
            teacher = (largest_subnet_probabilities(space, evaluator, data)
                       if tune and config.distill_weight > 0 else None)
        pack = functools.partial(checkpoint_dict, space.name, data.n_classes, data.in_channels)
        jobs = MemberJobs(MemberFinetuner(evaluator, config, teacher, pack), InheritedCheckpoint(evaluator, pack))
        what = ", ".join(part for part in (
            f"fine-tuning {len(tune)} Pareto member{'s' * (len(tune) > 1)} ({config.steps} steps, {config.optimizer})" if tune else "",
            f"saving {len(keep)} with inherited weights" if keep else "") if part)
        queue = [("finetune", m) for m in finetune_order(tune, first)] + [("inherited", m) for m in keep]
        alone = queue[:1] if queue[0] == ("finetune", first) else []

        def records():
            if alone:
                with torch_threads(JOB_THREADS):
                    yield timed_record(jobs, alone[0])
            if queue[len(alone):]:
                with open_executor(executor, jobs, device) as pool:
                    yield from pool.imap(queue[len(alone):])

        with ui.task(what, len(tune) + len(keep)) as advance:
            for record in records():
                # the checkpoint first: a finetuned.jsonl line without its checkpoint means "fine-tune it again"
                folder.write_checkpoint(record["id"], record.pop(CHECKPOINT))
                archived = next(m for m in members if m["id"] == record["id"])
                if record["weights"] == "finetuned":
                    folder.append_record(record, FINETUNED)
                    done[record["id"]] = record
                    advance(f"#{record['id']} test acc {archived['test_accuracy']:.3f} -> {record['test_accuracy']:.3f}")
                else:
                    advance(f"#{record['id']} saved")
    return [member_view(m, done.get(m["id"])) for m in members]
