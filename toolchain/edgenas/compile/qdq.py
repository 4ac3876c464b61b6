"""QDQ int8 ONNX -> integer kernels: the Relax rewrite that makes `compile --dtype int8` real int8 inference.

TVM 0.27's ONNX frontend imports a QDQ model (onnxruntime `quantize_static`, or `edgenas export`'s
`stages_int8/`) with float semantics: `R.dequantize` -> float conv2d / matmul / add / pooling -> `R.quantize`, and
FoldConstant would dequantize the int8 weights into float constants. `rewrite_qdq` runs first, on the imported
module, and replaces every `quantize(op(dequantize(...)))` group that onnxruntime runs as one integer operator
(QLinearConv, QGemm, QLinearAdd, QLinearMul, QLinearAveragePool / QLinearGlobalAveragePool, int8 MaxPool) by an
`R.call_tir` of our integer kernel (`int8_kernels.py`): int8 weights as constants (flash), int8 activations (arena),
int32 accumulation, onnxruntime's requantisation. A ReLU or Clip between the operator and its `quantize` narrows the
output range; reshapes of int8 values stay int8 views; any other elementwise chain of one int8 tensor and scalar
constants (HardSwish, HardSigmoid, sigmoid...) becomes a 256-entry int8 lookup table, the chain evaluated in float32
on every int8 code at compile time (what onnxruntime computes in float between the dequantize and the quantize).

What stays float is what the QDQ model itself computes in float (onnxruntime too): the `quantize` of the float
input at the model's boundary (the firmware takes a float input and quantises it in its first kernel), a head the
quantiser excluded (edgenas keeps the confidence linear layer and sigmoid float), and the `dequantize` of outputs.
A quantised weight (an int8 constant behind a `dequantize`) that no integer kernel took is an error naming the
ONNX node: an int8 build never falls back to float silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from edgenas.errors import EdgenasError

INT8_RANGE = (-128, 127)
def _sigmoid(x):
    return np.float32(1) / (np.float32(1) + np.exp(-x))


# Elementwise Relax ops a lookup table may contain: name -> (numpy function in float32, number of tensor operands)
ELEMENTWISE = {"relax.add": (np.add, 2), "relax.subtract": (np.subtract, 2), "relax.multiply": (np.multiply, 2),
               "relax.divide": (np.divide, 2), "relax.maximum": (np.maximum, 2), "relax.minimum": (np.minimum, 2),
               "relax.clip": (lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), 3),
               "relax.nn.relu": (lambda x: np.maximum(x, np.float32(0)), 1), "relax.sigmoid": (_sigmoid, 1),
               "relax.tanh": (np.tanh, 1), "relax.negative": (np.negative, 1), "relax.exp": (np.exp, 1)}
FOLDABLE = ("BatchNormalization", "Mul", "Div")  # per-channel affine ops with quantised parameters: fold, don't run
# the kernels' C symbols (BlockBuilder makes them unique: qconv2d, qconv2d1, ...; identical kernels are shared)
KERNEL_SYMBOLS = {"conv": "qconv2d", "depthwise conv": "qdepthwise_conv2d", "dense": "qdense", "add": "qadd",
                  "max pool": "qmax_pool2d", "average pool": "qavg_pool2d", "global average pool": "qglobal_avg_pool",
                  "lookup table": "qlookup", "multiply": "qmul"}
REQUANTIZE_FIX = ("quantise it with onnxruntime quantize_static (QDQ format, int8 activations, int8 per-channel "
                  "weights), or compile with --dtype float32")


@dataclass
class IntegerSummary:
    """What the rewrite did to one stage: integer kernels by kind, and the float operators left (with reasons)."""
    kernels: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.kernels[kind] = self.kernels.get(kind, 0) + 1


def weight_consumers(model) -> dict[tuple, tuple[str, str]]:
    """(shape, dtype, bytes) of every quantised ONNX initializer behind a DequantizeLinear -> (node name, op type)
    of the operator that consumes it: how an error about a Relax constant names the ONNX node."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        data = numpy_helper.to_array(inits[node.input[0]])
        users = consumers.get(node.output[0], [])
        # identical weights (e.g. two BatchNormalization scales of ones) name the first node that uses them
        found.setdefault(_key(data), (users[0].name or users[0].output[0], users[0].op_type) if users
                         else (node.name or node.output[0], "DequantizeLinear"))
    return found


