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
