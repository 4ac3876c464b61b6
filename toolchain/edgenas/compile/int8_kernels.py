"""Integer kernels for QDQ int8 models: TIR PrimFuncs that compute what onnxruntime's fused integer operators do.

Layout NCHW, batch 1, int8 activations, int8 weights, int32 accumulation. Each builder returns a `Kernel`: the
PrimFunc (parameters: inputs, then `constants` in order, then the output) and the constants already laid out as
the kernel reads them. The `reference_*` functions are numpy oracles of onnxruntime 1.32's CPU arithmetic (research
file int8_mcu.md section 1.3) with the same arguments plus the int8 input array(s) first:

* QLinearConv / QGemm: exact int32 sum of (x - zx) * w (padded taps hold zx, so they add 0), then
  `v = float32(acc + bias[c]) * scale[c]` with `scale = (x_scale * w_scale[c]) / y_scale` in float32, clamp to
  [qmin - zy, qmax - zy], round half to even (MLAS adds 1.5 * 2^23 and subtracts the bit pattern), add zy.
* QLinearAdd as MLAS runs it on x86: with r = s / sy in float32, `(zy - (za ra + zb rb)) + a ra + b rb` in
  float32, round half to even, saturate (its ARM64 NEON path is fixed point and can differ by 1 on ties).
* QLinearAveragePool: ORT dequantizes to float32, sums the valid taps in row order, divides by the count, then
  `nearbyint(avg / y_scale + zy)` clamped. A pool over the whole plane without padding is ORT's
  QLinearGlobalAveragePool: int32 sum - zx * N, times `x_scale / (y_scale * N)` in float32, then the conv epilogue.
* int8 MaxPool: max of the valid taps (onnxruntime drops the Q/DQ pair when both scales agree).

Float products are table lookups or stay separated from the following add by the clamp, so LLVM cannot contract
them into an FMA (TVM's LLVM target allows FP fusion; one rounding instead of two would change ties). Rounding is
the magic-number add, never `nearbyintf` (a libm call on Cortex-M4, whose FPv4 has no VRINT).

Two variants of conv and dense: `dsp=False` is TE + a register-tiled schedule that builds for any target;
`dsp=True` is explicit TIR (TVMScript generated per shape, not tensorize) for ARMv7E-M (Cortex-M4/M7): per pair
of output pixels an int16 im2col with the zero point subtracted, then a 2 pixels x 2 output channels tile doing
8 SMLAD per 4 K-elements on weights packed as int32 words (bytes reordered within groups of 4 so that SXTB16 /
SXTB16 ROR 8 give the lane order of the im2col words). A depthwise conv with dsp=True converts each channel's
plane to int16 once and does 2 taps per SMLAD. `quantize` / `dequantize` are the model's boundary, rounding
without libm.

TVM is imported inside the functions: `edgenas.compile` does not import it eagerly.
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgenas.errors import EdgenasError

# Buffer alignment the DSP kernels declare (bytes): the C driver aligns constants and arena buffers to 16
# (memplan.ALIGN). The TE kernels keep TVM's default of 64: LLVM then forms LDRD/LDM only at offsets it believes
# word aligned, and those are word aligned on a 16-aligned buffer too (ARMv7-M needs 4 for LDRD/LDM, never 8).
ALIGN = 16
MAGIC_RNE = 12582912.0  # 1.5 * 2^23: adding it leaves round-half-even(v) in the low mantissa bits (|v| < 2^22)
MAGIC_BITS = 0x4B400000  # bit pattern of MAGIC_RNE
INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class Kernel:
    """A PrimFunc with parameters (inputs..., *constants, output) and the constants it expects, in order."""
    func: "tvm.tirx.PrimFunc"  # noqa: F821  (tvm is imported lazily)
    constants: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    out_dtype: str


# ------------------------------------------------------------------------------------------------ shared pieces
def requant_scales(x_scale: float, w_scales, y_scale: float) -> np.ndarray:
    """Per-channel requantisation scales in onnxruntime's order: (float32(x_scale) * float32(w_scale)) / y_scale."""
    w = np.atleast_1d(np.asarray(w_scales, dtype=np.float32))
    return ((np.float32(x_scale) * w) / np.float32(y_scale)).astype(np.float32)


def _round_clamp_np(v: np.ndarray, zy: int, qmin: int, qmax: int) -> np.ndarray:
    v = np.clip(v.astype(np.float32), np.float32(qmin - zy), np.float32(qmax - zy))
    return (np.rint(v).astype(np.int32) + zy).astype(np.int8)


def _requantize_np(acc: np.ndarray, scale: np.ndarray, zy: int, qmin: int, qmax: int) -> np.ndarray:
    return _round_clamp_np(acc.astype(np.float32) * scale.astype(np.float32), zy, qmin, qmax)


def _round_clamp(v, zy: int, qmin: int, qmax: int):
    """int8 of round-half-even(clamp(v, qmin - zy, qmax - zy)) + zy for a float32 TIR value, without libm.

    zy is added after rounding, not folded into the magic constant: ties to even are not invariant under an odd
    shift (0.5 -> 0, but 0.5 - 7 -> -6)."""
    from tvm import tirx

    f32 = "float32"
    v = tirx.min(tirx.max(v, tirx.const(qmin - zy, f32)), tirx.const(qmax - zy, f32))
    bits = tirx.reinterpret("int32", v + tirx.const(MAGIC_RNE, f32))
    return tirx.Cast("int8", bits - tirx.const(MAGIC_BITS - zy, "int32"))


def _requant(acc, scale, zy: int, qmin: int, qmax: int):
    """The QLinearConv epilogue of one int32 accumulator (bias included) and its float32 scale."""
    from tvm import tirx

    return _round_clamp(tirx.Cast("float32", acc) * scale, zy, qmin, qmax)


def _check_range(qmin: int, qmax: int, *zero_points: int) -> None:
    if not INT8_MIN <= qmin <= qmax <= INT8_MAX or any(not INT8_MIN <= z <= INT8_MAX for z in zero_points):
        raise EdgenasError(f"int8 kernel range [{qmin}, {qmax}] or zero points {zero_points} outside int8",
                           "quantise activations to int8 (zero points in [-128, 127])")


