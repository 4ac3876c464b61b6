"""Graph passes over stage models: nested-If early-exit graph, static all-exits graph, metadata stamping.

Plain ModelProto -> ModelProto functions (inputs are not modified) that end with the ONNX checker.

If-graph layout for B stages (names after composition; stage i's tensors and nodes are prefixed `s{i}_`):

    x -> [stage 0] -> s0_h_out, s0_logits, s0_conf
    ee_keep_0 = 1 - s0_conf;  ee_surv_0 = ee_keep_0;  ee_exit_0 = (1 - ee_surv_0) >= ee_thr_0
    If ee_exit_0:  then -> (s0_logits, 0)
                   else -> [stage 1 on s0_h_out]; ee_surv_1 = ee_surv_0 * (1 - s1_conf); If ... (recursively)
    outputs: logits (1, K) float32, exit_index (1,) int64

Only the branch taken runs, so the segments after an exit cost nothing. Subgraphs have no inputs: they read
outer-scope tensors by name; all initializers (weights, thresholds) live in the main graph.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

import onnx
from onnx import TensorProto, helper, numpy_helper

from edgenas import __version__
from edgenas.errors import EdgenasError
from edgenas.export.checks import IF_OUTPUTS, check_onnx
from edgenas.export.exits_json import FINAL_OUTPUTS, STAGE_OUTPUTS

PRODUCER = "edgenas"


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim)


def _validate_stages(stage_models: Sequence[onnx.ModelProto]) -> int:
    """Check names and chained shapes of the stages; returns n_classes."""
    if not stage_models:
        raise EdgenasError("no stage models to compose", "export the stages first (export_stages)")
    last = len(stage_models) - 1
    prev_h = None
    for i, m in enumerate(stage_models):
        want_in = "x" if i == 0 else "h_in"
        want_out = list(FINAL_OUTPUTS if i == last else STAGE_OUTPUTS)
        ins, outs = [t.name for t in m.graph.input], [t.name for t in m.graph.output]
        if ins != [want_in] or outs != want_out:
            raise EdgenasError(f"stage {i} has inputs {ins} and outputs {outs}, expected [{want_in!r}] and {want_out}",
                               "use stage files written by export_stages, in order")
        in_shape = _dims(m.graph.input[0])
        if prev_h is not None and in_shape != prev_h:
            raise EdgenasError(f"stage {i} expects input shape {list(in_shape)} but stage {i - 1} produces "
                               f"{list(prev_h)}", "compose stages exported from the same network, in order")
        if i < last:
            prev_h = _dims(m.graph.output[0])
    n_classes = _dims(stage_models[-1].graph.output[0])[-1]
    if not isinstance(n_classes, int) or n_classes <= 0:
        raise EdgenasError("the final stage's logits have no static class dimension", "export with static shapes")
    for i, m in enumerate(stage_models[:-1]):
        if _dims(m.graph.output[1])[-1] != n_classes:
            raise EdgenasError(f"stage {i} logits have {_dims(m.graph.output[1])[-1]} classes, final has {n_classes}",
                               "compose stages exported from the same network")
    return n_classes


def _rename_uses(nodes: Sequence[onnx.NodeProto], mapping: Mapping[str, str]) -> None:
    """Rename tensor uses in place, inside subgraphs too (a stage could hold its own control flow)."""
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in mapping:
                node.input[k] = mapping[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_uses(attr.g.node, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_uses(g.node, mapping)


def _prefixed_stages(stage_models: Sequence[onnx.ModelProto]) -> list[onnx.GraphProto]:
    """Stage graphs with every name prefixed `s{i}_` and the input wired to x / the previous h_out."""
    graphs = []
    for i, m in enumerate(stage_models):
        g = onnx.compose.add_prefix(m, f"s{i}_").graph
        source = "x" if i == 0 else f"s{i - 1}_h_out"
        _rename_uses(g.node, {f"s{i}_{'x' if i == 0 else 'h_in'}": source})
        graphs.append(g)
    return graphs


def _merged_model(graph: onnx.GraphProto, stage_models: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """Wrap a composed graph into a model with the union of the stages' opsets, functions and IR version."""
    opsets: dict[str, int] = {}
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for m in stage_models:
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        for f in m.functions:
            functions.setdefault((f.domain, f.name), f)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name=PRODUCER, producer_version=__version__,
                              functions=list(functions.values()))
    model.ir_version = max(m.ir_version for m in stage_models)
    return model


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _exit_chain(graphs: Sequence[onnx.GraphProto], i: int, n_classes: int, out_logits: str, out_exit: str,
                prev_surv: str | None = None) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """Nodes (and value infos) that run stage i and everything after it, writing out_logits / out_exit.

    prev_surv names the survival tensor after exit i-1 (None for i = 0, where survival starts at 1)."""
    g = graphs[i]
    nodes, infos = list(g.node), list(g.value_info)
    last = len(graphs) - 1
    if i == last:
        nodes.append(helper.make_node("Identity", [f"s{i}_logits"], [out_logits], name=f"ee_final_logits_{i}"))
        nodes.append(helper.make_node("Constant", [], [out_exit], name=f"ee_final_index_{i}",
                                      value=helper.make_tensor(f"ee_index_{i}", TensorProto.INT64, [1], [i])))
        return nodes, infos
    keep, surv, leave, fire = f"ee_keep_{i}", f"ee_surv_{i}", f"ee_leave_{i}", f"ee_exit_{i}"
    nodes.append(helper.make_node("Sub", ["ee_one", f"s{i}_conf"], [keep], name=f"ee_keep_{i}"))
    if prev_surv is None:
        surv = keep  # 1 * (1 - c_0), bit-identical to the PyTorch rule
    else:
        nodes.append(helper.make_node("Mul", [prev_surv, keep], [surv], name=f"ee_surv_{i}"))
    nodes.append(helper.make_node("Sub", ["ee_one", surv], [leave], name=f"ee_leave_{i}"))
    nodes.append(helper.make_node("GreaterOrEqual", [leave, f"ee_thr_{i}"], [fire], name=f"ee_exit_{i}"))

    logits_vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n_classes])  # noqa: E731
    index_vi = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, [1])  # noqa: E731
    then_logits, then_exit = f"ee_then_logits_{i}", f"ee_then_index_{i}"
    then_graph = helper.make_graph(
        [helper.make_node("Identity", [f"s{i}_logits"], [then_logits], name=f"ee_take_logits_{i}"),
         helper.make_node("Constant", [], [then_exit], name=f"ee_take_index_{i}",
                          value=helper.make_tensor(f"ee_index_{i}", TensorProto.INT64, [1], [i]))],
        f"exit_{i}_taken", [], [logits_vi(then_logits), index_vi(then_exit)])
    else_logits, else_exit = f"ee_else_logits_{i}", f"ee_else_index_{i}"
    else_nodes, else_infos = _exit_chain(graphs, i + 1, n_classes, else_logits, else_exit, surv)
    else_graph = helper.make_graph(else_nodes, f"exit_{i}_continue", [], [logits_vi(else_logits), index_vi(else_exit)],
                                   value_info=else_infos)
    nodes.append(helper.make_node("If", [fire], [out_logits, out_exit], name=f"exit_if_{i}",
                                  then_branch=then_graph, else_branch=else_graph))
    return nodes, infos