def _key(data: np.ndarray) -> tuple:
    return tuple(data.shape), str(data.dtype), np.ascontiguousarray(data).tobytes()


def _scalar(expr) -> float | int | None:
    import tvm
    if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy"):
        value = expr.value.numpy()
        if value.size == 1:
            return value.reshape(()).item()
    return None


def _array(expr) -> np.ndarray | None:
    import tvm
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy") else None


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def rewrite_qdq(mod, model, dsp: bool, name: str):
    """The imported Relax module with every integer group replaced by a call of our integer kernel.

    Returns (module, IntegerSummary). `model` is the ONNX model it was imported from (for the names in errors),
    `name` the file named in errors, `dsp` whether the kernels may use the ARMv7E-M DSP instructions."""
    import tvm
    from tvm import relax

    from edgenas.compile import int8_kernels as k8

    op = tvm.ir.Op.get
    QUANTIZE, DEQUANTIZE = op("relax.quantize"), op("relax.dequantize")
    summary = IntegerSummary()

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def producer(self, expr):
            """The call that computes `expr` (a variable bound in this dataflow block), else None."""
            if isinstance(expr, relax.Var):
                try:
                    value = self.lookup_binding(expr)
                except Exception:  # noqa: BLE001  (a function parameter has no binding)
                    return None
                return value if isinstance(value, relax.Call) else None
            return expr if isinstance(expr, relax.Call) else None

        def is_call(self, expr, which):
            call = self.producer(expr)
            return call if call is not None and isinstance(call.op, tvm.ir.Op) and call.op.same_as(which) else None

        def dequantized(self, expr):
            """(int8 tensor, scale, zero point) of a per-tensor dequantize of an int8 activation, else None."""
            dq = self.is_call(expr, DEQUANTIZE)
            if dq is None or isinstance(dq.args[0], tvm.ir.expr.Constant):
                return None
            scale, zp = _scalar(dq.args[1]), _scalar(dq.args[2])
            if scale is None or zp is None or str(dq.args[0].ty.dtype) != "int8":
                return None
            return dq.args[0], float(scale), int(zp)

        def constant_operand(self, expr):
            """(int8 array, scale, zero point) of a per-tensor dequantize of an int8 constant, else None."""
            dq = self.is_call(expr, DEQUANTIZE)
            if dq is None:
                return None
            data, scale, zp = _array(dq.args[0]), _scalar(dq.args[1]), _scalar(dq.args[2])
            if data is None or scale is None or zp is None or data.dtype != np.int8:
                return None
            return data, float(scale), int(zp)

        def weight(self, expr, out_axis: int = 0):
            """(int8 array, scale per output channel) of a dequantize of an int8 constant with zero point 0 whose
            scales are per tensor or per `out_axis` (the axis of the outputs: 0 for Conv and Gemm's [N, K],
            1 for MatMul's [K, N]), else None."""
            dq = self.is_call(expr, DEQUANTIZE)
            if dq is None:
                return None
            data, scales, zps = _array(dq.args[0]), _array(dq.args[1]), _array(dq.args[2])
            if data is None or scales is None or zps is None or data.dtype != np.int8 or np.any(zps != 0):
                return None
            scales = np.asarray(scales, np.float32).reshape(-1)
            n_out = data.shape[out_axis]
            if scales.size not in (1, n_out) or (scales.size > 1 and int(dq.attrs.axis) % data.ndim != out_axis):
                return None
            return data, np.broadcast_to(scales, (n_out,))

        def bias(self, expr, n: int):
            """int32 bias of a dequantize of an int32 constant (possibly reshaped to [1, C, 1, 1]), else None."""
            reshaped = self.is_call(expr, op("relax.reshape"))
            dq = self.is_call(reshaped.args[0] if reshaped is not None else expr, DEQUANTIZE)
            data = _array(dq.args[0]) if dq is not None else None
            if data is None or data.dtype != np.int32 or data.size != n:
                return None
            return data.reshape(-1)

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(QUANTIZE)):
                return call
            y_scale, y_zp = _scalar(call.args[1]), _scalar(call.args[2])
            if y_scale is None or y_zp is None or str(call.attrs.out_dtype) != "int8":
                return call
            lowered = self.integer_group(call.args[0], float(y_scale), int(y_zp), [])
            if lowered is None:
                lowered = self.lookup_group(call.args[0], float(y_scale), int(y_zp))
            return lowered if lowered is not None else call

        def lookup_group(self, value, y_scale: float, y_zp: int):
            """quantize(f(dequantize(x))) for an elementwise chain f of one int8 tensor and scalar constants (a
            HardSwish, a sigmoid, a clip...) as a 256-entry int8 table, f evaluated in float32 on every code."""
            source = []

            def evaluate(expr):
                if isinstance(expr, tvm.ir.expr.Constant):  # a tensor constant, or an IntImm/FloatImm bound
                    number = _scalar(expr) if hasattr(expr.value, "numpy") else _prim_value(expr)
                    if number is None:
                        raise LookupError("a constant that is not a scalar")
                    return np.float32(number)
                dq = self.dequantized(expr)
                if dq is not None:
                    if source and not source[0][0].same_as(dq[0]):
                        raise LookupError("two int8 inputs")
                    source[:] = [dq]
                    return (np.arange(-128, 128, dtype=np.int32) - dq[2]).astype(np.float32) * np.float32(dq[1])
                call = self.producer(expr)
                if call is None or not isinstance(call.op, tvm.ir.Op) or call.op.name not in ELEMENTWISE:
                    raise LookupError("not an elementwise op")
                fn, arity = ELEMENTWISE[call.op.name]
                with np.errstate(all="ignore"):
                    return np.asarray(fn(*(evaluate(a) for a in call.args[:arity])), np.float32)

            try:
                values = evaluate(value)
            except LookupError:
                return None
            if not source or self.producer(value) is None or _shape(source[0][0]) != _shape_of(value):
                return None
            kernel = k8.qlookup(_shape(source[0][0]), k8.lookup_table(np.broadcast_to(values, (256,)), y_scale, y_zp))
            summary.count("lookup table")
            return _emit_kernel(self.builder_, kernel, KERNEL_SYMBOLS["lookup table"], [source[0][0]])

        def integer_group(self, value, y_scale: float, y_zp: int, reshapes: list):
            """The int8 result of quantize(value) as integer kernels, or None when `value` is no integer group."""
            qmin, qmax = INT8_RANGE
            act = self.producer(value)
            if act is not None and isinstance(act.op, tvm.ir.Op) and act.op.name in ("relax.nn.relu", "relax.clip"):
                lo, hi = (0.0, np.inf) if act.op.name == "relax.nn.relu" else (
                    _prim_value(act.args[1]), _prim_value(act.args[2]))
                # quantize(clip(v, lo, hi)) == clip(quantize(v), q(lo), q(hi)): rounding is monotone
                qmin = max(qmin, y_zp + int(np.round(np.float32(lo) / np.float32(y_scale)))) if lo > -np.inf else qmin
                qmax = min(qmax, y_zp + int(np.round(np.float32(hi) / np.float32(y_scale)))) if hi < np.inf else qmax
                value, act = act.args[0], self.producer(act.args[0])
            if act is None or not isinstance(act.op, tvm.ir.Op):
                return None
            if act.op.name == "relax.reshape" and qmin == INT8_RANGE[0] and qmax == INT8_RANGE[1]:
                inner = self.dequantized(act.args[0])
                if inner is not None and np.float32(inner[1]) == np.float32(y_scale) and inner[2] == y_zp:
                    return self.builder_.emit(relax.op.reshape(inner[0], act.ty.shape))
                return self.integer_group(act.args[0], y_scale, y_zp, reshapes + [act.ty.shape])
            kernel, x, kind = self.match(act, y_scale, y_zp, qmin, qmax)
            if kernel is None:
                return None
            summary.count(kind)
            out = _emit_kernel(self.builder_, kernel, KERNEL_SYMBOLS[kind], x)
            for shape in reversed(reshapes):
                out = self.builder_.emit(relax.op.reshape(out, shape))
            return out

        def match(self, act, y_scale, y_zp, qmin, qmax):
            """(Kernel, activation inputs, kind) for the operator `act` whose output is quantised, else Nones."""
            name = act.op.name
            if name == "relax.add":
                lhs = self.producer(act.args[0])
                linear = lhs if lhs is not None and isinstance(lhs.op, tvm.ir.Op) and lhs.op.name in (
                    "relax.nn.conv2d", "relax.matmul") else None
                if linear is not None:
                    return self.linear(linear, act.args[1], y_scale, y_zp, qmin, qmax)
                a, b = self.dequantized(act.args[0]), self.dequantized(act.args[1])
                if a is None:  # addition commutes: a quantised constant (a bias of its own Add) goes second
                    a, b = self.dequantized(act.args[1]), self.constant_operand(act.args[0])
                elif b is None:
                    b = self.constant_operand(act.args[1])
                if a is None or b is None:
                    return None, None, None
                shape_a = _shape(a[0])
                shape_b = _broadcast_shape(shape_a, _shape(b[0]) if isinstance(b[0], relax.Var) else b[0].shape)
                if shape_b is None:
                    return None, None, None
                second = b[0] if isinstance(b[0], relax.Var) else relax.const(b[0].reshape(shape_b))
                return (k8.qadd(shape_a, a[1], a[2], b[1], b[2], y_scale, y_zp, qmin, qmax, shape_b), [a[0], second],
                        "add")
            if name == "relax.multiply":
                a, b = self.dequantized(act.args[0]), self.dequantized(act.args[1])
                if a is None or b is None:
                    return None, None, None
                if np.prod(_shape(a[0])) < np.prod(_shape(b[0])):
                    a, b = b, a  # the full tensor first, the broadcast one (a gate) second
                shape_a = _shape(a[0])
                shape_b = _broadcast_shape(shape_a, _shape(b[0]))
                if shape_b is None:
                    return None, None, None
                second = b[0] if shape_b == _shape(b[0]) else self.builder_.emit(relax.op.reshape(b[0], shape_b))
                return (k8.qmul(shape_a, a[1], a[2], b[1], b[2], y_scale, y_zp, qmin, qmax, shape_b), [a[0], second],
                        "multiply")
            if name in ("relax.nn.conv2d", "relax.matmul"):
                return self.linear(act, None, y_scale, y_zp, qmin, qmax)
            if name in ("relax.nn.avg_pool2d", "relax.nn.max_pool2d", "relax.mean"):
                return self.pool(act, y_scale, y_zp, qmin, qmax)
            return None, None, None

        def linear(self, act, bias_expr, y_scale, y_zp, qmin, qmax):
            x = self.dequantized(act.args[0])
            w_expr = act.args[1]
            transposed = self.is_call(w_expr, op("relax.permute_dims"))
            k_by_n = act.op.name == "relax.matmul" and transposed is None  # MatMul (or Gemm transB=0): W [K, N]
            w = self.weight(transposed.args[0] if transposed is not None else w_expr, 1 if k_by_n else 0)
            if x is None or w is None or (k_by_n and w[0].ndim != 2):
                return None, None, None
            data, w_scales = w
            if k_by_n:
                data = np.ascontiguousarray(data.T)  # rows per output, as Gemm's transB=1 weight
            bias = None
            if bias_expr is not None:
                bias = self.bias(bias_expr, data.shape[0])
                if bias is None:
                    return None, None, None
            scales = k8.requant_scales(x[1], w_scales, y_scale)
            if act.op.name == "relax.nn.conv2d":
                attrs = act.attrs
                if str(attrs.data_layout) != "NCHW" or any(int(d) != 1 for d in attrs.dilation):
                    return None, None, None
                pads = _ints(attrs.padding)  # relax: (top, left, bottom, right)
                kind = "depthwise conv" if int(attrs.groups) > 1 else "conv"
                return k8.qconv2d(_shape(x[0]), data, bias, x[2], scales, y_zp, qmin, qmax, _ints(attrs.strides),
                                  pads, int(attrs.groups), dsp), [x[0]], kind
            if len(_shape(x[0])) != 2 or _shape(x[0])[0] != 1:
                return None, None, None
            return k8.qdense(_shape(x[0]), data, bias, x[2], scales, y_zp, qmin, qmax, dsp), [x[0]], "dense"

        def pool(self, act, y_scale, y_zp, qmin, qmax):
            x = self.dequantized(act.args[0])
            if x is None or len(_shape(x[0])) != 4 or (qmin, qmax) != INT8_RANGE:
                return None, None, None
            shape = _shape(x[0])
            attrs = act.attrs
            if act.op.name == "relax.mean":
                if sorted(int(a) for a in attrs.axis) != [2, 3] or not bool(attrs.keepdims):
                    return None, None, None
                return k8.qavg_pool2d(shape, shape[2:], (1, 1), (0, 0, 0, 0), True, x[1], x[2], y_scale,
                                      y_zp), [x[0]], "global average pool"
            if bool(attrs.ceil_mode) or any(int(d) != 1 for d in attrs.dilation) or str(attrs.layout) != "NCHW":
                return None, None, None
            if act.op.name == "relax.nn.max_pool2d":
                same = np.float32(x[1]) == np.float32(y_scale) and x[2] == y_zp
                if not same:
                    return None, None, None
                return (k8.qmax_pool2d(shape, _ints(attrs.pool_size), _ints(attrs.strides), _ints(attrs.padding)),
                        [x[0]], "max pool")
            return k8.qavg_pool2d(shape, _ints(attrs.pool_size), _ints(attrs.strides), _ints(attrs.padding),
                                  bool(attrs.count_include_pad), x[1], x[2], y_scale, y_zp), [x[0]], "average pool"

    @relax.expr_functor.mutator
    class BoundaryRewriter(relax.PyExprMutator):
        """The quantize / dequantize of activations left at the integer region's borders (the model input, the
        outputs, a float head's input) as our kernels: rounding without libm (TVM's legalised quantize calls
        nearbyintf on Cortex-M4, which has no VRINT)."""

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and (call.op.same_as(QUANTIZE) or call.op.same_as(DEQUANTIZE))) \
                    or isinstance(call.args[0], tvm.ir.expr.Constant):
                return call
            scale, zp = _scalar(call.args[1]), _scalar(call.args[2])
            if scale is None or zp is None:
                return call
            if call.op.same_as(QUANTIZE) and str(call.attrs.out_dtype) == "int8":
                kernel, symbol = k8.quantize(_shape(call.args[0]), float(scale), int(zp)), "quantize_input"
            elif call.op.same_as(DEQUANTIZE) and str(call.args[0].ty.dtype) == "int8":
                kernel, symbol = k8.dequantize(_shape(call.args[0]), float(scale), int(zp)), "dequantize_output"
            else:
                return call
            return _emit_kernel(self.builder_, kernel, symbol, [call.args[0]])

    for mutator in (Rewriter, BoundaryRewriter):
        rewriter = mutator(mod)
        main = rewriter.visit_expr(mod["main"])
        mod = rewriter.builder_.get()
        mod["main"] = main
        mod = relax.transform.DeadCodeElimination()(mod)
    _check_no_float_weights(mod, model, name, summary)
    return mod, summary


