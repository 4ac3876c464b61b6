"""Exit rule, NACHOS loss (both regularisers), threshold choice and expected-cost accounting."""
import numpy as np
import pytest
import torch
from torch import nn

from edgenas import cost
from edgenas.nn.early_exit import EarlyExitNet, exit_decisions, truncate_after
from edgenas.stats import accuracy_interval, clopper_pearson_lower, clopper_pearson_upper
from edgenas.targets import load_target
from edgenas.train.exits import (ExitTrainingConfig, cost_regulariser, exit_probabilities, nachos_loss,
                                 train_exit_heads, train_final_head)
from edgenas.train.thresholds import apply_policy, choose_policy, exit_loss_upper_bound, path_costs


class CountingSegment(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return torch.relu(self.conv(x))


def head(c, n_out):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))


def tiny_net(thresholds=(0.5, 0.5), n_classes=4):
    torch.manual_seed(0)
    segs = [CountingSegment(1, 4), CountingSegment(4, 6), CountingSegment(6, 8)]
    heads = [head(4, n_classes + 1), head(6, n_classes + 1), head(8, n_classes)]
    return EarlyExitNet(segs, heads, n_classes, (1, 8, 8), thresholds).eval()


def test_eager_forward_matches_vectorised_rule_and_skips_work():
    net = tiny_net((0.45, 0.6))
    with torch.no_grad():
        for scale in (1.0, 5.0, 30.0):  # bias the confidence logits to exercise every exit
            for h in net.heads[:2]:
                h[-1].bias.data[-1] = np.log(scale) - 1.0
            x = torch.randn(64, 1, 8, 8) * scale
            logits_all, conf = net.forward_all(x)
            expect = exit_decisions(conf, net.thresholds)
            for s in net.segments:
                s.seen = 0
            logits, taken = net(x)
            assert torch.equal(taken, expect)
            for i in range(3):
                sel = taken == i
                assert torch.allclose(logits[sel], logits_all[i][sel], atol=1e-6)
            # a later segment only sees the samples that did not leave before it
            assert net.segments[1].seen == int((taken >= 1).sum())
            assert net.segments[2].seen == int((taken >= 2).sum())


def test_exit_decisions_cumulative_rule_by_hand():
    conf = torch.tensor([[0.8, 0.1], [0.3, 0.3], [0.1, 0.1]])
    # 1 - survival: row0 [0.8, 0.82], row1 [0.3, 0.51], row2 [0.1, 0.19]
    assert exit_decisions(conf, [0.7, 0.5]).tolist() == [0, 1, 2]
    assert exit_decisions(conf, [0.9, 0.85]).tolist() == [2, 2, 2]


def test_exit_probabilities_sum_to_one_and_follow_the_product_rule():
    conf = torch.tensor([[0.2, 0.5], [0.9, 0.0]])
    p = exit_probabilities(conf)
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert torch.allclose(p[0], torch.tensor([0.2, 0.8 * 0.5, 0.8 * 0.5]))


def test_cost_regulariser_gradient_reaches_the_confidence_heads():
    torch.manual_seed(0)
    feats = torch.randn(32, 6)
    conf_heads = nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 1)])
    costs = torch.tensor([1.0, 2.0, 4.0])
    budget = 2.0

    def expected_cost():
        conf = torch.cat([torch.sigmoid(h(feats)) for h in conf_heads], dim=1)
        return cost_regulariser(exit_probabilities(conf), costs, budget)

    loss = expected_cost()
    assert loss.item() > 0  # budget binds: the final exit alone costs 4
    loss.backward()
    for h in conf_heads:
        assert h.weight.grad is not None and h.weight.grad.abs().sum() > 0
    with torch.no_grad():  # a small step against the gradient lowers the expected cost
        for h in conf_heads:
            for p in h.parameters():
                p -= 0.5 * p.grad
    assert expected_cost().item() < loss.item()


def test_nachos_loss_with_all_terms_is_finite_and_differentiable():
    torch.manual_seed(0)
    logits = [torch.randn(16, 4, requires_grad=True) for _ in range(3)]
    conf = torch.rand(16, 2, requires_grad=True)
    y = torch.randint(0, 4, (16,))
    support = torch.rand(4, 3)
    loss = nachos_loss(logits, conf, y, torch.tensor([1.0, 2.0, 3.0]), 1.5, support, ExitTrainingConfig())
    loss.backward()
    assert torch.isfinite(loss) and conf.grad.abs().sum() > 0


def test_trained_heads_become_confident_where_they_are_right():
    net = tiny_net()
    torch.manual_seed(1)
    n = 256
    y = torch.randint(0, 4, (n,))
    # exit-0 features carry the label for half the samples (easy ones), noise for the rest
    easy = torch.arange(n) < n // 2
    f0 = torch.randn(n, 4, 8, 8) * 0.1
    f0[easy, y[easy]] += 3.0
    feats = [f0, torch.randn(n, 6, 8, 8), torch.randn(n, 8, 8, 8)]
    train_exit_heads(net, feats, y, [1.0, 2.0, 3.0], None, ExitTrainingConfig(epochs=60, support_from_epoch=30), seed=0)
    with torch.no_grad():
        c0 = torch.sigmoid(net.heads[0](f0)[:, 4])
    assert c0[easy].mean() > c0[~easy].mean() + 0.3


