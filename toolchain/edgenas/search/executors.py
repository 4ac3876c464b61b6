"""Where independent jobs (candidate evaluations, member fine-tunings) run: one interface, two engines.

    with open_executor(ExecutorConfig("ray", workers=2), evaluator, device) as ex:
        for record in ex.imap(genomes):   # in input order, each as soon as it and the ones before it are done
            ...

- `local`: worker processes on this machine (spawn, not fork: a forked child of a process that has run OpenMP
  regions can hang in libgomp). A worker that dies (killed, out of memory) breaks the pool: the pool is rebuilt and
  the jobs without a result are submitted again, at most MAX_ATTEMPTS times each.
- `ray`: Ray tasks, on a cluster (`address` "auto" or HOST:PORT) or on a Ray instance started here. The job callable
  (the evaluator, holding the supernet and the data) is put in the object store once and each worker process
  deserialises it once (not per task); each task asks for one CPU and, on a GPU device, a share of the GPUs. A task
  whose worker dies is retried by Ray (max_retries), so an evaluated candidate is never lost.

Every job runs with runtime.WORKER_THREADS (one) intra-op thread, in a worker or in this process: a record does not
depend on the engine, the number of workers or the cores, so the same seed gives the same archive everywhere. Records
come back in input order, which is what the archive appends.

Workers write nothing: a member job's record carries its checkpoint back (search.finetune.CHECKPOINT) and this
process writes the run folder, so the nodes of a Ray cluster need no shared filesystem.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from edgenas import runtime
from edgenas.errors import EdgenasError

EXECUTORS = ("local", "ray")
MAX_ATTEMPTS = 3     # a job whose worker died this many times fails the search (it is not the machine: it is the job)
MAX_WORKERS = 4      # default cap: each worker holds a copy of the supernet and the data


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"
    workers: int | None = None     # None: one per core this process may use, at most MAX_WORKERS
    address: str | None = None     # ray: "auto", HOST:PORT, or None to start a Ray instance on this machine

    def validate(self) -> "ExecutorConfig":
        if self.kind not in EXECUTORS:
            raise EdgenasError(f"unknown --executor '{self.kind}'", "use local or ray")
        if self.workers is not None and self.workers < 1:
            raise EdgenasError(f"--workers must be at least 1, got {self.workers}", "e.g. --workers 2")
        if self.address is not None and self.kind != "ray":
            raise EdgenasError("--ray-address applies to --executor ray only", "add --executor ray, or drop --ray-address")
        if self.kind == "ray":
            try:
                import ray  # noqa: F401 (only whether it imports)
            except ImportError:
                raise EdgenasError("--executor ray needs Ray, which is not installed",
                                   "pip install 'edgenas[ray]'") from None
        return self

    @property
    def n_workers(self) -> int:
        return self.workers or max(1, min(runtime.cpu_count(), MAX_WORKERS))


def timed_record(job_fn: Callable, job) -> dict:
    """job_fn(job) -> (record, anything); the record with the job's wall time (a field archive comparisons ignore)."""
    t0 = time.perf_counter()
    record, _ = job_fn(job)
    record["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return record


def open_executor(config: ExecutorConfig, job_fn: Callable, device: str = "cpu"):
    """An executor (a context manager with imap and close) running `job_fn` on `config`'s engine."""
    config = config.validate()
    if config.kind == "ray":
        return RayExecutor(job_fn, config.n_workers, config.address, device)
    return LocalExecutor(job_fn, config.n_workers)


# ------------------------------------------------------------------------------------------------ local
_JOB_FN = None


def _init_worker(job_fn) -> None:
    import torch
    global _JOB_FN
    torch.set_num_threads(runtime.WORKER_THREADS)
    _JOB_FN = job_fn


def _run_in_worker(job):
    return timed_record(_JOB_FN, job)


class LocalExecutor:
    """Worker processes on this machine; `workers` 1 runs the jobs in this process."""

    def __init__(self, job_fn: Callable, workers: int):
        self.job_fn, self.workers, self._pool = job_fn, max(1, int(workers)), None

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.job_fn,))
        return self._pool

    def imap(self, jobs: Iterable) -> Iterator[dict]:
        jobs = list(jobs)
        if self.workers == 1 or len(jobs) <= 1:
            with runtime.torch_threads(runtime.WORKER_THREADS):
                for job in jobs:
                    yield timed_record(self.job_fn, job)
            return
        futures = [self._start().submit(_run_in_worker, job) for job in jobs]
        attempts = [1] * len(jobs)
        for i in range(len(jobs)):
            while True:
                try:
                    yield futures[i].result()
                    break
                except BrokenProcessPool:
                    # a worker died: every job without a result is lost with the pool; rebuild it and resubmit them
                    self.close()
                    for j in range(i, len(jobs)):
                        if futures[j].done() and futures[j].exception() is None:
                            continue
                        if attempts[j] >= MAX_ATTEMPTS:
                            raise EdgenasError(f"worker processes died {MAX_ATTEMPTS} times while running job {j + 1} "
                                               f"of {len(jobs)} (killed, or out of memory)",
                                               "free memory or lower --workers, then --resume") from None
                        attempts[j] += 1
                        futures[j] = self._start().submit(_run_in_worker, jobs[j])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------ ray