def _emit_kernel(builder, kernel, symbol: str, inputs):
    """Bind a call of `kernel` (added to the module as `symbol`, opaque so that FuseOps leaves it whole) on the
    activation `inputs`, its constants appended: the one way every integer kernel enters the Relax program."""
    from tvm import relax

    gv = builder.add_func(kernel.func.with_attr("op_pattern", 8), symbol)
    return builder.emit(relax.call_tir(gv, [*inputs, *(relax.const(c) for c in kernel.constants)],
                                       relax.TensorType(kernel.out_shape, kernel.out_dtype)))


def _broadcast_shape(shape_a, shape_b) -> tuple[int, ...] | None:
    """shape_b with leading 1s (numpy's right-aligned broadcast) when it broadcasts to shape_a, else None."""
    shape_b = (1,) * (len(shape_a) - len(shape_b)) + tuple(int(d) for d in shape_b)
    if len(shape_b) != len(shape_a) or any(nb not in (1, na) for nb, na in zip(shape_b, shape_a)):
        return None
    return shape_b


def _prim_value(expr) -> float:
    """The bound of a clip: a PrimValue (IntImm/FloatImm) or a constant."""
    value = getattr(expr, "value", expr)
    value = getattr(value, "value", value)
    if hasattr(value, "numpy"):
        value = value.numpy().reshape(()).item()
    return float(value)


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(s) for s in expr.ty.shape)