def test_final_head_refit_learns_the_features_and_leaves_the_rest_alone():
    net = tiny_net()
    torch.manual_seed(2)
    n = 256
    y = torch.randint(0, 4, (n,))
    f_final = torch.randn(n, 8, 8, 8) * 0.1
    f_final[torch.arange(n), y] += 2.0  # the label is in the channel means: a linear head can read it
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def accuracy():
        with torch.no_grad():
            return float((net.heads[-1](f_final)[:, :4].argmax(1) == y).float().mean())
    acc0 = accuracy()
    losses = train_final_head(net, f_final, y, ExitTrainingConfig(final_head_epochs=40, final_head_lr=5e-2), seed=0)
    assert losses[-1] < losses[0] and accuracy() > max(acc0, 0.9)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("heads.2.") for k in changed)  # backbone and exit heads untouched
    assert train_final_head(net, f_final, y, ExitTrainingConfig(final_head_epochs=0), seed=0) == []


def test_path_costs_count_every_head_evaluated_before_the_exit():
    backbone = [10.0, 25.0, 40.0]
    heads = [2.0, 3.0, 1.0]
    assert path_costs(backbone, heads, [True, True]).tolist() == [12.0, 30.0, 46.0]
    # a disabled head costs nothing on any path
    assert path_costs(backbone, heads, [False, True]).tolist() == [10.0, 28.0, 44.0]


def test_choose_policy_prefers_the_cheapest_combination_within_the_loss_bound():
    rng = np.random.default_rng(0)
    n = 1200  # enough images that zero harmful flips certify a <= 1 pt loss (bound 0.31 %)
    y = rng.integers(0, 3, n)
    preds = np.stack([y, y, y], axis=1).copy()
    hard = np.arange(n) >= 900
    preds[hard, 0] = (y[hard] + 1) % 3         # exit 0 is wrong on the hard quarter
    conf = np.zeros((n, 2))
    conf[~hard, 0] = 0.95                      # ... and knows it
    conf[hard, 0] = 0.05
    conf[:, 1] = 0.9
    policy = choose_policy(preds, conf, y, [10, 20, 30], [1, 1, 1], max_accuracy_drop=0.01)
    assert policy.accuracy == 1.0 and policy.harmful_flips == 0
    assert policy.active[0] and policy.exit_rates[0] == pytest.approx(0.75)
    taken = apply_policy(preds, conf, policy.active, policy.thresholds)
    assert (taken[~hard] == 0).all() and (taken[hard] > 0).all()
    # expected cost accounts the exit-0 head on every path
    assert policy.expected_cost == pytest.approx(float(np.bincount(taken, minlength=3) / n
                                                       @ path_costs([10, 20, 30], [1, 1, 1], policy.active)))


def test_clopper_pearson_bounds_match_hand_computed_values():
    from scipy.stats import binom, binomtest
    # k = 0 and k = n have closed forms: (1 - u)^n = alpha and l^n = alpha
    assert clopper_pearson_upper(0, 360, 0.025) == pytest.approx(1 - 0.025 ** (1 / 360), rel=1e-9)
    assert clopper_pearson_upper(0, 360, 0.025) == pytest.approx(0.01019, abs=1e-5)   # the 1.02 % of the docs
    assert clopper_pearson_lower(360, 360, 0.025) == pytest.approx(0.025 ** (1 / 360), rel=1e-9)
    assert clopper_pearson_lower(0, 360, 0.025) == 0.0 and clopper_pearson_upper(360, 360, 0.025) == 1.0
    # otherwise the bound is where the binomial tail equals alpha
    assert binom.cdf(3, 360, clopper_pearson_upper(3, 360, 0.025)) == pytest.approx(0.025, rel=1e-6)
    assert binom.sf(1, 360, clopper_pearson_lower(2, 360, 0.025)) == pytest.approx(0.025, rel=1e-6)
    ci = binomtest(331, 360).proportion_ci(0.95, method="exact")
    assert accuracy_interval(331 / 360, 360) == pytest.approx([ci.low, ci.high], rel=1e-9)
    # the paired loss bound: Bonferroni split of delta, the beneficial flips' lower bound subtracted
    assert exit_loss_upper_bound(3, 2, 360, 0.05) == pytest.approx(
        clopper_pearson_upper(3, 360, 0.025) - clopper_pearson_lower(2, 360, 0.025), rel=1e-12)


def one_exit_case(n: int, harmful: int, fires: int):
    """Two exits: the final exit is always right; exit 0 fires (confidence 0.95) on the first `fires` samples and is
    wrong on `harmful` of them."""
    y = np.arange(n) % 3
    preds = np.stack([y, y], axis=1).copy()
    preds[:harmful, 0] = (y[:harmful] + 1) % 3
    conf = np.full((n, 1), 0.05)
    conf[:fires, 0] = 0.95
    return preds, conf, y


