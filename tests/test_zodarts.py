"""ZO-DARTS+ and its baselines: sparsemax, temperature, the zeroth-order estimator, DARTS-2nd hypergradient,
discretisation, the search entry point (determinism, latency penalty, run folder)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.nn.sparsemax import sparsemax
from edgenas.search.zodarts import make_config, search_zodarts
from edgenas.search.zodarts_loop import (darts2_hypergradient, op_probabilities, sync_twin, temperature, unit_direction,
                                         zo_hypergradient)
from edgenas.train.retrain import retrain
from edgenas.search.zodarts_budget import Macro, cell_costs, derive_cell
from edgenas.spaces.nb201 import EDGES, OPS, Nb201Arch
from tests.tiny_settings import ZODARTS_TINY


# ------------------------------------------------------------------------------------------------ sparsemax
def simplex_projection_by_bisection(z: np.ndarray) -> np.ndarray:
    """argmin_{p in simplex} ||p - z||: find tau with sum(max(z - tau, 0)) = 1 by bisection (no sorting)."""
    lo, hi = z.min() - 1.0, z.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(z - mid, 0).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(z - 0.5 * (lo + hi), 0)


def test_sparsemax_is_the_simplex_projection_with_exact_zeros():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, generator=gen, dtype=torch.float64) * 2
    p = sparsemax(z, dim=1)
    assert torch.allclose(p.sum(1), torch.ones(200, dtype=torch.float64))
    assert torch.all(p >= 0)
    assert (p == 0).any(dim=1).float().mean() > 0.5  # exact zeros, not tiny values
    expected = np.stack([simplex_projection_by_bisection(row) for row in z.numpy()])
    assert np.allclose(p.numpy(), expected, atol=1e-10)
    # other dims, and the uniform / one-hot extremes
    assert torch.allclose(sparsemax(z.T, dim=0), p.T)
    assert torch.allclose(sparsemax(torch.zeros(1, 5)), torch.full((1, 5), 0.2))
    assert sparsemax(torch.tensor([[5.0, 0.0, 0.0]])).tolist() == [[1.0, 0.0, 0.0]]


def test_sparsemax_gradient_is_its_jacobian_and_skips_pruned_entries():
    z = torch.tensor([[1.2, 0.9, -1.0, 0.1, 1.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, dim=1), (z,))
    p = sparsemax(z, dim=1)
    v = torch.tensor([[1.0, -2.0, 5.0, 3.0, 0.5]], dtype=torch.float64)
    (g,) = torch.autograd.grad((p * v).sum(), z)
    support = (p > 0)[0]
    expected = torch.where(support, v[0] - v[0][support].mean(), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(g[0], expected)
    assert g[0][~support].abs().sum() == 0


def test_op_probabilities_per_method():
    alpha = torch.tensor([[3.0, 1.0, 0.0, -1.0, 0.5]] * len(EDGES))
    assert torch.allclose(op_probabilities(alpha, "zodarts"), F.softmax(alpha, dim=1))
    assert torch.allclose(op_probabilities(alpha, "darts2"), F.softmax(alpha, dim=1))
    assert torch.allclose(op_probabilities(alpha, "zodarts+", 2.0), sparsemax(alpha / 2.0, dim=1))
    # a lower temperature makes sparsemax sparser
    nnz = [int((op_probabilities(alpha, "zodarts+", t)[0] > 0).sum()) for t in (8.0, 1.0, 0.2)]
    assert nnz == sorted(nnz, reverse=True) and nnz[-1] == 1


def test_temperature_schedule():
    assert [temperature(e) for e in (0, 4, 5, 9, 10)] == [1.5, 1.5, 1.125, 1.125, 1.5 * 0.75 ** 2]
    assert temperature(39) == pytest.approx(1.5 * 0.75 ** 7) and temperature(39) == pytest.approx(0.2002, abs=1e-4)
    assert temperature(7, t0=2.0, decay=0.5, every=2) == 2.0 * 0.5 ** 3


# ------------------------------------------------------------------------------------------------ ZO estimator
class _Weights(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n, dtype=torch.float64))


def _sgd(module):
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=3e-4)


def _train_steps(module, opt, alpha, A, K):
    for _ in range(K):
        opt.zero_grad()
        (0.5 * torch.sum((module.w - A @ alpha) ** 2)).backward()
        opt.step()


def test_twin_with_zero_perturbation_follows_the_main_weights_exactly():
    """Copied weights + copied momentum + same optimiser: equal trajectories (the reference's fresh plain-momentum
    twin would drift even at mu = 0)."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(8, 30, generator=gen, dtype=torch.float64)
    alpha = torch.randn(30, generator=gen, dtype=torch.float64)
    main, twin = _Weights(8), _Weights(8)
    main_opt, twin_opt = _sgd(main), _sgd(twin)
    _train_steps(main, main_opt, alpha, A, 5)  # warm momentum buffer
    sync_twin(main, twin, main_opt, twin_opt)
    _train_steps(main, main_opt, alpha, A, 10)
    _train_steps(twin, twin_opt, alpha, A, 10)
    assert torch.equal(main.w, twin.w)
    # without the momentum copy the twin does not follow
    fresh = _Weights(8)
    fresh_opt = _sgd(fresh)
    with torch.no_grad():
        fresh.w.copy_(main.w)
    twin_opt2 = _sgd(twin)
    sync_twin(main, twin, main_opt, twin_opt2)
    _train_steps(main, main_opt, alpha, A, 3)
    _train_steps(twin, twin_opt2, alpha, A, 3)
    _train_steps(fresh, fresh_opt, alpha, A, 3)
    assert torch.equal(main.w, twin.w) and not torch.allclose(main.w, fresh.w)


