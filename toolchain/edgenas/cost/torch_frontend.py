"""PyTorch front end: an EarlyExitNet (or any traceable nn.Module) -> CostGraph.

Each segment and each head is traced on its own with torch.fx and shapes come from running it once on a batch-1
example (ShapeProp), in eval mode so BatchNorm statistics are not touched. Tensor names are wired across parts:
segment i reads segment i-1's output, head i reads segment i's output.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field

from edgenas.cost.graph import CostGraph, Layer, numel, validate
from edgenas.errors import EdgenasError

_SUPPORTED = ("Conv1d/2d, Linear, BatchNorm, ReLU/ReLU6/Hardswish/Hardsigmoid/Sigmoid/SiLU/GELU/Tanh/Softmax, "
              "Max/AvgPool2d, AdaptiveAvgPool2d, Flatten, Identity, Dropout, +, *, torch.cat, torch.flatten")


@dataclass
class _Pending:
    """A layer under construction: BN folding may still add a bias to its params."""
    name: str
    kind: str
    inputs: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int
    part: str
    index: int
    has_bias: bool = True

    def freeze(self) -> Layer:
        return Layer(self.name, self.kind, self.inputs, self.name, self.in_shapes, self.out_shape, self.macs,
                     self.params, self.part, self.index)


@dataclass
class _Builder:
    layers: list[_Pending] = field(default_factory=list)
    by_name: dict[str, _Pending] = field(default_factory=dict)

    def add(self, layer: _Pending) -> str:
        self.layers.append(layer)
        self.by_name[layer.name] = layer
        return layer.name


def from_torch(net, input_shape=None) -> CostGraph:
    """CostGraph of an EarlyExitNet (segments + heads), or of a plain module (one segment, no head layers).

    input_shape: (C, H, W) of one sample; taken from `net.input_shape` when not given.
    """
    import torch

    shape = tuple(int(d) for d in (input_shape if input_shape is not None else getattr(net, "input_shape", ())))
    if not shape:
        raise EdgenasError(f"cannot cost {type(net).__name__}: its input shape is unknown",
                           "pass input_shape=(C, H, W) or use an EarlyExitNet")
    has_exits = hasattr(net, "segments") and hasattr(net, "heads")
    segments = list(net.segments) if has_exits else [net]
    heads = list(net.heads) if has_exits else [None]
    modes = {m: m.training for m in net.modules()}
    builder = _Builder()
    seg_outputs, exit_outputs = [], []
    net.eval()
    try:
        with torch.no_grad():
            h, h_name = torch.zeros((1, *shape)), "input"
            for i, (seg, head) in enumerate(zip(segments, heads)):
                h_name, h = _trace_into(builder, seg, h, h_name, "segment", i, f"seg{i}")
                seg_outputs.append(h_name)
                exit_name = h_name
                if head is not None:
                    exit_name, _ = _trace_into(builder, head, h, h_name, "head", i, f"head{i}")
                exit_outputs.append(exit_name)
    finally:
        for m, training in modes.items():
            m.train(training)
    return validate(CostGraph(layers=tuple(p.freeze() for p in builder.layers), input_name="input",
                              input_shape=shape, segment_outputs=tuple(seg_outputs),
                              exit_outputs=tuple(exit_outputs), n_exits=len(segments)))


def _trace_into(builder: _Builder, module, example, input_name: str, part: str, index: int, prefix: str):
    """Append the layers of one traced part; returns (name of its output tensor, its output value)."""
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # fx raises many types for untraceable code (data-dependent control flow, ...)
        raise EdgenasError(f"cannot trace {prefix} ({type(module).__name__}) with torch.fx: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                           "keep segment and head forward() free of data-dependent Python control flow") from None
    try:
        out_value = ShapeProp(gm).propagate(example)
    except Exception as exc:  # the module's own error, whatever its type
        cause = exc.__cause__ or exc
        raise EdgenasError(f"cannot run {prefix} ({type(module).__name__}) on an input of shape "
                           f"{tuple(example.shape[1:])}: {type(cause).__name__}: {' '.join(str(cause).split())[:200]}",
                           "check the input shape (C, H, W) and the layer sizes") from None
    env: dict = {}  # fx node -> activation tensor name; None for weights and non-tensor values
    weights: dict = {}  # fx get_attr node -> parameter count
    result = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = input_name
        elif node.op == "get_attr":
            env[node] = None
            weights[node] = numel(_shape(node, batch=False) or ())
        elif node.op == "output":
            out = node.args[0]
            if not hasattr(out, "op") or env.get(out) is None:
                raise EdgenasError(f"{prefix} ({type(module).__name__}) must return one tensor",
                                   "return a single tensor from each segment and head")
            result = env[out]
        else:
            env[node] = _node(builder, gm, node, env, weights, part, index, _layer_name(builder, prefix, node))
    return result, out_value


def _layer_name(builder: _Builder, prefix: str, node) -> str:
    """`seg1/2.expand` for modules (their path in the part), `seg1/add_1` for functions; unique in the graph."""
    if node.op == "call_module" and f"{prefix}/{node.target}" not in builder.by_name:
        return f"{prefix}/{node.target}"
    name, k = f"{prefix}/{node.name}", 1
    while name in builder.by_name:
        name, k = f"{prefix}/{node.name}_{k}", k + 1
    return name


def _shape(node, batch: bool = True):
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    if shape is None:
        return None
    return tuple(int(d) for d in (shape[1:] if batch else shape))


def _activation_args(node, env) -> list:
    """Activation inputs of a node, in argument order (weights, shapes and Python scalars excluded)."""
    found = []

    def visit(a):
        if hasattr(a, "op"):
            if env.get(a) is not None and a not in found:
                found.append(a)
        elif isinstance(a, (list, tuple)):
            for e in a:
                visit(e)
        elif isinstance(a, dict):
            for e in a.values():
                visit(e)

    visit(node.args)
    visit(node.kwargs)
    return found


def _weight_params(node, weights) -> int:
    total = 0
    for a in (*node.args, *node.kwargs.values()):
        if hasattr(a, "op") and a in weights:
            total += weights[a]
    return total


def _arg(node, pos: int, key: str, default):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(key, default)


def _is_global(size) -> bool:
    sizes = size if isinstance(size, (list, tuple)) else (size,)
    return all(s == 1 for s in sizes)


def _node(builder: _Builder, gm, node, env, weights, part: str, index: int, name: str):
    """Handle one call node: add a layer and return its tensor name, or alias an existing tensor (or None)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    out_shape = _shape(node)
    if out_shape is None and node.op == "call_module":
        mod = gm.get_submodule(node.target)
        raise EdgenasError(f"cannot cost module {name} of type {type(mod).__name__}: it does not return one tensor",
                           f"use supported layers ({_SUPPORTED})")
    if out_shape is None:
        return None  # x.shape, x.size(1), ...: Python values, not tensors
    acts = _activation_args(node, env)
    if not acts:
        return None  # computed from weights/constants only: folded at deployment
    in_names = tuple(env[a] for a in acts)
    in_shapes = tuple(_shape(a) for a in acts)

    def layer(kind: str, macs: int = 0, params: int = 0, has_bias: bool = True) -> str:
        return builder.add(_Pending(name, kind, in_names, in_shapes, out_shape, int(macs), int(params), part,
                                    index, has_bias))

    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            c_in, c_out, g = mod.in_channels, mod.out_channels, mod.groups
            macs = numel(out_shape) * (c_in // g) * math.prod(mod.kernel_size)
            dw = g > 1 and g == c_in == c_out
            return layer("dwconv" if dw else "conv", macs, mod.weight.numel() + _bias(mod), mod.bias is not None)
        if isinstance(mod, nn.Linear):
            macs = numel(out_shape) * mod.in_features
            return layer("linear", macs, mod.weight.numel() + _bias(mod), mod.bias is not None)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return _batchnorm(builder, acts[0], env, mod.num_features, layer)
        if isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            return in_names[0]
        if isinstance(mod, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh,
                            nn.LeakyReLU, nn.Hardtanh, nn.Softmax)):
            return layer("act")
        if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d)):
            return layer("pool")
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return layer("gap" if _is_global(mod.output_size) else "pool")
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return layer("reshape")
        raise EdgenasError(f"cannot cost module {name} of type {type(mod).__name__}",
                           f"use supported layers ({_SUPPORTED}) or extend edgenas.cost.torch_frontend")

    target = node.target
    fn = target if node.op == "call_function" else None
    method = target if node.op == "call_method" else None
    if fn in (F.conv1d, F.conv2d, torch.conv2d):
        w_shape, bias = _shape(node.args[1], batch=False), _arg(node, 2, "bias", None)
        groups = int(_arg(node, 6, "groups", 1))
        dw = groups > 1 and groups == in_shapes[0][0] == out_shape[0]
        return layer("dwconv" if dw else "conv", numel(out_shape) * math.prod(w_shape[1:]),
                     numel(w_shape) + _tensor_numel(bias), bias is not None)
    if fn is F.linear:
        w_shape, bias = _shape(node.args[1], batch=False), _arg(node, 2, "bias", None)
        return layer("linear", numel(out_shape) * w_shape[1], numel(w_shape) + _tensor_numel(bias), bias is not None)
    if fn is F.batch_norm:
        return _batchnorm(builder, acts[0], env, in_shapes[0][0], layer)
    if fn in (F.dropout, F.dropout2d) or method in ("contiguous", "clone") or fn is torch.clone:
        return in_names[0]
    if fn in _act_functions() or method in _ACT_METHODS:
        return layer("act", params=_weight_params(node, weights))
    if fn in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze) or method in _RESHAPE_METHODS:
        return layer("reshape")
    if fn is F.adaptive_avg_pool2d:
        return layer("gap" if _is_global(_arg(node, 1, "output_size", None)) else "pool")
    if fn in (F.max_pool2d, F.avg_pool2d, F.adaptive_max_pool2d):
        return layer("pool")
    if fn is torch.mean or method == "mean":
        dims = _arg(node, 1, "dim", None)
        dims = tuple(sorted(d % (len(in_shapes[0]) + 1) for d in (dims if isinstance(dims, (list, tuple)) else (dims,))
                            if d is not None))
        spatial = tuple(range(2, len(in_shapes[0]) + 1))
        return layer("gap" if dims == spatial else "other")
    if fn in (operator.add, operator.iadd, torch.add, operator.sub, torch.sub) or method in ("add", "sub", "add_"):
        return layer("add", params=_weight_params(node, weights))
    if fn in (operator.mul, operator.imul, torch.mul, operator.truediv, torch.div) or method in ("mul", "div", "mul_"):
        return layer("mul", params=_weight_params(node, weights))
    if fn in (torch.cat, torch.concat):
        return layer("concat")
    if fn is operator.getitem:
        return layer("other")  # a strided slice of an activation: costed as a copy
    what = f"{node.op} {getattr(target, '__name__', target)}"
    raise EdgenasError(f"cannot cost {name}: unsupported operation {what}",
                       f"use supported layers ({_SUPPORTED}) or extend edgenas.cost.torch_frontend")


