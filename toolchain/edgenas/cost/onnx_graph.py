"""Plain functions over ONNX protobufs that the ONNX front end (edgenas.cost.onnx_frontend) walks graphs with:
value shapes, subgraphs and their outer-scope reads, ancestors and descendants of tensors, node attributes."""
from __future__ import annotations

import math

from edgenas.errors import EdgenasError

SMALL_CONSTANT = 64  # elements: shape arithmetic operands (Slice starts/ends, Reshape shapes, axes), not weights


def with_visible_constants(model):
    """A copy of the model in which every subgraph holds its own copy of the small outer-scope constants it reads.

    ONNX shape inference sees the types of outer-scope tensors inside an If branch but not their values, so a Slice
    or Reshape whose starts/shape are main-graph initializers gets no static output shape there (edgenas export
    keeps every initializer in the main graph). Only shape inference sees the copy."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    small = {i.name: i for i in out.graph.initializer if math.prod(i.dims) <= SMALL_CONSTANT}

    def visit(graph, visible: dict) -> None:
        visible = {**visible, **{i.name: i for i in graph.initializer if math.prod(i.dims) <= SMALL_CONSTANT}}
        for node in graph.node:
            for sub in subgraphs(node):
                own = {i.name for i in sub.initializer} | {vi.name for vi in sub.input}
                for name in sorted(outer_refs(sub) - own):
                    if name in visible:
                        sub.initializer.append(visible[name])
                visit(sub, visible)

    visit(out.graph, small)
    return out


def value_shape(vi):
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


def subgraphs(node):
    from onnx import AttributeProto

    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def attr_graph(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return a.g
    raise EdgenasError(f"If node {node.name} has no {name}", "write a valid ONNX If node")


def attr_ints(node, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return [int(v) for v in a.ints]
    return None


def static_shapes(graph) -> dict:
    """name -> shape (batch kept; None when not static) of every value a (sub)graph and its subgraphs describe."""
    shapes = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        shapes[vi.name] = value_shape(vi)
    for node in graph.node:
        for sub in subgraphs(node):
            shapes.update(static_shapes(sub))
    return shapes


def missing_shapes(graph, shapes: dict) -> list[str]:
    """Node outputs of a (sub)graph and its subgraphs without a static shape."""
    out = []
    for node in graph.node:
        out.extend(o for o in node.output if o and shapes.get(o) is None)
        for sub in subgraphs(node):
            out.extend(missing_shapes(sub, shapes))
    return out


def folded_shapes(model) -> dict:
    """Static shapes of the values of `model` after onnxruntime's constant folding (its basic graph optimisations:
    Shape -> Gather -> arithmetic -> Slice/Reshape chains become constants, as when the runtime loads the model).
    ONNX shape inference alone leaves such outputs without a shape (ShuffleNetV2's channel split: Slice ends computed
    from Shape, Div and Mul). onnxruntime keeps the names of the tensors it does not fold. {} when onnxruntime cannot
    load the model."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import shape_inference

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable: no layout changes
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # only the optimiser runs
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = os.path.join(folder, "folded.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            folded = shape_inference.infer_shapes(onnx.load(options.optimized_model_filepath), strict_mode=False)
        except Exception:  # onnxruntime and onnx raise many types; the caller reports the shapes still missing
            return {}
    return static_shapes(folded.graph)


def attr_int(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def outer_refs(graph) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {vi.name for vi in graph.input} | {i.name for i in graph.initializer}
    used = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for sub in subgraphs(node):
            used |= outer_refs(sub)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def ancestors(nodes, names: set[str]) -> set[int]:
    """ids of the nodes (among `nodes`) that the given tensors depend on."""
    producer = {o: n for n in nodes for o in n.output}
    found, stack = set(), [producer[n] for n in names if n in producer]
    while stack:
        node = stack.pop()
        if id(node) in found:
            continue
        found.add(id(node))
        refs = [i for i in node.input if i]
        for sub in subgraphs(node):
            refs.extend(outer_refs(sub))
        stack.extend(producer[i] for i in refs if i in producer)
    return found


def descendants(nodes, names: set[str]) -> set[int]:
    """ids of the nodes that read (transitively) any of the given tensors."""
    tainted, found = set(names), set()
    for node in nodes:  # ONNX nodes are topologically sorted
        refs = {i for i in node.input if i}
        for sub in subgraphs(node):
            refs |= outer_refs(sub)
        if refs & tainted:
            found.add(id(node))
            tainted.update(node.output)
    return found
