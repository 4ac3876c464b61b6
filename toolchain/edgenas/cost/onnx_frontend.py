"""ONNX front end: an onnx.ModelProto -> CostGraph (for `edgenas analyze model.onnx`).

Shapes come from onnx.shape_inference. The first graph input that is not an initializer is the image; its first
dimension is the batch and is dropped from every shape.

A plain graph is one segment and one exit (its first output), with every layer in the segment. A graph with
early-exit `If` nodes (edgenas export: then-branch = take exit i, else-branch = continue, nested) is split at each
`If`: the nodes the else-branch needs form segment i, the remaining nodes (exit head, confidence, the condition) and
the then-branch form head i, and the else-branch is walked the same way for exit i+1. The final level has no `If`:
its layers all count as the last segment (its head cannot be told apart from the backbone in a plain graph, which
changes labels only, not per-exit totals). Nodes after the outermost `If` that only pass its results on are ignored.

Nodes computed from constants only (Shape, shape arithmetic, Constant) are folded away, as a deployment would.
"""
from __future__ import annotations

import math

from edgenas.cost.graph import CostGraph, Layer, validate
from edgenas.errors import EdgenasError

_ACT_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Softmax", "Elu", "Selu",
            "Gelu", "Erf", "Exp", "PRelu", "Softplus", "Mish"}
_RESHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}
_POOL_OPS = {"MaxPool", "AveragePool", "LpPool", "GlobalMaxPool"}
_ALIAS_OPS = {"Identity", "Dropout"}
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "PRelu"}
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div"}
# Operators without weights or MACs that the latency model costs by the bytes they move (kind "other"). An
# operator in none of these sets is unknown: its MACs and weights are not counted, and `analyze` says so.
_DATA_OPS = {"Transpose", "Slice", "Split", "Pad", "Resize", "Upsample", "Cast", "Expand", "Tile", "DepthToSpace",
             "SpaceToDepth", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ArgMax", "ArgMin", "Sqrt", "Pow",
             "Neg", "Abs", "Reciprocal", "Log", "Max", "Min", "Sum", "Equal", "Greater", "Less", "GreaterOrEqual",
             "LessOrEqual", "Not", "And", "Or", "Where", "Floor", "Ceil", "Round", "Sign", "QuantizeLinear",
             "DequantizeLinear", "ConstantOfShape", "Range", "If", "Gather"}
_KNOWN_OPS = (_ACT_OPS | _RESHAPE_OPS | _POOL_OPS | _ALIAS_OPS | _WEIGHT_OPS | _ELEMENTWISE_OPS | _DATA_OPS
              | {"Constant", "Shape", "Size", "BatchNormalization", "GlobalAveragePool", "ReduceMean", "Concat"})


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
        inferred = shape_inference.infer_shapes(_with_visible_constants(model), strict_mode=False)
    except Exception as exc:  # onnx raises InferenceError and checker errors
        raise EdgenasError(f"ONNX shape inference failed: {' '.join(str(exc).split())[:200]}",
                           "check the model with onnx.checker.check_model and export it with static shapes") from None
    return _Walker(inferred).run()


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


_SMALL_CONSTANT = 64  # elements: shape arithmetic operands (Slice starts/ends, Reshape shapes, axes), not weights