def _out_size(n: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    return (n + pad_lo + pad_hi - k) // stride + 1


def _pool_geometry(x_shape, kernel, strides, pads_tlbr):
    _, c, h, w = x_shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = tuple(kernel), tuple(strides), tuple(pads_tlbr)
    return c, h, w, kh, kw, sh, sw, pt, pl, _out_size(h, kh, sh, pt, pb), _out_size(w, kw, sw, pl, pr)


def _pad_np(x: np.ndarray, pads_tlbr, value: int) -> np.ndarray:
    pt, pl, pb, pr = pads_tlbr
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def _windows_np(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """[1, C, OH, OW, kh, kw] view of the sliding windows of a padded [1, C, H, W] array."""
    return np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _schedule(func, block: str, unroll_loops: Sequence[int]):
    """A fresh schedule of `func`; `unroll_loops` are positions among `block`'s loops to unroll."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock(block))
    for i in unroll_loops:
        sch.unroll(loops[i])
    return sch


# ------------------------------------------------------------------------------------------------ conv / dense
def _check_conv(x_shape, weight, groups: int, strides, pads_tlbr):
    if len(x_shape) != 4 or x_shape[0] != 1 or weight.ndim != 4 or weight.dtype != np.int8:
        raise EdgenasError(f"int8 conv needs a [1, C, H, W] input and int8 OIHW weights, got {tuple(x_shape)} and "
                           f"{weight.dtype} {weight.shape}", "export batch 1 NCHW models with int8 weights")
    cin, cout = x_shape[1], weight.shape[0]
    if groups < 1 or cin % groups or cout % groups or weight.shape[1] != cin // groups:
        raise EdgenasError(f"int8 conv: {cin} input channels, weights {weight.shape} and groups={groups} disagree",
                           "use weights [Cout, Cin / groups, kH, kW]")
    if len(strides) != 2 or len(pads_tlbr) != 4:
        raise EdgenasError(f"int8 conv needs 2 strides and 4 pads (top, left, bottom, right), got {strides}, "
                           f"{pads_tlbr}", "pass 2-D convolution attributes")


def _conv_bias(weight: np.ndarray, bias, x_zero_point: int) -> np.ndarray:
    """bias[c] - zx * sum(w[c]): the zero point folded into the bias, valid because padding holds zx."""
    b = np.zeros(weight.shape[0], np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
    folded = b - int(x_zero_point) * weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1)
    return folded.astype(np.int32)


def _channel_scales(scales, n: int) -> np.ndarray:
    s = np.asarray(scales, dtype=np.float32).reshape(-1)
    if s.size not in (1, n):
        raise EdgenasError(f"{s.size} requantisation scales for {n} output channels", "pass one scale or one per "
                           "output channel")
    return np.ascontiguousarray(np.broadcast_to(s, (n,)))


def reference_qconv2d(x, weight, bias, x_zero_point, scales, y_zero_point, qmin, qmax, strides, pads_tlbr,
                      groups) -> np.ndarray:
    """onnxruntime QLinearConv of int8 `x` [1, C, H, W] (numpy, exact int64 accumulation)."""
    weight = np.asarray(weight)
    cout, cin_g, kh, kw = weight.shape
    xp = _pad_np(np.asarray(x, np.int64) - x_zero_point, pads_tlbr, 0)
    win = _windows_np(xp, kh, kw, *strides)  # [1, Cin, OH, OW, kh, kw]
    cout_g = cout // groups
    outs = []
    for g in range(groups):
        xg = win[0, g * cin_g:(g + 1) * cin_g]                     # [cin_g, OH, OW, kh, kw]
        wg = weight[g * cout_g:(g + 1) * cout_g].astype(np.int64)  # [cout_g, cin_g, kh, kw]
        outs.append(np.einsum("cyxij,ocij->oyx", xg, wg))
    acc = np.concatenate(outs)[None]
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64).reshape(1, -1, 1, 1)
    scale = _channel_scales(scales, cout).reshape(1, -1, 1, 1)
    return _requantize_np(acc.astype(np.int32), scale, y_zero_point, qmin, qmax)


def reference_qdense(x, weight, bias, x_zero_point, scales, y_zero_point, qmin, qmax) -> np.ndarray:
    """onnxruntime QGemm (y = x W^T + b) of int8 `x` [1, K] with int8 weights [N, K]."""
    acc = (np.asarray(x, np.int64) - x_zero_point) @ np.asarray(weight, np.int64).T
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64).reshape(1, -1)
    scale = _channel_scales(scales, weight.shape[0]).reshape(1, -1)
    return _requantize_np(acc.astype(np.int32), scale, y_zero_point, qmin, qmax)


def qconv2d(x_shape, weight, bias, x_zero_point: int, scales, y_zero_point: int, qmin: int, qmax: int, strides,
            pads_tlbr, groups: int, dsp: bool, *, int16_weights: bool = False, emulate_dsp: bool = False) -> Kernel:
    """Integer conv (regular, depthwise when groups == Cin == Cout, pointwise); pads are (top, left, bottom, right).

    dsp=False, or a grouped conv that is not depthwise: params (x, weight int8 OIHW, bias int32 [Cout] with
    -zx * sum(w) folded in, scale float32 [Cout], y). dsp=True (ARMv7E-M: Cortex-M4/M7): params (x, weight int32
    words as `pack_dsp_weights` lays them out (depthwise: `pack_dsp_depthwise_weights`), bias int32 [Cout], scale
    float32 [Cout], y), with K = Cin * kH * kW padded to a multiple of 4. `int16_weights` (dsp=True, not depthwise) stores the weights widened to int16: ~13 %
    fewer instructions in the MAC loop (no SXTB16) for twice the weights' flash. `emulate_dsp` writes the DSP
    instructions as plain integer TIR with the same results, so that the host can run the DSP kernel (tests)."""
    x_shape, weight = tuple(int(d) for d in x_shape), np.asarray(weight)
    _check_conv(x_shape, weight, groups, strides, pads_tlbr)
    _check_range(qmin, qmax, x_zero_point, y_zero_point)
    cout, _, kh, kw = weight.shape
    (sh, sw), (pt, pl, pb, pr) = tuple(strides), tuple(pads_tlbr)
    out_shape = (1, cout, _out_size(x_shape[2], kh, sh, pt, pb), _out_size(x_shape[3], kw, sw, pl, pr))
    scales = _channel_scales(scales, cout)
    if dsp and groups == 1:
        return _dsp_kernel(x_shape, out_shape, weight, bias, x_zero_point, scales, y_zero_point, qmin, qmax,
                           strides, pads_tlbr, emulate_dsp, int16_weights)
    if dsp and groups == x_shape[1] == cout:
        return _dsp_depthwise_kernel(x_shape, out_shape, weight, bias, x_zero_point, scales, y_zero_point, qmin,
                                     qmax, strides, pads_tlbr, emulate_dsp)
    func = _conv_te(x_shape, weight.shape, out_shape, x_zero_point, y_zero_point, qmin, qmax, strides, pads_tlbr,
                    groups)
    constants = (np.ascontiguousarray(weight, np.int8), _conv_bias(weight, bias, x_zero_point), scales)
    return Kernel(func, constants, out_shape, "int8")


def qdense(x_shape, weight, bias, x_zero_point: int, scales, y_zero_point: int, qmin: int, qmax: int,
           dsp: bool, *, int16_weights: bool = False, emulate_dsp: bool = False) -> Kernel:
    """Integer dense y[1, N] = requant(x[1, K] W^T + b): parameters as `qconv2d` with a [1, K] input, [1, N] output
    (dsp=False: weight int8 [N, K])."""
    x_shape, weight = tuple(int(d) for d in x_shape), np.asarray(weight)
    if len(x_shape) != 2 or x_shape[0] != 1 or weight.ndim != 2 or weight.shape[1] != x_shape[1] \
            or weight.dtype != np.int8:
        raise EdgenasError(f"int8 dense needs a [1, K] input and int8 [N, K] weights, got {x_shape} and "
                           f"{weight.dtype} {weight.shape}", "flatten the input to [1, K] (batch 1)")
    _check_range(qmin, qmax, x_zero_point, y_zero_point)
    n = weight.shape[0]
    scales = _channel_scales(scales, n)
    if dsp:
        return _dsp_kernel(x_shape, (1, n), weight.reshape(n, -1, 1, 1), bias, x_zero_point, scales, y_zero_point,
                           qmin, qmax, (1, 1), (0, 0, 0, 0), emulate_dsp, int16_weights)
    func = _dense_te(x_shape, weight.shape, x_zero_point, y_zero_point, qmin, qmax)
    constants = (np.ascontiguousarray(weight, np.int8), _conv_bias(weight, bias, x_zero_point), scales)
    return Kernel(func, constants, (1, n), "int8")


def _conv_te(x_shape, w_shape, out_shape, zx, zy, qmin, qmax, strides, pads_tlbr, groups):
    from tvm import te, tirx

    _, cin, h, w = x_shape
    cout, cin_g, kh, kw = w_shape
    (sh, sw), (pt, pl, pb, pr) = tuple(strides), tuple(pads_tlbr)
    cout_g = cout // groups
    X = te.placeholder(x_shape, "int8", "x")
    W = te.placeholder(w_shape, "int8", "weight")
    B = te.placeholder((cout,), "int32", "bias")
    S = te.placeholder((cout,), "float32", "scale")
    pad = te.compute(
        (1, cin, h + pt + pb, w + pl + pr),
        lambda n, c, i, j: tirx.if_then_else(
            tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl), X[n, c, i - pt, j - pl], tirx.const(zx, "int8")),
        name="pad")
    rc, ry, rx = (te.reduce_axis((0, e), name) for e, name in ((cin_g, "rc"), (kh, "ry"), (kw, "rx")))
    acc = te.compute(out_shape, lambda n, o, y, x: te.sum(
        pad[n, o // cout_g * cin_g + rc, y * sh + ry, x * sw + rx].astype("int32") * W[o, rc, ry, rx].astype("int32"),
        axis=[rc, ry, rx]), name="acc")
    Y = te.compute(out_shape, lambda n, o, y, x: _requant(acc[n, o, y, x] + B[o], S[o], zy, qmin, qmax), name="y")
    func = te.create_prim_func([X, W, B, S, Y])
    return _schedule_conv(func, depthwise=groups > 1 and cin_g == 1 and cout_g == 1, padded=any(pads_tlbr),
                          taps=kh * kw)


def _largest_divisor(n: int, candidates: Sequence[int]) -> int:
    return next((c for c in candidates if n % c == 0), 1)


def _schedule_conv(func, depthwise: bool, padded: bool, taps: int):
    """Register tile: 4 output columns x 4 channels (regular) or 4 columns (depthwise) per reduction step, taps
    unrolled, the epilogue computed per tile. A depthwise conv pads only the kH rows one output row reads (one
    channel), a regular conv reads the input in place with the bounds test inlined (no padded copy in RAM)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    n, o, y, x, rc, ry, rx = sch.get_loops(acc)
    _, n_o, _, n_x = (int(sch.get(loop).extent) for loop in (n, o, y, x))
    x_out, x_in = sch.split(x, [None, _largest_divisor(n_x, (4, 2))])
    if depthwise:
        sch.reorder(n, o, y, x_out, rc, ry, rx, x_in)
        unrolled = [x_in, rx, ry]
    else:
        o_out, o_in = sch.split(o, [None, _largest_divisor(n_o, (4, 2))])
        sch.reorder(n, o_out, y, x_out, rc, ry, rx, o_in, x_in)
        unrolled = [o_in, x_in] + ([ry, rx] if taps <= 9 else [])
    sch.reverse_compute_at(sch.get_sblock("y"), x_out)
    sch.decompose_reduction(acc, rc)
    if depthwise and padded:
        sch.compute_at(sch.get_sblock("pad"), o)
    else:
        sch.compute_inline(sch.get_sblock("pad"))
    for loop in unrolled:
        sch.unroll(loop)
    return sch.mod["main"]


def _dense_te(x_shape, w_shape, zx, zy, qmin, qmax):
    from tvm import s_tir, te

    n, k = w_shape
    X = te.placeholder(x_shape, "int8", "x")
    W = te.placeholder(w_shape, "int8", "weight")
    B = te.placeholder((n,), "int32", "bias")
    S = te.placeholder((n,), "float32", "scale")
    rk = te.reduce_axis((0, k), "rk")
    acc = te.compute((1, n), lambda i, j: te.sum(X[i, rk].astype("int32") * W[j, rk].astype("int32"), axis=rk),
                     name="acc")
    Y = te.compute((1, n), lambda i, j: _requant(acc[i, j] + B[j], S[j], zy, qmin, qmax), name="y")
    sch = s_tir.Schedule(te.create_prim_func([X, W, B, S, Y]))
    block = sch.get_sblock("acc")
    i, j, r = sch.get_loops(block)
    j_out, j_in = sch.split(j, [None, _largest_divisor(n, (4, 2))])
    sch.reorder(i, j_out, r, j_in)
    sch.reverse_compute_at(sch.get_sblock("y"), j_out)
    sch.decompose_reduction(block, r)
    sch.unroll(j_in)
    return sch.mod["main"]


# ------------------------------------------------------------------------------------------------ DSP variant
def pack_dsp_weights(weight: np.ndarray, int16_weights: bool = False) -> np.ndarray:
    """int8 [Cout, ...] weights -> flat int32 words in the layout of the DSP kernel.

    Each row is padded with zeros to Kp (a multiple of 4). int8 weights: each group of 4 is one word with the bytes
    in the order (w0, w2, w1, w3), so that SXTB16(word) = (w0, w1) and SXTB16(word ROR 8) = (w2, w3): the lane
    order of two consecutive int16 im2col elements in one 32-bit word (little-endian). int16 weights: the words
    (w0, w1) and (w2, w3) as int16 lanes, SMLAD operands as they are (twice the flash, no SXTB16). Rows 2i and
    2i+1 are interleaved group by group (the 2x2 tile reads both with one pointer, at the im2col's stride); an odd
    last row follows as it is."""
    rows = np.asarray(weight, np.int8).reshape(weight.shape[0], -1)
    cout, k = rows.shape
    kp = -(-k // 4) * 4
    padded = np.zeros((cout, kp), np.int8)
    padded[:, :k] = rows
    if int16_weights:
        words = padded.astype("<i2").reshape(cout, kp // 4, 4).view("<i4")  # [cout, Kp / 4, 2]
    else:
        words = np.ascontiguousarray(padded.reshape(cout, kp // 4, 4)[:, :, [0, 2, 1, 3]]).view("<i4")
    even = cout - cout % 2
    lanes = 2 if int16_weights else 1
    pairs = words[:even].reshape(cout // 2, 2, kp // 4, lanes).transpose(0, 2, 1, 3).reshape(-1)
    return np.concatenate([pairs, words[even:].reshape(-1)]).astype(np.int32)


def _dsp_kernel(x_shape, out_shape, weight, bias, zx, scales, zy, qmin, qmax, strides, pads_tlbr,
                emulate: bool, int16_weights: bool) -> Kernel:
    cout = weight.shape[0]
    b = np.zeros(cout, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1)
    func = _dsp_conv_func(x_shape, out_shape, weight.shape, zx, zy, qmin, qmax, strides, pads_tlbr, emulate,
                          int16_weights)
    return Kernel(func, (pack_dsp_weights(weight, int16_weights), np.ascontiguousarray(b), scales),
                  tuple(out_shape), "int8")


def _simd32(emulate: bool):
    """(SXTB16, ROR #8, SMLAD) as TIR expression builders: LLVM ARM intrinsics, or (emulate) the same arithmetic
    in plain int32 TIR that any target runs."""
    from tvm import tirx

    def llvm(name):
        return lambda *args: tirx.call_llvm_pure_intrin("int32", name, *args)

    if not emulate:
        fshr = llvm("llvm.fshr.i32")  # funnel shift of v:v right by 8 = rotate right by 8 (folded into SXTB16)
        return llvm("llvm.arm.sxtb16"), (lambda v: fshr(v, v, 8)), llvm("llvm.arm.smlad")

    def lane_lo(v):  # sign-extended bits 15:0
        return tirx.shift_right(tirx.shift_left(v, 16), 16)

    def lane_hi(v):  # sign-extended bits 31:16
        return tirx.shift_right(v, 16)

    def sxtb16(v):  # bytes 0 and 2, sign-extended to 16 bits each
        lo = tirx.shift_right(tirx.shift_left(v, 24), 24)
        hi = tirx.shift_right(tirx.shift_left(v, 8), 24)
        return tirx.bitwise_or(tirx.bitwise_and(lo, 0xFFFF), tirx.shift_left(hi, 16))

    def ror8(v):
        u = tirx.Cast("uint32", v)
        return tirx.Cast("int32", tirx.bitwise_or(tirx.shift_right(u, tirx.const(8, "uint32")),
                                                  tirx.shift_left(u, tirx.const(24, "uint32"))))

    def smlad(a, b, acc):
        return acc + lane_lo(a) * lane_lo(b) + lane_hi(a) * lane_hi(b)

    return sxtb16, ror8, smlad


def _dsp_conv_func(x_shape, out_shape, w_shape, zx, zy, qmin, qmax, strides, pads_tlbr, emulate, int16_weights):
    """Explicit TIR of the SMLAD conv (see the module docstring); `x_shape` / `out_shape` are only the parameter
    shapes ([1, C, H, W] / [1, K] and the like): the body reads them flat."""
    from tvm import tirx
    from tvm.script import tirx as T

    cout, cin, kh, kw = (int(d) for d in w_shape)
    if len(x_shape) == 4:
        h, w, oh, ow = x_shape[2], x_shape[3], out_shape[2], out_shape[3]
    else:
        h = w = oh = ow = 1
    (sh, sw), (pt, pl, _, _) = tuple(strides), tuple(pads_tlbr)
    k = cin * kh * kw
    kp = -(-k // 4) * 4
    k4, half_k = kp // 4, kp // 2  # groups of 4 K-elements; im2col words per pixel
    lanes = 2 if int16_weights else 1  # weight words per group of 4
    n_pix = oh * ow
    padded = any(pads_tlbr)

    sxtb16, ror8, smlad = _simd32(emulate)

    def weight_lanes(wq, index, half):
        """SMLAD operand of K-elements (4 kk + 2 half, + 1) of the weight group at `index` (unrolled `half`)."""
        if int16_weights:
            return wq[index * 2 + half]
        return sxtb16(tirx.if_then_else(half == 0, wq[index], ror8(wq[index])))

    def inside(iy, ix):
        if not padded:
            return tirx.const(True, "bool")
        return tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)

    @T.macro
    def im2col(col, xf, j, p):
        """Column j of the im2col: x - zx as int16 for pixel p, K-elements in weight order (ci, ky, kx); a tap
        outside the image is 0 (it adds nothing), tested once per tap for all input channels."""
        y0: T.let[T.int32] = p // ow * sh - pt
        x0: T.let[T.int32] = p % ow * sw - pl
        for ky in T.unroll(kh):
            for kx in T.unroll(kw):
                if inside(y0 + ky, x0 + kx):
                    for ci in range(cin):
                        col[j * kp + (ci * kh + ky) * kw + kx] = T.Cast(
                            "int16", T.Cast("int32", xf[(ci * h + y0 + ky) * w + x0 + kx]) - zx)
                else:
                    for ci in range(cin):
                        col[j * kp + (ci * kh + ky) * kw + kx] = T.int16(0)
        for r in T.unroll(kp - k):
            col[j * kp + k + r] = T.int16(0)

    @T.macro
    def mac(acc, col32, wq, o, kk, n_pix_tile, n_ch_tile):
        """acc[j * 2 + c] += 4 MACs (K-elements 4 kk .. 4 kk + 3) of pixel j, channel o + c: 2 SMLAD each. Channel
        pairs are interleaved word by word (stride 2 words), an odd last channel is contiguous."""
        for half in T.unroll(2):  # lanes (w0, w1) = SXTB16(word), then (w2, w3) = SXTB16(word ROR 8)
            for j in T.unroll(n_pix_tile):
                for c in T.unroll(n_ch_tile):
                    acc[j * 2 + c] = smlad(col32[j * half_k + 2 * kk + half],
                                           weight_lanes(wq, o * k4 + kk * n_ch_tile + c, half), acc[j * 2 + c])

    @T.macro
    def tile(acc, col32, wq, bias, scale, yf, o, p, n_pix_tile, n_ch_tile):
        """Output pixels p, p + 1 (n_pix_tile of them) x channels o, o + 1 (n_ch_tile), requantised."""
        for j in T.unroll(n_pix_tile):
            for c in T.unroll(n_ch_tile):
                acc[j * 2 + c] = bias[o + c]
        for kk in range(k4):
            mac(acc, col32, wq, o, kk, n_pix_tile, n_ch_tile)
        for j in T.unroll(n_pix_tile):
            for c in T.unroll(n_ch_tile):
                yf[(o + c) * n_pix + p + j] = _requant(acc[j * 2 + c], scale[o + c], zy, qmin, qmax)

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer(tuple(x_shape), "int8", align=ALIGN),
               wq: T.Buffer((cout * k4 * lanes,), "int32", align=ALIGN),
               bias: T.Buffer((cout,), "int32", align=ALIGN), scale: T.Buffer((cout,), "float32", align=ALIGN),
               y: T.Buffer(tuple(out_shape), "int8", align=ALIGN)):
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((cin * h * w,), "int8", data=x.data, align=ALIGN)
        yf = T.decl_buffer((cout * n_pix,), "int8", data=y.data, align=ALIGN)
        col = T.alloc_buffer((2 * kp,), "int16", align=ALIGN)  # stack below 1024 bytes, else the workspace
        col32 = T.decl_buffer((kp,), "int32", data=col.data, align=ALIGN)
        acc = T.alloc_buffer((4,), "int32")  # constant indices only: LLVM keeps it in registers
        for pp in range(n_pix // 2):
            im2col(col, xf, 0, 2 * pp)
            im2col(col, xf, 1, 2 * pp + 1)
            for op in range(cout // 2):
                tile(acc, col32, wq, bias, scale, yf, 2 * op, 2 * pp, 2, 2)
            for ot in range(cout % 2):  # odd last channel
                tile(acc, col32, wq, bias, scale, yf, cout - 1 + ot, 2 * pp, 2, 1)
        for pt_ in range(n_pix % 2):  # odd last pixel (a dense layer has only this one)
            im2col(col, xf, 0, n_pix - 1 + pt_)
            for op in range(cout // 2):
                tile(acc, col32, wq, bias, scale, yf, 2 * op, n_pix - 1 + pt_, 1, 2)
            for ot in range(cout % 2):
                tile(acc, col32, wq, bias, scale, yf, cout - 1 + ot, n_pix - 1 + pt_, 1, 1)

    return kernel


def pack_dsp_depthwise_weights(weight: np.ndarray) -> np.ndarray:
    """int8 [C, 1, kH, kW] depthwise weights -> int32 [C * kH * ceil(kW / 2)]: per channel and kernel row, pairs
    of neighbouring taps as int16 lanes (tap 2q in bits 15:0, tap 2q + 1 in bits 31:16, 0 past the row's end), the
    operand SMLAD multiplies with two neighbouring int16 input values."""
    c, _, kh, kw = weight.shape
    n_pairs = -(-kw // 2)
    taps = np.zeros((c, kh, 2 * n_pairs), np.int16)
    taps[:, :, :kw] = weight[:, 0]
    return np.ascontiguousarray(taps).reshape(-1).view("<i4").astype(np.int32)


def _dsp_depthwise_kernel(x_shape, out_shape, weight, bias, zx, scales, zy, qmin, qmax, strides, pads_tlbr,
                          emulate: bool) -> Kernel:
    c = weight.shape[0]
    b = np.zeros(c, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1)
    func = _dsp_depthwise_func(x_shape, out_shape, weight.shape, zx, zy, qmin, qmax, strides, pads_tlbr, emulate)
    return Kernel(func, (pack_dsp_depthwise_weights(weight), np.ascontiguousarray(b), scales), tuple(out_shape),
                  "int8")


DEPTHWISE_TILE = 4  # output columns per step: neighbouring columns share the pairs they load


def _dsp_depthwise_func(x_shape, out_shape, w_shape, zx, zy, qmin, qmax, strides, pads_tlbr, emulate):
    """Explicit TIR of the SMLAD depthwise conv: per channel, the input plane as int16 (x - zx) with zero padding
    (in scratch; its border is zeroed once), then per output 2 taps per SMLAD: a 32-bit load of two neighbouring
    int16 values (unaligned LDR, never LDRD: the load is only 2-byte aligned) times a packed weight pair."""
    from tvm import tirx
    from tvm.script import tirx as T

    c, _, kh, kw = (int(d) for d in w_shape)
    _, _, h, w = x_shape
    oh, ow = out_shape[2], out_shape[3]
    (sh, sw), (pt, pl, pb, pr) = tuple(strides), tuple(pads_tlbr)
    hp, wq = h + pt + pb, w + pl + pr + 1  # + 1 column: an odd kW's last pair reads one value past the window
    n_pairs = -(-kw // 2)
    _, _, smlad = _simd32(emulate)
    tile_w = DEPTHWISE_TILE

    def pair(plane, index):
        """int16 plane[index] in bits 15:0, plane[index + 1] in bits 31:16."""
        if not emulate:
            return tirx.reinterpret("int32", plane.vload([index], "int16x2"))
        return tirx.bitwise_or(tirx.bitwise_and(tirx.Cast("int32", plane[index]), 0xFFFF),
                               tirx.shift_left(tirx.Cast("int32", plane[index + 1]), 16))

    @T.macro
    def tile(acc, plane, wp, bias, scale, yf, ch, oy, ox, n_cols):
        for j in T.unroll(n_cols):
            acc[j] = bias[ch]
        for ky in T.unroll(kh):
            for q in T.unroll(n_pairs):
                for j in T.unroll(n_cols):
                    acc[j] = smlad(pair(plane, (oy * sh + ky) * wq + (ox + j) * sw + 2 * q),
                                   wp[(ch * kh + ky) * n_pairs + q], acc[j])
        for j in T.unroll(n_cols):
            yf[(ch * oh + oy) * ow + ox + j] = _requant(acc[j], scale[ch], zy, qmin, qmax)

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer(tuple(x_shape), "int8", align=ALIGN),
               wp: T.Buffer((c * kh * n_pairs,), "int32", align=ALIGN),
               bias: T.Buffer((c,), "int32", align=ALIGN), scale: T.Buffer((c,), "float32", align=ALIGN),
               y: T.Buffer(tuple(out_shape), "int8", align=ALIGN)):
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((c * h * w,), "int8", data=x.data, align=ALIGN)
        yf = T.decl_buffer((c * oh * ow,), "int8", data=y.data, align=ALIGN)
        plane = T.alloc_buffer((hp * wq,), "int16", align=ALIGN)  # stack below 1024 bytes, else the workspace
        acc = T.alloc_buffer((tile_w,), "int32")
        for i in range(hp * wq):
            plane[i] = T.int16(0)
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    plane[(i + pt) * wq + j + pl] = T.Cast("int16", T.Cast("int32", xf[(ch * h + i) * w + j]) - zx)
            for oy in range(oh):
                for ot in range(ow // tile_w):
                    tile(acc, plane, wp, bias, scale, yf, ch, oy, ot * tile_w, tile_w)
                for ox in range(ow % tile_w):
                    tile(acc, plane, wp, bias, scale, yf, ch, oy, ow - ow % tile_w + ox, 1)

    return kernel


# ------------------------------------------------------------------------------------------------ add
def _dequant_table(scale: float, zero_point: int) -> np.ndarray:
    """float32(scale * (q - zp)) for q = -128..127, indexed by q + 128: the products onnxruntime forms, computed
    here so that the kernel has no multiply for LLVM to fuse with the following add."""
    q = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int32)
    return (np.float32(scale) * (q - zero_point).astype(np.float32)).astype(np.float32)


def _add_terms(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp):
    """onnxruntime's x86 QLinearAdd terms: tables float32(q * sa / sy), float32(q * sb / sy) for q = -128..127
    and the fixed part zy - (za * sa / sy + zb * sb / sy), all in float32 in MLAS's order."""
    ratio_a = np.float32(np.float32(a_scale) / np.float32(y_scale))
    ratio_b = np.float32(np.float32(b_scale) / np.float32(y_scale))
    q = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float32)
    zp_terms = np.float32(np.float32(ratio_a * np.float32(a_zp)) + np.float32(ratio_b * np.float32(b_zp)))
    fixed = np.float32(y_zp) - zp_terms
    return (q * ratio_a).astype(np.float32), (q * ratio_b).astype(np.float32), np.float32(fixed)


def reference_qadd(a, b, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, qmin, qmax) -> np.ndarray:
    """onnxruntime 1.32 QLinearAdd as MLAS runs it on x86 (SSE2/AVX2): with r = s / sy in float32,
    round-half-even((zy - (za ra + zb rb)) + a ra + b rb), saturated. (ARM64 builds use a fixed-point NEON path
    that can differ by 1 on ties: about 1 output in 10^5 in our comparison.)"""
    table_a, table_b, fixed = _add_terms(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp)
    v = ((fixed + table_a[np.asarray(a, np.int32) + 128]).astype(np.float32)
         + table_b[np.asarray(b, np.int32) + 128]).astype(np.float32)
    return _round_clamp_np(v, 0, qmin, qmax)


def _second_operand_shape(shape, b_shape, what: str) -> tuple[int, ...]:
    """The shape of a binary kernel's second input (`shape` when None), refused unless it broadcasts to `shape`
    dimension by dimension (equal, or 1: a per-channel [1, C, 1, 1] or a scalar [1, 1, 1, 1])."""
    b_shape = shape if b_shape is None else tuple(int(d) for d in b_shape)
    if len(b_shape) != len(shape) or any(bd not in (1, d) for bd, d in zip(b_shape, shape)):
        raise EdgenasError(f"int8 {what} of {shape} and {b_shape}: the second input does not broadcast to the first",
                           "pass tensors of equal shape, or a [1, C, 1, 1] / scalar second input")
    return b_shape


def _broadcast_at(B, b_shape, idx):
    """B at output index `idx`, its size-1 dimensions broadcast."""
    return B[tuple(0 if bd == 1 else i for bd, i in zip(b_shape, idx))]


def qadd(shape, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, qmin, qmax, b_shape=None) -> Kernel:
    """Integer add of two int8 tensors of `shape` (or `b` of `b_shape` broadcast to it, e.g. [1, C, 1, 1]).

    Params (a, b, a_table float32 [256], b_table float32 [256], y): the tables hold q * a_scale / y_scale and
    q * b_scale / y_scale for each int8 code q (index q + 128); the fixed part is a constant of the kernel."""
    from tvm import te, tirx

    shape = tuple(int(d) for d in shape)
    b_shape = _second_operand_shape(shape, b_shape, "add")
    _check_range(qmin, qmax, a_zp, b_zp, y_zp)
    table_a, table_b, fixed = _add_terms(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp)
    A = te.placeholder(shape, "int8", "a")
    Bq = te.placeholder(b_shape, "int8", "b")
    TA = te.placeholder((256,), "float32", "a_table")
    TB = te.placeholder((256,), "float32", "b_table")

    Y = te.compute(shape, lambda *idx: _round_clamp(
        (tirx.const(float(fixed), "float32") + TA[A[idx].astype("int32") + 128])
        + TB[_broadcast_at(Bq, b_shape, idx).astype("int32") + 128],
        0, qmin, qmax), name="y")
    return Kernel(te.create_prim_func([A, Bq, TA, TB, Y]), (table_a, table_b), shape, "int8")


# ------------------------------------------------------------------------------------------------ pooling
def _is_global(x_shape, kernel, pads_tlbr) -> bool:
    return tuple(kernel) == tuple(x_shape[2:]) and not any(pads_tlbr)


def _global_scale(x_scale, y_scale, n: int) -> np.float32:
    """onnxruntime's QLinearGlobalAveragePool scale: x_scale / (y_scale * float(N)) in float32."""
    return np.float32(np.float32(x_scale) / (np.float32(y_scale) * np.float32(n)))


def _window_counts(size: int, k: int, stride: int, pad: int, out: int) -> np.ndarray:
    """Valid taps per output position along one axis, as onnxruntime clips the window."""
    start = np.arange(out) * stride - pad
    return np.minimum(start + k, size) - np.maximum(start, 0)


def reference_qavg_pool2d(x, kernel, strides, pads_tlbr, count_include_pad, x_scale, x_zp, y_scale,
                          y_zp) -> np.ndarray:
    """onnxruntime QLinearAveragePool (or QLinearGlobalAveragePool for a whole-plane window without padding)."""
    x = np.asarray(x)
    c, h, w, kh, kw, sh, sw, pt, pl, oh, ow = _pool_geometry(x.shape, kernel, strides, pads_tlbr)
    if _is_global(x.shape, kernel, pads_tlbr):
        acc = x.astype(np.int64).sum(axis=(2, 3), keepdims=True) - x_zp * h * w
        return _requantize_np(acc.astype(np.int32), _global_scale(x_scale, y_scale, h * w), y_zp, INT8_MIN, INT8_MAX)
    table = np.concatenate([_dequant_table(x_scale, x_zp), [np.float32(0)]]).astype(np.float32)
    codes = _pad_np(x.astype(np.int32) + 128, pads_tlbr, 256)  # 256: a padded tap, dequantized to 0.0
    win = table[_windows_np(codes, kh, kw, sh, sw)]  # [1, C, OH, OW, kh, kw] float32
    total = np.zeros(win.shape[:4], np.float32)
    for i in range(kh):  # onnxruntime's summation order: row by row, left to right
        for j in range(kw):
            total = (total + win[..., i, j]).astype(np.float32)
    if count_include_pad:
        count = np.full((oh, ow), kh * kw, np.float32)
    else:
        count = np.outer(_window_counts(h, kh, sh, pt, oh), _window_counts(w, kw, sw, pl, ow)).astype(np.float32)
    v = (total / count / np.float32(y_scale) + np.float32(y_zp)).astype(np.float32)
    return _round_clamp_np(v, 0, INT8_MIN, INT8_MAX)


def qavg_pool2d(x_shape, kernel, strides, pads_tlbr, count_include_pad: bool, x_scale, x_zp, y_scale,
                y_zp) -> Kernel:
    """Integer average pool (global when the window is the whole plane). Params: global (x, y); windowed
    (x, table float32 [256] of dequantized codes, y)."""
    from tvm import te, tirx

    x_shape = tuple(int(d) for d in x_shape)
    _check_range(INT8_MIN, INT8_MAX, x_zp, y_zp)
    c, h, w, kh, kw, sh, sw, pt, pl, oh, ow = _pool_geometry(x_shape, kernel, strides, pads_tlbr)
    out_shape = (1, c, oh, ow)
    X = te.placeholder(x_shape, "int8", "x")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    if _is_global(x_shape, kernel, pads_tlbr):
        acc = te.compute(out_shape, lambda n, ch, i, j: te.sum(X[n, ch, ry, rx].astype("int32"), axis=[ry, rx]),
                         name="acc")
        scale = float(_global_scale(x_scale, y_scale, h * w))
        Y = te.compute(out_shape, lambda n, ch, i, j: _requant(acc[n, ch, i, j] - x_zp * h * w,
                                                               tirx.const(scale, "float32"), y_zp, INT8_MIN,
                                                               INT8_MAX), name="y")
        return Kernel(te.create_prim_func([X, Y]), (), out_shape, "int8")
    TX = te.placeholder((256,), "float32", "table")

    def inside(i, j):
        return tirx.all(i >= 0, i < h, j >= 0, j < w)

    def value(n, ch, i, j):
        return tirx.if_then_else(inside(i, j), TX[X[n, ch, i, j].astype("int32") + 128], tirx.const(0.0, "float32"))

    total = te.compute(out_shape, lambda n, ch, i, j: te.sum(
        value(n, ch, i * sh - pt + ry, j * sw - pl + rx), axis=[ry, rx]), name="acc")

    def count(i, j):
        if count_include_pad:
            return tirx.const(float(kh * kw), "float32")
        ys, xs = i * sh - pt, j * sw - pl
        rows = tirx.min(ys + kh, h) - tirx.max(ys, 0)
        cols = tirx.min(xs + kw, w) - tirx.max(xs, 0)
        return tirx.Cast("float32", rows * cols)

    Y = te.compute(out_shape, lambda n, ch, i, j: _round_clamp(
        total[n, ch, i, j] / count(i, j) / float(np.float32(y_scale)) + tirx.const(float(y_zp), "float32"),
        0, INT8_MIN, INT8_MAX), name="y")
    func = te.create_prim_func([X, TX, Y])
    sch = _schedule(func, "acc", [4, 5] if kh * kw <= 9 else [])
    return Kernel(sch.mod["main"], (_dequant_table(x_scale, x_zp),), out_shape, "int8")


def reference_qmax_pool2d(x, kernel, strides, pads_tlbr) -> np.ndarray:
    """int8 MaxPool: the largest valid tap (padding never wins)."""
    x = np.asarray(x, np.int8)
    _, _, _, kh, kw, sh, sw, *_ = _pool_geometry(x.shape, kernel, strides, pads_tlbr)
    return _windows_np(_pad_np(x, pads_tlbr, INT8_MIN), kh, kw, sh, sw).max(axis=(4, 5)).astype(np.int8)


def qmul(shape, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, qmin, qmax, b_shape=None) -> Kernel:
    """Integer product of two int8 tensors (b of `b_shape` broadcast to `shape`, e.g. a squeeze-excite gate
    [1, C, 1, 1]) as onnxruntime's x86 QLinearMul computes it (MLAS SSE2): the exact int32 product of (a - za) and
    (b - zb), times float32(sa * sb / sy) (left to right in float32), plus float32(zy), then rounded half to even and
    saturated: the zero point is added before rounding, unlike QLinearConv. Params (a, b, y)."""
    from tvm import te, tirx

    shape = tuple(int(d) for d in shape)
    b_shape = _second_operand_shape(shape, b_shape, "product")
    _check_range(qmin, qmax, a_zp, b_zp, y_zp)
    f32 = "float32"
    ratio = tirx.const(float(_mul_ratio(a_scale, b_scale, y_scale)), f32)
    A = te.placeholder(shape, "int8", "a")
    Bq = te.placeholder(b_shape, "int8", "b")

    def value(*idx):
        b = _broadcast_at(Bq, b_shape, idx)
        scaled = tirx.Cast(f32, (A[idx].astype("int32") - a_zp) * (b.astype("int32") - b_zp)) * ratio
        # a value-preserving clamp keeps LLVM from contracting the multiply and the add into one FMA
        scaled = tirx.min(tirx.max(scaled, tirx.const(-MUL_BARRIER, f32)), tirx.const(MUL_BARRIER, f32))
        return scaled + tirx.const(float(y_zp), f32)

    Y = te.compute(shape, lambda *idx: _round_clamp(value(*idx), 0, qmin, qmax), name="y")
    return Kernel(te.create_prim_func([A, Bq, Y]), (), shape, "int8")


MUL_BARRIER = 3.0e38  # beyond any int8 product times a scale ratio: the clamp never changes a value


def _mul_ratio(a_scale, b_scale, y_scale) -> np.float32:
    return np.float32(np.float32(np.float32(a_scale) * np.float32(b_scale)) / np.float32(y_scale))


def reference_qmul(a, b, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, qmin, qmax) -> np.ndarray:
    product = (np.asarray(a, np.int32) - a_zp) * (np.asarray(b, np.int32) - b_zp)
    w = (product.astype(np.float32) * _mul_ratio(a_scale, b_scale, y_scale)).astype(np.float32) + np.float32(y_zp)
    return np.clip(np.rint(w.astype(np.float32)), qmin, qmax).astype(np.int8)


def lookup_table(dequantized_codes_to_float, y_scale: float, y_zp: int, qmin: int = INT8_MIN,
                 qmax: int = INT8_MAX) -> np.ndarray:
    """int8 table [256] (index q + 128) of an elementwise function of one int8 tensor: its float32 values for the
    dequantized codes (an array of 256, computed by the caller in float32 as onnxruntime computes the float op),
    quantized as QuantizeLinear does (divide by the scale, round half to even, add the zero point, saturate)."""
    v = np.asarray(dequantized_codes_to_float, np.float32) / np.float32(y_scale)
    return np.clip(np.rint(v) + y_zp, qmin, qmax).astype(np.int8)


def reference_qlookup(x, table) -> np.ndarray:
    return np.asarray(table, np.int8)[np.asarray(x, np.int32) + 128]


def qlookup(shape, table) -> Kernel:
    """y = table[x + 128]: any elementwise function of one int8 tensor (HardSwish, sigmoid, a clip, ...) as one
    byte load per element. Params (x, table int8 [256], y)."""
    from tvm import te

    shape = tuple(int(d) for d in shape)
    table = np.ascontiguousarray(table, np.int8)
    if table.shape != (256,):
        raise EdgenasError(f"a lookup table has {table.size} entries, not 256", "pass one int8 entry per int8 code")
    X = te.placeholder(shape, "int8", "x")
    T = te.placeholder((256,), "int8", "table")
    Y = te.compute(shape, lambda *i: T[X[i].astype("int32") + 128], name="y")
    return Kernel(te.create_prim_func([X, T, Y]), (table,), shape, "int8")


def qmax_pool2d(x_shape, kernel, strides, pads_tlbr) -> Kernel:
    """int8 max pool; params (x, y)."""
    from tvm import te, tirx

    x_shape = tuple(int(d) for d in x_shape)
    c, h, w, kh, kw, sh, sw, pt, pl, oh, ow = _pool_geometry(x_shape, kernel, strides, pads_tlbr)
    out_shape = (1, c, oh, ow)
    X = te.placeholder(x_shape, "int8", "x")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def tap(n, ch, i, j):
        return tirx.if_then_else(tirx.all(i >= 0, i < h, j >= 0, j < w), X[n, ch, i, j], tirx.const(INT8_MIN, "int8"))

    Y = te.compute(out_shape, lambda n, ch, i, j: te.max(tap(n, ch, i * sh - pt + ry, j * sw - pl + rx),
                                                         axis=[ry, rx]), name="y")
    sch = _schedule(te.create_prim_func([X, Y]), "y", [4, 5] if kh * kw <= 9 else [])
    return Kernel(sch.mod["main"], (), out_shape, "int8")


# ------------------------------------------------------------------------------------------------ model boundary
def reference_quantize(x, scale, zero_point) -> np.ndarray:
    """onnxruntime QuantizeLinear to int8: round-half-even(float32(x) / scale) + zp, saturated (a true division)."""
    return _round_clamp_np(np.asarray(x, np.float32) / np.float32(scale), zero_point, INT8_MIN, INT8_MAX)


def quantize(shape, scale: float, zero_point: int) -> Kernel:
    """float32 -> int8 QuantizeLinear (the model input); params (x, y). Rounds without libm (TVM's own quantize
    calls `nearbyintf` on Cortex-M4)."""
    from tvm import te, tirx

    shape = tuple(int(d) for d in shape)
    _check_range(INT8_MIN, INT8_MAX, zero_point)
    X = te.placeholder(shape, "float32", "x")
    Y = te.compute(shape, lambda *i: _round_clamp(X[i] / tirx.const(float(np.float32(scale)), "float32"),
                                                  zero_point, INT8_MIN, INT8_MAX), name="y")
    return Kernel(te.create_prim_func([X, Y]), (), shape, "int8")


def reference_dequantize(x, scale, zero_point) -> np.ndarray:
    """onnxruntime DequantizeLinear of int8: float32(x - zp) * scale."""
    return ((np.asarray(x, np.int32) - zero_point).astype(np.float32) * np.float32(scale)).astype(np.float32)


def dequantize(shape, scale: float, zero_point: int) -> Kernel:
    """int8 -> float32 DequantizeLinear (a model output); params (x, y)."""
    from tvm import te, tirx

    shape = tuple(int(d) for d in shape)
    _check_range(INT8_MIN, INT8_MAX, zero_point)
    X = te.placeholder(shape, "int8", "x")
    Y = te.compute(shape, lambda *i: tirx.Cast("float32", X[i].astype("int32") - zero_point)
                   * tirx.const(float(np.float32(scale)), "float32"), name="y")
    return Kernel(te.create_prim_func([X, Y]), (), shape, "float32")

