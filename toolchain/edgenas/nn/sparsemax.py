"""Sparsemax (Martins & Astudillo, 2016): the Euclidean projection of a score vector onto the probability simplex.

    sparsemax(z) = argmin_{p in simplex} ||p - z||^2  =  max(z - tau, 0),   tau such that the result sums to 1.

Unlike softmax it returns exact zeros. Its Jacobian on the support S (the non-zero entries) is I - 1 1^T / |S| and
0 elsewhere, so the backward pass is v -> mask * (v - mean of v over S): gradients never reach pruned entries.
"""
from __future__ import annotations

import torch


def _threshold(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tau and the support size |S| along `dim` (both with `dim` kept), by the sort-and-cumsum rule."""
    z_sorted, _ = torch.sort(z, dim=dim, descending=True)
    k = torch.arange(1, z.shape[dim] + 1, dtype=z.dtype, device=z.device)
    view = [1] * z.dim()
    view[dim] = -1
    k = k.view(view)
    cumsum = z_sorted.cumsum(dim) - 1.0
    in_support = k * z_sorted > cumsum          # entry k stays positive when the top-k set is the support
    support = in_support.sum(dim=dim, keepdim=True)
    tau = cumsum.gather(dim, support - 1) / support.to(z.dtype)
    return tau, support


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, dim: int) -> torch.Tensor:
        tau, _ = _threshold(z, dim)
        p = torch.clamp(z - tau, min=0.0)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        mask = (p > 0).to(grad.dtype)
        mean_on_support = (grad * mask).sum(ctx.dim, keepdim=True) / mask.sum(ctx.dim, keepdim=True)
        return mask * (grad - mean_on_support), None


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Row-wise sparsemax along `dim`; differentiable (exact Jacobian, see the module docstring)."""
    return _Sparsemax.apply(z, dim % z.dim())