def _with_visible_constants(model):
    """A copy of the model in which every subgraph holds its own copy of the small outer-scope constants it reads.

    ONNX shape inference sees the types of outer-scope tensors inside an If branch but not their values, so a Slice
    or Reshape whose starts/shape are main-graph initializers gets no static output shape there (edgenas export
    keeps every initializer in the main graph). Only shape inference sees the copy."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    small = {i.name: i for i in out.graph.initializer if math.prod(i.dims) <= _SMALL_CONSTANT}

    def visit(graph, visible: dict) -> None:
        visible = {**visible, **{i.name: i for i in graph.initializer if math.prod(i.dims) <= _SMALL_CONSTANT}}
        for node in graph.node:
            for sub in _subgraphs(node):
                own = {i.name for i in sub.initializer} | {vi.name for vi in sub.input}
                for name in sorted(_outer_refs(sub) - own):
                    if name in visible:
                        sub.initializer.append(visible[name])
                visit(sub, visible)

    visit(out.graph, small)
    return out


def _strip(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[1:])


class _Walker:
    def __init__(self, model):
        from onnx import numpy_helper

        self.np_helper = numpy_helper
        self.model = model
        self.graph = model.graph
        self.shapes: dict[str, tuple | None] = {}
        self.const_values: dict = {}    # name -> numpy array (initializers, Constant nodes)
        self.const_shapes: dict[str, tuple[int, ...]] = {}
        self.consts: set[str] = set()   # tensors known at compile time (weights, shape arithmetic)
        self.alias: dict[str, str] = {}
        self.uses: dict[str, int] = {}
        self.layers: list[dict] = []
        self.by_output: dict[str, dict] = {}
        self.used_names: set[str] = set()
        self.unknown: list[str] = []    # "op (layer name)" of every layer with an operator the cost model lacks
        self._collect(self.graph)

    # ------------------------------------------------------------------ bookkeeping over all (sub)graphs
    def _collect(self, graph) -> None:
        for vi in (*graph.input, *graph.value_info, *graph.output):
            self.shapes[vi.name] = _value_shape(vi)
        for init in graph.initializer:
            self.consts.add(init.name)
            self.const_shapes[init.name] = tuple(int(d) for d in init.dims)
        for out in graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1
        for node in graph.node:
            for name in node.input:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
            for sub in _subgraphs(node):
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
        for init in self.graph.initializer:
            if init.name == name:
                self.const_values[name] = self.np_helper.to_array(init)
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
        layers = tuple(Layer(d["name"], d["kind"], d["inputs"], d["output"], d["in_shapes"], d["out_shape"],
                             int(d["macs"]), int(d["params"]), d["part"], d["index"]) for d in self.layers)
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
        then_g = _attr_graph(if_node, "then_branch")
        else_g = _attr_graph(if_node, "else_branch")
        after_if = _descendants(nodes, set(if_node.output))
        before = [n for n in nodes if n is not if_node and id(n) not in after_if]
        carried = self._segment_output(before, _outer_refs(else_g), if_node, level)
        backbone = _ancestors(before, {carried})
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
            for sub in _subgraphs(node):
                refs |= _outer_refs(sub)
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
                for sub in _subgraphs(node):
                    stack.extend(_outer_refs(sub))
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
        out = node.output[0]
        out_shape = self.act_shape(out, node)
        in_shapes = tuple(self.act_shape(a, node) if a != self.input_name else _strip(self.shapes[a]) for a in acts)
        weights = [i for i in node.input if i and self.resolve(i) in self.consts]
        # constant operands are parameters only for ops that hold learned tensors (not Clip bounds, Reshape shapes,
        # axes, scalars such as x * 0.5)
        params = sum(n for n in (math.prod(self.const_shape(w)) for w in weights) if n > 1 or op in _WEIGHT_OPS) \
            if op in _WEIGHT_OPS | _ELEMENTWISE_OPS else 0
        kind, macs, has_bias = "other", 0, True
        if op == "Conv":
            w = self.const_shape(node.input[1])
            groups = _attr_int(node, "group", 1)
            c_in = w[1] * groups
            kind = "dwconv" if groups > 1 and groups == c_in == w[0] else "conv"
            macs = math.prod(out_shape) * math.prod(w[1:])
            has_bias = len(node.input) > 2 and bool(node.input[2])
        elif op == "Gemm":
            b = self.const_shape(node.input[1]) if node.input[1] in weights else self.act_shape(node.input[1], node)
            k = b[1] if _attr_int(node, "transB", 0) else b[0]
            kind, macs = "linear", math.prod(out_shape) * k
            has_bias = len(node.input) > 2 and bool(node.input[2])
        elif op == "MatMul":
            k = in_shapes[0][-1] if in_shapes[0] else 1
            kind, macs, has_bias = "linear", math.prod(out_shape) * k, False
        elif op == "BatchNormalization":
            if self._fold_batchnorm(node, acts[0], out_shape[0]):
                return
            kind, params = "mul", 2 * out_shape[0]
        elif op in ("Add", "Sub") and len(acts) == 1 and self._fold_bias(node, acts[0], params):
            return
        elif op in ("Add", "Sub"):
            kind = "add"
        elif op in ("Mul", "Div"):
            kind = "mul"
        elif op in _ACT_OPS:
            kind = "act"
        elif op in _RESHAPE_OPS:
            kind = "reshape"
        elif op in _POOL_OPS:
            kind = "pool"
        elif op == "GlobalAveragePool":
            kind = "gap"
        elif op == "ReduceMean":
            kind = "gap" if self._reduces_spatial(node, len(in_shapes[0]) + 1) else "other"
        elif op == "Concat":
            kind = "concat"
        elif op not in _KNOWN_OPS or (op == "Gather" and self.resolve(node.input[0]) in self.consts):
            # a Gather from a constant table is an embedding lookup: its weights would go uncounted
            self.unknown.append(f"{op} ({node.name or f'{op}_{out}'})")
        self._add(node, kind, acts, in_shapes, out, out_shape, macs, params, part, index, has_bias)

    def _add(self, node, kind, acts, in_shapes, out, out_shape, macs, params, part, index, has_bias) -> None:
        name = node.name or f"{node.op_type}_{out}"
        while name in self.used_names:
            name += "_"
        self.used_names.add(name)
        layer = dict(name=name, kind=kind, inputs=tuple(acts), output=out, in_shapes=in_shapes,
                     out_shape=out_shape, macs=macs, params=params, part=part, index=index, has_bias=has_bias)
        self.layers.append(layer)
        self.by_output[out] = layer

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

    def _fold_batchnorm(self, node, src: str, channels: int) -> bool:
        producer = self.by_output.get(src)
        if producer is None or producer["kind"] not in ("conv", "dwconv", "linear") or self.uses.get(src, 0) != 1:
            return False
        if not producer["has_bias"]:
            producer["params"] += channels
            producer["has_bias"] = True
        self.alias[node.output[0]] = src
        return True

    def _fold_bias(self, node, src: str, bias_params: int) -> bool:
        """MatMul + Add(constant) is a linear layer with a bias."""
        producer = self.by_output.get(src)
        if producer is None or producer["kind"] != "linear" or producer["has_bias"] or self.uses.get(src, 0) != 1:
            return False
        producer["params"] += bias_params
        producer["has_bias"] = True
        self.alias[node.output[0]] = src
        return True

    def _reduces_spatial(self, node, rank: int) -> bool:
        axes = None
        for a in node.attribute:
            if a.name == "axes":
                axes = list(a.ints)
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.value(node.input[1])
            axes = None if value is None else [int(v) for v in value.reshape(-1)]
        if axes is None:
            return False
        return sorted(a % rank for a in axes) == list(range(2, rank))


# ---------------------------------------------------------------------------------------------- graph helpers
def _value_shape(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)  # symbolic batch
        else:
            return None
    return tuple(dims)


def _subgraphs(node):
    from onnx import AttributeProto

    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def _attr_graph(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return a.g
    raise EdgenasError(f"If node {node.name} has no {name}", "write a valid ONNX If node")


def _attr_int(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _outer_refs(graph) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {vi.name for vi in graph.input} | {i.name for i in graph.initializer}
    used = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            used |= _outer_refs(sub)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def _ancestors(nodes, names: set[str]) -> set[int]:
    """ids of the nodes (among `nodes`) that the given tensors depend on."""
    producer = {o: n for n in nodes for o in n.output}
    found, stack = set(), [producer[n] for n in names if n in producer]
    while stack:
        node = stack.pop()
        if id(node) in found:
            continue
        found.add(id(node))
        refs = [i for i in node.input if i]
        for sub in _subgraphs(node):
            refs.extend(_outer_refs(sub))
        stack.extend(producer[i] for i in refs if i in producer)
    return found


def _descendants(nodes, names: set[str]) -> set[int]:
    """ids of the nodes that read (transitively) any of the given tensors."""
    tainted, found = set(names), set()
    for node in nodes:  # ONNX nodes are topologically sorted
        refs = {i for i in node.input if i}
        for sub in _subgraphs(node):
            refs |= _outer_refs(sub)
        if refs & tainted:
            found.add(id(node))
            tainted.update(node.output)
    return found
