"""Supernet training: a step budget, the teacher's warm-up, the thread policy, determinism."""
import math
from dataclasses import replace

import pytest
import torch

from edgenas.data import load_dataset
from edgenas.spaces.mbv3 import Mbv3Space
from edgenas.train.steps import lr_factor
from edgenas.train.supernet import SupernetConfig, train_supernet


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def space():
    return Mbv3Space(resolutions=(8, 12))  # small inputs: these tests check the loop, not the accuracy


def test_lr_warms_up_then_follows_a_cosine_to_zero():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_budget_is_counted_in_steps_and_threads_are_restored(digits, space):
    net = space.supernet(digits.in_channels, digits.n_classes)
    seen = []
    torch.set_num_threads(1)
    cfg = SupernetConfig(steps=5, batch_size=32, n_random=1, lr_warmup_steps=2, warmup_fraction=0.5, threads=2)
    history = train_supernet(space, net, digits, cfg, seed=0, progress=lambda s, loss: seen.append(s),
                             progress_every=2)
    assert seen == [2, 4, 5]            # 5 optimiser steps whatever the dataset's size
    assert len(history) == 3 and all(math.isfinite(v) for v in history)
    assert torch.get_num_threads() == 1  # the training's own thread count does not leak
    assert not net.training


def test_warmup_trains_only_the_largest_subnet(digits, space):
    """The teacher trains alone first; afterwards each step runs the largest, optionally the smallest, and n_random
    random subnets."""
    calls = []
    net = space.supernet(digits.in_channels, digits.n_classes)
    forward = net.forward
    net.forward = lambda x, arch: calls.append(arch) or forward(x, arch)
    cfg = SupernetConfig(steps=4, batch_size=32, n_random=1, lr_warmup_steps=1, warmup_fraction=0.5, threads=1)
    train_supernet(space, net, digits, replace(cfg, with_smallest=True), seed=0)
    largest, smallest = space.largest(), space.smallest()
    assert calls[:2] == [largest, largest]
    assert len(calls) == 2 + 2 * 3
    assert calls[2:4] == [largest, smallest] and calls[5:7] == [largest, smallest]
    calls.clear()
    train_supernet(space, net, digits, replace(cfg, n_random=2), seed=0)  # the default: no smallest at every step
    assert len(calls) == 2 + 2 * 3 and calls[2] == calls[5] == largest
    assert sum(arch == smallest for arch in calls) < 2


def test_same_seed_same_supernet(digits, space):
    cfg = SupernetConfig(steps=3, batch_size=32, n_random=1, lr_warmup_steps=1, warmup_fraction=0.34, threads=1)
    nets = []
    for _ in range(2):
        torch.manual_seed(123)  # the initial weights
        net = space.supernet(digits.in_channels, digits.n_classes)
        train_supernet(space, net, digits, cfg, seed=5)
        nets.append(net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_rejects_an_empty_budget(digits, space):
    with pytest.raises(ValueError, match="steps"):
        train_supernet(space, space.supernet(1, 10), digits, SupernetConfig(steps=0), seed=0)
