"""The per-kind rules both front ends apply (`from_torch`, `from_onnx`), written once so that a torch module and
its ONNX export get the same kinds, MACs and params.

Each front end maps its own operators (torch modules, functions and methods; ONNX op types) to handler functions
through a table; a handler reads the operator's attributes and calls the rules here:

- conv: depthwise when every channel is its own group (groups > 1 and groups == C_in == C_out), MACs = output
  elements x (C_in / groups) x kernel elements, i.e. output elements x the weight's elements per output channel;
- linear: MACs = output elements x the reduced dimension;
- BatchNorm folds into the conv/linear before it when it is that layer's only reader (a bias per output channel
  is added if the layer had none); otherwise it is a per-channel scale and shift (kind "mul", 2 params a channel);
- a mean over every spatial axis (adaptive average pooling to 1 x 1) is global average pooling ("gap").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgenas.cost.graph import Layer, numel

FOLDING_KINDS = ("conv", "dwconv", "linear")  # kinds a following BatchNorm (or bias Add) is folded into


@dataclass
class PendingLayer:
    """A layer under construction: folding a later BatchNorm or bias may still add params to it."""
    name: str
    kind: str
    inputs: tuple[str, ...]
    output: str
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int
    part: str
    index: int
    has_bias: bool = True

    def freeze(self) -> Layer:
        return Layer(self.name, self.kind, self.inputs, self.output, self.in_shapes, self.out_shape, int(self.macs),
                     int(self.params), self.part, self.index)


def conv_rule(weight_shape, groups: int, out_shape) -> tuple[str, int]:
    """(kind, MACs) of a convolution with a (C_out, C_in / groups, *kernel) weight."""
    c_out, c_in = int(weight_shape[0]), int(weight_shape[1]) * groups
    depthwise = groups > 1 and groups == c_in == c_out
    return ("dwconv" if depthwise else "conv"), numel(out_shape) * math.prod(weight_shape[1:])


def linear_macs(out_shape, reduced: int) -> int:
    """MACs of a matrix product whose every output element sums `reduced` products."""
    return numel(out_shape) * reduced


def fold_batchnorm(producer: PendingLayer | None, only_reader: bool, channels: int) -> bool:
    """Fold a BatchNorm into the layer that produced its input, when it can be; True when folded."""
    if producer is None or producer.kind not in FOLDING_KINDS or not only_reader:
        return False
    if not producer.has_bias:
        producer.params += channels
        producer.has_bias = True
    return True


def fold_bias(producer: PendingLayer | None, only_reader: bool, bias_params: int) -> bool:
    """Fold a constant Add after a bias-less linear layer into it (MatMul + Add is a linear layer with a bias)."""
    if producer is None or producer.kind != "linear" or producer.has_bias or not only_reader:
        return False
    producer.params += bias_params
    producer.has_bias = True
    return True


def unfolded_batchnorm_params(channels: int) -> int:
    """A BatchNorm that stays a layer (kind "mul") deploys its folded statistics: a scale and a shift per channel."""
    return 2 * channels


def adaptive_pool_kind(output_size) -> str:
    """Adaptive average pooling to 1 (x 1) is global average pooling."""
    sizes = output_size if isinstance(output_size, (list, tuple)) else (output_size,)
    return "gap" if all(s == 1 for s in sizes) else "pool"


def mean_kind(axes, rank: int) -> str:
    """A mean over exactly the spatial axes (2 .. rank-1, batch included in `rank`) is global average pooling."""
    return "gap" if sorted(a % rank for a in axes) == list(range(2, rank)) else "other"
