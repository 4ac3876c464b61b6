"""ONNX front end: an onnx.ModelProto -> CostGraph (for `edgenas analyze model.onnx`).

Shapes come from onnx.shape_inference (with data propagation). When it leaves a node output without a static shape
(a Slice whose ends are computed from Shape, as in ShuffleNetV2), the shapes of onnxruntime's constant-folded graph
are used for those outputs (onnx_graph.folded_shapes); the walked graph stays the original one, so layer names stay
the model's node names (which calibration maps onnxruntime profile events to). The first graph input that is not
an initializer is the image; its first dimension is the batch and is dropped from every shape.

A plain graph is one segment and one exit (its first output), with every layer in the segment. A graph with
early-exit `If` nodes (edgenas export: then-branch = take exit i, else-branch = continue, nested) is split at each
`If`: the nodes the else-branch needs form segment i, the remaining nodes (exit head, confidence, the condition) and
the then-branch form head i, and the else-branch is walked the same way for exit i+1. The final level has no `If`:
its layers all count as the last segment (its head cannot be told apart from the backbone in a plain graph, which
changes labels only, not per-exit totals). Nodes after the outermost `If` that only pass its results on are ignored.

Nodes computed from constants only (Shape, shape arithmetic, Constant) are folded away, as every deployment does.
Elementwise identities (x + 0, x * 1, ...), products with zero, the add of such a zero branch, what is computed from
those zeros only, and the layers that only feed a product with zero are layers as in an unfolded graph, marked
`folded` (layer_rules.constant_operand_fold, layer_rules.mark_dead): onnxruntime and TVM compute most of them,
TFLite folds them, so only the latency model decides whether they cost time. Every other node is costed by the
handler its op type maps to (_HANDLERS), which applies the rules shared with the torch front end
(edgenas.cost.layer_rules).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgenas.cost.graph import CostGraph, validate
from edgenas.cost.layer_rules import (PendingLayer, adaptive_pool_window, constant_operand_fold, conv_rule,
                                      fold_batchnorm, fold_bias, linear_macs, mark_dead, mean_kind,
                                      unfolded_batchnorm_params, window)
from edgenas.cost.onnx_graph import (ancestors, attr_graph, attr_int, attr_ints, descendants, folded_shapes,
                                     missing_shapes, outer_refs, static_shapes, subgraphs,
                                     with_visible_constants)
from edgenas.errors import EdgenasError

_ACT_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Softmax", "Elu", "Selu",
            "Gelu", "Erf", "Exp", "PRelu", "Softplus", "Mish"}
_RESHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}
_POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOL_OPS = {"GlobalMaxPool", "GlobalLpPool"}
_ALIAS_OPS = {"Identity", "Dropout"}
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "PRelu"}
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div"}
# Operators whose output is zero when every activation input is (moves, max/average, ReLU): a zero branch stays a
# zero through them, so the add that finally sums it into a live branch is still an identity
_ZERO_PRESERVING_OPS = _RESHAPE_OPS | {"Transpose", "Slice", "Split", "Concat", "Relu", "MaxPool", "AveragePool",
                                       "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Neg"}
# Copies of (part of) an activation into a new buffer: costed like a concatenation (kind "concat": the bytes read and
# written, a buffer of its own in the SRAM plan). A Transpose is no view (unlike Reshape), and onnxruntime copies the
# output of Slice and Split too.
_COPY_OPS = {"Transpose", "Slice", "Split"}
# Operators without weights or MACs that the latency model costs by the bytes they move (kind "other"). An
# operator without a handler (_HANDLERS) is unknown: its MACs and weights are not counted, and `analyze` says so.
_DATA_OPS = {"Pad", "Resize", "Upsample", "Cast", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "ReduceMax",
             "ReduceMin", "ReduceSum", "ReduceL2", "ArgMax", "ArgMin", "Sqrt", "Pow", "Neg", "Abs", "Reciprocal",
             "Log", "Max", "Min", "Sum", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And",
             "Or", "Where", "Floor", "Ceil", "Round", "Sign", "QuantizeLinear", "DequantizeLinear",
             "ConstantOfShape", "Range", "If", "Gather"}


def check_opset(model, name: str) -> None:
    """An opset newer than the installed onnx knows has operator semantics nobody here can check: reject it."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > newest:
            raise EdgenasError(f"{name} uses ONNX opset {op.version}, newer than the newest supported "
                               f"(opset {newest}, onnx {onnx.__version__})",
                               "export it with opset 18: torch.onnx.export(..., opset_version=18)")


