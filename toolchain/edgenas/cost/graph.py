"""The layer-level representation every cost figure is computed from.

A CostGraph is a list of Layers in a valid sequential execution order: segment 0, head 0, segment 1, head 1, ...
Tensors are named; a layer reads activations by name (weights are not tensors here, they are `params`).
Both front ends (`from_torch`, `from_onnx`) produce it, and the analysis never looks at torch or ONNX.

Conventions:
- shapes exclude the batch dimension (batch 1 is what an embedded device runs);
- `macs` counts multiply-accumulates of conv, dwconv and linear layers only, the convention of MAC counts in the
  NAS literature and of torch's FlopCounterMode (flops = 2 * MACs). Pooling, elementwise and data-movement layers
  have 0 MACs; the latency model costs them by the bytes they move;
- `params` are the deployed parameters: BatchNorm folded into the conv/linear before it (weights + one bias per
  output channel), so BN gets no layer of its own;
- `kernel`, `stride` (the largest side of a non-square window) and `groups` (C_in for depthwise) describe conv,
  dwconv and pool layers; every other layer keeps 1, 1, 1;
- kind "reshape" is a view of its input (no buffer of its own); "concat" is any copy into a new buffer: a
  concatenation, and the channel split (Slice, Split) and Transpose that e.g. ShuffleNet's channel shuffle uses;
- constant subgraphs (shape arithmetic) are not layers; elementwise identities (x + 0, x * 1), products with zero,
  the add of a zero branch and the layers that only feed a product with zero are layers marked `folded`: MACs,
  params and SRAM count them (onnxruntime and TVM compute them), and a latency model with `folds_zero_ops` (a
  runtime that folds constants, e.g. TFLite) charges them nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgenas.errors import EdgenasError
from edgenas.targets import OPERATOR_KINDS

LAYER_KINDS = OPERATOR_KINDS  # defined with the latency model, whose coefficients are keyed by them
PARTS = ("segment", "head")


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    inputs: tuple[str, ...]                  # activation tensors read (weights excluded)
    output: str                              # tensor written
    in_shapes: tuple[tuple[int, ...], ...]   # without batch dimension
    out_shape: tuple[int, ...]
    macs: int
    params: int
    part: str                                # "segment" or "head"
    index: int                               # segment index, or exit index for heads
    kernel: int = 1                          # conv/pool window side (k of k x k; 1 for other kinds)
    stride: int = 1                          # conv/pool stride
    groups: int = 1                          # conv groups (c_in for depthwise)
    folded: bool = False                     # a runtime that folds constants may skip it (x+0, x*1, x*0 and the
                                             # layers only feeding a product with zero, an add of a zero branch)


@dataclass(frozen=True)
class CostGraph:
    layers: tuple[Layer, ...]
    input_name: str
    input_shape: tuple[int, ...]
    segment_outputs: tuple[str, ...]   # tensor leaving segment i (input of segment i+1 and of head i)
    exit_outputs: tuple[str, ...]      # output tensor of head i
    n_exits: int
    # "op (layer)" of layers whose operator the front end does not know: their MACs and weights are not counted,
    # so every total is a lower bound while this is not empty
    unknown_ops: tuple[str, ...] = ()

    def shape_of(self, tensor: str) -> tuple[int, ...]:
        if tensor == self.input_name:
            return self.input_shape
        for layer in self.layers:
            if layer.output == tensor:
                return layer.out_shape
        raise KeyError(tensor)


def numel(shape) -> int:
    return math.prod(int(d) for d in shape)


def validate(g: CostGraph) -> CostGraph:
    """Check the invariants the analysis relies on; a front end calls this before returning."""
    if g.n_exits < 1 or len(g.segment_outputs) != g.n_exits or len(g.exit_outputs) != g.n_exits:
        raise EdgenasError(f"cost graph has {g.n_exits} exits but {len(g.segment_outputs)} segment outputs and "
                           f"{len(g.exit_outputs)} exit outputs", "every segment needs exactly one exit head")
    known = {g.input_name}
    names = set()
    order = []
    for layer in g.layers:
        if layer.kind not in LAYER_KINDS or layer.part not in PARTS:
            raise EdgenasError(f"layer {layer.name} has kind '{layer.kind}' / part '{layer.part}'",
                               f"use a kind from {', '.join(LAYER_KINDS)}")
        if layer.name in names or layer.output in known:
            raise EdgenasError(f"layer or tensor name {layer.name} / {layer.output} is used twice",
                               "give every layer and tensor a unique name")
        missing = [t for t in layer.inputs if t not in known]
        if missing:
            raise EdgenasError(f"layer {layer.name} reads {missing[0]} before it is produced",
                               "list layers in execution order")
        names.add(layer.name)
        known.add(layer.output)
        order.append((0 if layer.part == "segment" else 1) + 2 * layer.index)
    if order != sorted(order) or (order and order[-1] > 2 * g.n_exits - 1):
        raise EdgenasError("cost graph layers are not ordered segment 0, head 0, segment 1, head 1, ...",
                           "emit each segment's layers, then its head's layers")
    for t in (*g.segment_outputs, *g.exit_outputs):
        if t not in known:
            raise EdgenasError(f"cost graph names output tensor {t} but no layer produces it",
                               "wire segment and exit outputs to produced tensors")
    return g
