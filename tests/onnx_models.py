"""Small ONNX models built with onnx.helper for the tests of bad or unsupported input (not files checked in)."""
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
