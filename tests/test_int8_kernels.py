"""int8 kernels (edgenas.compile.int8_kernels): bit-exact with onnxruntime's fused integer operators.

Each operator is checked three ways on small shapes: the numpy reference against onnxruntime running a one-node QDQ
model (DQ -> op -> Q, default session options, so ORT fuses it into QLinearConv / QGemm / QLinearAdd /
QLinearAveragePool), and the TIR kernel built for the host against both. The DSP (SMLAD) kernels run on the host
with their instructions emulated in plain TIR; the real instructions are checked in the Cortex-M object code and,
through the firmware pipeline, under QEMU.
"""
import re
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from edgenas.compile import int8_kernels as k8
from edgenas.errors import EdgenasError
from tests.qdq_models import quantize_with_onnxruntime, residual_net

X_SCALE, X_ZP, Y_SCALE, Y_ZP = 0.047, 9, 0.093, -6


# ------------------------------------------------------------------------------------------------ helpers
def run_host(kernel, *inputs):
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        ex = tvm.compile(tvm.IRModule({"main": kernel.func}), target="llvm")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (*inputs, *kernel.constants)]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, kernel.out_dtype), dev)
    ex(*args, out)
    return out.numpy()


def const(name, value, dtype):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def run_ort(op_nodes, inputs: dict, out_shape, inits, y_scale=Y_SCALE, y_zp=Y_ZP):
    """Run DQ(inputs) -> op_nodes (reading '<name>_f', writing 'yf') -> Q in onnxruntime with default options."""
    nodes, graph_inputs = [], []
    for name, value in inputs.items():
        nodes.append(helper.make_node("DequantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_f"]))
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.INT8, value.shape))
    nodes += op_nodes
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "y_s", "y_z"], ["y"]))
    inits = inits + [const("y_s", y_scale, np.float32), const("y_z", y_zp, np.int8)]
    graph = helper.make_graph(nodes, "g", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.INT8,
                                                                                     out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")  # no U8S8 saturation on non-VNNI x86
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def act_params(name, scale=X_SCALE, zp=X_ZP):
    return [const(f"{name}_s", scale, np.float32), const(f"{name}_z", zp, np.int8)]


def quantized_weights(rng, shape):
    """Per-channel symmetric int8 weights in [-127, 127] (onnxruntime's quantiser), their scales, int32 bias."""
    w = rng.integers(-127, 128, shape, dtype=np.int8)
    w_scale = rng.uniform(0.002, 0.02, shape[0]).astype(np.float32)
    bias = rng.integers(-3000, 3000, shape[0]).astype(np.int32)
    return w, w_scale, bias


def weight_dq_nodes(w, w_scale, bias):
    b_scale = (np.float32(X_SCALE) * w_scale).astype(np.float32)
    inits = [const("w", w, np.int8), const("w_s", w_scale, np.float32), const("w_z", np.zeros(len(w_scale)), np.int8),
             const("b", bias, np.int32), const("b_s", b_scale, np.float32),
             const("b_z", np.zeros(len(w_scale)), np.int32)]
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["w_f"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "b_s", "b_z"], ["b_f"], axis=0)]
    return nodes, inits


