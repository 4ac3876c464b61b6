"""`nb201`: the NAS-Bench-201 cell space (Dong & Yang, 2020), the space ZO-DARTS+ searches.

Cell: a DAG of 4 nodes; node 0 is the cell input, node i (1..3) sums one edge from every node j < i, node 3 is the
output, so a cell has 6 edges. Each edge carries one of 5 ops:
  none           the edge is absent (contributes zero)
  skip_connect   identity
  nor_conv_1x1   ReLU -> Conv 1x1 -> BN
  nor_conv_3x3   ReLU -> Conv 3x3 -> BN
  avg_pool_3x3   3x3 average pool, stride 1, padding excluded from the mean
Edge order (rows of the architecture matrix alpha): 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2.
Architecture string (the NAS-Bench-201 format, one `+`-separated group per node, `op~source`):
  |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

Network: stem (Conv 3x3 -> BN, stride 1) -> N cells at C channels -> reduction -> N cells at 2C -> reduction ->
N cells at 4C -> head. A reduction is a fixed ResNet basic block with stride 2 (ReLU-Conv3x3/2-BN, ReLU-Conv3x3-BN,
shortcut AvgPool 2x2 -> Conv 1x1). Every cell of the network uses the same architecture (as in NAS-Bench-201).

Two builds:
- `Nb201Supernet` (spaces/nb201_supernet.py): every edge a mixed op, for ZO-DARTS+; or one discrete network's ops,
  for NACHOS/FlatNAS;
- `build_early_exit_net`: a discrete architecture as a standalone EarlyExitNet, 3 segments (stem + stage 1,
  reduction + stage 2, reduction + stage 3) with an exit head after each, BN affine with running statistics so it
  evaluates and exports in eval mode. Edges whose input or output can never reach the cell output are not built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import EarlyExitNet, ExitHead, drop_exits
from edgenas.spaces import register_space

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
N_NODES = 4
EDGES = tuple((i, j) for i in range(1, N_NODES) for j in range(i))   # (target, source), alpha row order
N_STAGES = 3
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


# ---------------------------------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class Nb201Arch:
    """One op name per edge, in EDGES order."""
    ops: tuple[str, ...]

    def __post_init__(self):
        if len(self.ops) != len(EDGES) or any(op not in OPS for op in self.ops):
            raise EdgenasError(f"an nb201 cell needs {len(EDGES)} ops from {', '.join(OPS)}, got {self.ops}",
                               f"e.g. {EXAMPLE}")

    @staticmethod
    def parse(text: str) -> "Nb201Arch":
        """Parse a NAS-Bench-201 string such as `EXAMPLE`."""
        fix = f"write one |op~source| group per node, e.g. {EXAMPLE}"
        groups = text.strip().split("+")
        if len(groups) != N_NODES - 1:
            raise EdgenasError(f"nb201 string '{text}' has {len(groups)} node groups, expected {N_NODES - 1}", fix)
        by_edge = {}
        for i, group in enumerate(groups, start=1):
            if not (group.startswith("|") and group.endswith("|")) or len(group) < 2:
                raise EdgenasError(f"nb201 node group '{group}' is not enclosed in '|'", fix)
            items = group[1:-1].split("|")
            if len(items) != i:
                raise EdgenasError(f"nb201 node {i} lists {len(items)} edges ('{group}'), expected {i}", fix)
            for item in items:
                op, _, src = item.partition("~")
                if op not in OPS:
                    raise EdgenasError(f"unknown nb201 op '{op}' in '{group}'", f"use one of {', '.join(OPS)}")
                if not src.isdigit() or int(src) >= i or (i, int(src)) in by_edge:
                    raise EdgenasError(f"nb201 node {i} has a bad or repeated source '{src}' in '{group}'",
                                       f"node {i} takes each source 0..{i - 1} exactly once")
                by_edge[(i, int(src))] = op
        return Nb201Arch(tuple(by_edge[e] for e in EDGES))

    def to_string(self) -> str:
        groups = []
        for i in range(1, N_NODES):
            groups.append("|" + "|".join(f"{self.ops[EDGES.index((i, j))]}~{j}" for j in range(i)) + "|")
        return "+".join(groups)

    @staticmethod
    def from_indices(indices: Sequence[int]) -> "Nb201Arch":
        return Nb201Arch(tuple(OPS[int(k)] for k in indices))

    def indices(self) -> tuple[int, ...]:
        return tuple(OPS.index(op) for op in self.ops)

    def useful_edges(self) -> tuple[tuple[int, int], ...]:
        """Non-none edges on some path from node 0 to node 3; the others never change the cell output."""
        live = {0}                       # nodes that depend on the input
        for i in range(1, N_NODES):
            if any(self.ops[EDGES.index((i, j))] != "none" and j in live for j in range(i)):
                live.add(i)
        feeds = {N_NODES - 1}            # nodes the output depends on
        for j in range(N_NODES - 2, -1, -1):
            if any(self.ops[EDGES.index((i, j))] != "none" and i in feeds for i in range(j + 1, N_NODES)):
                feeds.add(j)
        return tuple(e for e, op in zip(EDGES, self.ops) if op != "none" and e[1] in live and e[0] in feeds)

    def is_connected(self) -> bool:
        """Whether the cell output depends on its input (some path of non-none edges from node 0 to node 3)."""
        return bool(self.useful_edges())


# ---------------------------------------------------------------------------------------------------- operations
class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, affine: bool, track: bool):
        # with a non-affine BN the conv keeps its bias (the reference search ops do the same)
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=not affine),
                         nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track))


def make_op(name: str, c: int, affine: bool, track: bool) -> nn.Module:
    """The module of a non-none op at c channels, stride 1."""
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, affine, track)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, affine, track)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise EdgenasError(f"op '{name}' has no module", f"use one of {', '.join(OPS[1:])}")


class ResNetBasicBlock(nn.Module):
    """The fixed reduction between stages: stride-2 residual block, channels c_in -> c_out."""

    def __init__(self, c_in: int, c_out: int, affine: bool, track: bool):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine, track)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine, track)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class Stem(nn.Sequential):
    def __init__(self, in_channels: int, c: int, affine: bool, track: bool):
        super().__init__(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(c, affine=affine, track_running_stats=track))


def stage_channels(C: int) -> tuple[int, ...]:
    return tuple(C * 2 ** s for s in range(N_STAGES))


def stage_sides(resolution: int) -> tuple[int, ...]:
    return tuple(resolution // 2 ** s for s in range(N_STAGES))


def check_resolution(resolution: int) -> None:
    # two stride-2 reductions whose conv and average-pool paths must agree in size
    if resolution < 8 or resolution % 4:
        raise EdgenasError(f"nb201 input resolution {resolution} is not a multiple of 4 (>= 8)",
                           "use e.g. 16, 20, 24, 28 or 32")


# ---------------------------------------------------------------------------------------------------- derived net
class Cell(nn.Module):
    """A discrete cell: only the useful edges are built; node i sums the edges that reach it."""

    def __init__(self, arch: Nb201Arch, c: int):
        super().__init__()
        edges = arch.useful_edges()
        if not edges:
            raise EdgenasError(f"nb201 cell {arch.to_string()} has no path from its input to its output",
                               "use an architecture with a chain of non-none ops from node 0 to node 3")
        self.arch = arch
        self.edges = tuple(edges)
        self.ops = nn.ModuleList(make_op(arch.ops[EDGES.index(e)], c, affine=True, track=True) for e in edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = {0: x}
        for i in range(1, N_NODES):
            terms = [op(nodes[j]) for (t, j), op in zip(self.edges, self.ops) if t == i]
            if terms:
                nodes[i] = sum_terms(terms)
        return nodes[N_NODES - 1]


def sum_terms(terms: list[torch.Tensor]) -> torch.Tensor:
    """terms[0] + terms[1] + ... in that order (plain additions: they export as ONNX Add nodes)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def arch_of(net: nn.Module) -> Nb201Arch:
    """The architecture every cell of a derived network was built from."""
    archs = {m.arch for m in net.modules() if isinstance(m, Cell)}
    if len(archs) != 1:
        raise EdgenasError(f"network holds {len(archs)} distinct nb201 cell architectures, expected 1",
                           "pass a network built by build_early_exit_net")
    return archs.pop()


