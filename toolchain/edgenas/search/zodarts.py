"""ZO-DARTS+ (Xie et al., ESANN 2024) and its baselines, in one search loop so that their timings compare.

Methods (`method=`):
  zodarts+   zeroth-order architecture gradient, p = sparsemax(alpha / T), T(e) = T0 * decay^floor(e / every)
  zodarts    the same estimator with p = softmax(alpha) (ZO-DARTS, ICASSP 2023)
  darts1     DARTS first order: grad_alpha L_val(w, alpha), every step
  darts2     DARTS second order: unrolled weight step + finite-difference Hessian-vector product, every step

One architecture matrix alpha (6 edges x 5 ops, see spaces/nb201.py) is shared by every cell of the supernet.
The search data (the dataset's train split) is cut once into two halves: weights train on one, alpha on the other;
the dataset's val and test splits are never seen by the search.

Zeroth-order estimator (one window of K weight steps):
  at the window start draw z uniform on the unit sphere of R^30, mu = mu_rel * ||alpha||, and copy the supernet
  weights and the weight optimiser's momentum buffers into a perturbed twin that uses alpha' = alpha + mu z (frozen);
  both take the same K SGD steps (same batches, same Nesterov optimiser, same learning rate, gradient clipping
  over the weights only); at the window end, on one alpha batch, with (g_a, g_w) = grad of L_val at (alpha, w_K):
      s = z . g_a + ((w'_K - w_K) / mu) . g_w,      grad_hat = s z.
  E[z z^T] = I / d, so E[grad_hat] is the hypergradient divided by d = 30 (no d factor, as in the reference; Adam
  is insensitive to the scale). Partial windows at the end of an epoch are dropped, as in the reference.
Differences from the reference code (research/zodarts.md, pitfall 4), on purpose: the twin copies the optimiser
state and uses the same Nesterov setting instead of a fresh plain-momentum SGD; alpha' is frozen (the reference's
twin optimiser also moves alpha' by SGD on the training loss); gradient clipping covers the weights only. The twin
is refreshed by copying tensors rather than deep-copying the module, which is cheaper. `none` ops are not computed
in the supernet (they add exactly zero); every other op is computed even when its probability is 0, for every method.

Discretisation: the most probable connected cell (the per-edge argmax of alpha when it is connected; not sampling),
and with a target the most probable one whose derived network fits every budget (search/zodarts_budget.py).

With a target (search/zodarts_budget.py): the macro (C, N, resolution) is the largest of a grid whose cell fits the
budgets in expectation at uniform probabilities, unless the caller fixes it; the alpha objective adds the
Lagrangian term sum_m lambda_m * E_p[cost_m] / budget_m over latency, MACs and flash, with the multipliers raised
by dual ascent after every architecture step while the expected cell is over a budget. It is a direct alpha term of
L_val, so every method sees it the same way.

Timing: `epoch_seconds` covers the training/search loop of each epoch only (batches, weight steps, architecture
steps); data preparation, probability logging, derivation and retraining are outside it, the same for every method.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgenas import runtime
from edgenas.errors import EdgenasError
from edgenas.nn.sparsemax import sparsemax
from edgenas.search.zodarts_budget import (BudgetMultipliers, CellCosts, budget_checks, budget_limits,
                                           choose_macro, derive_cell)
from edgenas.spaces.nb201 import EDGES, N_STAGES, OPS, Nb201NetConfig, Nb201Supernet, check_resolution

METHODS = ("zodarts+", "zodarts", "darts1", "darts2")
ZO_METHODS = ("zodarts+", "zodarts")


@dataclass(frozen=True)
class ZodartsConfig:
    method: str = "zodarts+"
    epochs: int = 10
    batch_size: int = 64
    # macro; None: the largest of zodarts_budget's grid that fits the target (16, 3, 32 without a target)
    C: int | None = None              # stage-1 channels (2C, 4C after the reductions)
    N: int | None = None              # cells per stage
    resolution: int | None = None
    search_samples: int | None = None  # cap on the train-split samples the search uses (None: all), halved w / alpha
    split_seed: int = 0               # the w/alpha split is fixed across run seeds, as the reference's split files
    # weights: SGD Nesterov, cosine per epoch from w_lr to w_lr_min (reference ZO-DARTS+ MedMNIST settings)
    w_lr: float = 0.1
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # architecture: Adam; lr None = the method's reference value (1.5e-2 zeroth order, 3e-4 DARTS)
    arch_lr: float | None = None
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    alpha_init_std: float = 1e-3
    # zeroth-order estimator
    window: int = 10                  # K weight steps per architecture update
    mu_rel: float = 0.005             # smoothing radius relative to ||alpha||
    # sparsemax temperature (zodarts+ only)
    t0: float = 1.5
    t_decay: float = 0.75
    t_every: int = 5
    # DARTS second order: finite-difference radius eps / ||v|| of the Hessian-vector product
    hvp_eps: float = 0.01
    # budget multipliers (with a target): dual-ascent step per architecture update (0: the penalty stays off)
    penalty_step: float = 1.0
    # retraining of the derived network (0 epochs: derived net returned untrained)
    retrain_epochs: int = 10
    retrain_batch_size: int = 64
    retrain_lr: float = 0.05
    retrain_weight_decay: float = 3e-4
    fit_exits: bool = True            # train the exit heads and choose thresholds after retraining (as NACHOS)
    retrain_samples: int | None = None  # cap on the train-split samples used for retraining (None: all)
    bn_batches: int = 16              # training batches that re-estimate BN statistics after retraining

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def arch_learning_rate(self) -> float:
        if self.arch_lr is not None:
            return self.arch_lr
        return 1.5e-2 if self.method in ZO_METHODS else 3e-4


def validate_config(cfg: ZodartsConfig) -> ZodartsConfig:
    if cfg.method not in METHODS:
        raise EdgenasError(f"unknown zodarts method '{cfg.method}'", f"use one of {', '.join(METHODS)}")
    if cfg.resolution is not None:
        check_resolution(cfg.resolution)
    for name in ("C", "N"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise EdgenasError(f"zodarts setting {name} must be at least 1, got {getattr(cfg, name)}",
                               f"pass a positive {name} or leave it to the budget fit")
    for name in ("epochs", "batch_size", "window", "t_every", "retrain_batch_size", "bn_batches"):
        if getattr(cfg, name) < 1:
            raise EdgenasError(f"zodarts setting {name} must be at least 1, got {getattr(cfg, name)}",
                               f"pass a positive {name}")
    for name in ("w_lr", "mu_rel", "t0", "t_decay", "hvp_eps", "alpha_init_std"):
        if not getattr(cfg, name) > 0:
            raise EdgenasError(f"zodarts setting {name} must be positive, got {getattr(cfg, name)}",
                               f"pass a positive {name}")
    if cfg.retrain_epochs < 0 or cfg.penalty_step < 0:
        raise EdgenasError("retrain_epochs and penalty_step cannot be negative", "pass 0 or a positive value")
    return cfg


# ------------------------------------------------------------------------------------------------ probabilities
def temperature(epoch: int, t0: float = 1.5, decay: float = 0.75, every: int = 5) -> float:
    """Sparsemax temperature of an epoch (0-based): T0 * decay^floor(epoch / every)."""
    return t0 * decay ** (epoch // every)


def op_probabilities(alpha: torch.Tensor, method: str, t: float = 1.0) -> torch.Tensor:
    """Per-edge op probabilities: sparsemax(alpha / T) for zodarts+, softmax(alpha) for the others."""
    if method == "zodarts+":
        return sparsemax(alpha / t, dim=-1)
    return F.softmax(alpha, dim=-1)


# ------------------------------------------------------------------------------------------------ ZO estimator
def unit_direction(d: int, generator: torch.Generator) -> torch.Tensor:
    """A direction uniform on the unit sphere of R^d."""
    z = torch.randn(d, generator=generator)
    return z / z.norm()


def zo_hypergradient(z: torch.Tensor, mu: float, g_alpha: torch.Tensor, g_w: Sequence[torch.Tensor],
                     w: Sequence[torch.Tensor], w_perturbed: Sequence[torch.Tensor]) -> torch.Tensor:
    """(z . g_alpha + ((w' - w) / mu) . g_w) z, shaped like g_alpha. Its mean over z is the hypergradient / d."""
    s = torch.dot(z, g_alpha.reshape(-1))
    for gw, a, b in zip(g_w, w, w_perturbed):
        s = s + torch.sum(gw * (b - a)) / mu
    return (s * z).reshape(g_alpha.shape)


def sync_twin(src: nn.Module, dst: nn.Module, src_opt: torch.optim.Optimizer, dst_opt: torch.optim.Optimizer) -> None:
    """Make (dst, dst_opt) an exact copy of (src, src_opt): weights, buffers, momentum state, learning rate."""
    with torch.no_grad():
        for a, b in zip(src.parameters(), dst.parameters()):
            b.copy_(a)
        for a, b in zip(src.buffers(), dst.buffers()):
            b.copy_(a)
    dst_opt.state.clear()
    for a, b in zip(src.parameters(), dst.parameters()):
        state = src_opt.state.get(a)
        if state:
            dst_opt.state[b] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    for ga, gb in zip(src_opt.param_groups, dst_opt.param_groups):
        gb["lr"] = ga["lr"]


# ------------------------------------------------------------------------------------------------ DARTS 2nd order
def darts2_hypergradient(model: nn.Module, probs_of: Callable[[torch.Tensor], torch.Tensor], alpha: torch.Tensor,
                         train_batch, val_batch, lr: float, momentum: float, weight_decay: float,
                         momentum_buffers: Sequence[torch.Tensor | None], eps: float = 0.01,
                         penalty: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """DARTS second-order architecture gradient (Liu et al., 2019, eq. 7-8), without touching `model`'s weights.

    w' = w - lr (momentum * buf + grad_w L_train(w, alpha) + weight_decay * w)
    g  = grad_a L_val(w', alpha) - lr * (grad_a L_train(w+, alpha) - grad_a L_train(w-, alpha)) / (2 r)
    with v = grad_w' L_val(w', alpha), w+- = w +- r v, r = eps / ||v||.
    """
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    w = [p.detach() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss(params: Sequence[torch.Tensor], a: torch.Tensor, batch) -> torch.Tensor:
        x, y = batch
        out = functional_call(model, ({**dict(zip(names, params)), **buffers}), (x, probs_of(a)))
        return F.cross_entropy(out, y)

    a_fixed = alpha.detach()
    w_req = [t.clone().requires_grad_(True) for t in w]
    g_train = torch.autograd.grad(loss(w_req, a_fixed, train_batch), w_req)
    unrolled = []
    for t, g, buf in zip(w, g_train, momentum_buffers):
        step = g + weight_decay * t + (momentum * buf if buf is not None else 0.0)
        unrolled.append((t - lr * step).requires_grad_(True))
    a_req = a_fixed.clone().requires_grad_(True)
    l_val = loss(unrolled, a_req, val_batch)
    if penalty is not None:
        l_val = l_val + penalty(a_req)
    grads = torch.autograd.grad(l_val, [a_req, *unrolled])
    g_alpha, v = grads[0], grads[1:]
    r = eps / torch.sqrt(sum(torch.sum(t * t) for t in v))

    def grad_alpha_train(sign: float) -> torch.Tensor:
        a = a_fixed.clone().requires_grad_(True)
        return torch.autograd.grad(loss([t + sign * r * u for t, u in zip(w, v)], a, train_batch), a)[0]

    hvp = (grad_alpha_train(1.0) - grad_alpha_train(-1.0)) / (2 * r)
    return g_alpha - lr * hvp


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class _Tensors:
    x: torch.Tensor
    y: torch.Tensor


def _search_halves(data, cfg: ZodartsConfig, device: str = "cpu") -> tuple[_Tensors, _Tensors]:
    """The train split (capped), resized once, cut into the weight half and the alpha half (fixed split); moved
    once to `device` when it fits there (runtime.data_on_device), else left on the CPU."""
    from edgenas.data import resize
    n = len(data.train.y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    if cfg.search_samples is not None:
        order = order[: cfg.search_samples]
    if len(order) < 4 * 2:
        raise EdgenasError(f"the search needs at least 8 training samples, the dataset gives {len(order)}",
                           "use a larger dataset or raise search_samples")
    half = len(order) // 2
    x, y = runtime.data_on_device(device, resize(data.train.x[order], cfg.resolution), data.train.y[order])
    return _Tensors(x[:half], y[:half]), _Tensors(x[half:], y[half:])


def _batches(t: _Tensors, batch_size: int, gen: torch.Generator, device: str = "cpu"):
    """Shuffled full batches on `device` (the last partial batch is dropped: batch-statistics BN). The order comes
    from the CPU generator whatever the device (runtime.batch_on: no-op moves on the CPU path)."""
    perm = torch.randperm(len(t.y), generator=gen)
    bs = min(batch_size, len(t.y))
    for i in range(0, len(perm) - bs + 1, bs):
        yield runtime.batch_on(device, perm[i:i + bs], t.x, t.y)


def _endless(t: _Tensors, batch_size: int, gen: torch.Generator, device: str = "cpu"):
    while True:
        yield from _batches(t, batch_size, gen, device)


# ------------------------------------------------------------------------------------------------ search loop
@dataclass
class _Search:
    """Mutable state of one search run."""
    cfg: ZodartsConfig
    net: Nb201Supernet
    w_opt: torch.optim.Optimizer
    alpha: torch.Tensor
    a_opt: torch.optim.Optimizer
    z_gen: torch.Generator
    multipliers: BudgetMultipliers | None
    t: float = 1.0
    twin: Nb201Supernet | None = None
    twin_opt: torch.optim.Optimizer | None = None
    z: torch.Tensor | None = None
    mu: float = 0.0
    alpha_updates: int = 0

    def probs(self, alpha: torch.Tensor) -> torch.Tensor:
        return op_probabilities(alpha, self.cfg.method, self.t)

    def penalty(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.multipliers is None:
            return alpha.new_zeros(())
        return self.multipliers.penalty(self.probs(alpha))

    def weight_step(self, net: nn.Module, opt: torch.optim.Optimizer, alpha: torch.Tensor, x, y) -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x, self.probs(alpha.detach())), y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
        opt.step()
        return float(loss.detach())

    def arch_step(self, grad: torch.Tensor) -> None:
        self.a_opt.zero_grad(set_to_none=True)
        self.alpha.grad = grad.detach().clone()
        self.a_opt.step()
        self.alpha_updates += 1
        if self.multipliers is not None:
            self.multipliers.update(self.probs(self.alpha.detach()))

    # --- one step of each method
    def step(self, k: int, train_batch, val_batch) -> float:
        m = self.cfg.method
        if m in ZO_METHODS:
            return self._zo_step(k, train_batch, val_batch)
        if m == "darts1":
            self.arch_step(self._val_grads(val_batch, need_w=False)[0])
        else:
            buffers = [self.w_opt.state.get(p, {}).get("momentum_buffer") for p in self.net.parameters()]
            self.arch_step(darts2_hypergradient(
                self.net, self.probs, self.alpha, train_batch, val_batch, self.w_opt.param_groups[0]["lr"],
                self.cfg.w_momentum, self.cfg.w_weight_decay, buffers, self.cfg.hvp_eps, self.penalty))
        return self.weight_step(self.net, self.w_opt, self.alpha, *train_batch)

    def _val_grads(self, val_batch, need_w: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, y = val_batch
        a = self.alpha.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(self.net(x, self.probs(a)), y) + self.penalty(a)
        params = list(self.net.parameters()) if need_w else []
        grads = torch.autograd.grad(loss, [a, *params], allow_unused=True)
        g_w = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]
        return grads[0], g_w

    def _zo_step(self, k: int, train_batch, val_batch) -> float:
        K = self.cfg.window
        if k % K == 0:
            sync_twin(self.net, self.twin, self.w_opt, self.twin_opt)
            self.z = unit_direction(self.alpha.numel(), self.z_gen).to(self.alpha.device)  # drawn on the CPU
            self.mu = self.cfg.mu_rel * float(self.alpha.detach().norm())
        alpha_twin = self.alpha.detach() + self.mu * self.z.reshape(self.alpha.shape)
        loss = self.weight_step(self.net, self.w_opt, self.alpha, *train_batch)
        self.weight_step(self.twin, self.twin_opt, alpha_twin, *train_batch)
        if (k + 1) % K == 0:
            g_alpha, g_w = self._val_grads(val_batch, need_w=True)
            w = [p.detach() for p in self.net.parameters()]
            w_twin = [p.detach() for p in self.twin.parameters()]
            self.arch_step(zo_hypergradient(self.z, self.mu, g_alpha, g_w, w, w_twin))
        return loss


def _cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs))


def _set_lr(opt: torch.optim.Optimizer | None, lr: float) -> None:
    if opt is not None:
        for g in opt.param_groups:
            g["lr"] = lr


def run_search_loop(data, cfg: ZodartsConfig, seed: int, costs: CellCosts | None = None, limits=None,
                    on_epoch=None, device: str = "cpu") -> dict:
    """The architecture search alone: alpha, probabilities and timing per epoch. cfg's macro must be set.

    costs, limits: the additive cost model of the macro and the budgets (budget_limits), for the penalty.
    device: "cpu" or "cuda:N" (edgenas.runtime): supernets and alpha are drawn on the CPU, then moved; every random
    draw (split, batch orders, directions z) comes from CPU generators, so the CPU path is today's, bit for bit."""
    cfg = validate_config(cfg)
    if None in (cfg.C, cfg.N, cfg.resolution):
        raise EdgenasError("the search loop needs C, N and resolution", "resolve the macro with choose_macro first")
    torch.manual_seed(seed)
    w_half, a_half = _search_halves(data, cfg, device)
    net = Nb201Supernet(data.in_channels, data.n_classes, cfg.C, cfg.N).to(device)
    alpha = (cfg.alpha_init_std * torch.randn(len(EDGES), len(OPS))).to(device).requires_grad_(True)

    def sgd(params):
        return torch.optim.SGD(params, lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay,
                               nesterov=True)

    state = _Search(cfg=cfg, net=net, w_opt=sgd(net.parameters()), alpha=alpha,
                    a_opt=torch.optim.Adam([alpha], lr=cfg.arch_learning_rate(), betas=cfg.arch_betas,
                                           weight_decay=cfg.arch_weight_decay),
                    z_gen=torch.Generator().manual_seed(seed + 1),
                    multipliers=None if costs is None or not limits else
                    BudgetMultipliers(costs, limits, cfg.penalty_step))
    if cfg.method in ZO_METHODS:
        state.twin = Nb201Supernet(data.in_channels, data.n_classes, cfg.C, cfg.N).to(device)
        state.twin_opt = sgd(state.twin.parameters())
    w_gen = torch.Generator().manual_seed(seed + 2)
    a_batches = _endless(a_half, cfg.batch_size, torch.Generator().manual_seed(seed + 3), device)
    history = {"epoch_seconds": [], "probabilities": [], "alpha": [], "temperatures": [], "train_loss": [],
               "alpha_updates": [], "multipliers": [], "expected_over_budget": []}
    net.train()
    if state.twin is not None:
        state.twin.train()
    for epoch in range(cfg.epochs):
        state.t = temperature(epoch, cfg.t0, cfg.t_decay, cfg.t_every) if cfg.method == "zodarts+" else 1.0
        lr = _cosine_lr(epoch, cfg.epochs, cfg.w_lr, cfg.w_lr_min)
        _set_lr(state.w_opt, lr)
        _set_lr(state.twin_opt, lr)
        losses = []
        start = time.perf_counter()
        for k, train_batch in enumerate(_batches(w_half, cfg.batch_size, w_gen, device)):
            losses.append(state.step(k, train_batch, next(a_batches)))
        history["epoch_seconds"].append(time.perf_counter() - start)
        with torch.no_grad():
            history["probabilities"].append(state.probs(alpha).tolist())
        history["alpha"].append(alpha.detach().tolist())
        history["temperatures"].append(state.t)
        history["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["alpha_updates"].append(state.alpha_updates)
        if state.multipliers is not None:
            history["multipliers"].append(dict(state.multipliers.values))
            history["expected_over_budget"].append(state.multipliers.ratios(state.probs(alpha.detach())))
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history


# ------------------------------------------------------------------------------------------------ retraining
@torch.no_grad()
def exit_accuracies(net, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> list[float]:
    """Accuracy of every exit's class logits (x already at the net's resolution), eval mode, on the net's device."""
    net.eval()
    right, device = None, runtime.module_device(net)
    for i in range(0, len(y), batch_size):
        logits, _ = net.forward_all(x[i:i + batch_size].to(device))
        hits = [int((lg.argmax(1) == y[i:i + batch_size].to(device)).sum()) for lg in logits]
        right = hits if right is None else [a + b for a, b in zip(right, hits)]
    return [r / max(len(y), 1) for r in right]


def retrain(net, data, cfg: ZodartsConfig, seed: int, on_epoch=None, device: str = "cpu") -> dict:
    """Train the derived net from scratch on the train split; report the final epoch (no selection on any split).

    Loss: cross-entropy of the final exit for backbone + final head; the intermediate heads learn their class
    logits on detached features, so they do not change the backbone. Their confidence columns are left to the exit
    training of the pipeline. BN statistics are re-estimated on training batches at the end (train/bn.py).
    device: where it trains (run_search_loop); the net, built on the CPU, ends back on the CPU.
    """
    from edgenas.data import resize
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 4)
    res = net.input_shape[-1]
    n = len(data.train.y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    if cfg.retrain_samples is not None:
        order = order[: cfg.retrain_samples]
    train = _Tensors(*runtime.data_on_device(device, resize(data.train.x[order], res), data.train.y[order]))
    net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.retrain_lr, momentum=0.9, weight_decay=cfg.retrain_weight_decay,
                          nesterov=True)
    losses = []
    for epoch in range(cfg.retrain_epochs):
        _set_lr(opt, _cosine_lr(epoch, cfg.retrain_epochs, cfg.retrain_lr, 0.0))
        net.train()
        total, count = 0.0, 0
        for x, y in _batches(train, cfg.retrain_batch_size, gen, device):
            opt.zero_grad(set_to_none=True)
            h, loss = x, 0.0
            for i, (seg, head) in enumerate(zip(net.segments, net.heads)):
                h = seg(h)
                if i < net.n_exits - 1:
                    loss = loss + F.cross_entropy(head(h.detach())[:, : net.n_classes], y)
                else:
                    final = F.cross_entropy(head(h), y)
            (loss + final).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(final.detach()) * len(y)
            count += len(y)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    if cfg.retrain_epochs > 0:
        # running statistics from the final weights (an exponential average lags them after short trainings)
        from edgenas.train.bn import recalibrate_bn
        split = type(data.train)(x=train.x, y=train.y)
        recalibrate_bn(net, split, res, batch_size=cfg.retrain_batch_size, max_batches=cfg.bn_batches, seed=seed)
    net.eval()
    val = exit_accuracies(net, resize(data.val.x, res), data.val.y)
    test = exit_accuracies(net, resize(data.test.x, res), data.test.y)
    net.cpu()
    return {"epochs": cfg.retrain_epochs, "train_loss": losses, "val_accuracy_per_exit": val,
            "test_accuracy_per_exit": test, "val_accuracy": val[-1], "test_accuracy": test[-1]}


# ------------------------------------------------------------------------------------------------ entry point
@dataclass(frozen=True)
class ZodartsResult:
    method: str
    seed: int
    genotype: str                          # NAS-Bench-201 string of the derived cell (zodarts_budget.derive_cell)
    argmax_genotype: str                   # plain per-edge argmax of alpha
    derivation: dict                       # why the derived cell differs from the argmax, if it does (Derivation)
    net_config: Nb201NetConfig
    alpha: list                            # final alpha (6 x 5)
    probabilities: list                    # per epoch: 6 x 5 probabilities at the end of the epoch
    temperatures: list[float]
    epoch_seconds: list[float]             # search loop only, per epoch
    alpha_updates: int
    net: nn.Module = field(repr=False)     # derived EarlyExitNet (retrained when retrain_epochs > 0), eval mode
    retrain: dict | None = None
    exits: dict | None = None              # fit_exit_policy fields of the deployed net (thresholds, exit rates, MACs)
    cost: dict | None = None               # edgenas.cost.analyze of the derived net on the target
    violations: dict | None = None         # target budgets exceeded by the derived net (worst case: final exit)
    run_dir: Path | None = None
    config: dict = field(default_factory=dict)

    @property
    def search_seconds(self) -> float:
        return float(sum(self.epoch_seconds))

    def to_dict(self) -> dict:
        """JSON-ready summary (the network itself excluded)."""
        return {"method": self.method, "seed": self.seed, "genotype": self.genotype,
                "argmax_genotype": self.argmax_genotype, "derivation": self.derivation,
                "net_config": self.net_config.to_dict(), "alpha": self.alpha, "probabilities": self.probabilities,
                "temperatures": self.temperatures, "epoch_seconds": self.epoch_seconds,
                "search_seconds": self.search_seconds, "alpha_updates": self.alpha_updates,
                "retrain": self.retrain, "exits": self.exits, "cost": self.cost,
                "violations": None if self.violations is None else {k: list(v) for k, v in self.violations.items()},
                "config": self.config}


def make_config(config: ZodartsConfig | None = None, **overrides) -> ZodartsConfig:
    cfg = config or ZodartsConfig()
    known = {f.name for f in fields(ZodartsConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EdgenasError(f"unknown zodarts setting(s): {', '.join(unknown)}",
                           f"use one of {', '.join(sorted(known))}")
    return validate_config(replace(cfg, **{k: v for k, v in overrides.items() if v is not None}))


def search_zodarts(dataset, method: str = "zodarts+", epochs: int | None = None, seed: int = 0, target=None,
                   out_dir=None, config: ZodartsConfig | None = None, progress: bool = False, ui=None,
                   device: str = "cpu", threads: int = runtime.JOB_THREADS, **overrides) -> ZodartsResult:
    """Search a NAS-Bench-201 cell with ZO-DARTS+ (or a baseline), derive it, retrain it, check it on a target.

    dataset: a name for edgenas.data.load_dataset ("mnist5k", "digits", "medmnist:FILE.npz") or a loaded Dataset.
    target: a target name/path or a loaded Target: the macro is fitted to its budgets (unless C, N and resolution
    are given), the search penalises the expected cell past them and the derived cell fits them.
    out_dir: when given, a new folder written atomically: config.json, result.json, archive.jsonl, pareto.json and
    checkpoints/candidate_0.pt (the format `edgenas export` reads).
    device: "cpu" or "cuda:N" (edgenas.runtime.resolve_device) for the search, the retraining and the exit fitting;
    the cost analysis, the result and the run folder get the net on the CPU. threads: intra-op threads of the
    training (runtime's policy for one job; a caller running several searches side by side passes 1).
    overrides: any ZodartsConfig field (None leaves the default). Deterministic for a seed on a given machine (and
    device kind; on CUDA up to the non-deterministic kernels edgenas.runtime documents).
    """
    cfg = make_config(config, method=method, epochs=epochs, **overrides)
    if out_dir is not None and Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise EdgenasError(f"output folder {out_dir} exists and is not empty", "choose another --out")
    data = _load(dataset)
    tgt = _target(target)
    if ui is None and progress:
        from edgenas.ui import RichUI
        ui = RichUI()
    if ui is None:
        from edgenas.ui import QuietUI
        ui = QuietUI()
    choice = choose_macro(tgt, data.in_channels, data.n_classes, cfg.C, cfg.N, cfg.resolution)
    cfg = replace(cfg, C=choice.macro.C, N=choice.macro.N, resolution=choice.macro.resolution)
    ui.note(f"macro {choice.reason}")
    limits = budget_limits(tgt.budgets) if tgt is not None else None
    runtime.use_deterministic_kernels(device)
    with runtime.torch_threads(threads):  # one job: the search, retraining and exit fitting
        with ui.task(f"search {cfg.method}", total=cfg.epochs) as advance:
            history = run_search_loop(data, cfg, seed, choice.costs, limits, device=device, on_epoch=lambda e, h: (
                advance(f"{h['epoch_seconds'][-1]:.1f} s, T={h['temperatures'][-1]:.3f}, "
                        f"{h['alpha_updates'][-1]} alpha updates")))
        checks = (None, None) if tgt is None else budget_checks(choice.costs, tgt, data.in_channels, data.n_classes)
        derived = derive_cell(history["probabilities"][-1], history["alpha"][-1], fits=checks[1], estimate=checks[0])
        arch = derived.arch
        if derived.reason != "argmax":
            ui.note(f"derived cell: {arch.to_string()} instead of the argmax {derived.argmax.to_string()} "
                    f"({derived.reason}: {derived.rank} more probable connected cell(s) skipped)")
        net_cfg = Nb201NetConfig(arch, cfg.C, cfg.N, cfg.resolution)
        torch.manual_seed(seed)
        net = net_cfg.build(data.in_channels, data.n_classes)
        retrained = None
        if cfg.retrain_epochs > 0:
            with ui.task("retrain derived cell", total=cfg.retrain_epochs) as advance:
                retrained = retrain(net, data, cfg, seed, device=device,
                                    on_epoch=lambda e, loss: advance(f"loss {loss:.3f}"))
            ui.note(f"{cfg.method}: {arch.to_string()}, test accuracy {retrained['test_accuracy']:.4f} (final epoch)")
        net.eval()
        exits = None
        if cfg.retrain_epochs > 0 and cfg.fit_exits:
            # the same exit training and threshold choice as NACHOS candidates (the target's cost model, or cortex-m7)
            from edgenas.search.evaluate import EvaluationConfig, fit_exit_policy
            from edgenas.targets import load_target
            exit_target = tgt if tgt is not None else load_target("cortex-m7")
            with ui.task("train exit heads, choose thresholds", total=None):
                net, exits = fit_exit_policy(net.to(device), data, exit_target, exit_target.budgets,
                                             EvaluationConfig(), seed)
                net = net.cpu()
            ui.note(f"exits: {exits['n_exits']} kept, test accuracy {exits['test_accuracy']:.4f}, expected MACs "
                    f"{exits['macs_expected']:.0f} of {exits['macs_worst']} worst case")
    cost_dict, bad = None, None
    if tgt is not None:
        from edgenas import cost
        report = cost.analyze(cost.from_torch(net), tgt)
        cost_dict, bad = report.to_dict(), cost.violations(report, tgt.budgets)
    result = ZodartsResult(
        method=cfg.method, seed=seed, genotype=arch.to_string(), argmax_genotype=derived.argmax.to_string(),
        derivation={"reason": derived.reason, "rank": derived.rank, "exact_checks": derived.checked},
        net_config=net_cfg, alpha=history["alpha"][-1], probabilities=history["probabilities"],
        temperatures=history["temperatures"], epoch_seconds=history["epoch_seconds"],
        alpha_updates=history["alpha_updates"][-1], net=net, retrain=retrained, exits=exits, cost=cost_dict,
        violations=bad,
        config={**cfg.to_dict(), "seed": seed, "dataset": dataset if isinstance(dataset, str) else "<in-memory>",
                "target": getattr(tgt, "name", None), "space": "nb201", "device": device,
                "macro_choice": choice.reason, "multipliers": history["multipliers"],
                "expected_over_budget": history["expected_over_budget"]})
    if out_dir is not None:
        _write_run(Path(out_dir), result, data)
        result = replace(result, run_dir=Path(out_dir))
    return result


def _load(dataset):
    if isinstance(dataset, str):
        from edgenas.data import load_dataset
        return load_dataset(dataset)
    return dataset


def _target(target):
    if target is None or not isinstance(target, (str, os.PathLike)):
        return target
    from edgenas.targets import load_target
    return load_target(str(target))


def _write_run(out: Path, result: ZodartsResult, data) -> None:
    """Write the run folder in a temporary sibling, then rename it into place: no partial output on failure."""
    from edgenas.search.driver import checkpoint_dict
    from edgenas.search.runfolder import atomic_torch_save, atomic_write_json
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        summary = result.to_dict()
        retrain_info = result.retrain or {}
        record = {"id": 0, "arch": result.net_config.to_dict(), "description": result.net_config.describe(),
                  "active_exits": [False] * (N_STAGES - 1), "thresholds": [], "truncated_after_exit": None,
                  "val_accuracy": retrain_info.get("val_accuracy"), "test_accuracy": retrain_info.get("test_accuracy"),
                  "latency_expected_s": None if result.cost is None else result.cost["latency_worst_s"],
                  "search_seconds": result.search_seconds}
        if result.exits is None:  # untrained exit heads are never taken: deploy the backbone alone
            from edgenas.nn.early_exit import drop_exits
            result = replace(result, net=drop_exits(result.net, record["active_exits"], []))
        else:
            record.update(result.exits)
        atomic_write_json(tmp / "config.json", result.config)
        atomic_write_json(tmp / "result.json", summary)
        atomic_write_json(tmp / "pareto.json", {"members": [0]})
        (tmp / "archive.jsonl").write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
        atomic_torch_save(tmp / "checkpoints" / "candidate_0.pt", checkpoint_dict("nb201", data.n_classes, data.in_channels, {**record, "weights": "retrained"}, result.net))
        if out.exists():
            out.rmdir()  # empty (checked before the search started)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
