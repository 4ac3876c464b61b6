"""Weight-sharing supernet training: a budget in steps, a warm-up on the largest net, then the sandwich rule with
in-place distillation.

Why it is built this way (measured by `benchmarks/supernet_ranking.py`, see research/supernet_ranking.md):
- The budget is counted in optimiser steps, not epochs: 15 epochs of the 1,077 digits images were ~135 steps, three
  orders of magnitude below the supernets that rank well (OFA, BigNAS, AttentiveNAS), and inherited accuracy then did
  not order architectures at all (Spearman 0.07 between MACs and accuracy over a search's archive).
- The first `warmup_fraction` of the steps trains the largest subnet alone on labels: it is the teacher of every
  other subnet, and distilling from an untrained teacher teaches noise (OFA trains the full net first).
- Then each step accumulates gradients of the largest subnet (labels, label smoothing) and `n_random` random
  subnets (in-place distillation: KL to the largest one's detached soft predictions), and takes one step. More
  subnets per step is what the literature's ranking supernets do (AttentiveNAS and OFA's last phase: 4).
- The smallest subnet is not trained at every step (the sandwich rule's lower slice, `with_smallest`): trained 4x
  as often as any other subnet, it inherits an accuracy no other subnet of its size gets, and it topped the ranking
  ahead of subnets 100x larger. Measured on mnist5k, 16 architectures, 700 steps: Kendall tau 0.18 with it,
  0.52 with a third random subnet instead; 0.69 at the shipped 600 steps (the 90 % intervals are +-0.2 wide at 16
  architectures, so 600 vs 700 steps is noise; benchmarks/results/supernet_ranking_*.json).
- The learning rate warms up linearly for `lr_warmup_steps`, then follows a cosine to 0 over the remaining steps.
- Training runs with `threads` intra-op threads, a fixed number (not the machine's core count) so that the same seed
  gives the same supernet on any machine with the same CPU kind; the default 2 uses both cores of a 2-core machine.
- `device` (edgenas.runtime): the supernet, built on the CPU, trains there; the train split moves once when it fits.
  Batch order and subnet sampling come from CPU generators whatever the device, so "cpu" is the CPU path bit for bit.
Each subnet sees the batch at its own input resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgenas import runtime
from edgenas.data import resize
from edgenas.train.steps import LossHistory, endless_batch_indices, lr_factor


@dataclass(frozen=True)
class SupernetConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-5
    warmup_fraction: float = 0.2     # of the steps: the largest subnet alone, on labels
    lr_warmup_steps: int = 20
    n_random: int = 3
    with_smallest: bool = False      # True: the sandwich's smallest subnet at every step too (see the docstring)
    label_smoothing: float = 0.1
    threads: int = 2


def train_supernet(space, supernet, data, config: SupernetConfig, seed: int, progress=None,
                   progress_every: int = 50, device: str = "cpu") -> list[float]:
    """Train in place on `device` ("cpu" or "cuda:N"); returns the mean loss of the largest subnet per
    `progress_every` steps. The supernet ends on the CPU in eval mode (it is saved and sliced into candidates there).

    `progress(step, loss)` is called after every `progress_every` steps (and at the end)."""
    if config.steps < 1:
        raise ValueError(f"supernet steps must be positive, got {config.steps}")
    runtime.use_deterministic_kernels(device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(space, supernet.to(device), data, config, seed, progress, progress_every, device)
    finally:
        supernet.eval().to("cpu")
        torch.set_num_threads(threads_before)


def _train(space, supernet, data, config: SupernetConfig, seed: int, progress, progress_every: int,
           device: str) -> list[float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config.steps, config.lr_warmup_steps))
    largest, smallest = space.largest(), space.smallest()
    warmup_steps = int(round(config.warmup_fraction * config.steps))
    history = LossHistory(config.steps, progress_every, progress)
    supernet.train()
    batches = endless_batch_indices(len(data.train.y), config.batch_size, gen)
    train_x, train_y = runtime.data_on_device(device, data.train.x, data.train.y)  # once, for every epoch
    for step in range(config.steps):
        idx = next(batches)
        x, y = runtime.batch_on(device, idx, train_x, train_y)
        opt.zero_grad(set_to_none=True)
        logits = supernet(resize(x, largest.resolution), largest)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        loss.backward()
        if step >= warmup_steps:
            soft = F.softmax(logits.detach(), dim=1)
            archs = [smallest] * config.with_smallest + [space.decode(space.sample(rng)) for _ in range(config.n_random)]
            for arch in archs:
                out = supernet(resize(x, arch.resolution), arch)
                F.kl_div(F.log_softmax(out, dim=1), soft, reduction="batchmean").backward()
        torch.nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
        opt.step()
        sched.step()
        history.add(step, loss)
    return history.means