def _shape_of(expr) -> tuple[int, ...] | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _check_no_float_weights(mod, model, name: str, summary: IntegerSummary) -> None:
    """A dequantize of an int8 constant left after the rewrite is a quantised layer that would run in float:
    refuse it, naming the ONNX node. Count the float operators that remain (what the QDQ model runs in float)."""
    import tvm
    from tvm import relax

    dequantize = tvm.ir.Op.get("relax.dequantize")
    named = weight_consumers(model)
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                continue
            if value.op.same_as(dequantize) and isinstance(value.args[0], tvm.ir.expr.Constant):
                data = value.args[0].value.numpy()
                if data.dtype in (np.int8, np.uint8):
                    node, op_type = named.get(_key(data), (f"with a {list(data.shape)} int8 weight", "?"))
                    fix = (f"fold each {op_type} into the layer before it, then quantise again"
                           if op_type in FOLDABLE else REQUANTIZE_FIX)
                    raise EdgenasError(f"{name}: node {node} ({op_type}) is quantised but its pattern cannot be "
                                       "lowered to an integer kernel (supported: DQ->Conv/Gemm/MatMul/Add/"
                                       "AveragePool/GlobalAveragePool/MaxPool[->Relu/Clip]->Q, int8 activations, "
                                       "int8 per-channel symmetric weights, NCHW, no dilation)", fix)
            elif value.op.name not in ("relax.quantize", "relax.dequantize", "relax.reshape", "relax.call_tir") \
                    and getattr(value.ty, "dtype", None) == "float32":  # not shape bookkeeping (folded later)
                kind = value.op.name.removeprefix("relax.")
                summary.float_ops[kind] = summary.float_ops.get(kind, 0) + 1


def integer_report(summaries: Mapping[int, IntegerSummary]) -> dict[str, Any]:
    """firmware.json's `int8` block: integer kernels and the float operators left, over all stages."""
    kernels: dict[str, int] = {}
    floats: dict[str, int] = {}
    for s in summaries.values():
        for k, n in s.kernels.items():
            kernels[k] = kernels.get(k, 0) + n
        for k, n in s.float_ops.items():
            floats[k] = floats.get(k, 0) + n
    return {"integer_kernels": kernels, "float_ops": floats,
            "input": "float32, quantised by the first kernel (QuantizeLinear of the model's input)"}