def from_onnx(model) -> CostGraph:
    """CostGraph of an onnx.ModelProto, or of the .onnx file at a path."""
    import onnx
    from onnx import shape_inference

    name = "the ONNX model"
    if not isinstance(model, onnx.ModelProto):
        name = str(model)
        model = _load(model)
    check_opset(model, name)
    try:
        inferred = shape_inference.infer_shapes(with_visible_constants(model), strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and checker errors
        raise EdgenasError(f"ONNX shape inference failed: {' '.join(str(exc).split())[:200]}",
                           "check the model with onnx.checker.check_model and export it with static shapes") from None
    shapes = static_shapes(inferred.graph)
    if missing_shapes(inferred.graph, shapes):
        shapes.update({k: v for k, v in folded_shapes(model).items() if v is not None and shapes.get(k) is None})
    return _Walker(inferred, shapes).run()


def _load(path):
    import os

    import onnx

    if not isinstance(path, (str, os.PathLike)):
        raise EdgenasError(f"from_onnx expects an onnx.ModelProto or a path, got {type(path).__name__}",
                           "pass onnx.load(...) or the path of a .onnx file")
    if not os.path.isfile(path):
        raise EdgenasError(f"ONNX file {path} not found", "check the path")
    try:
        return onnx.load(path)
    except Exception as exc:  # protobuf DecodeError and friends
        raise EdgenasError(f"cannot read {path} as ONNX: {' '.join(str(exc).split())[:200]}",
                           "pass a model written by onnx.save or torch.onnx.export") from None


def _strip(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[1:])


class _Walker:
    def __init__(self, model, shapes: dict):
        from onnx import numpy_helper

        self.np_helper = numpy_helper
        self.model = model
        self.graph = model.graph
        self.shapes: dict[str, tuple | None] = dict(shapes)  # with batch; None where not static
        self.initializers: dict = {}    # name -> TensorProto, of every (sub)graph
        self.const_values: dict = {}    # name -> numpy array (initializers, Constant nodes)
        self.const_shapes: dict[str, tuple[int, ...]] = {}
        self.consts: set[str] = set()   # tensors known at compile time (weights, shape arithmetic)
        self.alias: dict[str, str] = {}
        self.uses: dict[str, int] = {}
        self.layers: list[PendingLayer] = []
        self.by_output: dict[str, PendingLayer] = {}
        self.used_names: set[str] = set()
        self.unknown: list[str] = []    # "op (layer name)" of every layer with an operator the cost model lacks
        # activations a runtime that folds constants knows at compile time: products with zero and what is computed
        # from them only (their layers are marked folded); `zeros` are those known to be zero
        self.folded_values: set[str] = set()
        self.zeros: set[str] = set()
        self.kept_reads: set[str] = set()  # activations read by nodes that are not layers (If conditions, outputs)
        self._collect(self.graph)

    # ------------------------------------------------------------------ bookkeeping over all (sub)graphs
    def _collect(self, graph) -> None:
        for init in graph.initializer:
            self.consts.add(init.name)
            self.const_shapes[init.name] = tuple(int(d) for d in init.dims)
            self.initializers[init.name] = init
        for out in graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1
            self.kept_reads.add(out.name)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
            for sub in subgraphs(node):
                self._collect(sub)

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def value(self, name: str):
        """Numpy value of a constant tensor, or None when it is not known."""
        name = self.resolve(name)
        if name in self.const_values:
            return self.const_values[name]
        if name in self.initializers:
            self.const_values[name] = self.np_helper.to_array(self.initializers[name])
            return self.const_values[name]
        return None

    def const_shape(self, name: str) -> tuple[int, ...]:
        name = self.resolve(name)
        if name in self.const_shapes:
            return self.const_shapes[name]
        shape = self.shapes.get(name)
        if shape is None:
            raise EdgenasError(f"ONNX weight {name} has no known shape", "export the model with static shapes")
        return shape

    def act_shape(self, name: str, node) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None:
            raise EdgenasError(f"ONNX tensor {name} (node {node.name or node.op_type}) has no static shape after "
                               "shape inference", "export with fixed input sizes (batch may be symbolic)")
        return _strip(shape)

    # ------------------------------------------------------------------ walk
    def run(self) -> CostGraph:
        inputs = [vi for vi in self.graph.input if vi.name not in self.consts]
        if not inputs:
            raise EdgenasError("ONNX graph has no (non-initializer) input", "export the model with an image input")
        if len(inputs) > 1:  # a second input would be read by layers as a tensor that nothing produces
            raise EdgenasError(f"ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs[:4])}); "
                               "analyze takes models with one image input",
                               "turn the other inputs into initializers, or export the part that takes the image")
        x = inputs[0]
        if self.shapes.get(x.name) is None:
            raise EdgenasError(f"ONNX input {x.name} has no static shape",
                               "export with a fixed C x H x W input (the batch dimension may be symbolic)")
        if 0 in self.shapes[x.name]:
            raise EdgenasError(f"ONNX input {x.name} is zero-sized (shape {list(self.shapes[x.name])})",
                               "export with the real input size (every dimension at least 1)")
        self.input_name = x.name
        seg_outputs, exit_outputs = [], []
        self._level(self.graph, 0, seg_outputs, exit_outputs)
        mark_dead(self.layers, {self.resolve(t) for t in (*self.kept_reads, *seg_outputs, *exit_outputs)})
        layers = tuple(layer.freeze() for layer in self.layers)
        return validate(CostGraph(layers=layers, input_name=x.name, input_shape=_strip(self.shapes[x.name]),
                                  segment_outputs=tuple(seg_outputs), exit_outputs=tuple(exit_outputs),
                                  n_exits=len(seg_outputs), unknown_ops=tuple(self.unknown)))

    def _level(self, graph, level: int, seg_outputs: list, exit_outputs: list) -> None:
        nodes = list(graph.node)
        ifs = [n for n in nodes if n.op_type == "If"]
        if len(ifs) > 1:
            raise EdgenasError(f"ONNX graph level {level} holds {len(ifs)} If nodes",
                               "analyze graphs with one early-exit If per level (as edgenas export writes them)")
        for init in graph.initializer:
            self.consts.add(init.name)
        if not ifs:
            for node in nodes:
                self._emit(node, "segment", level)
            out = self._main_output(graph)
            seg_outputs.append(out)
            exit_outputs.append(out)
            return
        if_node = ifs[0]
        self.kept_reads.update(i for i in if_node.input if i)
        then_g = attr_graph(if_node, "then_branch")
        else_g = attr_graph(if_node, "else_branch")
        after_if = descendants(nodes, set(if_node.output))
        before = [n for n in nodes if n is not if_node and id(n) not in after_if]
        carried = self._segment_output(before, outer_refs(else_g), if_node, level)
        backbone = ancestors(before, {carried})
        for node in before:
            if id(node) in backbone:
                self._emit(node, "segment", level)
        for node in before:
            if id(node) not in backbone:
                self._emit(node, "head", level)
        for init in then_g.initializer:
            self.consts.add(init.name)
        for node in then_g.node:
            self._emit(node, "head", level)
        seg_outputs.append(self.resolve(carried))
        exit_outputs.append(self._main_output(then_g))
        self._level(else_g, level + 1, seg_outputs, exit_outputs)

    def _segment_output(self, before, needed: set[str], if_node, level: int) -> str:
        """The tensor the else-branch continues the backbone from.

        The else-branch may read several activations of the outer graph: the backbone tensor and exit-decision
        state (edgenas export carries the survival product 1 - c_0, ... into the next exit's decision). Every such
        state is computed from the backbone tensor through the head, so the segment output is the one tensor read
        by the else-branch that all the others depend on."""
        dynamic = {n for n in needed if self.resolve(n) == self.input_name or self.resolve(n) in self.by_output}
        producer = {}
        for node in before:  # ONNX nodes are topologically sorted
            refs = {i for i in node.input if i}
            for sub in subgraphs(node):
                refs |= outer_refs(sub)
            if any(r in dynamic or r == self.input_name or self.resolve(r) in self.by_output for r in refs):
                dynamic.update(node.output)
            for o in node.output:
                producer[o] = node
        candidates = sorted(n for n in needed if n in dynamic)

        def depends(d: str, c: str) -> bool:
            seen, stack = set(), [d]
            while stack:
                t = stack.pop()
                if t == c:
                    return True
                if t in seen or t not in producer:
                    continue
                seen.add(t)
                node = producer[t]
                stack.extend(i for i in node.input if i)
                for sub in subgraphs(node):
                    stack.extend(outer_refs(sub))
            return False

        roots = [c for c in candidates if all(d == c or depends(d, c) for d in candidates)]
        if len(roots) != 1:
            raise EdgenasError(f"the else-branch of If {if_node.name or '#' + str(level)} reads {len(candidates)} "
                               f"activation tensors from the outer graph ({', '.join(candidates) or 'none'}) and "
                               "none of them is the one the others are computed from",
                               "continue the backbone from one tensor at each exit point; exit-decision state may "
                               "be carried too if it is computed from that tensor")
        return roots[0]

    def _main_output(self, graph) -> str:
        out = self.resolve(graph.output[0].name)
        if out not in self.by_output and out != self.input_name:
            raise EdgenasError(f"ONNX output {graph.output[0].name} is not computed from the input",
                               "the first output of each branch must be the exit's logits")
        return out

    # ------------------------------------------------------------------ one node
    def _emit(self, node, part: str, index: int) -> None:
        op = node.op_type
        if op == "Constant":
            self._constant(node)
            return
        acts = [self.resolve(i) for i in node.input if i and self.resolve(i) not in self.consts]
        if op in ("Shape", "Size") or not acts:
            self.consts.update(node.output)  # static shapes / constant folding
            return
        if op in _ALIAS_OPS:
            self.alias[node.output[0]] = acts[0]
            return
        fold, passes_on = self._constant_fold(node, acts)
        out = node.output[0]
        out_shape = self.act_shape(out, node)
        in_shapes = tuple(self.act_shape(a, node) if a != self.input_name else _strip(self.shapes[a]) for a in acts)
        weights = [i for i in node.input if i and self.resolve(i) in self.consts]
        # constant operands are parameters only for ops that hold learned tensors (not Clip bounds, Reshape shapes,
        # axes, scalars such as x * 0.5)
        params = sum(n for n in (math.prod(self.const_shape(w)) for w in weights) if n > 1 or op in _WEIGHT_OPS) \
            if op in _WEIGHT_OPS | _ELEMENTWISE_OPS else 0
        call = _Call(node, acts, in_shapes, out, out_shape, weights, params)
        handler = _HANDLERS.get(op)
        if handler is None:
            cost = self.record_unknown(call)
        else:
            cost = handler(self, call)
            if cost is None:
                return  # folded into the layer before it
        kind, macs, params, has_bias, *window_fields = cost
        kernel, stride, groups = window_fields[0] if window_fields else (1, 1, 1)
        # a Split writes one tensor per output: one layer each (the first keeps the node's name)
        outs = [o for o in node.output if o] if op == "Split" else [out]
        for k, tensor in enumerate(outs):
            name = node.name or f"{op}_{out}"
            name = name if k == 0 else f"{name}:{k}"
            while name in self.used_names:
                name += "_"
            self.used_names.add(name)
            shape = out_shape if tensor == out else self.act_shape(tensor, node)
            layer = PendingLayer(name, kind, tuple(acts), tensor, in_shapes, shape, macs, params, part, index,
                                 has_bias, kernel, stride, groups, folded=fold is not None, passes_on=passes_on)
            self.layers.append(layer)
            self.by_output[tensor] = layer
            if fold in ("zero", "constant"):
                self.folded_values.add(tensor)
            if fold == "zero":
                self.zeros.add(tensor)

    def _constant_fold(self, node, acts: list[str]) -> tuple[str | None, str | None]:
        """How a runtime that folds constants treats a node with activation inputs: ("zero", None) when its output
        is a constant zero (x * 0), ("constant", None) when it is computed from such folded values only,
        ("identity", act) when it passes the activation act on unchanged (x + 0, x * 1, a zero branch added to act),
        (None, None) when it computes."""
        operands = [self.resolve(i) for i in node.input if i]
        if all(a in self.folded_values for a in acts):
            return ("zero" if self._zero_output(node.op_type, operands, acts) else "constant"), None
        computed = [a for a in acts if a not in self.folded_values]
        if node.op_type not in _ELEMENTWISE_OPS or len(operands) != 2 or len(computed) != 1 or \
                len(set(operands)) != 2:
            return None, None
        act = computed[0]
        other = operands[1] if operands[0] == act else operands[0]
        value = 0.0 if other in self.zeros else self.value(other)
        if value is None:
            return None, None
        in_shape, out_shape = self.shapes.get(act), self.shapes.get(node.output[0])
        same = in_shape is not None and out_shape is not None and _strip(in_shape) == _strip(out_shape)
        fold = constant_operand_fold(node.op_type.lower(), value, operands[0] != act, same)
        return fold, (act if fold == "identity" else None)

    def _zero_output(self, op: str, operands: list[str], acts: list[str]) -> bool:
        """Whether a node computed from folded values only outputs zero."""
        import numpy as np

        def zero(t: str) -> bool:
            value = None if t in self.zeros else self.value(t)
            if value is None:
                return t in self.zeros
            value = np.asarray(value)
            return value.size > 0 and np.issubdtype(value.dtype, np.number) and not value.any()

        if op == "Mul":
            return any(zero(t) for t in operands)
        if op == "Div":
            return zero(operands[0])
        if op in ("Add", "Sub"):
            return all(zero(t) for t in operands)
        return op in _ZERO_PRESERVING_OPS and all(a in self.zeros for a in acts)

    def record_unknown(self, call: "_Call") -> tuple:
        """An operator the cost model lacks: a layer of kind "other" whose MACs and weights are not counted."""
        op = call.node.op_type
        self.unknown.append(f"{op} ({call.node.name or f'{op}_{call.out}'})")
        return "other", 0, call.params, True

    def fold_batchnorm(self, node, src: str, channels: int) -> bool:
        if not fold_batchnorm(self.by_output.get(src), self.uses.get(src, 0) == 1, channels):
            return False
        self.alias[node.output[0]] = src
        return True

    def fold_bias(self, node, src: str, bias_params: int) -> bool:
        """MatMul + Add(constant) is a linear layer with a bias."""
        if not fold_bias(self.by_output.get(src), self.uses.get(src, 0) == 1, bias_params):
            return False
        self.alias[node.output[0]] = src
        return True

    def _constant(self, node) -> None:
        from onnx import helper

        out = node.output[0]
        self.consts.add(out)
        for a in node.attribute:
            if a.name == "value":
                arr = self.np_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                import numpy as np
                arr = np.asarray(helper.get_attribute_value(a))
            else:
                continue
            self.const_values[out] = arr
            self.const_shapes[out] = tuple(arr.shape)

    def reduce_mean_kind(self, node, rank: int) -> str:
        axes = None
        for a in node.attribute:
            if a.name == "axes":
                axes = list(a.ints)
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.value(node.input[1])
            axes = None if value is None else [int(v) for v in value.reshape(-1)]
        return "other" if axes is None else mean_kind(axes, rank)


# ---------------------------------------------------------------------------------------------- handlers
@dataclass(frozen=True)
class _Call:
    """One ONNX node being costed: what every handler reads."""
    node: object
    acts: list[str]                          # activation inputs (constants excluded), aliases resolved
    in_shapes: tuple[tuple[int, ...], ...]
    out: str
    out_shape: tuple[int, ...]
    weights: list[str]                       # constant inputs
    params: int                              # elements of the constant inputs that are learned tensors


def _has_bias(node) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


# Handlers take (walker, call) and return (kind, MACs, params, has_bias), with (kernel, stride, groups) appended for
# conv and pooling layers, or None when the node was folded into the layer before it.
def _conv(w: _Walker, c: _Call):
    weight_shape, groups = w.const_shape(c.node.input[1]), attr_int(c.node, "group", 1)
    kind, macs = conv_rule(weight_shape, groups, c.out_shape)
    kernel, stride = window(weight_shape[2:], attr_ints(c.node, "strides"))
    return kind, macs, c.params, _has_bias(c.node), (kernel, stride, groups)


def _pool(w: _Walker, c: _Call):
    kernel, stride = window(attr_ints(c.node, "kernel_shape"), attr_ints(c.node, "strides"))
    return "pool", 0, c.params, True, (kernel, stride, 1)


def _global_pool(w: _Walker, c: _Call):
    """A global pooling is one window over the whole plane."""
    sides = c.in_shapes[0][1:] or (1,)
    kernel, stride = window(*zip(*(adaptive_pool_window(side, 1) for side in sides)))
    return "pool", 0, c.params, True, (kernel, stride, 1)


def _gemm(w: _Walker, c: _Call):
    b_in = c.node.input[1]
    b = w.const_shape(b_in) if b_in in c.weights else w.act_shape(b_in, c.node)
    k = b[1] if attr_int(c.node, "transB", 0) else b[0]
    return "linear", linear_macs(c.out_shape, k), c.params, _has_bias(c.node)


def _matmul(w: _Walker, c: _Call):
    k = c.in_shapes[0][-1] if c.in_shapes[0] else 1
    return "linear", linear_macs(c.out_shape, k), c.params, False


def _batchnorm(w: _Walker, c: _Call):
    if w.fold_batchnorm(c.node, c.acts[0], c.out_shape[0]):
        return None
    return "mul", 0, unfolded_batchnorm_params(c.out_shape[0]), True


def _add(w: _Walker, c: _Call):
    if len(c.acts) == 1 and w.fold_bias(c.node, c.acts[0], c.params):
        return None
    return "add", 0, c.params, True


def _reduce_mean(w: _Walker, c: _Call):
    return w.reduce_mean_kind(c.node, len(c.in_shapes[0]) + 1), 0, c.params, True


def _gather(w: _Walker, c: _Call):
    if w.resolve(c.node.input[0]) in w.consts:  # from a constant table: an embedding lookup, whose weights the
        return w.record_unknown(c)              # cost model does not count
    return "other", 0, c.params, True


def _plain(kind: str):
    return lambda w, c: (kind, 0, c.params, True)


_HANDLERS = {  # op type -> handler; ConvTranspose: its weights are counted, its MACs are not modelled
    **dict.fromkeys(_DATA_OPS | {"ConvTranspose"}, _plain("other")),
    **dict.fromkeys(_ACT_OPS, _plain("act")),
    **dict.fromkeys(_RESHAPE_OPS, _plain("reshape")),
    **dict.fromkeys(_POOL_OPS, _pool),
    **dict.fromkeys(_GLOBAL_POOL_OPS, _global_pool),
    **dict.fromkeys(_COPY_OPS, _plain("concat")),
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batchnorm, "Add": _add, "Sub": _add,
    "Mul": _plain("mul"), "Div": _plain("mul"), "GlobalAveragePool": _plain("gap"), "ReduceMean": _reduce_mean,
    "Concat": _plain("concat"), "Gather": _gather,
}