def _tensor_numel(arg) -> int:
    shape = _shape(arg, batch=False) if hasattr(arg, "op") else None
    return numel(shape) if shape is not None else 0


def _bias(mod) -> int:
    return mod.bias.numel() if getattr(mod, "bias", None) is not None else 0


def _batchnorm(builder: _Builder, src, env, channels: int, layer) -> str:
    """Fold BN into the conv/linear that feeds it alone (adds a bias if it had none); else a per-channel affine."""
    producer = builder.by_name.get(env[src])
    foldable = src.op != "placeholder" and len(src.users) == 1  # a part's input is shared with the next part
    if producer is not None and producer.kind in ("conv", "dwconv", "linear") and foldable:
        if not producer.has_bias:
            producer.params += channels
            producer.has_bias = True
        return producer.name
    return layer("mul", params=2 * channels)  # folded statistics: scale and shift per channel


@functools.cache
def _act_functions() -> frozenset:
    import torch
    import torch.nn.functional as F
    return frozenset({F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu, F.hardtanh,
                      F.sigmoid, F.tanh, F.softmax, torch.relu, torch.sigmoid, torch.tanh, torch.softmax, torch.clamp,
                      torch.clip, torch.exp})


_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh", "softmax", "clamp", "clip", "exp", "hardswish"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
