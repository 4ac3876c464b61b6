"""Early-exit classifier (EEC) training with the backbone frozen, NACHOS loss with both regularisers.

Per sample, c_i = sigmoid(confidence logit of exit i), c_B = 1 for the final exit.
  p_i    = c_i * prod_{j<i} (1 - c_j)                          probability of leaving at exit i
  L_cls  = sum_i mean(CE_i * p_i)                               expected cross-entropy under the exit distribution
  L_bce  = class-balanced BCE(c_i, 1[exit i is right])          confidence supervision (intermediate exits)
  L_cost = relu(E[cost] - budget) / |cost_B - budget|           E[cost] = mean_batch sum_i p_i * cost_i
  L_sup  = mean_batch MSE(S[y, :], c)                           S[k, i] = accuracy of exit i on support samples of class k
Unlike the reference code, L_cost stays inside the autograd graph (the reference detaches it with .item(), so it never
trains anything). cost_i is the cost of reaching exit i counting every head evaluated before it.

The backbone runs once in eval mode (BN frozen) to cache the features at every exit; only the heads train.

Devices (edgenas.runtime): everything runs where the net is; the features, and the labels moved next to them, stay
there. Batch orders and support sets are drawn from CPU generators on CPU labels whatever the device, then the indices
move, so the CPU path is unchanged bit for bit and a GPU consumes the same random streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.runtime import module_device


@dataclass(frozen=True)
class ExitTrainingConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-4
    w_cls: float = 1.0
    w_bce: float = 1.0
    w_cost: float = 1.0
    w_support: float = 1.0
    support_fraction: float = 0.1
    support_from_epoch: int = 5      # warm-up epochs before the support-set regulariser is switched on
    cost_budget_fraction: float = 0.6  # cost budget = min(target budget, fraction * final-exit cost)
    final_head_epochs: int = 10        # re-fit of the inherited final head on frozen features (0: keep it as inherited)
    final_head_lr: float = 2e-3
    max_train_samples: int = 1500      # heads and the final-head re-fit use at most this many training images


@torch.no_grad()
def exit_features(net, x: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """Backbone features at every exit point, computed in eval mode at the net's resolution, on the net's device
    (x may be anywhere: each chunk moves there)."""
    from edgenas.data import resize
    net.eval()
    res, device = net.input_shape[-1], module_device(net)
    chunks = [net.features(resize(x[i:i + batch_size].to(device), res)) for i in range(0, len(x), batch_size)]
    return [torch.cat([c[k] for c in chunks]) for k in range(net.n_exits)]


def exit_probabilities(conf: torch.Tensor) -> torch.Tensor:
    """(N, B-1) intermediate confidences -> (N, B) probabilities of leaving at each exit (rows sum to 1)."""
    n = conf.shape[0]
    ones = conf.new_ones((n, 1))
    survival_before = torch.cumprod(torch.cat([ones, 1.0 - conf], dim=1), dim=1)  # prod_{j<i}(1-c_j), i = 0..B-1
    c_full = torch.cat([conf, ones], dim=1)
    return c_full * survival_before


def cost_regulariser(probs: torch.Tensor, exit_costs: torch.Tensor, budget: float) -> torch.Tensor:
    """relu(E[cost] - budget) / |cost_B - budget|, differentiable in the confidences through `probs`."""
    expected = (probs * exit_costs).sum(dim=1).mean()
    scale = abs(float(exit_costs[-1]) - budget) or 1.0
    return F.relu(expected - budget) / scale


def balanced_bce(conf: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE per exit: right and wrong samples weigh half each."""
    conf = conf.clamp(1e-4, 1 - 1e-4)
    n = correct.shape[0]
    n_right = correct.sum(dim=0, keepdim=True)
    n_wrong = n - n_right
    w = torch.where(correct > 0, n / (2.0 * n_right.clamp(min=1)), n / (2.0 * n_wrong.clamp(min=1)))
    return F.binary_cross_entropy(conf, correct, weight=w)


def nachos_loss(logits: Sequence[torch.Tensor], conf: torch.Tensor, y: torch.Tensor, exit_costs: torch.Tensor,
                cost_budget: float | None, support_scores: torch.Tensor | None, cfg: ExitTrainingConfig) -> torch.Tensor:
    probs = exit_probabilities(conf)
    ce = torch.stack([F.cross_entropy(lg, y, reduction="none") for lg in logits], dim=1)
    loss = cfg.w_cls * (ce * probs).sum(dim=1).mean()
    if conf.shape[1]:
        correct = torch.stack([(lg.argmax(1) == y).float() for lg in logits[:-1]], dim=1)
        loss = loss + cfg.w_bce * balanced_bce(conf, correct)
        if cost_budget is not None and cfg.w_cost:
            loss = loss + cfg.w_cost * cost_regulariser(probs, exit_costs, cost_budget)
        if support_scores is not None and cfg.w_support:
            loss = loss + cfg.w_support * F.mse_loss(conf, support_scores[y, : conf.shape[1]])
    return loss


