"""ZO-DARTS+ on a device (edgenas.runtime): the device code path, exercised here on the CPU through the same
`device` argument, is today's search and retraining bit for bit; a run records where it trained, trains with
runtime.JOB_THREADS intra-op threads and hands back a net on the CPU. On a machine with a GPU, the CUDA path runs too."""
import json
from contextlib import contextmanager

import pytest
import torch

from edgenas import runtime
from edgenas.search.zodarts import make_config, search_zodarts
from edgenas.search.zodarts_loop import run_search_loop
from edgenas.train.retrain import retrain
from edgenas.search.zodarts_budget import Macro, cell_costs
from edgenas.spaces.nb201 import EXAMPLE, build_early_exit_net
from edgenas.ui import QuietUI
from tests.tiny_settings import ZODARTS_TINY


def _history(h: dict) -> dict:
    return {k: v for k, v in h.items() if k != "epoch_seconds"}  # wall time, the one field a rerun changes


def _on_cpu(net) -> bool:
    return all(t.device.type == "cpu" for t in [*net.parameters(), *net.buffers()])


@pytest.mark.parametrize("method", ["zodarts+", "darts2"])
def test_search_loop_on_an_explicit_cpu_device_is_the_default_bit_for_bit(toy_data, method):
    cfg = make_config(method=method, epochs=1, **ZODARTS_TINY)
    assert _history(run_search_loop(toy_data, cfg, 3, device="cpu")) == _history(run_search_loop(toy_data, cfg, 3))


def test_budget_penalty_follows_the_device_and_is_the_default_bit_for_bit(toy_data):
    from edgenas.targets import load_target
    costs = cell_costs(Macro(4, 1, 8), load_target("cortex-m7"), 1, 4)
    limits = {"latency_s": 0.8 * costs.uniform()["latency_s"]}  # over budget from the start: the penalty turns on
    cfg = make_config(method="darts1", epochs=1, penalty_step=5.0, **ZODARTS_TINY)
    explicit = run_search_loop(toy_data, cfg, 1, costs, limits, device="cpu")
    assert _history(explicit) == _history(run_search_loop(toy_data, cfg, 1, costs, limits))
    assert explicit["multipliers"][-1]["latency_s"] > 0.0


def _retrained(data, **device):
    torch.manual_seed(0)
    net = build_early_exit_net(EXAMPLE, 4, 1, 8, C=4, N=1)
    out = retrain(net, data, make_config(C=4, N=1, resolution=8, retrain_epochs=1, retrain_batch_size=16).retrain_config(), seed=0,
                  **device)
    return net, out


def test_retrain_on_an_explicit_cpu_device_is_the_default_and_ends_on_the_cpu(toy_data):
    (net_a, out_a), (net_b, out_b) = _retrained(toy_data), _retrained(toy_data, device="cpu")
    assert out_a == out_b
    a, b = net_a.state_dict(), net_b.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _on_cpu(net_b) and not net_b.training


class _ThreadsUI(QuietUI):
    """Records torch's intra-op thread count at every task start and progress step."""

    def __init__(self):
        self.threads = []

    @contextmanager
    def task(self, description: str, total: int | None):
        self.threads.append(torch.get_num_threads())
        yield lambda message="": self.threads.append(torch.get_num_threads())


def test_search_records_its_device_and_trains_with_the_job_threads(toy_data, tmp_path):
    before, ui = torch.get_num_threads(), _ThreadsUI()
    res = search_zodarts(toy_data, method="zodarts+", epochs=1, seed=0, out_dir=tmp_path / "run", ui=ui,
                         device="cpu", **ZODARTS_TINY)
    assert res.config["device"] == "cpu" and res.to_dict()["config"]["device"] == "cpu"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cpu"
    # search, retraining and exit fitting: one job, JOB_THREADS threads; the caller's count is restored after
    assert len(ui.threads) >= 3 and set(ui.threads) == {runtime.JOB_THREADS}
    assert torch.get_num_threads() == before
    assert _on_cpu(res.net)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_search_and_retrain_run_on_the_gpu_and_hand_back_cpu_results(toy_data):
    device = runtime.resolve_device("cuda")
    runtime.use_deterministic_kernels(device)
    cfg = make_config(method="zodarts+", epochs=1, **ZODARTS_TINY)
    a, b = run_search_loop(toy_data, cfg, 3, device=device), run_search_loop(toy_data, cfg, 3, device=device)
    assert a["alpha_updates"] == run_search_loop(toy_data, cfg, 3)["alpha_updates"]
    # the same seed: the same result up to the last bits of CUDA's atomic accumulations (runtime docstring)
    assert torch.allclose(torch.tensor(a["alpha"]), torch.tensor(b["alpha"]), atol=1e-4)
    net, out = _retrained(toy_data, device=device)
    assert _on_cpu(net) and 0.0 <= out["test_accuracy"] <= 1.0
    res = search_zodarts(toy_data, method="darts1", epochs=1, seed=0, target="cortex-m7", device=device, **ZODARTS_TINY)
    assert res.config["device"] == device and _on_cpu(res.net) and res.violations == {}
