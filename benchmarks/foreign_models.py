"""Model builders shared by the latency-model benchmarks (costmodel_host.py, costmodel_synthetic.py).

Two sets of networks that are not from edgenas's own search spaces (those come from costmodel_host.build_models):

- FOREIGN families, the held-out test of "does the latency model hold on architectures it never saw":
  torchvision's mobilenet_v2, mobilenet_v3_small/large, shufflenet_v2_x0_5, squeezenet1_1, mnasnet0_5, resnet18,
  efficientnet_b0 and regnet_x_400mf (random weights, num_classes=10) at 32/64/96 px, and the MLPerf Tiny reference
  architectures rebuilt from their public descriptions (github.com/mlcommons/tiny, benchmark/training):
  ResNet-8 (image classification, CIFAR-10 32x32x3), DS-CNN-S (keyword spotting, 49x10x1 MFCC),
  MobileNetV1-0.25 (visual wake words, 96x96x3, 2 classes) and the fully connected autoencoder (anomaly detection,
  640 inputs). **A foreign network is never in a calibration set**: the benchmarks only ever score them.

- RANDOM BLOCK networks for calibration, in the manner of nn-Meter's kernel/block sweeps: random small nets that mix
  the operator kinds of those families without being any of them: convolutions k x k (k 1/3/5/7, stride 1/2),
  grouped convolutions (2..16 groups), depthwise-separable and inverted-residual blocks, squeeze-excite (global
  average pool, 1x1 convs, sigmoid or hard-sigmoid gate, channel-wise multiply), ReLU/ReLU6/SiLU/HardSwish, basic
  residual blocks, ShuffleNet-style units (channel split, branch, concat, channel shuffle), concatenated parallel
  branches, max/average pooling, a GAP + MLP head, and plain MLP stacks on vector inputs; widths 8..256 (half of them
  not a multiple of 8), inputs 16..96 px with 1 or 3 channels (some not square), at most `max_macs` MACs. A plan is
  data (a dict that round-trips through JSON, stored as the model's `arch`), drawn from a seeded numpy generator.
  `dead_branch_rate` > 0 adds blocks `x + 0 * conv(x)` (a NAS-Bench-201 "none" edge: a runtime that constant-folds
  drops the branch); the host benchmark leaves it at 0, since onnxruntime runs such a branch.

Every network is exported the same way: ONNX opset 18, the TorchScript exporter (dynamo=False), batch 1, input "x",
output "logits", eval mode, weights drawn after torch.manual_seed(spec.seed). `export_all` exports a list of specs,
in a process pool when asked (export is CPU-bound; the benchmarks measure afterwards, on one core).
"""
from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

TORCHVISION_FAMILIES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5",
                        "squeezenet1_1", "mnasnet0_5", "resnet18", "efficientnet_b0", "regnet_x_400mf")
FOREIGN_RESOLUTIONS = (32, 64, 96)
MLPERF_TINY = ("resnet8", "ds_cnn_s", "mobilenet_v1_025_vww", "fc_autoencoder")
MLPERF_FAMILY = "mlperf_tiny"
RANDOM_FAMILY = "random_blocks"
NUM_CLASSES = 10
OPSET = 18


@dataclass(frozen=True)
class ModelSpec:
    """One network to export: `family` picks the builder, `name` is unique within a benchmark (the file stem)."""
    family: str
    name: str
    input_shape: tuple[int, ...]          # without the batch dimension: (C, H, W), or (D,) for a vector input
    seed: int = 0
    plan: str = ""                        # JSON: the random-block plan, or the MLPerf Tiny architecture's name

    @property
    def arch(self) -> str:
        """What the network is, for result files and for matching cached measurements."""
        if self.family == RANDOM_FAMILY:
            return self.plan
        return f"{self.plan or self.family}@{'x'.join(map(str, self.input_shape))}"


# -------------------------------------------------------------------------------------------------- spec lists
def torchvision_specs(resolutions=FOREIGN_RESOLUTIONS, families=TORCHVISION_FAMILIES, seed: int = 0
                      ) -> list[ModelSpec]:
    return [ModelSpec(f, f"{f}_{r}", (3, r, r), seed) for f in families for r in resolutions]


