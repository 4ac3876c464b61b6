"""ONNX stage -> TVM Relax -> fused TIR kernels, and the straight-line program that calls them.

One stage file is imported with TVM's Relax ONNX frontend and lowered to fused TIR PrimFuncs
(LegalizeOps, FoldConstant, FuseOps, FuseTIR). What remains of the Relax `main` is a straight line of `call_tir`
bindings; `stage_program` reads it into plain data (`StageProgram`): tensors, constants and kernel calls. The C
driver (`cdriver.py`) turns that data into C; TVM only ever produces the kernels (`build_kernels`), as one LLVM
object for the target's CPU or as C source. There is no TVM runtime, VM or graph executor on the device.

Kernels use the tvm-ffi packed calling convention (`int32_t __tvm_ffi_<sym>(void*, TVMFFIAny*, int32_t, void*)`
with DLTensor arguments): TVM 0.27 has no unpacked C API any more. Every stage's kernels get the prefix `s<i>_`
and all stages are built into one module, so the per-module `__tvm_ffi__library_ctx` symbol exists once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgenas.errors import EdgenasError

C_TYPES = {"float32": "float", "int64": "int64_t", "int32": "int32_t", "int8": "int8_t", "uint8": "uint8_t",
           "bool": "uint8_t", "int16": "int16_t"}
# DLDataType code/bits of every dtype a kernel argument may have (dlpack: 0 int, 1 uint, 2 float, 6 bool).
DL_TYPES = {"float32": (2, 32), "int64": (0, 64), "int32": (0, 32), "int16": (0, 16), "int8": (0, 8),
            "uint8": (1, 8), "bool": (6, 8)}
# The driver passes statically declared DLTensors of exactly the shapes the kernels were built for, so the packed
# wrappers' argument checks (type, ndim, shape, strides, alignment + their error strings) can never fire: without
# them the kernel code is ~4x smaller (e.g. 55 KB -> 14 KB for the 3-stage test net) and each call is cheaper.
KERNEL_PASS_CONFIG = {"tirx.disable_assert": True}
# Added under the target's own tvm_target entries (which win): let LLVM contract a*b+c into one FMA (vfma.f32).
LLVM_DEFAULTS: dict = {}
WORKSPACE_ALIGN = 16  # TVMBackendAllocWorkspace of the firmware (mcu_files/tvm_stubs.c) rounds every block up to it
STACK_ALLOCA_LIMIT = 1024  # TIR buffers below this many bytes are stack allocas; larger ones use the workspace


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the driver knows: the stage input, a constant (flash), a kernel output (arena) or a view."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str              # "input", "const", "buffer" or "view"
    base: str | None = None  # for "view": the tensor whose bytes it reinterprets

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype if self.dtype != "bool" else "uint8").itemsize


@dataclass(frozen=True)
class KernelCall:
    kernel: str                  # symbol without the `__tvm_ffi_` prefix
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class StageProgram:
    """Stage i as plain data: run `calls` in order; `outputs` are (h_out, logits, conf) or (logits,)."""
    index: int
    prefix: str                              # of the stage's C symbols
    input: str
    outputs: tuple[str, ...]
    tensors: Mapping[str, TensorSpec]        # every tensor a call reads or writes, by name
    calls: tuple[KernelCall, ...]
    constants: Mapping[str, np.ndarray] = field(repr=False)
    kernels: tuple[str, ...]
    workspace_bytes: int         # largest TIR-internal scratch one kernel of this stage asks the workspace for


# Operators whose output shape depends on the input values: both compilers build every buffer with a static shape
# (the firmware's arena is planned at compile time, the host library's Relax VM is composed for static shapes).
DATA_DEPENDENT_SHAPE_OPS = ("NonMaxSuppression", "NonZero", "Unique", "Compress")


def check_operators(model, name: str) -> None:
    """Reject, before any long step, what TVM's Relax ONNX frontend or the static-shape compilers cannot take: an
    opset newer than the installed onnx knows, an operator the frontend has no converter for, and operators whose
    output shape depends on the data. `name` says which file in the message."""
    import onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from edgenas.cost.onnx_frontend import check_opset

    check_opset(model, name)
    converters = _get_convert_map()
    unknown: dict[str, str] = {}
    dynamic: dict[str, str] = {}

    def visit(graph) -> None:
        for node in graph.node:
            where = node.name or node.output[0]
            if node.op_type in DATA_DEPENDENT_SHAPE_OPS:
                dynamic.setdefault(node.op_type, where)
            elif node.op_type not in converters:
                unknown.setdefault(node.op_type, where)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        visit(g)

    visit(model.graph)
    if unknown:
        ops = ", ".join(f"{op} (node {where})" for op, where in sorted(unknown.items()))
        raise EdgenasError(f"{name} uses operators TVM 0.27's Relax ONNX frontend does not support: {ops}",
                           f"replace them with operators it converts: {len(converters)}, e.g. Conv, Gemm, MatMul, "
                           "Add, Relu, pooling; recurrent layers such as LSTM, GRU and RNN are not among them")
    if dynamic:
        ops = ", ".join(f"{op} (node {where})" for op, where in sorted(dynamic.items()))
        raise EdgenasError(f"{name} uses operators whose output shape depends on the data: {ops}; the compiled "
                           "model needs static shapes", "leave them out of the compiled model and apply them to its "
                           "outputs in the application")


# Cores with the ARMv7E-M DSP extension (SMLAD, SXTB16): the int8 kernels use the SIMD micro-kernel there.
DSP_CPUS = ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p", "cortex-m55", "cortex-m85")


def has_dsp(tvm_target: Mapping[str, Any]) -> bool:
    return str(tvm_target.get("mcpu", "")) in DSP_CPUS and str(tvm_target.get("mtriple", "")).startswith("thumbv")


def lower_onnx(model, input_name: str, input_shape: Sequence[int], dtype: str = "float32", dsp: bool = False,
               name: str = "the model", integer_summary: dict | None = None):
    """Relax IRModule of a stage with fused TIR kernels (constants folded into the kernels' arguments).

    dtype "int8": the QDQ groups become integer kernels first (`qdq.rewrite_qdq`, SIMD micro-kernel if `dsp`);
    what it did is stored in `integer_summary[name]` when a dict is given."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(model, shape_dict={input_name: list(input_shape)})
    except Exception as exc:  # the frontend raises tvm errors, KeyError and friends for unsupported ops
        raise EdgenasError(f"TVM's ONNX frontend cannot import {model.graph.name or 'the model'}: "
                           f"{' '.join(str(exc).split())[:200]}",
                           "use operators TVM 0.27's Relax ONNX frontend supports (export with opset 18)") from None
    if dtype == "int8":
        from edgenas.compile.qdq import rewrite_qdq
        mod, summary = rewrite_qdq(mod, model, dsp, name)
        if integer_summary is not None:
            integer_summary[name] = summary
    passes = tvm.transform.Sequential([
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination(),
        relax.transform.RewriteDataflowReshape(),  # reshape kernels become views: no copy, no extra buffer
    ])
    with tvm.transform.PassContext(opt_level=3):
        mod = passes(mod)
    return schedule_kernels(mod)


# ------------------------------------------------------------------------------------------------ conv schedule
REGISTER_TILE = 16  # output accumulators per inner tile (Cortex-M4F/M7 have 32 single-precision FP registers)


def _largest_divisor(n: int, candidates: Sequence[int]) -> int:
    return next((c for c in candidates if c > 0 and n % c == 0), 1)


def schedule_conv(func):
    """Register-tiled schedule for the conv of a fused conv kernel; other PrimFuncs are returned unchanged.

    LegalizeOps emits a naive loop nest (reduction innermost, one load-load-FMA-store per MAC, ~3.5 instructions per
    MAC on Cortex-M7). Here: a 1x1 conv reads its input directly (the identity `pad_temp` copy is inlined); a
    regular conv computes a tile of (up to 4) output columns x (up to 16/4) output channels per step of the
    reduction, fully unrolled, so each loaded input value is reused across channels and each weight across columns
    (3x3 taps unrolled as well); a depthwise conv unrolls its kernel taps over a tile of 4 output columns. The
    epilogue (bias, ReLU, hardswish, residual add) runs per tile while its values are fresh. Measured with QEMU
    -icount (mbv3 candidates, cortex-m7, LLVM): ~1.9-2.2 instructions per MAC instead of ~3.5.
    """
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    conv = next((n for n in names if n in ("conv2d_nchw", "group_conv2d_nchw")), None)
    if conv is None:
        return func
    block = sch.get_sblock(conv)
    loops = sch.get_loops(block)
    if len(loops) != 7:
        return func
    n, f, y, x, rc, ry, rx = loops
    _, n_f, _, n_x, _, k_y, k_x = (int(sch.get(loop).extent) for loop in loops)
    if "pad_temp" in names and k_y == 1 and k_x == 1:
        sch.compute_inline(sch.get_sblock("pad_temp"))
    tile_x = _largest_divisor(n_x, (4, 2))
    x_out, x_in = sch.split(x, [None, tile_x])
    if conv == "conv2d_nchw":
        f_out, f_in = sch.split(f, [None, _largest_divisor(n_f, (REGISTER_TILE // tile_x, 8, 4, 2))])
        sch.reorder(n, f_out, y, x_out, rc, ry, rx, f_in, x_in)
        unrolled = [f_in, x_in] + ([ry, rx] if k_y * k_x <= 9 else [])
    else:  # depthwise (grouped) conv: one channel per group
        sch.reorder(n, f, y, x_out, rc, ry, rx, x_in)
        unrolled = [x_in, rx, ry]
    for epilogue in names[names.index(conv) + 1:]:
        sch.reverse_compute_at(sch.get_sblock(epilogue), x_out)
    sch.decompose_reduction(block, rc)
    for loop in unrolled:
        sch.unroll(loop)
    return sch.mod["main"]


def schedule_kernels(mod):
    """`schedule_conv` on every PrimFunc of a lowered module (a kernel it cannot schedule stays as it was)."""
    import tvm

    funcs = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                func = schedule_conv(func)
            except Exception:  # noqa: BLE001  (a schedule primitive refused this loop nest: keep the naive one)
                pass
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _shape(ty) -> tuple[int, ...]:
    return tuple(int(s) for s in ty.shape)


_ALLOC = re.compile(r'T\.(?:sblock_)?alloc_buffer\(\(([^()]*(?:\([^()]*\)[^()]*)*)\)(?:,\s*"(\w+)")?')
_DIM = re.compile(r"(?:T\.int(?:32|64)\()?(\d+)\)?")


def _tir_scratch_bytes(func) -> int:
    """Bytes of a PrimFunc's internal buffers (TIR `alloc_buffer`s), read from its TVMScript.

    An upper bound of what the kernel takes from the workspace: buffers of at least STACK_ALLOCA_LIMIT bytes
    become TVMBackendAllocWorkspace calls, smaller ones are stack allocas (counted here all the same).
    """
    import tvm
    from tvm import s_tir, tirx

    # allocation sizes as the kernel will request them: after placement at the innermost common loop and
    # compaction (a register tile of the conv schedule is 16 floats, not the whole output)
    lower = tvm.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer()])
    try:
        func = lower(tvm.IRModule({"main": func}))["main"]
    except Exception:  # noqa: BLE001  (fall back to the declared, uncompacted buffers: an upper bound)
        pass
    total = 0
    for dims, dtype in _ALLOC.findall(func.script()):
        n = int(np.prod([int(d) for d in _DIM.findall(dims)], dtype=np.int64))
        # the firmware's pool hands out 16-byte aligned blocks (tvm_stubs.c): a 57800-byte buffer takes 57808
        total += -(-n * np.dtype(dtype or "float32").itemsize // WORKSPACE_ALIGN) * WORKSPACE_ALIGN
    return total


def stage_program(mod, index: int, input_name: str) -> StageProgram:
    """Read the lowered Relax `main` into a StageProgram (names prefixed `s<index>_`)."""
    import tvm
    from tvm import relax

    prefix = f"s{index}_"
    call_tir = tvm.ir.Op.get("relax.call_tir")
    reshape = tvm.ir.Op.get("relax.reshape")
    main = mod["main"]
    if len(main.params) != 1:
        raise EdgenasError(f"stage {index} has {len(main.params)} inputs", "a stage takes exactly one input tensor")
    tensors: dict[str, TensorSpec] = {}
    constants: dict[str, np.ndarray] = {}
    calls: list[KernelCall] = []
    names: dict[Any, Any] = {}  # relax var / constant -> tensor name, or a list of names for a tuple
    const_ids: dict[Any, str] = {}

    def add(spec: TensorSpec) -> str:
        tensors[spec.name] = spec
        return spec.name

    def name_of(expr):
        if isinstance(expr, tvm.ir.expr.Constant):
            if expr not in const_ids:
                data = expr.value.numpy()
                name = f"{prefix}c{len(constants)}"
                constants[name] = np.ascontiguousarray(data)
                const_ids[expr] = add(TensorSpec(name, tuple(data.shape), str(data.dtype), "const"))
            return const_ids[expr]
        if isinstance(expr, relax.Tuple):
            return [name_of(f) for f in expr.fields]
        if expr in names:
            return names[expr]
        raise EdgenasError(f"stage {index}: unexpected Relax value {type(expr).__name__} after lowering",
                           "report this model; the MCU driver handles call_tir, tuples, views and constants")

    x = main.params[0]
    names[x] = add(TensorSpec(f"{prefix}in", _shape(x.ty), str(x.ty.dtype), "input"))
    n_buf = 0
    for block in main.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                if len(v.args) > 2:
                    raise EdgenasError(f"stage {index}: kernel {v.args[0].name_hint} needs symbolic shape arguments",
                                       "export stages with static shapes (batch 1)")
                ins = tuple(name_of(a) for a in v.args[1].fields)
                out_tys = list(v.ty.fields) if isinstance(v.ty, relax.TupleType) else [v.ty]
                outs = []
                for ty in out_tys:
                    outs.append(add(TensorSpec(f"{prefix}b{n_buf}", _shape(ty), str(ty.dtype), "buffer")))
                    n_buf += 1
                calls.append(KernelCall(prefix + v.args[0].name_hint, ins, tuple(outs)))
                names[b.var] = outs if isinstance(v.ty, relax.TupleType) else outs[0]
            elif isinstance(v, relax.Call) and v.op.same_as(reshape):
                src = name_of(v.args[0])
                root = tensors[src].base or src
                names[b.var] = add(TensorSpec(f"{prefix}v{n_buf}", _shape(v.ty), str(v.ty.dtype), "view", root))
                n_buf += 1
            elif isinstance(v, relax.TupleGetItem):
                names[b.var] = name_of(v.tuple_value)[v.index]
            elif isinstance(v, (relax.Tuple, relax.Var, tvm.ir.expr.Constant)):
                names[b.var] = name_of(v)
            else:
                raise EdgenasError(f"stage {index}: Relax binding {type(v).__name__} "
                                   f"{str(getattr(v, 'op', ''))} is not a kernel call after lowering",
                                   "use operators that TVM lowers to TIR kernels")
    result = name_of(main.body.body)
    outputs = tuple(result) if isinstance(result, list) else (result,)
    prims = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    used = {c.kernel[len(prefix):] for c in calls}
    return StageProgram(index=index, prefix=prefix, input=names[x], outputs=outputs, tensors=tensors,
                        calls=tuple(calls), constants=constants, kernels=tuple(sorted(prefix + k for k in used)),
                        workspace_bytes=max([_tir_scratch_bytes(prims[k]) for k in used] or [0]))


def kernel_module(mods: Sequence[Any], programs: Sequence[StageProgram]):
    """One TIR IRModule holding every stage's kernels under their prefixed symbols."""
    import tvm

    funcs = {}
    for mod, prog in zip(mods, programs):
        for gv, f in mod.functions.items():
            sym = prog.prefix + gv.name_hint
            if isinstance(f, tvm.tirx.PrimFunc) and sym in prog.kernels:
                funcs[sym] = f.with_attr("global_symbol", sym)
    return tvm.IRModule(funcs)


def build_kernels(tir_mod, codegen: str, tvm_target: Mapping[str, Any], out_dir: Path) -> Path:
    """Compile the kernels: `llvm` -> kernels.o for the target CPU, `c` -> kernels.c. Returns the file."""
    import tvm

    out_dir = Path(out_dir)
    if codegen == "llvm":
        target = tvm.target.Target({**LLVM_DEFAULTS, **dict(tvm_target)})
        path = out_dir / "kernels.o"
        with tvm.transform.PassContext(opt_level=3, config=KERNEL_PASS_CONFIG):
            tvm.compile(tir_mod, target=target).mod.write_to_file(str(path))
        return path
    if codegen == "c":
        with tvm.transform.PassContext(opt_level=3, config=KERNEL_PASS_CONFIG):
            src = tvm.compile(tir_mod, target=tvm.target.Target({"kind": "c"})).mod.inspect_source()
        # one module per firmware, but keep the context symbol private so the file links beside anything
        src = src.replace("void* __tvm_ffi__library_ctx = NULL;", "static void* __tvm_ffi__library_ctx = NULL;")
        path = out_dir / "kernels.c"
        path.write_text(src)
        return path
    raise EdgenasError(f"unknown codegen '{codegen}'", "use codegen='llvm' (target CPU object) or 'c' (C source)")
