"""Helpers of training loops (the supernet, member fine-tuning, ZO-DARTS+ search and retraining): batches, the
learning-rate schedules and the loss history.

A budget in optimiser steps, not epochs, keeps the amount of training independent of the dataset's size."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def epoch_batch_indices(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """One shuffled epoch of full batches (a partial last batch would give BN a tiny, noisy batch)."""
    size = min(batch_size, n)
    order = torch.randperm(n, generator=gen)
    for start in range(0, n - size + 1, size):
        yield order[start:start + size]


def endless_batch_indices(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs of full batches (epoch_batch_indices, one epoch after the other)."""
    while True:
        yield from epoch_batch_indices(n, batch_size, gen)


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float) -> float:
    """Cosine learning rate per epoch, from `lr` at epoch 0 towards `lr_min`."""
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs))


def set_lr(opt: torch.optim.Optimizer | None, lr: float) -> None:
    if opt is not None:
        for g in opt.param_groups:
            g["lr"] = lr


class LossHistory:
    """The mean training loss over every `every` steps (and over the last, partial window), each reported to
    `progress(step, loss)` as it completes."""

    def __init__(self, total: int, every: int, progress: Callable[[int, float], None] | None = None):
        self.total, self.every, self.progress = total, every, progress
        self.means: list[float] = []
        self._window: list[float] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self._window.append(float(loss.detach()))
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            self.means.append(sum(self._window) / len(self._window))
            self._window = []
            if self.progress is not None:
                self.progress(step + 1, self.means[-1])
