"""Weight-sharing supernet training with the sandwich rule and in-place distillation.

Each step trains the largest subnet on labels, then the smallest and `n_random` random subnets on the largest one's
soft predictions (Yu et al., BigNAS / OFA-style). Each subnet sees the batch at its own input resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.data import batches, resize


@dataclass(frozen=True)
class SupernetConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-5
    n_random: int = 2
    label_smoothing: float = 0.1


def train_supernet(space, supernet, data, config: SupernetConfig, seed: int, progress=None) -> list[float]:
    """Train in place; returns the mean loss of the largest subnet per epoch. `progress(epoch, loss)` is optional."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = max(1, -(-len(data.train.y) // config.batch_size))
    # cosine decay stepped per batch with T_max = total steps (not per-epoch T_max: see research note pitfall 6)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    largest, smallest = space.largest(), space.smallest()
    history = []
    supernet.train()
    for epoch in range(config.epochs):
        total, n = 0.0, 0
        for x, y in batches(data.train, config.batch_size, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            logits = supernet(resize(x, largest.resolution), largest)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            loss.backward()
            soft = F.softmax(logits.detach(), dim=1)
            archs = [smallest] + [space.decode(space.sample(rng)) for _ in range(config.n_random)]
            for arch in archs:
                out = supernet(resize(x, arch.resolution), arch)
                kd = F.kl_div(F.log_softmax(out, dim=1), soft, reduction="batchmean")
                kd.backward()
            torch.nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
        history.append(total / max(n, 1))
        if progress is not None:
            progress(epoch, history[-1])
    supernet.eval()
    return history