def _initializers(graphs: Sequence[onnx.GraphProto]) -> tuple[list[onnx.TensorProto], list[onnx.SparseTensorProto]]:
    dense, sparse = [], []
    for g in graphs:
        dense.extend(g.initializer)
        sparse.extend(g.sparse_initializer)
    return dense, sparse


def compose_if_graph(stage_models: Sequence[onnx.ModelProto], thresholds: Sequence[float]) -> onnx.ModelProto:
    """Nested-If early-exit model from stage models (fp32 or QDQ int8) and the exit thresholds (checked)."""
    n_classes = _validate_stages(stage_models)
    if len(thresholds) != len(stage_models) - 1:
        raise EdgenasError(f"{len(thresholds)} thresholds for {len(stage_models)} stages",
                           f"give one threshold per intermediate exit ({len(stage_models) - 1})")
    if not all(math.isfinite(float(t)) for t in thresholds):
        raise EdgenasError(f"thresholds must be finite numbers, got {list(thresholds)}", "choose thresholds again")
    graphs = _prefixed_stages(stage_models)
    nodes, infos = _exit_chain(graphs, 0, n_classes, IF_OUTPUTS[0], IF_OUTPUTS[1])
    dense, sparse = _initializers(graphs)
    dense.append(_scalar("ee_one", 1.0))
    dense.extend(_scalar(f"ee_thr_{i}", t) for i, t in enumerate(thresholds))
    x = onnx.ValueInfoProto()
    x.CopyFrom(stage_models[0].graph.input[0])
    graph = helper.make_graph(
        nodes, "edgenas_early_exit", [x],
        [helper.make_tensor_value_info(IF_OUTPUTS[0], TensorProto.FLOAT, [1, n_classes]),
         helper.make_tensor_value_info(IF_OUTPUTS[1], TensorProto.INT64, [1])],
        initializer=dense, value_info=infos, sparse_initializer=sparse)
    return check_onnx(_merged_model(graph, stage_models), "composed If-graph")


def compose_static_graph(stage_models: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """All stages in sequence, every exit an output: logits_i (1, K) for every exit, conf_i (1,) for intermediates."""
    n_classes = _validate_stages(stage_models)
    graphs = _prefixed_stages(stage_models)
    nodes, infos, outputs = [], [], []
    for i, g in enumerate(graphs):
        nodes.extend(g.node)
        infos.extend(g.value_info)
        nodes.append(helper.make_node("Identity", [f"s{i}_logits"], [f"logits_{i}"], name=f"out_logits_{i}"))
        outputs.append(helper.make_tensor_value_info(f"logits_{i}", TensorProto.FLOAT, [1, n_classes]))
    for i in range(len(graphs) - 1):
        nodes.append(helper.make_node("Identity", [f"s{i}_conf"], [f"conf_{i}"], name=f"out_conf_{i}"))
        outputs.append(helper.make_tensor_value_info(f"conf_{i}", TensorProto.FLOAT, [1]))
    dense, sparse = _initializers(graphs)
    x = onnx.ValueInfoProto()
    x.CopyFrom(stage_models[0].graph.input[0])
    graph = helper.make_graph(nodes, "edgenas_all_exits", [x], outputs, initializer=dense, value_info=infos,
                              sparse_initializer=sparse)
    return check_onnx(_merged_model(graph, stage_models), "composed static graph")


def stamp_metadata(model: onnx.ModelProto, props: Mapping[str, object]) -> onnx.ModelProto:
    """A copy of `model` with metadata_props set (values as strings; existing keys are replaced)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    merged = {p.key: p.value for p in out.metadata_props}
    merged.update({str(k): str(v) for k, v in props.items()})
    del out.metadata_props[:]
    helper.set_model_props(out, merged)
    return check_onnx(out, "stamped model")
