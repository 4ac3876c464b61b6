"""Member fine-tuning: what trains, what stays, the teacher, and the merged member record."""
import pytest
import torch

from edgenas.data import load_dataset, resize
from edgenas.search.finetune import member_view, resolve_config
from edgenas.search.flatnas import FlatnasConfig
from edgenas.spaces import create_space
from edgenas.train.finetune import FinetuneConfig, final_logits, finetune_network, teacher_probabilities


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_net(data):
    space = create_space("mbv3")
    torch.manual_seed(0)
    return space.build_empty(space.smallest(exits=True), data.in_channels, data.n_classes)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("optimizer, distill", [("sgd", 0.0), ("sgd", 0.5), ("sam", 0.0)])
def test_finetuning_trains_backbone_and_final_head_only_and_lowers_the_loss(digits, optimizer, distill):
    net = small_net(digits)
    teacher = teacher_probabilities(small_net(digits), digits.train.x, net.input_shape[-1]) if distill else None
    before = snapshot(net)
    cfg = FinetuneConfig(steps=40, batch_size=64, lr=0.05, optimizer=optimizer, distill_weight=distill)
    losses = finetune_network(net, digits.train, cfg, seed=0, teacher_probs=teacher, progress_every=10)
    assert len(losses) == 4 and losses[-1] < losses[0]
    after = net.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        if k.startswith("heads.") and not k.startswith(f"heads.{net.n_exits - 1}."):
            assert not moved, f"intermediate head parameter {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("segments."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(f"heads.{net.n_exits - 1}."))
    assert not net.training


def test_finetuning_is_deterministic_and_zero_steps_change_nothing(digits):
    a, b = small_net(digits), small_net(digits)
    cfg = FinetuneConfig(steps=15)
    finetune_network(a, digits.train, cfg, seed=3)
    finetune_network(b, digits.train, cfg, seed=3)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    c = small_net(digits)
    before = snapshot(c)
    assert finetune_network(c, digits.train, FinetuneConfig(steps=0), seed=3) == []
    assert all(torch.equal(before[k], c.state_dict()[k]) for k in before)


def test_teacher_probabilities_are_the_final_exit_softmax(digits):
    net = small_net(digits).eval()
    x = digits.train.x[:10]
    probs = teacher_probabilities(net, x, net.input_shape[-1], batch_size=3)
    with torch.no_grad():
        assert torch.allclose(probs, torch.softmax(final_logits(net, resize(x, net.input_shape[-1])), dim=1))
    assert torch.allclose(probs.sum(1), torch.ones(10))


def test_bad_settings_are_refused(digits):
    net = small_net(digits)
    with pytest.raises(ValueError, match="optimiser"):
        finetune_network(net, digits.train, FinetuneConfig(steps=1, optimizer="adam"), seed=0)
    with pytest.raises(ValueError, match="teacher"):
        finetune_network(net, digits.train, FinetuneConfig(steps=1), seed=0, teacher_probs=torch.ones(3, 10))


def test_auto_optimizer_is_sam_for_flatnas_with_its_settings_and_sgd_otherwise():
    flat = FlatnasConfig(rho=0.5, adaptive=False)
    auto = FinetuneConfig(optimizer="auto")
    assert resolve_config(auto, "flatnas", flat) == FinetuneConfig(optimizer="sam", sam_rho=0.5, sam_adaptive=False)
    assert resolve_config(auto, "nachos", flat).optimizer == "sgd"
    assert resolve_config(FinetuneConfig(optimizer="sgd"), "flatnas", flat).optimizer == "sgd"


def test_member_view_keeps_the_inherited_figures_apart():
    archived = {"id": 4, "key": "k", "val_accuracy": 0.9, "test_accuracy": 0.88, "thresholds": [0.5], "arch": {},
                "feasible": True, "violations": {}, "eval_seconds": 2.0, "macs_worst": 100}
    tuned = {"id": 4, "key": "k", "val_accuracy": 0.97, "test_accuracy": 0.96, "thresholds": [0.9], "feasible": True,
             "violations": {}, "weights": "finetuned", "eval_seconds": 9.0, "finetune": {"steps": 10}}
    view = member_view(archived, tuned)
    assert view["test_accuracy"] == 0.96 and view["thresholds"] == [0.9] and view["weights"] == "finetuned"
    assert view["inherited"]["test_accuracy"] == 0.88 and view["inherited"]["thresholds"] == [0.5]
    assert view["finetune_seconds"] == 9.0 and view["eval_seconds"] == 2.0 and view["macs_worst"] == 100
    assert member_view(archived, None) == {**archived, "weights": "inherited"}


def test_finetune_order_puts_the_best_first_only_when_it_is_still_to_do():
    from edgenas.search.finetune import finetune_order
    members = [{"id": 9}, {"id": 2}, {"id": 5}]
    assert [m["id"] for m in finetune_order(members, {"id": 5})] == [5, 2, 9]
    # on --resume the best member is done already: it must not be trained (and appended) a second time
    assert [m["id"] for m in finetune_order(members, {"id": 7})] == [2, 5, 9]
    assert finetune_order([], {"id": 7}) == []
