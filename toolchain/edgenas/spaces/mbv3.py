"""`mbv3`: an elastic MobileNetV3-like backbone sized for microcontrollers, with an exit slot after each stage.

Genome (integer vector, every gene with its own bounds, see `Mbv3Space.bounds`):
  [resolution, width, (depth, kernel x MAX_DEPTH, expand x MAX_DEPTH) x N_STAGES, exit x (N_STAGES - 1)]
Genes of layers above a stage's depth are inactive; `canonical` sets them to 0 so that two genomes that decode to
the same network have the same key. Exit gene i = 1 places an early-exit head after stage i (all zero = no exits).

The supernet holds the largest weights; a subnet slices them (first channels, centre of the kernel, first layers), as
in once-for-all, but without learned kernel transforms. `Mbv3Space.build(arch, supernet)` returns a standalone
EarlyExitNet with copied weights (intermediate heads freshly initialised; they are trained per candidate).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import EarlyExitNet, ExitHead
from edgenas.spaces import register_space

RESOLUTIONS = (16, 24, 32)
WIDTHS = (0.5, 0.75, 1.0)
DEPTHS = (1, 2, 3)
KERNELS = (3, 5, 7)
EXPANDS = (2, 3, 4, 6)
STAGE_CHANNELS = (16, 24, 40, 64)     # at width 1.0
STAGE_STRIDES = (1, 2, 2, 1)
STAGE_HSWISH = (False, False, True, True)
STEM_CHANNELS = 16
STEM_STRIDE = 2
FINAL_HIDDEN = 128                    # final head 1x1 expansion at width 1.0
EXIT_HEAD_CHANNELS = 24               # intermediate exit head conv width
N_STAGES = len(STAGE_CHANNELS)
MAX_DEPTH = max(DEPTHS)


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier, rounded to a multiple of 4 (SIMD-friendly on Cortex-M)."""
    return max(4, int(math.ceil(channels * width / 4.0)) * 4)


@dataclass(frozen=True)
class StageConfig:
    depth: int
    kernels: tuple[int, ...]   # one per active layer
    expands: tuple[int, ...]


@dataclass(frozen=True)
class ArchConfig:
    resolution: int
    width: float
    stages: tuple[StageConfig, ...]
    exits: tuple[bool, ...]    # early exit after stage i, i < N_STAGES - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ArchConfig":
        return ArchConfig(int(d["resolution"]), float(d["width"]),
                          tuple(StageConfig(int(s["depth"]), tuple(int(k) for k in s["kernels"]),
                                            tuple(int(e) for e in s["expands"])) for s in d["stages"]),
                          tuple(bool(b) for b in d["exits"]))

    def describe(self) -> str:
        st = " ".join(f"d{s.depth}:k{''.join(map(str, s.kernels))}:e{''.join(map(str, s.expands))}" for s in self.stages)
        ex = "".join("1" if b else "0" for b in self.exits)
        return f"r{self.resolution} w{self.width} {st} exits={ex}"