def test_zo_estimator_mean_is_the_hypergradient_divided_by_d():
    """Bi-level quadratic toy: L_train = |w - A alpha|^2 / 2 (K Nesterov SGD steps from a warm state),
    L_val = |B w - b|^2 / 2 + c . alpha. The mean of s z over many unit directions equals grad F / d, d = 30,
    where F(alpha) = L_val(w_K(alpha), alpha) and grad F comes from central differences of F."""
    d, n_w, K, mu_rel, draws = 30, 8, 10, 0.005, 3000
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(n_w, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    B = torch.randn(5, n_w, generator=gen, dtype=torch.float64)
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    c = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    alpha = torch.randn(d, generator=gen, dtype=torch.float64)
    base = _Weights(n_w)
    base_opt = _sgd(base)
    _train_steps(base, base_opt, alpha, A, 3)
    main, twin = _Weights(n_w), _Weights(n_w)
    main_opt, twin_opt = _sgd(main), _sgd(twin)

    def w_after(a):
        sync_twin(base, main, base_opt, main_opt)
        _train_steps(main, main_opt, a, A, K)
        return main.w.detach().clone()

    def val_loss(w, a):
        return 0.5 * torch.sum((B @ w - b) ** 2) + c @ a

    h = 1e-5
    def objective(a):
        return val_loss(w_after(a), a)

    true = torch.stack([(objective(alpha + h * e) - objective(alpha - h * e)) / (2 * h)
                        for e in torch.eye(d, dtype=torch.float64)])
    w_k = w_after(alpha).requires_grad_(True)
    a_req = alpha.clone().requires_grad_(True)
    g_alpha, g_w = torch.autograd.grad(val_loss(w_k, a_req), [a_req, w_k])
    mu = mu_rel * float(alpha.norm())
    z_gen = torch.Generator().manual_seed(2)
    total = torch.zeros(d, dtype=torch.float64)
    for _ in range(draws):
        z = unit_direction(d, z_gen).double()
        sync_twin(base, twin, base_opt, twin_opt)
        _train_steps(twin, twin_opt, alpha + mu * z, A, K)
        total += zo_hypergradient(z, mu, g_alpha, [g_w], [w_k.detach()], [twin.w.detach()])
    mean = total / draws
    cosine = float(mean @ true / (mean.norm() * true.norm()))
    assert cosine > 0.9
    assert float(mean.norm() * d / true.norm()) == pytest.approx(1.0, abs=0.25)  # E[z z^T] = I / d


def test_unit_direction_is_on_the_sphere_and_seeded():
    a = unit_direction(30, torch.Generator().manual_seed(5))
    b = unit_direction(30, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and float(a.norm()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ DARTS 2nd order
class _ToyMixed(nn.Module):
    """Two mixed layers over three smooth ops, weights only (alpha enters through the probabilities)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 6).double()
        self.l2 = nn.Linear(6, 3).double()

    def forward(self, x, probs):
        acts = (torch.tanh, lambda t: t, torch.sin)
        h = self.l1(x)
        h = sum(probs[0, k] * f(h) for k, f in enumerate(acts))
        h = sum(probs[1, k] * f(h) for k, f in enumerate(acts))
        return self.l2(h)


def test_darts2_hypergradient_matches_the_exact_unrolled_gradient():
    torch.manual_seed(0)
    model = _ToyMixed()
    alpha = torch.randn(2, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    tr = (torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen))
    va = (torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen))
    lr, mom, wd = 0.1, 0.9, 3e-4
    bufs = [0.05 * torch.randn_like(p) for p in model.parameters()]
    probs_of = lambda a: F.softmax(a, dim=1)  # noqa: E731
    penalty = lambda a: 0.1 * (probs_of(a)[:, 0]).sum()  # noqa: E731
    before = [p.detach().clone() for p in model.parameters()]
    got = darts2_hypergradient(model, probs_of, alpha, tr, va, lr, mom, wd, bufs, eps=1e-3, penalty=penalty)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # weights untouched

    # exact: differentiate L_val(w'(alpha), alpha) with the unrolled step inside the graph
    from torch.func import functional_call
    names = [n for n, _ in model.named_parameters()]
    a = alpha.clone().requires_grad_(True)
    w = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    l_tr = F.cross_entropy(functional_call(model, dict(zip(names, w)), (tr[0], probs_of(a))), tr[1])
    g_tr = torch.autograd.grad(l_tr, w, create_graph=True)
    w_next = [t - lr * (g + wd * t + mom * bb) for t, g, bb in zip(w, g_tr, bufs)]
    l_val = F.cross_entropy(functional_call(model, dict(zip(names, w_next)), (va[0], probs_of(a))), va[1]) + penalty(a)
    (exact,) = torch.autograd.grad(l_val, a)
    assert torch.allclose(got, exact, rtol=1e-4, atol=1e-8)
    # and it is not the first-order gradient
    a1 = alpha.clone().requires_grad_(True)
    first = torch.autograd.grad(F.cross_entropy(model(va[0], probs_of(a1)), va[1]) + penalty(a1), a1)[0]
    assert not torch.allclose(first, exact, rtol=1e-3)


# ------------------------------------------------------------------------------------------------ discretisation
def test_discretise_is_per_edge_argmax():
    alpha = torch.full((len(EDGES), len(OPS)), -1.0)
    picks = [3, 3, 4, 1, 3, 1]
    alpha[torch.arange(len(EDGES)), torch.tensor(picks)] = 2.0
    derived = derive_cell(F.softmax(alpha, dim=1), alpha)
    assert derived.arch == derived.argmax == Nb201Arch.from_indices(picks) and derived.reason == "argmax"
    arch = derived.arch
    assert arch.to_string() == ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
                                "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")


def test_discretise_repairs_a_disconnected_cell_with_the_most_likely_edge():
    alpha = torch.zeros(len(EDGES), len(OPS))
    alpha[:, 0] = 5.0                  # every edge prefers none
    alpha[3, 2] = 4.0                  # 3<-0 conv1x1 is the strongest real op
    alpha[0, 3] = 3.0
    derived = derive_cell(F.softmax(alpha, dim=1), alpha)
    assert derived.reason == "connectivity" and derived.rank == 0
    assert derived.arch.to_string() == "|none~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|"
    with pytest.raises(EdgenasError, match="shape"):
        derive_cell(torch.zeros(5, 5), torch.zeros(5, 5))


# ------------------------------------------------------------------------------------------------ entry point
@pytest.mark.parametrize("method", ["zodarts+", "zodarts", "darts1", "darts2"])
def test_every_method_runs_and_is_deterministic(toy_data, method):
    a = search_zodarts(toy_data, method=method, epochs=2, seed=3, **ZODARTS_TINY)
    b = search_zodarts(toy_data, method=method, epochs=2, seed=3, **ZODARTS_TINY)
    assert a.genotype == b.genotype and a.alpha == b.alpha and a.retrain == b.retrain
    assert Nb201Arch.parse(a.genotype).is_connected()
    assert len(a.epoch_seconds) == 2 and all(s > 0 for s in a.epoch_seconds)
    assert len(a.probabilities) == 2 and np.allclose(np.sum(a.probabilities[-1], axis=1), 1.0)
    steps = 80 // 16  # per epoch: 80 weight samples (half of the train split), batch 16
    # zeroth order: one update per full window of 2 steps, the partial window at the epoch end is dropped
    assert a.alpha_updates == 2 * (steps // 2 if method.startswith("zodarts") else steps)
    assert a.temperatures == ([1.5, 1.5] if method == "zodarts+" else [1.0, 1.0])
    assert 0.0 <= a.retrain["test_accuracy"] <= 1.0 and len(a.retrain["test_accuracy_per_exit"]) == 3
    assert not a.net.training
    c = search_zodarts(toy_data, method=method, epochs=2, seed=4, **ZODARTS_TINY)
    assert c.alpha != a.alpha


def test_retraining_learns_and_evaluates_in_eval_mode(toy_data):
    from edgenas.spaces.nb201 import EXAMPLE, build_early_exit_net
    torch.manual_seed(0)
    net = build_early_exit_net(EXAMPLE, 4, 1, 8, C=4, N=1)
    out = retrain(net, toy_data, make_config(C=4, N=1, resolution=8, retrain_epochs=3, retrain_batch_size=16).retrain_config(),
                  seed=0)
    assert not net.training
    assert out["test_accuracy"] == out["test_accuracy_per_exit"][-1] >= 0.9
    assert out["train_loss"][-1] < out["train_loss"][0]


def test_budget_multipliers_keep_the_expected_cell_within_the_budget(toy_data):
    from edgenas.targets import load_target, target_with_budgets
    # cortex-m4: its fitted fp32 model is per kind (cortex-m7's is MACs-only, where a skip costs nothing)
    target = load_target("cortex-m4")
    costs = cell_costs(Macro(4, 1, 8), target, 1, 4)
    for row in costs.table["latency_s"]:
        none, skip, c1, c3, pool = row
        assert none == 0.0 and 0.0 < skip and c1 < c3 and pool < c3
    # a latency budget just above the uniform cell's: the macro fits, a search that drifts to 3x3 convs does not
    budget_ms = 1.02e3 * costs.uniform()["latency_s"]
    tight = target_with_budgets(target, latency=f"{budget_ms}ms")
    common = dict(method="darts1", epochs=2, seed=1, arch_lr=0.05, target=tight, **ZODARTS_TINY)
    plain = search_zodarts(toy_data, penalty_step=0.0, **common)
    held = search_zodarts(toy_data, penalty_step=5.0, **common)
    assert plain.config["expected_over_budget"][-1]["latency_s"] > 1.0
    assert all(m["latency_s"] == 0.0 for m in plain.config["multipliers"])
    assert held.config["multipliers"][0]["latency_s"] > 0.0
    assert held.config["expected_over_budget"][-1]["latency_s"] < plain.config["expected_over_budget"][-1]["latency_s"]
    # whatever the search did, the derived cell fits
    for res in (plain, held):
        assert not res.violations and res.cost["latency_worst_s"] <= budget_ms / 1e3


def test_target_budgets_are_met_by_the_derived_network(toy_data):
    from edgenas.targets import load_target, target_with_budgets
    res = search_zodarts(toy_data, method="zodarts+", epochs=1, seed=0, target="cortex-m7", **ZODARTS_TINY)
    # costed as deployed: the exit policy kept what its guard certifies (on 64 validation images, no exit)
    assert res.cost["n_exits"] == res.exits["n_exits"] and res.violations == {}
    assert res.config["macro_choice"].startswith("C=4 N=1 resolution=8: uniform cell latency")
    tight = target_with_budgets(load_target("cortex-m7"), latency="0.01ms", flash="1KB")
    with pytest.raises(EdgenasError, match="no zodarts macro with --C 4, --N 1, --resolution 8 fits cortex-m7"):
        search_zodarts(toy_data, method="zodarts+", epochs=1, seed=0, target=tight, **ZODARTS_TINY)


def test_run_folder_is_written_and_reloads(toy_data, tmp_path):
    out = tmp_path / "run"
    res = search_zodarts(toy_data, method="zodarts+", epochs=1, seed=0, out_dir=out, **ZODARTS_TINY)
    summary = json.loads((out / "result.json").read_text())
    assert summary["genotype"] == res.genotype and summary["config"]["method"] == "zodarts+"
    assert json.loads((out / "pareto.json").read_text()) == {"members": [0]}
    from edgenas.search.runfolder import load_candidate
    net, record, _ = load_candidate(out)  # the path `edgenas export` takes
    assert record["id"] == 0 and net.n_exits == record.get("n_exits", 1) == res.net.n_exits
    assert list(net.thresholds) == pytest.approx(record["thresholds"])
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(net(x)[0], res.net(x)[0])
    with pytest.raises(EdgenasError, match="not empty"):
        search_zodarts(toy_data, method="zodarts+", epochs=1, seed=0, out_dir=out, **ZODARTS_TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left behind


def test_bad_settings_are_rejected(toy_data):
    with pytest.raises(EdgenasError, match="unknown zodarts method"):
        search_zodarts(toy_data, method="enas", epochs=1)
    with pytest.raises(EdgenasError, match="unknown zodarts setting"):
        search_zodarts(toy_data, epochs=1, windw=3)
    with pytest.raises(EdgenasError, match="multiple of 4"):
        search_zodarts(toy_data, epochs=1, resolution=10)
    with pytest.raises(EdgenasError, match="epochs"):
        search_zodarts(toy_data, epochs=0)