_RAY_JOB_FNS: dict = {}  # in a Ray worker: object-store id -> the deserialised job callable (one at a time)


def _ray_run(holder: list, job, device: str) -> dict:
    """A Ray task. `holder` wraps the job callable's ObjectRef in a list so that Ray does not resolve (deserialise)
    it for every task: the worker process fetches it once and keeps it."""
    import ray
    import torch
    ref = holder[0]
    job_fn = _RAY_JOB_FNS.get(ref.hex())
    if job_fn is None:
        torch.set_num_threads(runtime.WORKER_THREADS)
        job_fn = ray.get(ref)
        if hasattr(job_fn, "device"):
            job_fn.device = device  # Ray exposes the GPU it assigned as the process's first visible one
        _RAY_JOB_FNS.clear()
        _RAY_JOB_FNS[ref.hex()] = job_fn
    return timed_record(job_fn, job)


class RayExecutor:
    """Ray tasks, at most `workers` in flight; starts (and stops) a Ray instance here unless one is initialised or
    `address` names a cluster."""

    def __init__(self, job_fn: Callable, workers: int, address: str | None = None, device: str = "cpu"):
        import ray
        self.workers, self._owns_ray = max(1, int(workers)), False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                             logging_level="ERROR", configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EdgenasError(f"cannot connect to Ray at {address or 'a new local instance'} "
                                   f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                                   "start a cluster with `ray start --head`, or check --ray-address") from None
            self._owns_ray = True
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if runtime.is_cuda(device) and gpus == 0:
            self.close()
            raise EdgenasError(f"--device {device} with --executor ray, but the Ray cluster has no GPU",
                               "use --device cpu, or add GPU nodes to the cluster")
        # the workers share the cluster's GPUs evenly, one GPU at most each
        num_gpus = min(1.0, gpus / self.workers) if runtime.is_cuda(device) else 0
        self._device = "cuda:0" if runtime.is_cuda(device) else "cpu"
        self._ref = ray.put(job_fn)
        self._task = ray.remote(_ray_run).options(num_cpus=1, num_gpus=num_gpus, max_retries=MAX_ATTEMPTS - 1,
                                                  retry_exceptions=False)

    def imap(self, jobs: Iterable) -> Iterator[dict]:
        import ray
        jobs = list(jobs)
        refs: list = []
        running: set = set()

        def submit() -> None:
            refs.append(self._task.remote([self._ref], jobs[len(refs)], self._device))
            running.add(refs[-1])

        while len(refs) < min(self.workers, len(jobs)):
            submit()
        for i in range(len(jobs)):
            # keep `workers` tasks running while waiting for the next one in order
            while refs[i] in running:
                ready, _ = ray.wait(list(running), num_returns=1)
                running.difference_update(ready)
                while len(running) < self.workers and len(refs) < len(jobs):
                    submit()
            try:
                record = ray.get(refs[i])
            except ray.exceptions.RayError as exc:
                raise EdgenasError(f"Ray could not run job {i + 1} of {len(jobs)} after {MAX_ATTEMPTS} attempts "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                                   "check the cluster (`ray status`), then --resume") from None
            refs[i] = None  # the object store may free the result
            yield record

    def close(self) -> None:
        import ray
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
