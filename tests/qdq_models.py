"""Small float ONNX models built with onnx.helper and their onnxruntime `quantize_static` QDQ copies: the int8
compiler's inputs as another tool would hand them over (per-channel symmetric int8 weights, int8 activations)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(rng, name: str, shape, scale: float = 0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def residual_net(side: int = 8, c: int = 8, n_classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """conv3x3+relu -> depthwise3x3+relu6 -> pointwise + residual add -> relu -> maxpool 2 -> conv stride 2 ->
    global average pool -> flatten -> gemm: every integer kernel the firmware has, on an input 1x3xSxS."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "w0", (c, 3, 3, 3)), _weight(rng, "b0", (c,), .1),
             _weight(rng, "w1", (c, 1, 3, 3)), _weight(rng, "b1", (c,), .1),
             _weight(rng, "w2", (c, c, 1, 1)), _weight(rng, "b2", (c,), .1),
             _weight(rng, "w3", (2 * c, c, 3, 3), .2), _weight(rng, "b3", (2 * c,), .1),
             _weight(rng, "wf", (n_classes, 2 * c), .3), _weight(rng, "bf", (n_classes,), .1),
             numpy_helper.from_array(np.array(0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6, np.float32), "six"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "flat")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=c, name="dw1"),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="pw2"),
        helper.make_node("Add", ["c2", "r0"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2"),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g3"], name="gap"),
        helper.make_node("Reshape", ["g3", "flat"], ["f3"], name="flatten"),
        helper.make_node("Gemm", ["f3", "wf", "bf"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "residual_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, 3, side, side])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def matmul_mlp(k: int = 40, hidden: int = 24, n_out: int = 6, seed: int = 0) -> onnx.ModelProto:
    """x [1, K] -> MatMul [K, H] + bias -> Relu -> MatMul [H, N]: weights stored [K, N] (quantised per column)."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "w0", (k, hidden), .2), _weight(rng, "b0", (hidden,), .1), _weight(rng, "w1", (hidden, n_out))]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"),
             helper.make_node("Add", ["m0", "b0"], ["a0"], name="bias0"),
             helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["logits"], name="mm1")]
    graph = helper.make_graph(nodes, "matmul_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def hardswish_se_net(side: int = 8, c: int = 8, seed: int = 0) -> onnx.ModelProto:
    """conv -> HardSwish -> squeeze-excite (global average pool, 1x1 conv, HardSigmoid gate, channel-wise Mul) ->
    global average pool -> flatten -> gemm: the elementwise functions (lookup tables) and the int8 product."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "w0", (c, 3, 3, 3)), _weight(rng, "b0", (c,), .1),
             _weight(rng, "ws", (c, c, 1, 1)), _weight(rng, "bs", (c,), .1),
             _weight(rng, "wf", (4, c)), _weight(rng, "bf", (4,), .1),
             numpy_helper.from_array(np.array([1, -1], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("HardSwish", ["c0"], ["h0"], name="hardswish0"),
             helper.make_node("GlobalAveragePool", ["h0"], ["s0"], name="se_pool"),
             helper.make_node("Conv", ["s0", "ws", "bs"], ["s1"], name="se_conv"),
             helper.make_node("HardSigmoid", ["s1"], ["gate"], alpha=1 / 6, name="se_gate"),
             helper.make_node("Mul", ["h0", "gate"], ["m0"], name="se_mul"),
             helper.make_node("GlobalAveragePool", ["m0"], ["g0"], name="gap"),
             helper.make_node("Reshape", ["g0", "flat"], ["f0"], name="flatten"),
             helper.make_node("Gemm", ["f0", "wf", "bf"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "hardswish_se", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, 3, side, side])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantize_with_onnxruntime(float_path: Path, out_path: Path, samples: np.ndarray, input_name: str = "x") -> Path:
    """onnxruntime's own `quantize_static`, QDQ, int8 activations and per-channel int8 weights: what a user of
    another tool would bring."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: s[None].astype(np.float32)} for s in samples])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    return Path(out_path)
