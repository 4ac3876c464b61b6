"""EarlyExitNet: a backbone cut into segments, one exit head after each segment.

Layout (B = number of exits, B >= 1):
  segments[i]: h_{i-1} -> h_i   (segments[0] takes the image)
  heads[i]:    h_i -> logits    intermediate heads return n_classes + 1 columns, the last one the confidence
                                logit (c_i = sigmoid); the final head returns n_classes columns (c_B = 1).
Exit rule (NACHOS, cumulative): running survival s_i = prod_{j<=i} (1 - c_j); a sample leaves at the first
intermediate exit i with 1 - s_i >= thresholds[i], otherwise at the final exit. On a device this streams:
only segments and heads up to the taken exit run.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


def exit_decisions(confidences: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Exit index per sample. confidences: (N, B-1) sigmoid confidences of the intermediate exits."""
    n = confidences.shape[0]
    exit_idx = torch.full((n,), len(thresholds), dtype=torch.long)
    if len(thresholds) == 0:
        return exit_idx
    survival = torch.cumprod(1.0 - confidences, dim=1)
    fired = (1.0 - survival) >= torch.as_tensor(list(thresholds), dtype=confidences.dtype)
    any_fired = fired.any(dim=1)
    first = fired.float().argmax(dim=1)
    exit_idx[any_fired] = first[any_fired]
    return exit_idx


def take_exits(logits_per_exit: Sequence[torch.Tensor], exit_idx: torch.Tensor) -> torch.Tensor:
    """Gather, per sample, the class logits of the exit it took."""
    stacked = torch.stack([lg[:, : logits_per_exit[-1].shape[1]] for lg in logits_per_exit], dim=1)
    return stacked[torch.arange(stacked.shape[0]), exit_idx]


class ExitHead(nn.Module):
    """Intermediate exit of every space: ReLU -> conv3x3 to `channels` (stride 2 on maps of 8 px or more) -> ReLU ->
    GAP -> Linear(n_classes + 1).

    The extra output is the confidence logit (NACHOS / Pomponi et al.); no BN, as in the reference heads.
    """

    def __init__(self, c_in: int, spatial: int, n_classes: int, channels: int):
        super().__init__()
        stride = 2 if spatial >= 8 else 1
        self.pre = nn.ReLU()
        self.conv = nn.Conv2d(c_in, channels, 3, stride, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, n_classes + 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.conv(self.pre(h)))), 1))


