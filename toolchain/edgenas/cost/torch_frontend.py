"""PyTorch front end: an EarlyExitNet (or any traceable nn.Module) -> CostGraph.

Each segment and each head is traced on its own with torch.fx and shapes come from running it once on a batch-1
example (ShapeProp), in eval mode so BatchNorm statistics are not touched. Tensor names are wired across parts:
segment i reads segment i-1's output, head i reads segment i's output.

A node is costed by the handler its module type, function or method name maps to (_module_handlers,
_function_handlers, _METHOD_HANDLERS); the handlers apply the rules shared with the ONNX front end
(edgenas.cost.layer_rules). Adding an operator is one handler and one table entry.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field

from edgenas.cost.graph import CostGraph, numel, validate
from edgenas.cost.layer_rules import (PendingLayer, adaptive_pool_kind, adaptive_pool_window, conv_rule, fold_batchnorm,
                                      linear_macs, mean_kind, unfolded_batchnorm_params, window)
from edgenas.errors import EdgenasError

_SUPPORTED = ("Conv1d/2d, Linear, BatchNorm, ReLU/ReLU6/Hardswish/Hardsigmoid/Sigmoid/SiLU/GELU/Tanh/Softmax, "
              "Max/AvgPool2d, AdaptiveAvgPool2d, Flatten, Identity, Dropout, +, *, torch.cat, torch.flatten")


@dataclass
class _Builder:
    layers: list[PendingLayer] = field(default_factory=list)
    by_name: dict[str, PendingLayer] = field(default_factory=dict)

    def add(self, layer: PendingLayer) -> str:
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


@dataclass(frozen=True)
class _Call:
    """One fx call node being costed: what every handler reads."""
    builder: _Builder
    node: object
    weights: dict
    part: str
    index: int
    name: str
    acts: list                               # fx nodes of the activation inputs
    in_names: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]

    def layer(self, kind: str, macs: int = 0, params: int = 0, has_bias: bool = True,
              shape_fields: tuple[int, int, int] = (1, 1, 1)) -> str:
        """Add a layer; shape_fields: (kernel, stride, groups) of conv and pooling layers."""
        kernel, stride, groups = shape_fields
        return self.builder.add(PendingLayer(self.name, kind, self.in_names, self.name, self.in_shapes,
                                             self.out_shape, int(macs), int(params), self.part, self.index, has_bias,
                                             kernel, stride, groups))

    def weight_params(self) -> int:
        return _weight_params(self.node, self.weights)


def _node(builder: _Builder, gm, node, env, weights, part: str, index: int, name: str):
    """Handle one call node: add a layer and return its tensor name, or alias an existing tensor (or None)."""
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
    call = _Call(builder, node, weights, part, index, name, acts, tuple(env[a] for a in acts),
                 tuple(_shape(a) for a in acts), out_shape)
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        table = _module_handlers()
        handler = next((table[t] for t in type(mod).__mro__ if t in table), None)
        if handler is None:
            raise EdgenasError(f"cannot cost module {name} of type {type(mod).__name__}",
                               f"use supported layers ({_SUPPORTED}) or extend edgenas.cost.torch_frontend")
        return handler(call, mod)
    handler = _function_handlers().get(node.target) if node.op == "call_function" else \
        _METHOD_HANDLERS.get(node.target) if node.op == "call_method" else None
    if handler is None:
        what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
        raise EdgenasError(f"cannot cost {name}: unsupported operation {what}",
                           f"use supported layers ({_SUPPORTED}) or extend edgenas.cost.torch_frontend")
    return handler(call)


# ---------------------------------------------------------------------------------------------- handlers
# Module handlers take (call, module), function and method handlers take (call); each returns the name of the
# tensor the node's output is (a new layer, or the input it aliases).
def _conv_module(call: _Call, mod) -> str:
    kind, macs = conv_rule(mod.weight.shape, mod.groups, call.out_shape)
    return call.layer(kind, macs, mod.weight.numel() + _bias(mod), mod.bias is not None,
                      (*window(mod.kernel_size, mod.stride), mod.groups))


def _linear_module(call: _Call, mod) -> str:
    return call.layer("linear", linear_macs(call.out_shape, mod.in_features), mod.weight.numel() + _bias(mod),
                      mod.bias is not None)


def _conv_function(call: _Call) -> str:
    node = call.node
    w_shape, bias = _shape(node.args[1], batch=False), _arg(node, 2, "bias", None)
    groups = int(_arg(node, 6, "groups", 1))
    kind, macs = conv_rule(w_shape, groups, call.out_shape)
    return call.layer(kind, macs, numel(w_shape) + _tensor_numel(bias), bias is not None,
                      (*window(w_shape[2:], _arg(node, 3, "stride", 1)), groups))


def _linear_function(call: _Call) -> str:
    w_shape, bias = _shape(call.node.args[1], batch=False), _arg(call.node, 2, "bias", None)
    return call.layer("linear", linear_macs(call.out_shape, w_shape[1]), numel(w_shape) + _tensor_numel(bias),
                      bias is not None)


def _batchnorm(call: _Call, channels: int) -> str:
    """Fold BN into the conv/linear that feeds it alone (adds a bias if it had none); else a per-channel affine."""
    src = call.acts[0]
    producer = call.builder.by_name.get(call.in_names[0])
    foldable = src.op != "placeholder" and len(src.users) == 1  # a part's input is shared with the next part
    if fold_batchnorm(producer, foldable, channels):
        return producer.name
    return call.layer("mul", params=unfolded_batchnorm_params(channels))


def _mean(call: _Call) -> str:
    dims = _arg(call.node, 1, "dim", None)
    dims = [d for d in (dims if isinstance(dims, (list, tuple)) else (dims,)) if d is not None]
    return call.layer(mean_kind(dims, len(call.in_shapes[0]) + 1))


def _pool_module(call: _Call, mod) -> str:
    """Max/average pooling; a module's stride defaults to its kernel size."""
    return call.layer("pool", shape_fields=(*window(mod.kernel_size, mod.stride or mod.kernel_size), 1))