# ------------------------------------------------------------------------------------------------ conv
CONVS = {  # cin, cout, h, w, k, stride, pad, groups, relu
    "3x3 stride 2 pad 1": (8, 6, 9, 7, 3, 2, 1, 1, False),
    "3x3 relu, odd pixels": (5, 7, 5, 5, 3, 1, 1, 1, True),
    "depthwise 3x3": (6, 6, 8, 8, 3, 1, 1, 6, False),
    "depthwise stride 2": (4, 4, 7, 7, 3, 2, 1, 4, True),
    "pointwise": (12, 9, 5, 6, 1, 1, 0, 1, False),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_qconv2d_bit_exact_with_onnxruntime(case):
    cin, cout, h, w, k, stride, pad, groups, relu = CONVS[case]
    rng = np.random.default_rng(len(case))
    x = rng.integers(-128, 128, (1, cin, h, w), dtype=np.int8)
    wt, w_scale, bias = quantized_weights(rng, (cout, cin // groups, k, k))
    conv = helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["c" if relu else "yf"], kernel_shape=[k, k],
                            strides=[stride] * 2, pads=[pad] * 4, group=groups)
    nodes, inits = weight_dq_nodes(wt, w_scale, bias)
    nodes += [conv] + ([helper.make_node("Relu", ["c"], ["yf"])] if relu else [])
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    expected = run_ort(nodes, {"x": x}, (1, cout, oh, ow), inits + act_params("x"))

    scales = k8.requant_scales(X_SCALE, w_scale, Y_SCALE)
    qmin = Y_ZP if relu else -128  # ReLU before Q: outputs below the zero point are clipped
    args = (bias, X_ZP, scales, Y_ZP, qmin, 127, (stride, stride), (pad,) * 4, groups)
    np.testing.assert_array_equal(k8.reference_qconv2d(x, wt, *args), expected)
    np.testing.assert_array_equal(run_host(k8.qconv2d(x.shape, wt, *args, dsp=False), x), expected)
    for int16_weights in (False, True):
        dsp = k8.qconv2d(x.shape, wt, *args, dsp=True, int16_weights=int16_weights, emulate_dsp=True)
        np.testing.assert_array_equal(run_host(dsp, x), expected)


def test_qconv2d_ties_round_half_to_even():
    """Accumulators that land exactly on .5 after scaling: ORT rounds them to even, and so must every kernel."""
    x = np.array([1, 3, 5, 7, -1, -3, 2, 4], np.int8).reshape(1, 8, 1, 1)
    wt = np.eye(8, dtype=np.int8).reshape(8, 8, 1, 1)
    scales = np.full(8, 0.5, np.float32)
    args = (None, 0, scales, 0, -128, 127, (1, 1), (0, 0, 0, 0), 1)
    want = np.array([0, 2, 2, 4, -0, -2, 1, 2], np.int8).reshape(1, 8, 1, 1)
    np.testing.assert_array_equal(k8.reference_qconv2d(x, wt, *args), want)
    np.testing.assert_array_equal(run_host(k8.qconv2d(x.shape, wt, *args, dsp=False), x), want)
    np.testing.assert_array_equal(run_host(k8.qconv2d(x.shape, wt, *args, dsp=True, emulate_dsp=True), x), want)


@pytest.mark.parametrize("k_in,n_out", [(20, 7), (64, 10), (3, 1)])
def test_qdense_bit_exact_with_onnxruntime(k_in, n_out):
    rng = np.random.default_rng(k_in)
    x = rng.integers(-128, 128, (1, k_in), dtype=np.int8)
    wt, w_scale, bias = quantized_weights(rng, (n_out, k_in))
    nodes, inits = weight_dq_nodes(wt, w_scale, bias)
    nodes.append(helper.make_node("Gemm", ["x_f", "w_f", "b_f"], ["yf"], transB=1))
    expected = run_ort(nodes, {"x": x}, (1, n_out), inits + act_params("x"))

    args = (bias, X_ZP, k8.requant_scales(X_SCALE, w_scale, Y_SCALE), Y_ZP, -128, 127)
    np.testing.assert_array_equal(k8.reference_qdense(x, wt, *args), expected)
    np.testing.assert_array_equal(run_host(k8.qdense(x.shape, wt, *args, dsp=False), x), expected)
    for int16_weights in (False, True):
        dsp = k8.qdense(x.shape, wt, *args, dsp=True, int16_weights=int16_weights, emulate_dsp=True)
        np.testing.assert_array_equal(run_host(dsp, x), expected)


def test_dsp_weight_layout_matches_sxtb16_lanes():
    """SMLAD of natural-order int16 im2col words with SXTB16 (and SXTB16 ROR 8) of a packed weight word is the
    4-term dot product; channel pairs interleave word by word, an odd last channel stays contiguous."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (3, 6), dtype=np.int8)  # K = 6 -> padded to 8, 2 words per row
    a = rng.integers(-255, 256, 8).astype(np.int64)
    a[6:] = 0
    words = k8.pack_dsp_weights(w).view(np.uint32)
    layout = {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3, (2, 0): 4, (2, 1): 5}  # (channel, word) -> index

    def sxtb16(v):  # (sign-extended byte 0, sign-extended byte 2)
        return [((v & 0xFF) ^ 0x80) - 0x80, (((v >> 16) & 0xFF) ^ 0x80) - 0x80]

    for (c, kk), index in layout.items():
        v = int(words[index])
        ror8 = ((v >> 8) | (v << 24)) & 0xFFFFFFFF
        lo, hi = sxtb16(v), sxtb16(ror8)
        got = a[4 * kk] * lo[0] + a[4 * kk + 1] * lo[1] + a[4 * kk + 2] * hi[0] + a[4 * kk + 3] * hi[1]
        want = int(np.dot(a[4 * kk:4 * kk + 4], np.pad(w[c], (0, 2))[4 * kk:4 * kk + 4].astype(np.int64)))
        assert got == want
    # int16 weights: two words per group, the int16 lanes (w0, w1), (w2, w3) in the same interleaving
    lanes = k8.pack_dsp_weights(w, int16_weights=True).view("<i2").reshape(-1, 4)
    for (c, kk), index in layout.items():
        np.testing.assert_array_equal(lanes[index], np.pad(w[c], (0, 2))[4 * kk:4 * kk + 4])


# ------------------------------------------------------------------------------------------------ add and pools
@pytest.mark.parametrize("params", [(0.051, -3, 0.037, 11, Y_SCALE, Y_ZP), (0.5, 1, 0.25, -2, 1.0, 3)],
                         ids=["random scales", "binary scales: many exact ties"])
def test_qadd_bit_exact_with_onnxruntime(params):
    a_scale, a_zp, b_scale, b_zp, y_scale, y_zp = params
    rng = np.random.default_rng(7)
    shape = (1, 8, 6, 6)
    a = rng.integers(-128, 128, shape, dtype=np.int8)
    b = rng.integers(-128, 128, shape, dtype=np.int8)
    inits = act_params("a", a_scale, a_zp) + act_params("b", b_scale, b_zp)
    expected = run_ort([helper.make_node("Add", ["a_f", "b_f"], ["yf"])], {"a": a, "b": b}, shape, inits,
                       y_scale=y_scale, y_zp=y_zp)
    args = (*params, -128, 127)
    np.testing.assert_array_equal(k8.reference_qadd(a, b, *args), expected)
    np.testing.assert_array_equal(run_host(k8.qadd(shape, *args), a, b), expected)


def test_qadd_broadcasts_a_per_channel_second_input():
    rng = np.random.default_rng(8)
    a = rng.integers(-128, 128, (1, 4, 3, 3), dtype=np.int8)
    b = rng.integers(-128, 128, (1, 4, 1, 1), dtype=np.int8)
    args = (0.02, 1, 0.05, -2, 0.06, 3, -128, 127)
    want = k8.reference_qadd(a, np.broadcast_to(b, a.shape), *args)
    np.testing.assert_array_equal(run_host(k8.qadd(a.shape, *args, b_shape=b.shape), a, b), want)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_qmul_of_a_tensor_and_a_per_channel_gate_bit_exact_with_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    a_scale, b_scale, y_scale = (float(np.float32(v)) for v in rng.uniform(0.005, 0.1, 3))
    a_zp, b_zp, y_zp = (int(v) for v in rng.integers(-128, 60, 3))
    shape, gate = (1, 8, 12, 12), (1, 8, 1, 1)
    a = rng.integers(-128, 128, shape, dtype=np.int8)
    b = rng.integers(-128, 128, gate, dtype=np.int8)
    inits = act_params("a", a_scale, a_zp) + act_params("b", b_scale, b_zp)
    expected = run_ort([helper.make_node("Mul", ["a_f", "b_f"], ["yf"])], {"a": a, "b": b}, shape, inits,
                       y_scale=y_scale, y_zp=y_zp)
    args = (a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, -128, 127)
    np.testing.assert_array_equal(k8.reference_qmul(a, np.broadcast_to(b, shape), *args), expected)
    np.testing.assert_array_equal(run_host(k8.qmul(shape, *args, b_shape=gate), a, b), expected)


POOLS = {  # h, w, kernel, stride, pad, count_include_pad
    "3x3 stride 2 pad 1": (9, 8, 3, 2, 1, False),
    "3x3 pad counted": (7, 7, 3, 2, 1, True),
    "2x2 no pad": (8, 8, 2, 2, 0, False),
    "global": (5, 6, None, 1, 0, False),
}


@pytest.mark.parametrize("case", list(POOLS))
def test_qavg_pool2d_bit_exact_with_onnxruntime(case):
    h, w, k, stride, pad, include = POOLS[case]
    rng = np.random.default_rng(len(case) + 11)
    x = rng.integers(-128, 128, (1, 5, h, w), dtype=np.int8)
    kernel = (h, w) if k is None else (k, k)
    if k is None:
        node = helper.make_node("GlobalAveragePool", ["x_f"], ["yf"])
    else:
        node = helper.make_node("AveragePool", ["x_f"], ["yf"], kernel_shape=[k, k], strides=[stride] * 2,
                                pads=[pad] * 4, count_include_pad=int(include))
    oh, ow = (h + 2 * pad - kernel[0]) // stride + 1, (w + 2 * pad - kernel[1]) // stride + 1
    y_scale = X_SCALE * 0.61  # averages span fewer codes: a finer output scale makes ties and rounding matter
    expected = run_ort([node], {"x": x}, (1, 5, oh, ow), act_params("x"), y_scale=y_scale)
    args = (kernel, (stride, stride), (pad,) * 4, include, X_SCALE, X_ZP, y_scale, Y_ZP)
    np.testing.assert_array_equal(k8.reference_qavg_pool2d(x, *args), expected)
    np.testing.assert_array_equal(run_host(k8.qavg_pool2d(x.shape, *args), x), expected)


def test_qmax_pool2d_matches_onnxruntime_int8_maxpool():
    rng = np.random.default_rng(5)
    x = rng.integers(-128, -100, (1, 3, 7, 7), dtype=np.int8)  # mostly very negative: padding must never win
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, (1, 3, 4, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    args = ((3, 3), (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(k8.reference_qmax_pool2d(x, *args), expected)
    np.testing.assert_array_equal(run_host(k8.qmax_pool2d(x.shape, *args), x), expected)


def test_quantize_and_dequantize_match_onnxruntime():
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 3, 200), (np.arange(-40, 40) + 0.5) * 0.1, [1e6, -1e6]]).astype(np.float32)
    x = x.reshape(1, 1, 1, -1)
    scale, zp = 0.1, -7  # (k + 0.5) * 0.1 / 0.1: ties in float32 arithmetic
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("q", TensorProto.INT8, x.shape),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
                              [const("s", scale, np.float32), const("z", zp, np.int8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the Q -> DQ pair
    q_ort, y_ort = ort.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(k8.reference_quantize(x, scale, zp), q_ort)
    np.testing.assert_array_equal(run_host(k8.quantize(x.shape, scale, zp), x), q_ort)
    np.testing.assert_array_equal(k8.reference_dequantize(q_ort, scale, zp), y_ort)
    np.testing.assert_array_equal(run_host(k8.dequantize(x.shape, scale, zp), q_ort), y_ort)


# ------------------------------------------------------------------------------------------------ Cortex-M code
def cortex_m_disassembly(kernel, mcpu, tmp_path):
    target = tvm.target.Target({"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": mcpu,
                                "mfloat-abi": "hard"})
    obj = tmp_path / f"{mcpu}.o"
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        tvm.compile(tvm.IRModule({"main": kernel.func}), target=target).mod.write_to_file(str(obj))
    text = subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], check=True, capture_output=True,
                          text=True).stdout
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], check=True, capture_output=True,
                               text=True).stdout.split()
    return text, {name for name in undefined if name != "U"} - {"__aeabi_unwind_cpp_pr0"}


def instructions(disassembly):
    """(address, mnemonic, operands) of every instruction."""
    found = re.findall(r"^\s*([0-9a-f]+):\s+[0-9a-f]{4}(?: [0-9a-f]{4})?\s+(\S+)\s*([^\n]*)", disassembly, re.M)
    return [(int(a, 16), op, args) for a, op, args in found]


def smlad_loops(disassembly):
    """(instructions, SMLADs) of each innermost backward-branch loop that contains SMLAD."""
    ins = instructions(disassembly)
    loops = []
    for addr, op, args in ins:
        target = re.match(r"([0-9a-f]+) <", args)
        if op.startswith("b") and not op.startswith(("bl", "bx", "bic")) and target and int(target[1], 16) <= addr:
            body = [i for i in ins if int(target[1], 16) <= i[0] <= addr]
            n_smlad = sum(op_ == "smlad" for _, op_, _ in body)
            if n_smlad and not any(b[1].startswith("b") and b[0] < addr and re.match(r"([0-9a-f]+) <", b[2])
                                   and int(re.match(r"([0-9a-f]+)", b[2])[1], 16) <= b[0] for b in body):
                loops.append((len(body), n_smlad))
    return loops


@pytest.mark.parametrize("mcpu", ["cortex-m7", "cortex-m4"])
@pytest.mark.parametrize("int16_weights,per_16_macs", [(False, 22), (True, 19)])
def test_dsp_conv_object_code(mcpu, int16_weights, per_16_macs, tmp_path):
    """The MAC loop is SMLADs (2x2 tile; measured 20 / 17.3 instructions per 16 MACs on Cortex-M7)."""
    rng = np.random.default_rng(2)
    wt, w_scale, bias = quantized_weights(rng, (16, 16, 3, 3))
    kernel = k8.qconv2d((1, 16, 8, 8), wt, bias, X_ZP, k8.requant_scales(X_SCALE, w_scale, Y_SCALE), Y_ZP, -128, 127,
                        (1, 1), (1, 1, 1, 1), 1, dsp=True, int16_weights=int16_weights)
    text, undefined = cortex_m_disassembly(kernel, mcpu, tmp_path)
    loops = smlad_loops(text)
    assert loops, "no loop with SMLAD in the DSP conv"
    n_instr, n_smlad = max(loops, key=lambda loop: loop[1])
    assert n_instr * 16 / (2 * n_smlad) <= per_16_macs, f"{n_instr} instructions for {2 * n_smlad} MACs"
    if not int16_weights:
        assert "sxtb16" in text and ", ror #8" in text
    # no FMA could merge the requantisation multiply into the rounding add; no call at all (no libm rounding or
    # fminf/fmaxf, and the im2col of 576 bytes lives on the stack, not in the workspace)
    assert not re.search(r"\svfm[as]", text)
    assert not undefined and "blx" not in text  # blx: a call through the workspace allocator's pointer
    # LDRD/LDM fault on unaligned addresses: the parameters promise LLVM only the driver's 16-byte alignment
    signature = re.search(r"def \w+\((.*?)\):\n", kernel.func.script(), re.S)[1]
    assert signature.count("T.Buffer(") == 5 and signature.count(f"align={k8.ALIGN}") == 5, signature


def test_other_kernels_build_for_cortex_m4_without_libm_or_fma(tmp_path):
    rng = np.random.default_rng(4)
    wt, w_scale, _ = quantized_weights(rng, (4, 1, 3, 3))
    kernel = k8.qconv2d((1, 4, 6, 6), wt, None, X_ZP, k8.requant_scales(X_SCALE, w_scale, Y_SCALE), Y_ZP, -128, 127,
                        (1, 1), (1, 1, 1, 1), 4, dsp=True)  # the SMLAD depthwise kernel
    for kern in (kernel, k8.qadd((1, 4, 3, 3), 0.1, 0, 0.2, 1, 0.3, 2, -128, 127), k8.quantize((1, 4, 3, 3), 0.1, 3),
                 k8.qavg_pool2d((1, 4, 5, 5), (3, 3), (2, 2), (1, 1, 1, 1), False, 0.1, 0, 0.05, 1)):
        text, undefined = cortex_m_disassembly(kern, "cortex-m4", tmp_path)
        assert not re.search(r"\svfm[as]", text)
        assert not undefined - {"memset"}  # libc's memset (zeroing scratch) is linked into the firmware


def test_firmware_on_qemu_is_bit_exact_with_onnxruntime(tmp_path):
    """The real SMLAD / SXTB16 instructions: a QDQ net with every integer kernel (conv, depthwise, pointwise, add,
    max pool, global average pool, dense) compiled for Cortex-M4 and run under QEMU gives onnxruntime's int8
    outputs (their dequantized logits agree far below one quantisation step)."""
    from edgenas import api

    float_path = tmp_path / "float.onnx"
    float_path.write_bytes(residual_net(side=8, c=8).SerializeToString())
    samples = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    qdq = quantize_with_onnxruntime(float_path, tmp_path / "qdq.onnx", samples)
    api.compile(str(qdq), target="cortex-m4", out=str(tmp_path / "fw"), dtype="int8", test_inputs=2)
    report = api.profile(str(tmp_path / "fw"), target="cortex-m4")
    assert report["check"]["passed"] and report["check"]["max_abs_diff"] < 1e-6, report["check"]
    firmware = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / "fw" / "firmware.elf")], check=True,
                              capture_output=True, text=True).stdout
    assert "smlad" in firmware


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_conv_arguments_raise_edgenas_errors():
    w = np.zeros((4, 3, 3, 3), np.int8)
    with pytest.raises(EdgenasError, match="groups"):
        k8.qconv2d((1, 4, 5, 5), w, None, 0, np.ones(4, np.float32), 0, -128, 127, (1, 1), (1, 1, 1, 1), 1, False)
    with pytest.raises(EdgenasError, match="int8"):
        k8.qconv2d((1, 3, 5, 5), w.astype(np.float32), None, 0, np.ones(4, np.float32), 0, -128, 127, (1, 1),
                   (1, 1, 1, 1), 1, False)
    with pytest.raises(EdgenasError, match="outside int8"):
        k8.qconv2d((1, 3, 5, 5), w, None, 0, np.ones(4, np.float32), 0, -128, 200, (1, 1), (1, 1, 1, 1), 1, False)
    with pytest.raises(EdgenasError, match="broadcast"):
        k8.qadd((1, 4, 3, 3), 0.1, 0, 0.1, 0, 0.1, 0, -128, 127, b_shape=(1, 3, 1, 1))
