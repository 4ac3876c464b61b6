"""What NACHOS and FlatNAS share: their options, the NSGA-II ask/tell loop, and the search-method half of their
classes (run, printing). Each of them adds its objectives and evaluator (search/nachos.py, search/flatnas.py); the
run folder, supernet, archive and members are the driver's (search/driver.py)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from edgenas.errors import EdgenasError
from edgenas.search.methods import ExecutorOptions, option
from edgenas.search.operators import CanonicalRepair, ResetMutation, SpaceSampling


@dataclass(frozen=True)
class Nsga2Options(ExecutorOptions):
    pop_size: int | None = option("nachos/flatnas: NSGA-II population size.", type=int)
    generations: int | None = option("nachos/flatnas: NSGA-II generations.", type=int)
    supernet_steps: int | None = option("nachos/flatnas: supernet training steps (optimiser updates; default 600).", type=int)
    finetune_steps: int | None = option("nachos/flatnas: fine-tuning steps of each Pareto member before export (default 600; 0: ship "
                                        "inherited weights).", type=int)
    finetune_members: str | None = option("nachos/flatnas: best (default): fine-tune the member `export --best` takes now, the rest "
                                          "on --resume; all: every member now.", choices=("best", "all"))
    dtype: str | None = option("nachos/flatnas: arithmetic the network deploys in: the SRAM/flash budgets count its bytes, and int8 "
                               "also scores the Pareto members after post-training quantisation (default: int8 on MCU "
                               "targets (kind mcu), float32 on the others).", choices=("float32", "int8"))
    # library use: a SearchConfig with every setting (the options above and the problem then change its fields)
    config: object | None = option("", cli=False)


class Nsga2Method:
    """The search-method half of NACHOS and FlatNAS (see search.methods): a SearchConfig from the problem and the
    options, then search.driver.run_search."""
    Options = Nsga2Options
    spaces = ("mbv3", "nb201")

    def __init__(self, options: Nsga2Options | None = None):
        self.options = options or Nsga2Options()

    @classmethod
    def for_config(cls, cfg):
        """The method object the driver scores candidates with, for a SearchConfig."""
        return cls()

    def run_label(self) -> str:
        return self.name

    def search_config(self, problem):
        """The SearchConfig of `problem` with this method's options (the base: options.config or the defaults)."""
        from edgenas.search.driver import SearchConfig
        opts = self.options
        cfg = opts.config or SearchConfig()
        cfg = replace(cfg, target=problem.target, dataset=problem.dataset, method=self.name, seed=problem.seed,
                      space=problem.space or cfg.space, **problem.budget_overrides())
        if opts.pop_size is not None:
            cfg = replace(cfg, pop_size=opts.pop_size)
        if opts.generations is not None:
            cfg = replace(cfg, n_gen=opts.generations)
        if opts.supernet_steps is not None:
            cfg = replace(cfg, supernet=replace(cfg.supernet, steps=opts.supernet_steps))
        if opts.finetune_steps is not None:
            cfg = replace(cfg, finetune=replace(cfg.finetune, steps=opts.finetune_steps))
        if opts.finetune_members is not None:
            cfg = replace(cfg, finetune_members=opts.finetune_members)
        if opts.dtype is not None:  # None keeps the config's (None there: the target's, resolved by run_search)
            cfg = replace(cfg, evaluation=replace(cfg.evaluation, dtype=opts.dtype))
        for name, value in (("--pop-size", cfg.pop_size), ("--generations", cfg.n_gen),
                            ("--supernet-steps", cfg.supernet.steps)):
            if value < 1:
                raise EdgenasError(f"{name} must be at least 1, got {value}", f"pass a positive {name}")
        if cfg.finetune.steps < 0:
            raise EdgenasError(f"--finetune-steps cannot be negative, got {cfg.finetune.steps}", "pass 0 (off) or more")
        if cfg.min_accuracy is not None and not 0.0 <= cfg.min_accuracy <= 1.0:
            raise EdgenasError(f"--min-accuracy must be a fraction in [0, 1], got {cfg.min_accuracy}",
                               "e.g. --min-accuracy 0.9")
        return cfg

    def run(self, problem, folder, executor, ui):
        from edgenas.search.driver import run_search
        return run_search(self.search_config(problem), folder.path, resume=problem.resume, ui=ui, executor=executor,
                          device=problem.device)

    def result_json(self, result) -> dict:
        from edgenas.search.report import members_json
        return {"run_dir": str(result.run_dir), "evaluations": result.evaluations,
                "new_evaluations": result.new_evaluations, "wall_seconds": result.wall_seconds,
                "hypervolume": result.hypervolume, "members": members_json(result.pareto)}

    def print_result(self, result, console) -> None:
        from edgenas.search.report import print_members
        print_members(result.pareto, console)
        waiting = [m for m in result.pareto if m["weights"] == "inherited"]
        if waiting and any(m["weights"] == "finetuned" for m in result.pareto):
            console.print(f"{len(waiting)} of {len(result.pareto)} members still have inherited weights; "
                          f"`edgenas search --resume --out {result.run_dir}` (same options) fine-tunes them",
                          markup=False)
        console.print(f"{result.evaluations} candidates evaluated ({result.new_evaluations} new) in "
                      f"{result.wall_seconds:.0f} s; hypervolume {result.hypervolume:.4f}; run folder: "
                      f"{result.run_dir}", markup=False)


def run_nsga2(space, evaluate_genome: Callable, method, budgets, pop_size: int, n_gen: int, seed: int,
              archive: Callable[[], list[dict]], prefetch: Callable | None = None, open_exits: bool = False) -> None:
    """Ask/tell NSGA-II loop; the caller's evaluate_genome owns caching and archiving.

    Before each survival step the method may re-normalise its objectives over the archive (FlatNAS's alpha_norm);
    the survivors' F is then recomputed so old and new individuals are compared on one scale.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.pntx import TwoPointCrossover

    from edgenas.search.problem import SearchProblem
    problem = SearchProblem(space, evaluate_genome, method, budgets)
    algorithm = NSGA2(pop_size=pop_size, sampling=SpaceSampling(space), crossover=TwoPointCrossover(prob=0.9),
                      mutation=ResetMutation(), repair=CanonicalRepair(space, open_exits), eliminate_duplicates=True)
    algorithm.setup(problem, termination=("n_gen", n_gen), seed=seed, verbose=False)
    while algorithm.has_next():
        pop = algorithm.ask()
        if prefetch is not None:  # evaluate the whole offspring at once (in parallel), in population order
            prefetch([ind.X for ind in pop])
        algorithm.evaluator.eval(problem, pop)
        method.refresh(archive())
        for group in (pop, algorithm.pop if algorithm.pop is not None else []):
            for ind in group:
                ind.F = np.array(method.objectives(evaluate_genome(ind.X, count=False)), dtype=float)
        algorithm.tell(infills=pop)