def _pool_function(call: _Call) -> str:
    kernel = _arg(call.node, 1, "kernel_size", 1)
    return call.layer("pool", shape_fields=(*window(kernel, _arg(call.node, 2, "stride", None) or kernel), 1))


def _adaptive_pool(call: _Call, output_size, average: bool) -> str:
    """Adaptive pooling: global average pooling ("gap") to 1 x 1, else a pooling window as exporters compute it."""
    if average and adaptive_pool_kind(output_size) == "gap":
        return call.layer("gap")
    sides = call.in_shapes[0][1:]
    outs = output_size if isinstance(output_size, (list, tuple)) else (output_size,) * len(sides)
    windows = [adaptive_pool_window(i, i if o is None else o) for i, o in zip(sides, outs)] or [(1, 1)]
    return call.layer("pool", shape_fields=(*window(*zip(*windows)), 1))


def _alias(call: _Call, mod=None) -> str:
    return call.in_names[0]


def _plain(kind: str):
    """A handler adding a layer of `kind` without MACs or params."""
    return lambda call, mod=None: call.layer(kind)


def _with_weights(kind: str):
    """A handler adding a layer of `kind` whose weight operands (e.g. a learned scale) are its params."""
    return lambda call: call.layer(kind, params=call.weight_params())


@functools.cache
def _module_handlers() -> dict:
    from torch import nn

    table = {nn.Conv1d: _conv_module, nn.Conv2d: _conv_module, nn.Linear: _linear_module,
             nn.BatchNorm1d: lambda call, mod: _batchnorm(call, mod.num_features),
             nn.AdaptiveAvgPool2d: lambda call, mod: _adaptive_pool(call, mod.output_size, average=True),
             nn.AdaptiveMaxPool2d: lambda call, mod: _adaptive_pool(call, mod.output_size, average=False)}
    table.update(dict.fromkeys((nn.Identity, nn.Dropout, nn.Dropout2d), _alias))
    table.update(dict.fromkeys((nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh,
                                nn.LeakyReLU, nn.Hardtanh, nn.Softmax), _plain("act")))
    table.update(dict.fromkeys((nn.MaxPool2d, nn.AvgPool2d), _pool_module))
    table.update(dict.fromkeys((nn.Flatten, nn.Unflatten), _plain("reshape")))
    table[nn.BatchNorm2d] = table[nn.BatchNorm1d]
    return table


@functools.cache
def _function_handlers() -> dict:
    import torch
    import torch.nn.functional as F

    groups = [
        ((F.conv1d, F.conv2d, torch.conv2d), _conv_function),
        ((F.linear,), _linear_function),
        ((F.batch_norm,), lambda call: _batchnorm(call, call.in_shapes[0][0])),
        ((F.dropout, F.dropout2d, torch.clone), _alias),
        ((F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu, F.hardtanh, F.sigmoid, F.tanh,
          F.softmax, torch.relu, torch.sigmoid, torch.tanh, torch.softmax, torch.clamp, torch.clip, torch.exp),
         _with_weights("act")),
        ((torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze), _plain("reshape")),
        ((F.adaptive_avg_pool2d,), lambda call: _adaptive_pool(call, _arg(call.node, 1, "output_size", 1), True)),
        ((F.adaptive_max_pool2d,), lambda call: _adaptive_pool(call, _arg(call.node, 1, "output_size", 1), False)),
        ((F.max_pool2d, F.avg_pool2d), _pool_function),
        ((torch.mean,), _mean),
        ((operator.add, operator.iadd, torch.add, operator.sub, torch.sub), _with_weights("add")),
        ((operator.mul, operator.imul, torch.mul, operator.truediv, torch.div), _with_weights("mul")),
        ((torch.cat, torch.concat), _plain("concat")),
        # a slice of an activation: a copy into a buffer of its own, costed like the ONNX front end's Slice
        ((operator.getitem,), _plain("concat")),
    ]
    table: dict = {}
    for functions, handler in groups:
        for fn in functions:
            table.setdefault(fn, handler)  # a function listed twice keeps its first handler
    return table


_METHOD_HANDLERS = {
    **dict.fromkeys(("contiguous", "clone"), _alias),
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "softmax", "clamp", "clip", "exp", "hardswish"),
                    _with_weights("act")),
    **dict.fromkeys(("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"),
                    _plain("reshape")),
    "mean": _mean,
    **dict.fromkeys(("add", "sub", "add_"), _with_weights("add")),
    **dict.fromkeys(("mul", "div", "mul_"), _with_weights("mul")),
}


def _tensor_numel(arg) -> int:
    shape = _shape(arg, batch=False) if hasattr(arg, "op") else None
    return numel(shape) if shape is not None else 0


def _bias(mod) -> int:
    return mod.bias.numel() if getattr(mod, "bias", None) is not None else 0