# ----------------------------------------------------------------------------------------------------------------
# elastic layers: slice the largest weights
class DynamicConv(nn.Module):
    def __init__(self, max_in: int, max_out: int, max_k: int, depthwise: bool = False):
        super().__init__()
        self.depthwise = depthwise
        shape = (max_out, 1, max_k, max_k) if depthwise else (max_out, max_in, max_k, max_k)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def active_weight(self, c_in: int, c_out: int, k: int) -> torch.Tensor:
        max_k = self.weight.shape[-1]
        lo = (max_k - k) // 2
        if self.depthwise:
            return self.weight[:c_out, :, lo:lo + k, lo:lo + k]
        return self.weight[:c_out, :c_in, lo:lo + k, lo:lo + k]

    def forward(self, x: torch.Tensor, c_out: int, k: int, stride: int = 1) -> torch.Tensor:
        c_in = x.shape[1]
        w = self.active_weight(c_in, c_out, k)
        return F.conv2d(x, w, None, stride, k // 2, 1, c_in if self.depthwise else 1)


class DynamicBN(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mom = 0.0 if self.momentum is None else self.momentum
        if self.training and self.momentum is None:
            self.num_batches_tracked += 1
            mom = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, mom, self.eps)


class DynamicLinear(nn.Module):
    def __init__(self, max_in: int, out: int):
        super().__init__()
        self.linear = nn.Linear(max_in, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.linear.weight[:, : x.shape[1]], self.linear.bias)


def _act(hswish: bool) -> nn.Module:
    return nn.Hardswish() if hswish else nn.ReLU()


class DynamicMBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise (stride) -> 1x1 project, residual when shapes allow."""

    def __init__(self, max_in: int, max_out: int, stride: int, hswish: bool):
        super().__init__()
        max_hidden = max_in * max(EXPANDS)
        self.stride, self.hswish = stride, hswish
        self.expand = DynamicConv(max_in, max_hidden, 1)
        self.bn1 = DynamicBN(max_hidden)
        self.dw = DynamicConv(max_hidden, max_hidden, max(KERNELS), depthwise=True)
        self.bn2 = DynamicBN(max_hidden)
        self.project = DynamicConv(max_hidden, max_out, 1)
        self.bn3 = DynamicBN(max_out)
        self.act = _act(hswish)

    def forward(self, x: torch.Tensor, c_out: int, k: int, e: int) -> torch.Tensor:
        hidden = x.shape[1] * e
        h = self.act(self.bn1(self.expand(x, hidden, 1)))
        h = self.act(self.bn2(self.dw(h, hidden, k, self.stride)))
        h = self.bn3(self.project(h, c_out, 1))
        if self.stride == 1 and x.shape[1] == c_out:
            h = h + x
        return h


class Mbv3Supernet(nn.Module):
    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        self.in_channels, self.n_classes = in_channels, n_classes
        self.stem = DynamicConv(in_channels, STEM_CHANNELS, 3)
        self.stem_bn = DynamicBN(STEM_CHANNELS)
        self.stem_act = nn.ReLU()
        self.stages = nn.ModuleList()
        c_in = STEM_CHANNELS
        for s in range(N_STAGES):
            blocks = nn.ModuleList()
            for layer in range(MAX_DEPTH):
                stride = STAGE_STRIDES[s] if layer == 0 else 1
                blocks.append(DynamicMBConv(c_in if layer == 0 else STAGE_CHANNELS[s], STAGE_CHANNELS[s], stride,
                                            STAGE_HSWISH[s]))
            self.stages.append(blocks)
            c_in = STAGE_CHANNELS[s]
        self.final_conv = DynamicConv(STAGE_CHANNELS[-1], FINAL_HIDDEN, 1)
        self.final_bn = DynamicBN(FINAL_HIDDEN)
        self.final_act = nn.Hardswish()
        self.classifier = DynamicLinear(FINAL_HIDDEN, n_classes)

    def forward(self, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        """Final-exit logits of the subnet `arch` (x already at arch.resolution)."""
        w = arch.width
        h = self.stem_act(self.stem_bn(self.stem(x, scaled(STEM_CHANNELS, w), 3, STEM_STRIDE)))
        for s, cfg in enumerate(arch.stages):
            for layer in range(cfg.depth):
                h = self.stages[s][layer](h, scaled(STAGE_CHANNELS[s], w), cfg.kernels[layer], cfg.expands[layer])
        h = self.final_act(self.final_bn(self.final_conv(h, scaled(FINAL_HIDDEN, w), 1)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# ----------------------------------------------------------------------------------------------------------------
# static (deployable) modules with weights copied out of the supernet
def _static_conv(dyn: DynamicConv, c_in: int, c_out: int, k: int, stride: int) -> nn.Conv2d:
    groups = c_in if dyn.depthwise else 1
    conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
    conv.weight.data.copy_(dyn.active_weight(c_in, c_out, k))
    return conv


def _static_bn(dyn: DynamicBN, c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name).data.copy_(getattr(dyn, name)[:c])
    return bn


class MBConv(nn.Module):
    def __init__(self, expand, bn1, dw, bn2, project, bn3, hswish: bool, residual: bool):
        super().__init__()
        self.expand, self.bn1, self.dw, self.bn2, self.project, self.bn3 = expand, bn1, dw, bn2, project, bn3
        self.act1, self.act2 = _act(hswish), _act(hswish)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.expand(x)))
        h = self.act2(self.bn2(self.dw(h)))
        h = self.bn3(self.project(h))
        return h + x if self.residual else h


class FinalHead(nn.Module):
    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, fc: nn.Linear):
        super().__init__()
        self.conv, self.bn, self.act, self.pool, self.fc = conv, bn, nn.Hardswish(), nn.AdaptiveAvgPool2d(1), fc

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.bn(self.conv(h)))), 1))


class Stem(nn.Module):
    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def stage_spatial(resolution: int) -> list[int]:
    """Feature-map side after each stage."""
    side = math.ceil(resolution / STEM_STRIDE)
    out = []
    for s in STAGE_STRIDES:
        side = math.ceil(side / s)
        out.append(side)
    return out


# ----------------------------------------------------------------------------------------------------------------
@register_space("mbv3")
class Mbv3Space:
    """Genome <-> ArchConfig, random sampling, supernet and standalone-network construction."""

    name = "mbv3"
    exit_genes = slice(-(N_STAGES - 1), None)  # one gene per exit slot (after stages 1..N-1), last in the genome
    arch_from_dict = staticmethod(ArchConfig.from_dict)

    def __init__(self, resolutions: Sequence[int] = RESOLUTIONS):
        self.resolutions = tuple(int(r) for r in resolutions)
        ub = [len(self.resolutions) - 1, len(WIDTHS) - 1]
        for _ in range(N_STAGES):
            ub += [len(DEPTHS) - 1] + [len(KERNELS) - 1] * MAX_DEPTH + [len(EXPANDS) - 1] * MAX_DEPTH
        ub += [1] * (N_STAGES - 1)
        self.upper = np.array(ub, dtype=int)
        self.lower = np.zeros_like(self.upper)

    @property
    def n_var(self) -> int:
        return len(self.upper)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower.copy(), self.upper.copy()

    # genome layout helpers
    @staticmethod
    def _stage_offset(s: int) -> int:
        return 2 + s * (1 + 2 * MAX_DEPTH)

    def _check(self, x: Sequence[int]) -> np.ndarray:
        g = np.asarray(x)
        if g.shape != (self.n_var,):
            raise EdgenasError(f"mbv3 genome must have {self.n_var} genes, got shape {g.shape}")
        gi = np.rint(g).astype(int)
        if np.any(gi < self.lower) or np.any(gi > self.upper):
            bad = int(np.flatnonzero((gi < self.lower) | (gi > self.upper))[0])
            raise EdgenasError(f"mbv3 gene {bad} = {gi[bad]} is outside [0, {self.upper[bad]}]")
        return gi

    def decode(self, x: Sequence[int]) -> ArchConfig:
        g = self._check(x)
        stages = []
        for s in range(N_STAGES):
            o = self._stage_offset(s)
            d = DEPTHS[g[o]]
            ks = tuple(KERNELS[i] for i in g[o + 1: o + 1 + d])
            es = tuple(EXPANDS[i] for i in g[o + 1 + MAX_DEPTH: o + 1 + MAX_DEPTH + d])
            stages.append(StageConfig(d, ks, es))
        exits = tuple(bool(b) for b in g[-(N_STAGES - 1):])
        return ArchConfig(self.resolutions[g[0]], WIDTHS[g[1]], tuple(stages), exits)

    def encode(self, arch: ArchConfig) -> np.ndarray:
        try:
            g = [self.resolutions.index(arch.resolution), WIDTHS.index(arch.width)]
            for s in arch.stages:
                pad = MAX_DEPTH - s.depth
                g += [DEPTHS.index(s.depth)] + [KERNELS.index(k) for k in s.kernels] + [0] * pad
                g += [EXPANDS.index(e) for e in s.expands] + [0] * pad
        except ValueError as exc:
            raise EdgenasError(f"architecture {arch.describe()} is not in the mbv3 space: {exc}") from None
        g += [int(b) for b in arch.exits]
        return np.array(g, dtype=int)

    def canonical(self, x: Sequence[int]) -> np.ndarray:
        return self.encode(self.decode(x))

    def key(self, x: Sequence[int]) -> str:
        return "".join(str(v) for v in self.canonical(x))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.canonical(rng.integers(self.lower, self.upper + 1))

    def smallest(self, exits: bool = False) -> ArchConfig:
        return self.decode(np.concatenate([self.lower[:-(N_STAGES - 1)], np.full(N_STAGES - 1, int(exits))]))

    def largest(self, exits: bool = False) -> ArchConfig:
        return self.decode(np.concatenate([self.upper[:-(N_STAGES - 1)], np.full(N_STAGES - 1, int(exits))]))

    # networks
    def supernet(self, in_channels: int, n_classes: int) -> Mbv3Supernet:
        return Mbv3Supernet(in_channels, n_classes)

    def build(self, arch: ArchConfig, supernet: Mbv3Supernet, head_seed: int = 0) -> EarlyExitNet:
        """Standalone EarlyExitNet with weights copied from the supernet; exit heads freshly initialised."""
        w = arch.width
        modules: list[list[nn.Module]] = [[]]
        c = scaled(STEM_CHANNELS, w)
        modules[0].append(Stem(_static_conv(supernet.stem, supernet.in_channels, c, 3, STEM_STRIDE),
                               _static_bn(supernet.stem_bn, c)))
        spatial = stage_spatial(arch.resolution)
        gen = torch.Generator().manual_seed(head_seed)
        heads: list[nn.Module] = []
        for s, cfg in enumerate(arch.stages):
            c_out = scaled(STAGE_CHANNELS[s], w)
            for layer in range(cfg.depth):
                dyn = supernet.stages[s][layer]
                e, k = cfg.expands[layer], cfg.kernels[layer]
                hidden = c * e
                stride = dyn.stride
                modules[-1].append(MBConv(
                    _static_conv(dyn.expand, c, hidden, 1, 1), _static_bn(dyn.bn1, hidden),
                    _static_conv(dyn.dw, hidden, hidden, k, stride), _static_bn(dyn.bn2, hidden),
                    _static_conv(dyn.project, hidden, c_out, 1, 1), _static_bn(dyn.bn3, c_out),
                    dyn.hswish, residual=(stride == 1 and c == c_out)))
                c = c_out
            if s < N_STAGES - 1 and arch.exits[s]:
                with torch.random.fork_rng():
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                    heads.append(ExitHead(c, spatial[s], supernet.n_classes, EXIT_HEAD_CHANNELS))
                modules.append([])
        hidden = scaled(FINAL_HIDDEN, w)
        fc = nn.Linear(hidden, supernet.n_classes)
        fc.weight.data.copy_(supernet.classifier.linear.weight[:, :hidden])
        fc.bias.data.copy_(supernet.classifier.linear.bias)
        heads.append(FinalHead(_static_conv(supernet.final_conv, c, hidden, 1, 1),
                               _static_bn(supernet.final_bn, hidden), fc))
        segments = [nn.Sequential(*mods) for mods in modules]
        return EarlyExitNet(segments, heads, supernet.n_classes, (supernet.in_channels, arch.resolution, arch.resolution))

    def build_empty(self, arch: ArchConfig, in_channels: int, n_classes: int) -> EarlyExitNet:
        """The same network with untrained weights (for loading a checkpoint's state_dict)."""
        return self.build(arch, Mbv3Supernet(in_channels, n_classes))