def _class_balanced_subset(y: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean mask of about `fraction` of each class's samples; y, the mask and `gen` are on the CPU."""
    mask = torch.zeros(len(y), dtype=torch.bool)
    for k in torch.unique(y):
        idx = torch.nonzero(y == k).flatten()
        take = max(1, int(round(fraction * len(idx))))
        mask[idx[torch.randperm(len(idx), generator=gen)[:take]]] = True
    return mask


@torch.no_grad()
def _support_scores(heads, feats, y, n_classes) -> torch.Tensor:
    """S[k, i]: accuracy of exit i on the support samples of class k."""
    scores = torch.zeros(n_classes, len(heads), device=y.device)
    for i, head in enumerate(heads):
        pred = head(feats[i])[:, :n_classes].argmax(1)
        right = (pred == y).float()
        for k in range(n_classes):
            sel = y == k
            scores[k, i] = right[sel].mean() if sel.any() else 0.0
    return scores


def train_final_head(net, feats_final: torch.Tensor, y: torch.Tensor, cfg: ExitTrainingConfig, seed: int) -> list[float]:
    """Re-fit the final head (in place) on frozen backbone features with cross-entropy.

    An inherited final head is a compromise across every subnet sharing it; without this re-fit the freshly trained
    exit heads beat it and a candidate exits early on every input, which makes its deeper layers dead weight.
    """
    if cfg.final_head_epochs <= 0:
        return []
    head = net.heads[-1]
    device = feats_final.device
    y = y.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.final_head_lr, weight_decay=cfg.weight_decay)
    history = []
    head.train()
    for _ in range(cfg.final_head_epochs):
        order = torch.randperm(len(y), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            loss = F.cross_entropy(head(feats_final[b])[:, : net.n_classes], y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        history.append(total / len(order))
    head.eval()
    return history


def train_exit_heads(net, feats: list[torch.Tensor], y: torch.Tensor, exit_costs: Sequence[float],
                     cost_budget: float | None, cfg: ExitTrainingConfig, seed: int) -> list[float]:
    """Train the intermediate heads of `net` (in place) on cached exit features; the final head stays fixed."""
    n_inter = net.n_exits - 1
    if n_inter == 0:
        return []
    device = feats[-1].device
    y = y.to(device)
    y_cpu = y.cpu()  # the support sets are drawn on the CPU, as the batch order
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = list(net.heads[:n_inter])
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    with torch.no_grad():
        final_logits = net.heads[-1].eval()(feats[-1])
    costs = torch.as_tensor(list(exit_costs), dtype=torch.float32, device=device)
    budget = None
    if cost_budget is not None or cfg.cost_budget_fraction:
        candidates = [b for b in (cost_budget, cfg.cost_budget_fraction * float(costs[-1])) if b]
        budget = min(candidates) if candidates else None
    history = []
    for h in heads:
        h.train()
    for epoch in range(cfg.epochs):
        use_support = cfg.w_support > 0 and epoch >= cfg.support_from_epoch
        if use_support:
            support = _class_balanced_subset(y_cpu, cfg.support_fraction, gen)
            on_device = support.to(device)
            scores = _support_scores(heads, [f[on_device] for f in feats], y[on_device], net.n_classes)
            train_idx = torch.nonzero(~support).flatten()
        else:
            scores, train_idx = None, torch.arange(len(y))
        order = train_idx[torch.randperm(len(train_idx), generator=gen)].to(device)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            outs = [heads[i](feats[i][b]) for i in range(n_inter)]
            logits = [o[:, : net.n_classes] for o in outs] + [final_logits[b]]
            conf = torch.stack([torch.sigmoid(o[:, net.n_classes]) for o in outs], dim=1)
            loss = nachos_loss(logits, conf, y[b], costs, budget, scores, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        history.append(total / max(len(order), 1))
    for h in heads:
        h.eval()
    return history


@torch.no_grad()
def exit_outputs(net, feats: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class per exit (N, B) and intermediate confidences (N, B-1), from cached features (on any device)."""
    preds, confs = [], []
    for i, head in enumerate(net.heads):
        out = head.eval()(feats[i])
        preds.append(out[:, : net.n_classes].argmax(1))
        if i < net.n_exits - 1:
            confs.append(torch.sigmoid(out[:, net.n_classes]))
    conf = torch.stack(confs, dim=1) if confs else torch.zeros((len(preds[0]), 0))
    return torch.stack(preds, dim=1).cpu().numpy(), conf.cpu().numpy()