class EarlyExitNet(nn.Module):
    def __init__(self, segments: Sequence[nn.Module], heads: Sequence[nn.Module], n_classes: int,
                 input_shape: Sequence[int], thresholds: Sequence[float] | None = None):
        super().__init__()
        if len(segments) != len(heads) or not segments:
            raise ValueError("an EarlyExitNet needs one head per segment and at least one segment")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.n_classes = int(n_classes)
        self.input_shape = tuple(int(s) for s in input_shape)  # (C, H, W) of one sample
        n_inter = len(segments) - 1
        thr = [1.0] * n_inter if thresholds is None else [float(t) for t in thresholds]
        if len(thr) != n_inter:
            raise ValueError(f"expected {n_inter} thresholds, got {len(thr)}")
        self.thresholds = thr

    @property
    def n_exits(self) -> int:
        return len(self.segments)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone output at every exit point."""
        feats = []
        for seg in self.segments:
            x = seg(x)
            feats.append(x)
        return feats

    def forward_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Class logits of every exit and the (N, B-1) confidences of the intermediate exits."""
        logits, conf = [], []
        for i, h in enumerate(self.features(x)):
            out = self.heads[i](h)
            if i < self.n_exits - 1:
                logits.append(out[:, : self.n_classes])
                conf.append(torch.sigmoid(out[:, self.n_classes]))
            else:
                logits.append(out)
        confidences = torch.stack(conf, dim=1) if conf else x.new_zeros((x.shape[0], 0))
        return logits, confidences

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-exit inference: (logits of the exit taken, exit index) per sample.

        Samples that exit stop flowing through the backbone, so later segments only see survivors.
        """
        n = x.shape[0]
        out_logits = x.new_zeros((n, self.n_classes))
        out_exit = torch.full((n,), self.n_exits - 1, dtype=torch.long, device=x.device)
        alive = torch.arange(n, device=x.device)
        survival = x.new_ones((n,))
        h = x
        for i in range(self.n_exits):
            h = self.segments[i](h)
            out = self.heads[i](h)
            if i == self.n_exits - 1:
                out_logits[alive] = out
                break
            survival = survival * (1.0 - torch.sigmoid(out[:, self.n_classes]))
            leave = (1.0 - survival) >= self.thresholds[i]
            out_logits[alive[leave]] = out[leave, : self.n_classes]
            out_exit[alive[leave]] = i
            keep = ~leave
            alive, h, survival = alive[keep], h[keep], survival[keep]
            if alive.numel() == 0:
                break
        return out_logits, out_exit


def drop_exits(net: EarlyExitNet, keep: Sequence[bool], thresholds: Sequence[float]) -> EarlyExitNet:
    """Remove the intermediate exits not kept: their segments merge with the next one. Weights are shared."""
    segments, heads, pending = [], [], []
    for i in range(net.n_exits):
        pending.append(net.segments[i])
        if i == net.n_exits - 1 or keep[i]:
            segments.append(pending[0] if len(pending) == 1 else nn.Sequential(*pending))
            heads.append(net.heads[i])
            pending = []
    out = EarlyExitNet(segments, heads, net.n_classes, net.input_shape, thresholds)
    return out.train(net.training)


def class_logits_head(head: nn.Module, n_classes: int) -> nn.Module:
    """A copy of an intermediate head without its confidence output: the row n_classes of its last Linear with
    n_classes + 1 outputs is removed, so the copy returns exactly the head's class logits (n_classes columns)."""
    out = copy.deepcopy(head)
    found = [name for name, m in out.named_modules() if isinstance(m, nn.Linear) and m.out_features == n_classes + 1]
    if not found:
        raise ValueError(f"{type(head).__name__} has no Linear layer with n_classes + 1 = {n_classes + 1} outputs")
    parent_name, _, attr = found[-1].rpartition(".")
    parent = out.get_submodule(parent_name)
    old = getattr(parent, attr)
    new = nn.Linear(old.in_features, n_classes, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[:n_classes])
        if old.bias is not None:
            new.bias.copy_(old.bias[:n_classes])
    setattr(parent, attr, new)
    return out


def truncate_after(net: EarlyExitNet, exit_index: int) -> EarlyExitNet:
    """The network cut after intermediate exit `exit_index`, which becomes its final exit.

    For a policy under which no sample reaches the later exits, the layers after this exit are dead weight on the
    device (flash, and worst-case latency): the shorter network gives exactly the longer one's class logits to every
    sample that leaves at or before this exit. Segments and earlier heads are shared; the new final head is a copy of
    the intermediate head without its confidence row; the thresholds of the earlier exits are kept."""
    if not 0 <= exit_index < net.n_exits - 1:
        raise ValueError(f"exit {exit_index} is not an intermediate exit of a {net.n_exits}-exit network")
    heads = list(net.heads[:exit_index]) + [class_logits_head(net.heads[exit_index], net.n_classes)]
    out = EarlyExitNet(list(net.segments[: exit_index + 1]), heads, net.n_classes, net.input_shape,
                       net.thresholds[:exit_index])
    return out.train(net.training)


def deployed_network(net: EarlyExitNet, active: Sequence[bool], thresholds: Sequence[float],
                     truncated_after_exit: int | None = None) -> EarlyExitNet:
    """The network an exit policy deploys: cut after exit `truncated_after_exit` (an index into `net`'s exits, one the
    policy keeps) when given, then the inactive heads dropped. `thresholds` are those of the deployed network's
    intermediate exits (the truncation exit, now final, has none)."""
    if truncated_after_exit is None:
        return drop_exits(net, active, thresholds)
    if not active[truncated_after_exit]:
        raise ValueError(f"cannot truncate after exit {truncated_after_exit}: the policy disables it")
    return drop_exits(truncate_after(net, truncated_after_exit), active[:truncated_after_exit], thresholds)
