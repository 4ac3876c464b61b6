"""Robustness to weight perturbations (FlatNAS figure of merit).

R = (1/M) sum_m |acc(w) - acc(w + sigma * w * z_m)|,  z_m ~ N(0, I), over every trainable parameter (conv/linear
weights and biases, BN affine) but not BN running statistics; model in eval mode. Lower R = flatter minimum.
Measured on the validation split (the reference measures it on the test set at HEAD, which leaks selection).
The noise z is drawn on the CPU whatever device the model is on (then moved), so every device perturbs with the same z.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


@torch.no_grad()
def flatness(model: nn.Module, accuracy: Callable[[nn.Module], float], sigma: float = 0.05, draws: int = 20,
             seed: int = 0) -> tuple[float, list[float]]:
    """(R in accuracy points as fractions, perturbed accuracies). `accuracy(model)` evaluates the model as it is."""
    model.eval()
    clean = accuracy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    accs = []
    try:
        for _ in range(draws):
            for p, w in zip(params, saved):
                z = torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device)
                p.copy_(w + sigma * w * z)
            accs.append(accuracy(model))
    finally:
        for p, w in zip(params, saved):
            p.copy_(w)
    return sum(abs(clean - a) for a in accs) / max(draws, 1), accs
