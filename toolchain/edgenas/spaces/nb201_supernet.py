"""The `nb201` supernet: every edge a mixed op (sum of all ops weighted by the architecture probabilities, which are
passed to `forward`), BN without affine parameters and with batch statistics, as in the reference search code. Given a
discrete network instead of probabilities (a Nb201NetConfig), it computes that network's ops only: the single path
that NACHOS/FlatNAS train with the sandwich rule, and Nb201Space.build copies weights from.
"""
from __future__ import annotations

import torch
from torch import nn

from edgenas.spaces.nb201 import (EDGES, N_NODES, OPS, Nb201Arch, ResNetBasicBlock, Stem, make_op, stage_channels,
                                  sum_terms)


class MixedEdge(nn.Module):
    """All ops of one edge, summed with the edge's probabilities. `none` adds exactly zero and is not computed."""

    def __init__(self, c: int):
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, c, affine=False, track=False) for name in OPS[1:])

    def forward(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        out = probs[1] * self.ops[0](x)
        for k in range(1, len(self.ops)):
            out = out + probs[k + 1] * self.ops[k](x)
        return out


class SearchCell(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(c) for _ in EDGES)

    def forward(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, N_NODES):
            nodes.append(sum(self.edges[EDGES.index((i, j))](nodes[j], probs[EDGES.index((i, j))]) for j in range(i)))
        return nodes[-1]

    def single_path(self, x: torch.Tensor, arch: Nb201Arch) -> torch.Tensor:
        """The cell of `arch` with this cell's weights: the useful edges only, each its chosen op."""
        nodes = {0: x}
        for i in range(1, N_NODES):
            terms = [self.edges[EDGES.index((t, j))].ops[OPS.index(arch.ops[EDGES.index((t, j))]) - 1](nodes[j])
                     for t, j in arch.useful_edges() if t == i]
            if terms:
                nodes[i] = sum_terms(terms)
        return nodes[N_NODES - 1]


class Nb201Supernet(nn.Module):
    """Weights of the search network; the (6, 5) op probabilities are an input, so alpha lives with the optimiser."""

    def __init__(self, in_channels: int, n_classes: int, C: int = 16, N: int = 3):
        super().__init__()
        self.in_channels, self.n_classes, self.C, self.N = in_channels, n_classes, C, N
        chans = stage_channels(C)
        self.stem = Stem(in_channels, C, affine=False, track=False)
        self.stages = nn.ModuleList()
        self.reductions = nn.ModuleList()
        for s, c in enumerate(chans):
            if s:
                self.reductions.append(ResNetBasicBlock(chans[s - 1], c, affine=False, track=False))
            self.stages.append(nn.ModuleList(SearchCell(c) for _ in range(N)))
        self.head_bn = nn.BatchNorm2d(chans[-1], affine=False, track_running_stats=False)
        self.classifier = nn.Linear(chans[-1], n_classes)

    def forward(self, x: torch.Tensor, probs) -> torch.Tensor:
        """Final logits with every edge mixed by `probs` (6 x 5, ZO-DARTS+), or of one discrete network (a
        Nb201NetConfig: only its ops are computed, the single path NACHOS/FlatNAS train with the sandwich rule)."""
        h = self.stem(x)
        for s, cells in enumerate(self.stages):
            if s:
                h = self.reductions[s - 1](h)
            for cell in cells:
                h = cell(h, probs) if isinstance(probs, torch.Tensor) else cell.single_path(h, probs.arch)
        h = torch.relu(self.head_bn(h))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))
