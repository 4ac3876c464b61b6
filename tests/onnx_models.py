"""Small ONNX models built with onnx.helper (not files checked in): plain conv nets for calibration and analysis, and
the models of bad or unsupported input."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _tensor(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name: str, shape):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32) * .01, name)


def small_model(kind: str, opset: int = 18) -> onnx.ModelProto:
    """kind: lstm (recurrent layer), nms (NonMaxSuppression: data-dependent output shape), relu (input 1x3x8x8),
    zero (a zero-sized input dimension), two (two inputs), batch5 (an input of batch 5) or matmulK (one 1xK @ Kx1024
    weight matrix: K=1100 is 4.4 MiB, beyond QEMU's 4 MiB flash; K=384 is 1.5 MiB). Each node's output is "y"."""
    if kind == "lstm":  # seq 1, batch 1, 4 features -> hidden 8
        graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=8)], "lstm",
                                  [_tensor("x", [1, 1, 4])], [_tensor("y", [1, 1, 1, 8])],
                                  [_const("W", (1, 32, 4)), _const("R", (1, 32, 8))])
    elif kind == "nms":
        graph = helper.make_graph([helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["y"])], "nms",
                                  [_tensor("boxes", [1, 4, 4])], [_tensor("y", ["n", 3], TensorProto.INT64)],
                                  [_const("scores", (1, 1, 4))])
    elif kind in ("relu", "zero", "batch5"):
        shape = {"relu": [1, 3, 8, 8], "zero": [1, 0, 0], "batch5": [5, 4]}[kind]
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], kind, [_tensor("x", shape)],
                                  [_tensor("y", shape)])
    elif kind == "two":
        graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], kind,
                                  [_tensor("a", [1, 4]), _tensor("b", [1, 4])], [_tensor("y", [1, 4])])
    elif kind.startswith("matmul"):
        k = int(kind.removeprefix("matmul"))
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], kind, [_tensor("x", [1, k])],
                                  [_tensor("y", [1, 1024])], [_const("W", (k, 1024))])
    else:
        raise ValueError(f"unknown small model kind {kind!r}")
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_model(path, c_in, c_out, side, n_conv, relus, k=3, n_classes=10, seed=0):
    """x -> [Conv k x k (+ Relu)] * n_conv -> GlobalAveragePool -> Flatten -> Gemm: a plain ONNX model."""
    rng = np.random.default_rng(seed)
    nodes, inits, h, c = [], [], "x", c_in
    for i in range(n_conv):
        w = numpy_helper.from_array(rng.standard_normal((c_out, c, k, k)).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")
        inits += [w, b]
        nodes.append(helper.make_node("Conv", [h, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[k // 2] * 4))
        h, c = f"c{i}", c_out
        if relus[i]:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"], name=f"relu{i}"))
            h = f"r{i}"
    inits += [numpy_helper.from_array(rng.standard_normal((n_classes, c)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(n_classes, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [h], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, side, side])
    graph = helper.make_graph(nodes, "plain", [x],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