class FinalHead(nn.Module):
    """BN -> ReLU -> GAP -> Linear(n_classes), the NAS-Bench-201 classifier."""

    def __init__(self, c_in: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.bn(h))), 1))


def build_early_exit_net(arch: str | Nb201Arch, n_classes: int, in_channels: int, resolution: int, C: int = 16,
                         N: int = 3, thresholds: Sequence[float] | None = None,
                         exits: Sequence[bool] | None = None) -> EarlyExitNet:
    """The discrete network of `arch` (an NAS-Bench-201 string or an Nb201Arch) with an exit after every stage, or
    after the stages `exits` marks (one flag per intermediate exit slot; the stages between merge into one segment).

    Segments: stem + N cells, reduction + N cells, reduction + N cells. Freshly initialised weights.
    """
    arch = Nb201Arch.parse(arch) if isinstance(arch, str) else arch
    check_resolution(resolution)
    if C < 1 or N < 1 or n_classes < 2 or in_channels < 1:
        raise EdgenasError(f"nb201 network needs C >= 1, N >= 1, n_classes >= 2, in_channels >= 1 "
                           f"(got C={C}, N={N}, n_classes={n_classes}, in_channels={in_channels})",
                           "pass positive sizes")
    chans, sides = stage_channels(C), stage_sides(resolution)
    segments, heads = [], []
    for s in range(N_STAGES):
        first = Stem(in_channels, C, affine=True, track=True) if s == 0 else \
            ResNetBasicBlock(chans[s - 1], chans[s], affine=True, track=True)
        segments.append(nn.Sequential(first, *[Cell(arch, chans[s]) for _ in range(N)]))
        heads.append(ExitHead(chans[s], sides[s], n_classes, channels=chans[s]) if s < N_STAGES - 1
                     else FinalHead(chans[s], n_classes))
    if exits is None or all(exits):
        return EarlyExitNet(segments, heads, n_classes, (in_channels, resolution, resolution), thresholds)
    net = EarlyExitNet(segments, heads, n_classes, (in_channels, resolution, resolution))
    return drop_exits(net, list(exits), thresholds)


