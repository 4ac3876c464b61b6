"""Candidate evaluation in worker processes, one torch thread each.

Every evaluation, in a worker or in the main process, runs with one intra-op thread: results then do not depend on
the number of workers or cores (the same seed gives the same archive everywhere), and two single-threaded workers use a
2-core machine better than one process whose OpenMP threads spin against other load on a shared machine.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

_EVALUATOR = None


def default_workers() -> int:
    """One worker per core the process may use, at most 4 (each holds a copy of the supernet and the data)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


@contextmanager
def single_thread():
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker(evaluator) -> None:
    import torch
    global _EVALUATOR
    torch.set_num_threads(1)
    _EVALUATOR = evaluator


def _timed(evaluator, genome) -> dict:
    t0 = time.perf_counter()
    record, _ = evaluator(genome)
    record["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _evaluate_in_worker(genome):
    return _timed(_EVALUATOR, genome)


class EvaluationPool:
    """map(genomes) -> records in input order; `workers` 1 evaluates in this process."""

    def __init__(self, evaluator: Callable, workers: int):
        self.evaluator, self.workers, self._pool = evaluator, max(1, int(workers)), None

    def imap(self, genomes: Iterable) -> Iterator[dict]:
        genomes = list(genomes)
        if self.workers == 1 or len(genomes) <= 1:
            with single_thread():
                for g in genomes:
                    yield _timed(self.evaluator, g)
            return
        if self._pool is None:
            # spawn, not fork: a forked child of a process that has run OpenMP regions can hang in libgomp
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(self.evaluator,))
        yield from self._pool.imap(_evaluate_in_worker, genomes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
