"""The per-kind rules both front ends apply (`from_torch`, `from_onnx`), written once so that a torch module and
its ONNX export get the same kinds, MACs and params.

Each front end maps its own operators (torch modules, functions and methods; ONNX op types) to handler functions
through a table; a handler reads the operator's attributes and calls the rules here:

- conv: depthwise when every channel is its own group (groups > 1 and groups == C_in == C_out), MACs = output
  elements x (C_in / groups) x kernel elements, i.e. output elements x the weight's elements per output channel;
- linear: MACs = output elements x the reduced dimension;
- BatchNorm folds into the conv/linear before it when it is that layer's only reader (a bias per output channel
  is added if the layer had none); otherwise it is a per-channel scale and shift (kind "mul", 2 params a channel);
- a mean over every spatial axis (adaptive average pooling to 1 x 1) is global average pooling ("gap");
- conv and pooling layers record their window (`kernel`, `stride`: the largest side of a non-square one) and conv
  layers their `groups` (C_in for depthwise), the shape features latency models key kernels on;
- elementwise operations a runtime that folds constants does not compute (x + 0, x - 0, x * 1, x / 1 with a
  constant 0 / 1, x * 0, and the add of such a zero to an activation) stay layers, as an unfolded graph has them,
  marked `folded`; so are the layers that only feed a product with zero (`mark_dead`). Whether a runtime folds them
  is the latency model's business (onnxruntime and TVM keep most of them, TFLite folds them): MACs, params and
  SRAM count them.
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
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    folded: bool = False             # a runtime that folds constants does not compute it
    passes_on: str | None = None     # for a folded identity (x + 0, x * 1): the activation it passes on unchanged

    def runtime_inputs(self) -> tuple[str, ...]:
        """The inputs a runtime that folds constants still needs for this layer: every input of a computed layer,
        the activation a folded identity passes on, none of a folded constant's (x * 0, or what it feeds)."""
        if not self.folded:
            return self.inputs
        return (self.passes_on,) if self.passes_on is not None else ()

    def freeze(self) -> Layer:
        return Layer(self.name, self.kind, self.inputs, self.output, self.in_shapes, self.out_shape, int(self.macs),
                     int(self.params), self.part, self.index, int(self.kernel), int(self.stride), int(self.groups),
                     self.folded)


def window(kernel_shape, strides) -> tuple[int, int]:
    """(kernel, stride) of a conv or pooling window: the largest side of each (a 1 x 7 kernel is 7)."""
    def side(v) -> int:
        values = [int(d) for d in (v if isinstance(v, (list, tuple)) else (v,)) if d is not None]
        return max(values) if values else 1

    return side(kernel_shape), side(strides)


def adaptive_pool_window(in_side: int, out_side: int) -> tuple[int, int]:
    """(kernel, stride) of adaptive pooling from in_side to out_side, as exporters write it for a divisible size
    (stride in // out, kernel in - (out - 1) * stride)."""
    stride = max(1, in_side // max(out_side, 1))
    return max(1, in_side - (out_side - 1) * stride), stride


def constant_operand_fold(op: str, constant, constant_first: bool, same_shape: bool) -> str | None:
    """How a runtime that folds constants treats an elementwise op of one activation and one constant: "identity"
    (x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1, when the output has the activation's shape: the constant does not
    broadcast it; the output is the activation), "zero" (x * 0, 0 * x: a constant zero) or None (it computes).
    op: "add", "sub", "mul" or "div"; constant: its value (numpy array or number)."""
    import numpy as np

    value = np.asarray(constant)
    if value.size == 0 or not np.issubdtype(value.dtype, np.number):
        return None
    if op == "mul" and not value.any():
        return "zero"
    neutral = {"add": 0, "sub": 0, "mul": 1, "div": 1}.get(op)
    if neutral is None or (constant_first and op in ("sub", "div")) or not same_shape:
        return None
    return "identity" if bool(np.all(value == neutral)) else None


def mark_dead(layers: list[PendingLayer], live: set[str]) -> None:
    """Mark `folded` the layers a runtime that folds constants never needs: those whose output only feeds folded
    layers that do not read it (a product with zero), directly or through other such layers. `live`: tensors that
    must be computed (segment and exit outputs, tensors read by anything other than a layer), with every layer they
    need. A layer nothing reads at all is left as it is (it is not a folding question)."""
    needed_reads: dict[str, int] = {}  # tensor -> how many layers a folding runtime computes read it
    for layer in layers:
        for t in layer.runtime_inputs():
            needed_reads[t] = needed_reads.get(t, 0) + 1
    by_output = {layer.output: layer for layer in layers}
    dead_reads: dict[str, int] = {}  # tensor -> how many of those reading layers are dead
    dead: set[str] = set()
    stack = [t for layer in layers if layer.folded for t in layer.inputs if t not in layer.runtime_inputs()]
    while stack:
        t = stack.pop()
        layer = by_output.get(t)
        if layer is None or t in live or t in dead or dead_reads.get(t, 0) != needed_reads.get(t, 0):
            continue
        dead.add(t)
        for src in layer.runtime_inputs():
            dead_reads[src] = dead_reads.get(src, 0) + 1
            stack.append(src)
    for layer in layers:
        if layer.output in dead:
            layer.folded, layer.passes_on = True, None


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
