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
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgenas import runtime
from edgenas.errors import EdgenasError
from edgenas.nn.sparsemax import sparsemax
from edgenas.search.zodarts_budget import BudgetMultipliers, CellCosts
from edgenas.spaces.nb201 import EDGES, OPS, check_resolution
from edgenas.spaces.nb201_supernet import Nb201Supernet
from edgenas.train.retrain import RetrainConfig
from edgenas.train.steps import cosine_lr, epoch_batch_indices, set_lr

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

    def retrain_config(self) -> RetrainConfig:
        return RetrainConfig(epochs=self.retrain_epochs, batch_size=self.retrain_batch_size, lr=self.retrain_lr,
                             weight_decay=self.retrain_weight_decay, samples=self.retrain_samples,
                             split_seed=self.split_seed, bn_batches=self.bn_batches)

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
def search_halves(data, cfg: ZodartsConfig, device: str = "cpu") -> tuple[tuple, tuple]:
    """The train split (capped), resized once, cut into the weight half and the alpha half (fixed split), each an
    (x, y) pair; moved once to `device` when it fits there (runtime.data_on_device), else left on the CPU."""
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
    return (x[:half], y[:half]), (x[half:], y[half:])


def epoch_batches(xy: tuple, batch_size: int, gen: torch.Generator, device: str = "cpu"):
    """One epoch of shuffled full batches on `device`; the order comes from the CPU generator whatever the device
    (runtime.batch_on: no-op moves on the CPU path)."""
    for idx in epoch_batch_indices(len(xy[1]), batch_size, gen):
        yield runtime.batch_on(device, idx, *xy)


def endless_batches(xy: tuple, batch_size: int, gen: torch.Generator, device: str = "cpu"):
    while True:
        yield from epoch_batches(xy, batch_size, gen, device)


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
    w_half, a_half = search_halves(data, cfg, device)
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
    a_batches = endless_batches(a_half, cfg.batch_size, torch.Generator().manual_seed(seed + 3), device)
    history = {"epoch_seconds": [], "probabilities": [], "alpha": [], "temperatures": [], "train_loss": [],
               "alpha_updates": [], "multipliers": [], "expected_over_budget": []}
    net.train()
    if state.twin is not None:
        state.twin.train()
    for epoch in range(cfg.epochs):
        state.t = temperature(epoch, cfg.t0, cfg.t_decay, cfg.t_every) if cfg.method == "zodarts+" else 1.0
        lr = cosine_lr(epoch, cfg.epochs, cfg.w_lr, cfg.w_lr_min)
        set_lr(state.w_opt, lr)
        set_lr(state.twin_opt, lr)
        losses = []
        start = time.perf_counter()
        for k, train_batch in enumerate(epoch_batches(w_half, cfg.batch_size, w_gen, device)):
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