def mlperf_tiny_specs(seed: int = 0) -> list[ModelSpec]:
    shapes = {"resnet8": (3, 32, 32), "ds_cnn_s": (1, 49, 10), "mobilenet_v1_025_vww": (3, 96, 96),
              "fc_autoencoder": (640,)}
    return [ModelSpec(MLPERF_FAMILY, name, shapes[name], seed, name) for name in MLPERF_TINY]


def foreign_specs(resolutions=FOREIGN_RESOLUTIONS, seed: int = 0) -> list[ModelSpec]:
    """The held-out foreign families (never calibrated on)."""
    return torchvision_specs(resolutions, seed=seed) + mlperf_tiny_specs(seed)


def random_block_specs(n: int, seed: int = 0, max_resolution: int = 96, max_width: int = 256,
                       max_macs: float = 150e6, dead_branch_rate: float = 0.0) -> list[ModelSpec]:
    """n random-block networks (calibration material), reproducible from `seed`."""
    rng = np.random.default_rng([seed, 0xB10C])
    specs = []
    for i in range(n):
        plan = random_block_plan(rng, max_resolution, max_width, max_macs, dead_branch_rate)
        specs.append(ModelSpec(RANDOM_FAMILY, f"{RANDOM_FAMILY}_{i:03d}", tuple(plan["input"]), seed + i,
                               json.dumps(plan, separators=(",", ":"))))
    return specs