def edge_probe(op: str, c: int) -> nn.Module:
    """One edge as deployed, with the node addition it feeds: op(x) + x (for the cost model)."""
    return _EdgeProbe(make_op(op, c, affine=True, track=True))


class _EdgeProbe(nn.Module):
    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) + x


# ---------------------------------------------------------------------------------------------------- space
@register_space("nb201")
class Nb201Space:
    """Genome = 6 op indices (one per edge, EDGES order, values index OPS), then one gene per intermediate exit slot
    (after stages 1 and 2: 1 places an exit head there). Network sizes (C, N, resolution) are fixed per space."""

    name = "nb201"
    exit_genes = slice(-(N_STAGES - 1), None)  # one gene per exit slot, last in the genome (as mbv3's)

    def __init__(self, C: int = 16, N: int = 3, resolution: int = 32):
        check_resolution(resolution)
        self.C, self.N, self.resolution = int(C), int(N), int(resolution)
        self.lower = np.zeros(len(EDGES) + N_STAGES - 1, dtype=int)
        self.upper = np.array([len(OPS) - 1] * len(EDGES) + [1] * (N_STAGES - 1), dtype=int)

    @property
    def n_var(self) -> int:
        return len(EDGES) + N_STAGES - 1

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower.copy(), self.upper.copy()

    def decode(self, x: Sequence[int]) -> "Nb201NetConfig":
        g = np.rint(np.asarray(x)).astype(int)
        if g.shape != (self.n_var,) or np.any(g < self.lower) or np.any(g > self.upper):
            raise EdgenasError(f"nb201 genome must be {len(EDGES)} op indices in [0, {len(OPS) - 1}] and "
                               f"{N_STAGES - 1} exit flags, got {list(g)}", f"index OPS = {OPS}")
        return Nb201NetConfig(Nb201Arch.from_indices(g[:len(EDGES)]), self.C, self.N, self.resolution,
                              tuple(bool(b) for b in g[self.exit_genes]))

    def encode(self, net: "Nb201NetConfig") -> np.ndarray:
        return np.array([*net.arch.indices(), *(int(b) for b in net.exits)], dtype=int)

    def canonical(self, x: Sequence[int]) -> np.ndarray:
        return self.encode(self.decode(x))

    def key(self, x: Sequence[int]) -> str:
        return self.decode(x).describe()

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A random cell whose output depends on its input, with random exit flags."""
        while True:
            g = rng.integers(self.lower, self.upper + 1)
            if self.decode(g).arch.is_connected():
                return g

    def _with_exits(self, ops: str, exits: bool) -> "Nb201NetConfig":
        return Nb201NetConfig(Nb201Arch.parse(ops), self.C, self.N, self.resolution, (exits,) * (N_STAGES - 1))

    def smallest(self, exits: bool = False) -> "Nb201NetConfig":
        """The cheapest connected cell: the input passed straight to the output (a skip_connect 3 <- 0)."""
        return self._with_exits("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", exits)

    def largest(self, exits: bool = False) -> "Nb201NetConfig":
        """The most expensive cell: a 3x3 convolution on every edge."""
        return self._with_exits("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                                "nor_conv_3x3~2|", exits)

    def supernet(self, in_channels: int, n_classes: int):
        from edgenas.spaces.nb201_supernet import Nb201Supernet
        return Nb201Supernet(in_channels, n_classes, self.C, self.N)

    def build(self, net: "Nb201NetConfig", supernet, head_seed: int = 0) -> EarlyExitNet:
        """Standalone EarlyExitNet of `net` with the supernet's convolution and classifier weights (its BN layers
        start as identities: the supernet's BN has no parameters and batch statistics; the evaluator re-estimates
        them); exit heads freshly initialised from `head_seed`."""
        with torch.random.fork_rng():
            torch.manual_seed(head_seed)
            full = build_early_exit_net(net.arch, supernet.n_classes, supernet.in_channels, net.resolution,
                                        supernet.C, supernet.N)
        for s in range(N_STAGES):
            first, *cells = full.segments[s]
            copy_convs(supernet.stem if s == 0 else supernet.reductions[s - 1], first)
            for cell, search_cell in zip(cells, supernet.stages[s]):
                for (t, j), op in zip(cell.edges, cell.ops):
                    copy_convs(search_cell.edges[EDGES.index((t, j))].ops[OPS.index(cell.arch.ops[EDGES.index((t, j))]) - 1], op)
        with torch.no_grad():
            full.heads[-1].fc.weight.copy_(supernet.classifier.weight)
            full.heads[-1].fc.bias.copy_(supernet.classifier.bias)
        return full if all(net.exits) else drop_exits(full, list(net.exits), None)

    @staticmethod
    def arch_from_dict(d: dict) -> "Nb201NetConfig":
        return Nb201NetConfig.from_dict(d)

    def arch_to_dict(self, arch: Nb201Arch) -> dict:
        return Nb201NetConfig(arch, self.C, self.N, self.resolution).to_dict()

    def build_empty(self, arch: "Nb201Arch | Nb201NetConfig | str", in_channels: int, n_classes: int) -> EarlyExitNet:
        """Untrained network of `arch`; a Nb201NetConfig brings its own sizes and exits, otherwise the space's are
        used (with an exit after every stage)."""
        if isinstance(arch, Nb201NetConfig):
            return arch.build(in_channels, n_classes)
        return build_early_exit_net(arch, n_classes, in_channels, self.resolution, self.C, self.N)


def copy_convs(src: nn.Module, dst: nn.Module) -> None:
    """Copy the convolution weights of `src` into the same-shaped convolutions of `dst`, in module order."""
    pairs = list(zip((m for m in src.modules() if isinstance(m, nn.Conv2d)),
                     (m for m in dst.modules() if isinstance(m, nn.Conv2d)), strict=True))
    with torch.no_grad():
        for a, b in pairs:
            b.weight.copy_(a.weight)
            if b.bias is not None:
                b.bias.copy_(a.bias)


@dataclass(frozen=True)
class Nb201NetConfig:
    """Everything needed to rebuild a derived network: the cell, the macro sizes and the exit slots that hold a head
    (what checkpoints and archive records store; records written before exits were a gene have all of them)."""
    arch: Nb201Arch
    C: int
    N: int
    resolution: int
    exits: tuple[bool, ...] = (True,) * (N_STAGES - 1)

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_string(), "C": self.C, "N": self.N, "resolution": self.resolution,
                "exits": list(self.exits)}

    @staticmethod
    def from_dict(d: dict) -> "Nb201NetConfig":
        try:
            exits = tuple(bool(b) for b in d.get("exits", (True,) * (N_STAGES - 1)))
            if len(exits) != N_STAGES - 1:
                raise ValueError(f"{len(exits)} exit flags, expected {N_STAGES - 1}")
            return Nb201NetConfig(Nb201Arch.parse(d["arch"]), int(d["C"]), int(d["N"]), int(d["resolution"]), exits)
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgenasError(f"nb201 network record {d} is incomplete ({type(exc).__name__}: {exc})",
                               "it needs arch (NAS-Bench-201 string), C, N and resolution") from None

    def describe(self) -> str:
        flags = "".join("1" if b else "0" for b in self.exits)
        return f"{self.arch.to_string()} C{self.C} N{self.N} r{self.resolution} exits={flags}"

    def build(self, in_channels: int, n_classes: int) -> EarlyExitNet:
        return build_early_exit_net(self.arch, n_classes, in_channels, self.resolution, self.C, self.N,
                                    exits=self.exits)
