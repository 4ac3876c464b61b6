"""Executors (search/executors.py): the local pool and Ray give the archive of the uninterrupted local run byte for
byte (timing fields aside), also when a worker is killed in the middle of an evaluation; Ray without its extra is a
one-line error."""
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.search.executors import ExecutorConfig, LocalExecutor
from tests.tiny_settings import TINY, VOLATILE


def stable_lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in path.read_text().splitlines()]


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process this user can see."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(next(line.split()[1] for line in (entry / "status").read_text().splitlines()
                            if line.startswith("PPid:")))
        except (OSError, StopIteration, ValueError):
            continue
        out.append((int(entry.name), ppid, cmdline))
    return out


class WorkerKiller(threading.Thread):
    """Once the archive holds a record (the search is under way), SIGKILL one worker process that `busy(pid, ppid,
    cmdline)` says is evaluating a candidate; `killed` says whether it did."""

    def __init__(self, archive: Path, busy):
        super().__init__(daemon=True)
        self.archive, self.busy, self.killed, self.stop = archive, busy, None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            if self.archive.is_file() and self.archive.stat().st_size:
                victims = [p for p in processes() if self.busy(*p)]
                if victims:
                    os.kill(victims[0][0], signal.SIGKILL)
                    self.killed = victims[0]
                    return
            time.sleep(0.05)


def search_with_killer(tiny_run, out: Path, busy, **executor) -> WorkerKiller:
    """Search tiny_run's settings again in `out` from its supernet (so every candidate is evaluated anew), killing a
    worker after the first record; returns the killer."""
    out.mkdir()
    shutil.copy(tiny_run[0] / "supernet.pt", out / "supernet.pt")
    shutil.copy(tiny_run[0] / "config.json", out / "config.json")
    killer = WorkerKiller(out / "archive.jsonl", busy)
    killer.start()
    try:
        api.search(config=TINY, out=out, seed=0, resume=True, **executor)
    finally:
        killer.stop.set()
        killer.join()
    return killer


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("archive.jsonl", "finetuned.jsonl"):
        assert stable_lines(a / name) == stable_lines(b / name), name
    assert json.loads((a / "pareto.json").read_text()) == json.loads((b / "pareto.json").read_text())


def test_local_pool_rebuilds_itself_when_a_worker_is_killed_mid_job(tmp_path):
    """SIGKILL a worker while it runs a job: the pool is rebuilt, the lost jobs run again, and every record comes
    back once, in input order."""
    from tests.executor_jobs import MarkedSleep
    killed = []

    def kill_first_started() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            started = sorted(tmp_path.glob("started-*"))
            if started:
                pid = int(started[0].name.split("-")[2])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_started, daemon=True)
    with LocalExecutor(MarkedSleep(str(tmp_path), 0.5), 2) as pool:
        killer.start()
        records = list(pool.imap(range(6)))
    killer.join()
    assert killed, "no worker was seen to start a job"
    assert [r["job"] for r in records] == list(range(6))
    assert killed[0] not in {r["pid"] for r in records}


@pytest.fixture(scope="module")
def local_ray(in_ci):
    """A Ray head on 127.0.0.1 with 2 CPUs, started in this process and shut down after the module. Ray is in the
    test extra: in CI a missing or broken Ray fails here instead of skipping."""
    ray = __import__("ray") if in_ci else pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.e2e
def test_ray_gives_the_local_archive_and_retries_a_killed_worker(local_ray, tiny_run, tmp_path):
    """Two Ray workers, one killed while it evaluates a candidate (Ray names a busy worker process after its task):
    the task is retried and the run folder is the local executor's, byte for byte but for timing fields."""
    killer = search_with_killer(tiny_run, tmp_path / "run", lambda pid, ppid, cmd: cmd.startswith("ray::_ray_run"),
                                executor="ray", workers=2)
    assert killer.killed is not None, "no busy Ray worker was seen to kill"
    assert_same_run(tmp_path / "run", tiny_run[0])


class Echo:
    def __call__(self, job):
        return {"job": job, "pid": os.getpid()}, None


def test_one_local_worker_runs_the_jobs_here_in_order():
    """(Several workers, in input order, are what the archive comparisons above check.)"""
    with LocalExecutor(Echo(), 1) as pool:
        records = list(pool.imap(range(7)))
    assert [r["job"] for r in records] == list(range(7))
    assert all("eval_seconds" in r for r in records)
    assert {r["pid"] for r in records} == {os.getpid()}


def test_ray_without_the_extra_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = cli_main(["search", "--out", str(tmp_path / "r"), "--dataset", "digits", "--executor", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "edgenas[ray]" in err[0], err
    assert not (tmp_path / "r").exists()


def test_executor_config_defaults_to_the_local_pool():
    assert ExecutorConfig().validate().kind == "local"
    assert ExecutorConfig(workers=3).n_workers == 3