def specs_digest(specs) -> str:
    """A short digest of what `specs` export, so that a folder of exported models is reused only for the same ones
    (a changed generator changes the plans)."""
    import hashlib
    return hashlib.sha256(json.dumps([[s.name, s.arch, s.seed] for s in specs]).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- random plans
ACTIVATIONS = ("relu", "relu6", "silu", "hardswish")
GATES = ("sigmoid", "hardsigmoid")
BLOCKS = ("conv", "grouped", "depthwise_separable", "inverted_residual", "residual", "shuffle", "branches", "pool")
MLP_SHARE = 0.12  # share of random networks that are plain MLP stacks on a vector input


def _width(rng, max_width: int) -> int:
    """Log-uniform in 8..max_width; half of the draws are rounded to a multiple of 8 (vector-friendly)."""
    c = int(round(math.exp(rng.uniform(math.log(8), math.log(max_width)))))
    if rng.random() < 0.5:
        c = max(8, 8 * round(c / 8))
    return min(max(c, 8), max_width)


def _conv_out(side: int, k: int, stride: int, pad: int) -> int:
    return (side + 2 * pad - k) // stride + 1


class _PlanState:
    """Shape and MACs bookkeeping while a plan is drawn."""

    def __init__(self, c: int, h: int, w: int):
        self.c, self.h, self.w, self.macs = c, h, w, 0

    def can_halve(self) -> bool:
        return min(self.h, self.w) >= 4

    def conv(self, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        self.h, self.w = _conv_out(self.h, k, stride, k // 2), _conv_out(self.w, k, stride, k // 2)
        self.macs += self.h * self.w * c_out * (self.c // groups) * k * k
        self.c = c_out


def random_block_plan(rng, max_resolution: int = 96, max_width: int = 256, max_macs: float = 150e6,
                      dead_branch_rate: float = 0.0) -> dict:
    """A random network as data: {"input": shape, "stem": {...}, "blocks": [{"type": ..., ...}], "head": {...}}
    or an MLP {"input": [D], "mlp": [widths], "acts": [...]}, with its "macs" (the cost model's count; dead
    branches included). Drawn again until it has at most max_macs MACs."""
    while True:
        plan, macs = _draw_plan(rng, max_resolution, max_width, dead_branch_rate)
        if macs <= max_macs:
            return {**plan, "macs": int(macs)}


def _draw_plan(rng, max_resolution: int, max_width: int, dead_branch_rate: float) -> tuple[dict, int]:
    if rng.random() < MLP_SHARE:
        d = int(rng.integers(16, 641))
        widths = [_width(rng, max_width) for _ in range(int(rng.integers(2, 9)))]
        out = d if rng.random() < 0.3 else NUM_CLASSES  # an autoencoder-like reconstruction, or a classifier
        acts = [str(rng.choice(("relu", "relu6", "silu", "hardswish"))) for _ in widths]
        dims = [d, *widths, out]
        return {"input": [d], "mlp": widths, "acts": acts, "out": out,
                "batchnorm": bool(rng.random() < 0.5)}, sum(a * b for a, b in zip(dims, dims[1:]))
    lo = min(16, max_resolution)
    c_in = 1 if rng.random() < 0.2 else 3
    h = int(rng.integers(lo, max_resolution + 1))
    w = h if rng.random() < 0.8 else int(rng.integers(max(8, lo // 2), max_resolution + 1))
    s = _PlanState(c_in, h, w)
    stem = {"c": _width(rng, min(64, max_width)), "k": int(rng.choice((3, 5, 7))),
            "stride": int(2 if rng.random() < 0.5 and s.can_halve() else 1), "act": str(rng.choice(ACTIVATIONS))}
    s.conv(stem["c"], stem["k"], stem["stride"])
    blocks = []
    for _ in range(int(rng.integers(2, 9))):
        if dead_branch_rate > 0 and rng.random() < dead_branch_rate:
            blocks.append({"type": "dead_branch", "k": 3})
            s.macs += s.h * s.w * s.c * s.c * 9  # the branch's conv, which a constant-folding runtime drops
            continue
        blocks.append(_draw_block(rng, str(rng.choice(BLOCKS)), s, max_width))
    head = {"hidden": _width(rng, max_width) if rng.random() < 0.3 else 0, "act": str(rng.choice(ACTIVATIONS))}
    s.macs += s.c * (head["hidden"] or NUM_CLASSES) + head["hidden"] * NUM_CLASSES
    return {"input": [c_in, h, w], "stem": stem, "blocks": blocks, "head": head}, s.macs


def _draw_block(rng, kind: str, s: _PlanState, max_width: int) -> dict:
    act = str(rng.choice(ACTIVATIONS))
    stride = int(2 if rng.random() < 0.35 and s.can_halve() else 1)
    if kind == "grouped":
        divisors = [g for g in range(2, 17) if s.c % g == 0]
        if not divisors:
            kind = "conv"
        else:
            g = int(rng.choice(divisors))
            c_out = g * max(1, round(_width(rng, max_width) / g))
            k = int(rng.choice((1, 3)))
            s.conv(c_out, k, stride, g)
            return {"type": "grouped", "c": c_out, "k": k, "stride": stride, "groups": g, "act": act}
    if kind == "shuffle" and s.c % 2:
        kind = "residual"
    if kind == "conv":
        c_out, k = _width(rng, max_width), int(rng.choice((1, 3, 5, 7)))
        s.conv(c_out, k, stride)
        return {"type": "conv", "c": c_out, "k": k, "stride": stride, "act": act}
    if kind == "depthwise_separable":
        k, c_out = int(rng.choice((3, 5, 7))), _width(rng, max_width)
        s.conv(s.c, k, stride, s.c)
        s.conv(c_out, 1)
        return {"type": "depthwise_separable", "c": c_out, "k": k, "stride": stride, "act": act}
    if kind == "inverted_residual":
        c_in = s.c
        expand, k = int(rng.choice((1, 3, 4, 6))), int(rng.choice((3, 5, 7)))
        keep = stride == 1 and rng.random() < 0.5
        c_out = c_in if keep else _width(rng, max_width)
        mid = max(8, min(c_in * expand, 4 * max_width))
        se = bool(rng.random() < 0.5)
        if mid != c_in:
            s.conv(mid, 1)
        s.conv(mid, k, stride, mid)
        reduced = max(8, mid // 4)
        if se:
            s.macs += 2 * mid * reduced
        s.conv(c_out, 1)
        return {"type": "inverted_residual", "c": c_out, "mid": mid, "k": k, "stride": stride, "act": act,
                "se": se, "se_reduced": reduced, "gate": str(rng.choice(GATES)), "residual": c_out == c_in and
                stride == 1}
    if kind == "residual":
        s.conv(s.c, 3)
        s.conv(s.c, 3)
        return {"type": "residual", "act": act}
    if kind == "shuffle":
        half = s.c // 2
        s.macs += 2 * s.h * s.w * half * half + s.h * s.w * half * 9
        return {"type": "shuffle", "act": act}
    if kind == "branches":
        c_in, h, w = s.c, s.h, s.w
        widths = [_width(rng, max_width // 2) for _ in range(int(rng.integers(2, 4)))]
        s.macs += h * w * c_in * (widths[0] + 9 * widths[1] + (widths[2] if len(widths) > 2 else 0))
        s.c = sum(widths)
        return {"type": "branches", "widths": widths, "act": act}
    if kind == "pool":
        if not s.can_halve():
            return {"type": "pool", "op": "max", "k": 3, "stride": 1}
        op, k = str(rng.choice(("max", "avg"))), int(rng.choice((2, 3)))
        s.h, s.w = _conv_out(s.h, k, 2, k // 2 if k == 3 else 0), _conv_out(s.w, k, 2, k // 2 if k == 3 else 0)
        return {"type": "pool", "op": op, "k": k, "stride": 2}
    raise ValueError(f"unknown block type {kind}")


# -------------------------------------------------------------------------------------------------- torch modules
def _act(name: str):
    from torch import nn
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
            "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}[name]()


def _conv_bn(c_in: int, c_out: int, k, stride: int = 1, groups: int = 1, act: str | None = None, padding=None):
    from torch import nn
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2 if padding is None else padding, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    if act:
        layers.append(_act(act))
    return nn.Sequential(*layers)


def _modules():
    """Block modules (built inside a function so that importing this file does not import torch)."""
    import torch
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int, reduced: int, act: str, gate: str):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, reduced, 1), _act(act), nn.Conv2d(reduced, c, 1), \
                _act(gate)

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    class InvertedResidual(nn.Module):
        def __init__(self, c_in: int, b: dict):
            super().__init__()
            mid = b["mid"]
            layers = [] if mid == c_in else [_conv_bn(c_in, mid, 1, act=b["act"])]
            layers.append(_conv_bn(mid, mid, b["k"], b["stride"], mid, b["act"]))
            if b["se"]:
                layers.append(SqueezeExcite(mid, b["se_reduced"], "relu", b["gate"]))
            layers.append(_conv_bn(mid, b["c"], 1))
            self.body, self.residual = nn.Sequential(*layers), b["residual"]

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class Residual(nn.Module):
        def __init__(self, c: int, act: str):
            super().__init__()
            self.body, self.act = nn.Sequential(_conv_bn(c, c, 3, act=act), _conv_bn(c, c, 3)), _act(act)

        def forward(self, x):
            return self.act(x + self.body(x))

    class ShuffleUnit(nn.Module):
        """ShuffleNetV2's stride-1 unit with static shapes: split, branch on one half, concat, shuffle of 2 groups."""

        def __init__(self, c: int, hw: tuple[int, int], act: str):
            super().__init__()
            half = c // 2
            self.half, self.c, self.hw = half, c, hw
            self.branch = nn.Sequential(_conv_bn(half, half, 1, act=act), _conv_bn(half, half, 3, groups=half),
                                        _conv_bn(half, half, 1, act=act))

        def forward(self, x):
            a, b = x[:, :self.half], x[:, self.half:]
            y = torch.cat((a, self.branch(b)), 1)
            h, w = self.hw
            return y.reshape(1, 2, self.half, h, w).transpose(1, 2).reshape(1, self.c, h, w)

    class Branches(nn.Module):
        def __init__(self, c_in: int, widths: list[int], act: str):
            super().__init__()
            paths = [_conv_bn(c_in, widths[0], 1, act=act), _conv_bn(c_in, widths[1], 3, act=act)]
            if len(widths) > 2:
                paths.append(nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(c_in, widths[2], 1, act=act)))
            self.paths = nn.ModuleList(paths)

        def forward(self, x):
            return torch.cat([p(x) for p in self.paths], 1)

    class DeadBranch(nn.Module):
        """x + 0 * conv(x): a branch whose contribution is a constant zero (a NAS-Bench-201 "none" edge)."""

        def __init__(self, c: int, k: int):
            super().__init__()
            self.conv = nn.Conv2d(c, c, k, 1, k // 2)

        def forward(self, x):
            return x + self.conv(x) * 0.0

    return SqueezeExcite, InvertedResidual, Residual, ShuffleUnit, Branches, DeadBranch


def build_random_block_net(plan: dict):
    """The torch module of a random_block_plan."""
    from torch import nn

    if "mlp" in plan:
        dims = [plan["input"][0], *plan["mlp"]]
        layers = []
        for d_in, d_out, act in zip(dims, dims[1:], plan["acts"]):
            layers += [nn.Linear(d_in, d_out, bias=not plan["batchnorm"])]
            layers += [nn.BatchNorm1d(d_out)] if plan["batchnorm"] else []
            layers.append(_act(act))
        layers.append(nn.Linear(dims[-1], plan["out"]))
        return nn.Sequential(*layers)
    SqueezeExcite, InvertedResidual, Residual, ShuffleUnit, Branches, DeadBranch = _modules()
    c_in, h, w = plan["input"]
    st = plan["stem"]
    s = _PlanState(c_in, h, w)
    layers = [_conv_bn(c_in, st["c"], st["k"], st["stride"], act=st["act"])]
    s.conv(st["c"], st["k"], st["stride"])
    for b in plan["blocks"]:
        t = b["type"]
        if t in ("conv", "grouped"):
            layers.append(_conv_bn(s.c, b["c"], b["k"], b["stride"], b.get("groups", 1), b["act"]))
            s.conv(b["c"], b["k"], b["stride"], b.get("groups", 1))
        elif t == "depthwise_separable":
            layers.append(nn.Sequential(_conv_bn(s.c, s.c, b["k"], b["stride"], s.c, b["act"]),
                                        _conv_bn(s.c, b["c"], 1, act=b["act"])))
            s.conv(s.c, b["k"], b["stride"], s.c)
            s.conv(b["c"], 1)
        elif t == "inverted_residual":
            layers.append(InvertedResidual(s.c, b))
            s.conv(s.c, b["k"], b["stride"], s.c)
            s.c = b["c"]
        elif t == "residual":
            layers.append(Residual(s.c, b["act"]))
        elif t == "shuffle":
            layers.append(ShuffleUnit(s.c, (s.h, s.w), b["act"]))
        elif t == "branches":
            layers.append(Branches(s.c, b["widths"], b["act"]))
            s.c = sum(b["widths"])
        elif t == "pool":
            pool = nn.MaxPool2d if b["op"] == "max" else nn.AvgPool2d
            pad = b["k"] // 2 if b["k"] == 3 else 0
            layers.append(pool(b["k"], b["stride"], pad))
            s.h, s.w = _conv_out(s.h, b["k"], b["stride"], pad), _conv_out(s.w, b["k"], b["stride"], pad)
        elif t == "dead_branch":
            layers.append(DeadBranch(s.c, b["k"]))
        else:
            raise ValueError(f"unknown block type {t}")
    hd = plan["head"]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hd["hidden"]:
        layers += [nn.Linear(s.c, hd["hidden"]), _act(hd["act"]), nn.Linear(hd["hidden"], NUM_CLASSES)]
    else:
        layers.append(nn.Linear(s.c, NUM_CLASSES))
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------------------------------- MLPerf Tiny
def build_mlperf_tiny(name: str):
    """The MLPerf Tiny v1 reference architectures (mlcommons/tiny, benchmark/training/*), rebuilt in torch from
    their public Keras definitions; Keras 'same' padding of a stride-2 conv becomes the symmetric torch padding that
    gives the same output size. Softmax outputs as in the references; Dropout is omitted (identity in inference)."""
    from torch import nn
    if name == "resnet8":  # image_classification/keras_model.py: resnet_v1_eembc, 16/32/64 filters, 3 stacks
        class ResNet8(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = _conv_bn(3, 16, 3, act="relu")
                self.s1 = nn.Sequential(_conv_bn(16, 16, 3, act="relu"), _conv_bn(16, 16, 3))
                self.s2 = nn.Sequential(_conv_bn(16, 32, 3, 2, act="relu"), _conv_bn(32, 32, 3))
                self.s2_short = nn.Conv2d(16, 32, 1, 2)
                self.s3 = nn.Sequential(_conv_bn(32, 64, 3, 2, act="relu"), _conv_bn(64, 64, 3))
                self.s3_short = nn.Conv2d(32, 64, 1, 2)
                self.relu = nn.ReLU()
                self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10), nn.Softmax(-1))

            def forward(self, x):
                x = self.stem(x)
                x = self.relu(x + self.s1(x))
                x = self.relu(self.s2_short(x) + self.s2(x))
                x = self.relu(self.s3_short(x) + self.s3(x))
                return self.head(x)
        return ResNet8()
    if name == "ds_cnn_s":  # keyword_spotting/keras_model.py: DS-CNN small, 64 filters, 4 DS blocks, 12 words
        layers = [_conv_bn(1, 64, (10, 4), 2, act="relu", padding=(5, 1))]  # 49x10 -> 25x5 as Keras 'same'
        for _ in range(4):
            layers += [_conv_bn(64, 64, 3, 1, 64, "relu"), _conv_bn(64, 64, 1, act="relu")]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12), nn.Softmax(-1)]
        return nn.Sequential(*layers)
    if name == "mobilenet_v1_025_vww":  # visual_wake_words/vww_model.py: MobileNetV1 alpha 0.25, 96x96, 2 classes
        cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
        c = 8
        layers = [_conv_bn(3, c, 3, 2, act="relu")]
        for filters, stride in cfg:
            c_out = filters // 4
            layers += [_conv_bn(c, c, 3, stride, c, "relu"), _conv_bn(c, c_out, 1, act="relu")]
            c = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 2), nn.Softmax(-1)]
        return nn.Sequential(*layers)
    if name == "fc_autoencoder":  # anomaly_detection/keras_model.py: 640-128x4-8-128x4-640, BN + ReLU
        dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
        layers = []
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU()]
        layers.append(nn.Linear(128, 640))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown MLPerf Tiny model {name}; one of {', '.join(MLPERF_TINY)}")


# -------------------------------------------------------------------------------------------------- build, export
def build_module(spec: ModelSpec):
    """The eval-mode torch module of a spec, weights drawn after torch.manual_seed(spec.seed)."""
    import torch

    torch.manual_seed(spec.seed)
    if spec.family == RANDOM_FAMILY:
        net = build_random_block_net(json.loads(spec.plan))
    elif spec.family == MLPERF_FAMILY:
        net = build_mlperf_tiny(spec.plan)
    elif spec.family in TORCHVISION_FAMILIES:
        import torchvision
        net = getattr(torchvision.models, spec.family)(weights=None, num_classes=NUM_CLASSES)
    else:
        raise ValueError(f"no builder for family {spec.family}")
    return net.eval()


def export_onnx(spec: ModelSpec, path) -> dict:
    """Export one spec to `path`; returns the benchmark's record of it."""
    import warnings

    import torch

    torch.set_num_threads(1)
    net = build_module(spec)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(net, (torch.zeros(1, *spec.input_shape),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["x"], output_names=["logits"])
    return {"family": spec.family, "name": spec.name, "arch": spec.arch, "path": str(path),
            "input_shape": list(spec.input_shape)}


def export_all(specs, out_dir, processes: int = 1) -> list[dict]:
    """Export every spec to out_dir/NAME.onnx (in `processes` spawned workers when > 1), records in spec order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{s.name}.onnx" for s in specs]
    if processes <= 1 or len(specs) < 2:
        return [export_onnx(s, p) for s, p in zip(specs, paths)]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        return list(pool.map(export_onnx, specs, paths))


@dataclass
class PendingExport:
    """export_all started in the background (a pool of `processes`), so that the caller can work meanwhile."""
    specs: list
    out_dir: Path
    processes: int = 1
    _futures: list = field(default_factory=list)
    _pool: object = None

    def start(self) -> "PendingExport":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._pool = ProcessPoolExecutor(max(1, self.processes), mp_context=get_context("spawn"))
        self._futures = [self._pool.submit(export_onnx, s, self.out_dir / f"{s.name}.onnx") for s in self.specs]
        return self

    def result(self) -> list[dict]:
        try:
            return [f.result() for f in self._futures]
        finally:
            self._pool.shutdown()