def test_guard_rejects_a_policy_that_passes_a_raw_one_point_floor_by_noise():
    preds, conf, y = one_exit_case(360, harmful=3, fires=180)
    exit_policy_accuracy = 1 - 3 / 360
    assert 1.0 - exit_policy_accuracy < 0.01                         # the old raw floor accepted it ...
    assert exit_loss_upper_bound(3, 0, 360, 0.05) > 0.02              # ... but the loss may well exceed 2 pt
    policy = choose_policy(preds, conf, y, [10, 30], [1, 1], max_accuracy_drop=0.01)
    assert policy.active == (False,) and policy.loss_upper_bound == 0.0 and policy.accuracy == 1.0
    # with 360 images even a flawless exit cannot certify 1 pt at delta 0.05 (bound 1.02 %); 2 pt it can
    clean = one_exit_case(360, harmful=0, fires=180)
    assert choose_policy(*clean, [10, 30], [1, 1], max_accuracy_drop=0.01).active == (False,)
    assert choose_policy(*clean, [10, 30], [1, 1], max_accuracy_drop=0.02).active == (True,)


def test_guard_accepts_a_clean_exit_on_a_thousand_images():
    preds, conf, y = one_exit_case(1000, harmful=0, fires=500)
    policy = choose_policy(preds, conf, y, [10, 30], [1, 1], max_accuracy_drop=0.01)
    assert policy.active == (True,) and policy.exit_rates == pytest.approx((0.5, 0.5))
    assert (policy.harmful_flips, policy.beneficial_flips) == (0, 0)
    assert policy.loss_upper_bound == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-9)   # 0.37 %
    # min_accuracy still applies to the point accuracy
    assert choose_policy(preds, conf, y, [10, 30], [1, 1], min_accuracy=1.0).accuracy == 1.0


def conv_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


def test_truncated_net_gives_the_longer_nets_exit_logits_and_costs_only_the_shorter_net():
    torch.manual_seed(0)
    long_net = EarlyExitNet([conv_relu(1, 4), conv_relu(4, 6), conv_relu(6, 8)],
                            [head(4, 5), head(6, 5), head(8, 4)], 4, (1, 8, 8)).eval()
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():  # thresholds from the confidences, so that every exit is taken by some samples
        cumulative = 1 - torch.cumprod(1 - long_net.forward_all(x)[1], dim=1)
    long_net.thresholds = [float(torch.quantile(cumulative[:, i], q)) for i, q in ((0, 0.7), (1, 0.5))]
    short = truncate_after(long_net, 1)
    assert short.n_exits == 2 and short.thresholds == long_net.thresholds[:1]
    with torch.no_grad():
        long_logits, long_taken = long_net(x)
        short_logits, short_taken = short(x)
        long_all, _ = long_net.forward_all(x)
        short_all, _ = short.forward_all(x)
    left_early = long_taken <= 1
    assert left_early.any() and (~left_early).any()
    assert torch.equal(short_taken[left_early], long_taken[left_early])
    assert torch.allclose(short_logits[left_early], long_logits[left_early])
    assert torch.allclose(short_all[-1], long_all[1])     # every sample: exit 1's class logits, no confidence column
    # the cost front end sees exactly a network built as the shorter one
    torch.manual_seed(1)
    built_short = EarlyExitNet([conv_relu(1, 4), conv_relu(4, 6)], [head(4, 5), head(6, 4)], 4, (1, 8, 8))
    target = load_target("cortex-m7")
    got, want, full = (cost.analyze(cost.from_torch(n), target) for n in (short, built_short, long_net))
    assert list(got.macs_per_exit) == list(want.macs_per_exit) and got.params == want.params
    assert got.macs_per_exit[-1] < full.macs_per_exit[-1] and got.params < full.params
    with pytest.raises(ValueError, match="not an intermediate exit"):
        truncate_after(long_net, 2)


def test_fixed_placement_keeps_every_head_and_falls_back_to_a_threshold_that_never_fires():
    from edgenas.train.thresholds import NEVER_FIRES
    # exit 0 is wrong on 3 of the 180 images it takes at every threshold of the grid: none passes the guard at 1 pt
    preds, conf, y = one_exit_case(360, harmful=3, fires=180)
    conf[:180] = 0.999
    policy = choose_policy(preds, conf, y, [10, 30], [1, 1], max_accuracy_drop=0.01, allow_disable=False)
    assert policy.active == (True,) and policy.thresholds == (NEVER_FIRES,)
    assert policy.exit_rates == (0.0, 1.0) and policy.loss_upper_bound == 0.0
    assert policy.expected_cost == 32  # backbone 30 + the kept head (evaluated on every image) + the final head
    net = tiny_net(thresholds=(NEVER_FIRES, NEVER_FIRES))
    _, taken = net(torch.rand(16, 1, 8, 8))
    assert (taken == 2).all()  # the exit rule itself never fires above 1: no special case anywhere downstream
    # a clean exit: the same threshold as without the restriction
    clean = one_exit_case(1000, harmful=0, fires=500)
    assert (choose_policy(*clean, [10, 30], [1, 1], allow_disable=False).thresholds
            == choose_policy(*clean, [10, 30], [1, 1]).thresholds)
