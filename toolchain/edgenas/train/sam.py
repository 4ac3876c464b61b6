"""Sharpness-Aware Minimisation as an optimiser wrapper (Foret et al.), with the adaptive variant (ASAM, Kwon et al.)
that FlatNAS uses: the ascent step is scaled per weight by |w|, so it is invariant to weight rescaling.

    opt = SAM(model.parameters(), torch.optim.SGD, rho=2.0, adaptive=True, lr=0.1, momentum=0.9)
    loss_fn().backward(); opt.first_step()        # w <- w + e(w)
    loss_fn().backward(); opt.second_step()       # w <- w - e(w), then the base optimiser's step with the new gradient
or  opt.step(closure) with a closure that zeroes the gradients, computes the loss, calls backward and returns the loss.

e(w) = rho * T(w)^2 * g / ||T(w) * g||_2 with T(w) = |w| (adaptive) or 1 (plain SAM), norm over all parameters.
"""
from __future__ import annotations

import torch


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho: float = 2.0, adaptive: bool = True, **kwargs):
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _scale(self, p, group) -> torch.Tensor:
        return p.abs() if group["adaptive"] else torch.ones_like(p)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [(self._scale(p, g) * p.grad).norm(2) for g in self.param_groups for p in g["params"] if p.grad is not None]
        return torch.norm(torch.stack(norms), 2) if norms else torch.tensor(0.0)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        norm = self._grad_norm()
        for group in self.param_groups:
            coef = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = self._scale(p, group) ** 2 * p.grad * coef
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure=None):
        if closure is None:
            raise ValueError("SAM.step needs a closure that re-evaluates the loss (or call first_step/second_step)")
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss
