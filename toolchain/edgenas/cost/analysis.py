"""Cost figures of a CostGraph: MACs per exit, peak SRAM, flash, predicted latency, budget checks.

Every function is a plain function of the graph (and of the target for latency); none looks at torch or ONNX.
Per-exit figures are worst-case costs of *taking* exit i: backbone segments 0..i plus every head 0..i, because each
earlier head runs (and decides to continue) before exit i is reached.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from edgenas.cost.graph import CostGraph, Layer, numel
from edgenas.errors import EdgenasError
from edgenas.targets import LINEAR_FEATURES, SHAPE_FEATURES, SMALL_PLANE, THIN_REDUCTION

BYTES_PER_ELEMENT = {"float32": 4, "int8": 1}
_IN_PLACE_KINDS = ("act", "add", "mul")  # elementwise; only with a single activation input of the same size


# ------------------------------------------------------------------------------------------------- MACs, params
def _per_exit(g: CostGraph, values: Sequence[float]) -> list[float]:
    """Cumulative per-exit totals of a per-layer quantity (segments and heads 0..i)."""
    per_part = [0.0] * g.n_exits
    for layer, v in zip(g.layers, values):
        per_part[layer.index] += v
    out, total = [], 0.0
    for v in per_part:
        total += v
        out.append(total)
    return out


def macs_per_exit(g: CostGraph) -> list[int]:
    """Worst-case MACs to produce exit i, counting every head evaluated before it."""
    return [int(v) for v in _per_exit(g, [layer.macs for layer in g.layers])]


def check_exit_rates(n_exits: int, exit_rates: Sequence[float]) -> list[float]:
    """The rates as floats, after checking there is one per exit and they form a distribution."""
    rates = [float(r) for r in exit_rates]
    if len(rates) != n_exits:
        raise EdgenasError(f"{len(rates)} exit rates given for a network with {n_exits} exits",
                           "give one rate per exit, final exit included")
    if any(not math.isfinite(r) or r < 0 for r in rates) or abs(sum(rates) - 1.0) > 1e-6:
        raise EdgenasError(f"exit rates {rates} are not a distribution", "rates must be >= 0 and sum to 1")
    return rates


def expected_macs(g: CostGraph, exit_rates: Sequence[float]) -> float:
    """Mean MACs per inference when a fraction exit_rates[i] of inputs leaves at exit i."""
    rates = check_exit_rates(g.n_exits, exit_rates)
    return float(sum(r * m for r, m in zip(rates, macs_per_exit(g))))


def total_params(g: CostGraph) -> int:
    return sum(layer.params for layer in g.layers)


def flash_bytes(g: CostGraph, bytes_per_param: int = 4, code_size_bytes: int = 0) -> int:
    """Weights at the deployed width plus the target's allowance for runtime and driver code (int8: plus what the
    integer kernels keep beside the int8 weights, `int8_constant_bytes`)."""
    extra = int8_constant_bytes(g) if bytes_per_param == 1 else 0
    return total_params(g) * bytes_per_param + extra + code_size_bytes


# What edgenas's integer kernels (edgenas.compile.int8_kernels) keep in flash beside one byte per parameter: per
# output channel of a conv / dense layer an int32 bias (3 bytes more than counted) and a float32 requantisation
# scale, weight rows padded to a multiple of 4 bytes (the SMLAD kernels read words; a depthwise k x k filter is
# stored as int16 tap pairs, k * ceil(k / 2) words: 24 bytes for 3 x 3); per add two float32 tables of
# 256 entries (the dequantised value of every int8 code). A windowed average pool's one table (1 KiB) is left out:
# the cost graph does not tell average from max pooling, and such pools are rare in MCU networks.
INT8_BYTES_PER_OUTPUT_CHANNEL = 4 + 3
INT8_TABLE_BYTES = 256 * 4


def int8_constant_bytes(g: CostGraph) -> int:
    total = 0
    for layer in g.layers:
        if layer.kind in ("conv", "dwconv", "linear") and layer.out_shape:
            c_out = layer.out_shape[0]
            row = (layer.params - c_out) // max(c_out, 1)  # weights per output channel (params less the bias)
            if layer.kind == "dwconv":  # k x k taps as int16 pairs per kernel row, k * ceil(k / 2) words
                k = layer.kernel if layer.kernel > 1 else conv_kernel_size(layer)
                padding = k * -(-k // 2) * 4 - row
            else:
                padding = (-row) % 4
            total += c_out * (INT8_BYTES_PER_OUTPUT_CHANNEL + padding)
        elif layer.kind == "add" and len(layer.inputs) == 2:
            total += 2 * INT8_TABLE_BYTES
    return total


# ------------------------------------------------------------------------------------------------- MCU allowances
# Model-dependent flash and RAM of the `tvm-static-c` runtime (edgenas.compile: TVM 0.27 kernels built by LLVM for
# thumbv7em + the generated static C driver), on top of the target's fixed `code_size_bytes` / `workspace_bytes`
# (startup, newlib, harness, heap and stack reserves: measured, see the target files' provenance).
# Fitted by least squares on the linker maps of 8 firmwares (the 3-exit test CNN and 7 mbv3 candidates, random
# weights, 16-32 px, 0.07-2.3 MMACs), cortex-m7, LLVM kernels, 2026-11; held out: 3 more mbv3 candidates, whose
# kernel+driver code is predicted within -0.8..+3.8% (whole image: within 1%). Kernel code is per distinct fused
# kernel of a stage (TVM emits one PrimFunc per distinct shape); the bias, activation and residual add are fused into
# the conv's kernel; the fitted figures include the driver's code and tensor descriptors (its flash part). The figures of the other kinds (linear, elementwise, pooling heads) came out 0 in the fit:
# their code is small and absorbed by the others. Not valid for the C codegen (gcc -O2: ~40% smaller kernels).
STATIC_C_RUNTIME = "tvm-static-c"
KERNEL_CODE_BYTES = {"conv1x1": 1269, "conv": 5320, "dwconv3": 1518, "dwconv5": 1054, "dwconv7": 3091, "gap": 1630}
# LLVM's kernel code for other cores relative to cortex-m7 (one mbv3 candidate: 61.2 KB vs 46.2 KB on cortex-m4)
KERNEL_CODE_SCALE = {"cortex-m7": 1.0, "cortex-m4": 1.32}
DRIVER_BYTES_PER_LAYER = 76  # static DLTensor + shape per tensor (.data: in RAM and, as its load image, in flash)


def conv_kernel_size(layer: Layer) -> int:
    """k of a k x k conv/dwconv layer, from its MACs per output (c_in * k * k, or k * k for depthwise)."""
    per_out = layer.macs / max(numel(layer.out_shape), 1)
    if layer.kind == "conv" and layer.in_shapes:
        per_out /= max(layer.in_shapes[0][0], 1)
    return max(1, round(math.sqrt(per_out)))


def _kernel_key(layer: Layer) -> str | None:
    if layer.kind == "conv":
        return "conv1x1" if conv_kernel_size(layer) == 1 else "conv"
    if layer.kind == "dwconv":
        k = conv_kernel_size(layer)
        return "dwconv3" if k <= 3 else "dwconv5" if k <= 5 else "dwconv7"
    return layer.kind if layer.kind in KERNEL_CODE_BYTES else None


def kernel_code_bytes(g: CostGraph) -> int:
    """Flash of the TVM kernels: one per distinct (kind, shapes) layer of each stage."""
    seen, total = set(), 0
    for layer in g.layers:
        key = _kernel_key(layer)
        sig = (key, layer.in_shapes, layer.out_shape, layer.params, layer.index)
        if key is None or sig in seen:
            continue
        seen.add(sig)
        total += KERNEL_CODE_BYTES[key]
    return total


def kernel_scratch_bytes(g: CostGraph, bytes_per_element: int = 4) -> int:
    """Largest kernel scratch (the workspace pool). fp32: the zero-padded copy of a k x k conv's input (k > 1,
    padding k // 2 on each side), which TVM's conv kernels build before convolving. int8 (`bytes_per_element` 1):
    the integer kernels' scratch that does not fit the 1 KiB stack allowance (TIR allocations below it are stack
    arrays): a depthwise conv's one padded int16 channel plane (one column wider), a conv's two int16 im2col columns."""
    if bytes_per_element == 1:
        return int8_scratch_bytes(g)
    out = 0
    for layer in g.layers:
        if layer.kind in ("conv", "dwconv") and layer.in_shapes and len(layer.in_shapes[0]) == 3:
            k = conv_kernel_size(layer)
            if k > 1:
                c, h, w = layer.in_shapes[0]
                out = max(out, c * (h + 2 * (k // 2)) * (w + 2 * (k // 2)) * bytes_per_element)
    return out


STACK_ALLOCA_BYTES = 1024  # TIR buffers below this size are stack arrays (edgenas.compile.lowering)


def int8_scratch_bytes(g: CostGraph) -> int:
    out = 0
    for layer in g.layers:
        if layer.kind not in ("conv", "dwconv") or not layer.in_shapes or len(layer.in_shapes[0]) != 3:
            continue
        c, h, w = layer.in_shapes[0]
        k = layer.kernel if layer.kernel > 1 else conv_kernel_size(layer)
        pad = 2 * (k // 2)
        if layer.kind == "dwconv":
            need = (h + pad) * (w + pad + 1) * 2
        else:
            need = 2 * 2 * -(-(c // max(layer.groups, 1)) * k * k // 4) * 4
        if need >= STACK_ALLOCA_BYTES:
            out = max(out, need)
    return out


def driver_bytes(g: CostGraph) -> int:
    return DRIVER_BYTES_PER_LAYER * len(g.layers)


def runtime_allowances(g: CostGraph, target, bytes_per_element: int = 4) -> tuple[int, int]:
    """(flash, RAM) the target's runtime needs for this graph beyond weights, activations and the target's fixed
    code_size_bytes / workspace_bytes. Zero for runtimes other than tvm-static-c (no model of theirs yet)."""
    if getattr(target, "runtime", None) != STATIC_C_RUNTIME:
        return 0, 0
    driver = driver_bytes(g)
    code = round(kernel_code_bytes(g) * KERNEL_CODE_SCALE.get(getattr(target, "cpu", ""), 1.0))
    return code, kernel_scratch_bytes(g, bytes_per_element) + driver  # the code fit includes the driver


# ------------------------------------------------------------------------------------------------- peak SRAM
def _storage_plan(g: CostGraph) -> tuple[dict[str, str], dict[str, int]]:
    """Map every tensor to the buffer holding it (in-place layers share their input's buffer) and give each
    buffer its last step of use (-1: the graph input, born before step 0)."""
    last_read: dict[str, int] = {}
    for t, layer in enumerate(g.layers):
        for name in layer.inputs:
            last_read[name] = t
    storage = {g.input_name: g.input_name}
    buffer_last: dict[str, int] = {g.input_name: last_read.get(g.input_name, -1)}
    for t, layer in enumerate(g.layers):
        src = storage[layer.inputs[0]] if layer.inputs else None
        reuse = False
        if layer.kind == "reshape" and len(layer.inputs) == 1:
            reuse = True  # a view: same bytes, nothing written
        elif layer.kind in _IN_PLACE_KINDS and len(layer.inputs) == 1 and \
                numel(layer.out_shape) == numel(layer.in_shapes[0]):
            reuse = buffer_last[src] <= t  # no later reader of the input buffer: overwrite it
        if reuse:
            storage[layer.output] = src
            buffer_last[src] = max(buffer_last[src], last_read.get(layer.output, t))
        else:
            storage[layer.output] = layer.output
            buffer_last[layer.output] = last_read.get(layer.output, t)
    return storage, buffer_last


def sram_timeline(g: CostGraph, bytes_per_element: int = 4) -> list[int]:
    """Live activation bytes at each layer step (inputs still needed + the output being written)."""
    storage, buffer_last = _storage_plan(g)
    born = {g.input_name: -1}
    size = {g.input_name: numel(g.input_shape) * bytes_per_element}
    for t, layer in enumerate(g.layers):
        buf = storage[layer.output]
        if buf == layer.output:
            born[buf] = t
            size[buf] = numel(layer.out_shape) * bytes_per_element
    timeline = []
    for t in range(len(g.layers)):
        timeline.append(sum(size[b] for b in born if born[b] <= t and (buffer_last[b] >= t or born[b] == t)))
    return timeline


def peak_sram_bytes(g: CostGraph, bytes_per_element: int = 4) -> int:
    """Peak activation memory of the sequential schedule g.layers.

    Convention: a tensor occupies its own buffer from the step that writes it to its last reader; the graph input
    counts until its last reader; a segment output stays live while its head runs, since the next segment reads it;
    a residual input stays live across its block. reshape layers alias their input; single-input elementwise layers
    (act, and add/mul with a constant) overwrite their input when nothing reads it later. The peak is the largest sum
    over steps, output being written included. Weights live in flash and are not counted; the runtime's stack and
    state are the target's `workspace_bytes`, added by `analyze`.
    """
    timeline = sram_timeline(g, bytes_per_element)
    return max([numel(g.input_shape) * bytes_per_element, *timeline])


# ------------------------------------------------------------------------------------------------- latency
@dataclass(frozen=True)
class LatencyPrediction:
    target: str
    clock_hz: float
    dtype: str
    layer_names: tuple[str, ...]
    layer_cycles: tuple[float, ...]
    layer_s: tuple[float, ...]      # aligned with CostGraph.layers
    per_exit_s: tuple[float, ...]   # worst case to leave at exit i (segments + heads 0..i + overheads)

    @property
    def worst_s(self) -> float:
        return self.per_exit_s[-1]


def latency_interval(seconds: float, interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """(low, high) seconds of a prediction under a model's interval ratios (None without an interval)."""
    return None if interval is None else (seconds * interval[0], seconds * interval[1])


def layer_bytes(layer: Layer, bytes_per_element: int) -> int:
    """Bytes a layer moves: activations read and written plus its weights, at the deployed width."""
    elements = sum(numel(s) for s in layer.in_shapes) + numel(layer.out_shape) + layer.params
    return elements * bytes_per_element


FEATURES = tuple(name for name, _ in LINEAR_FEATURES)      # what the per-kind family is linear in
SHAPE_FEATURE_NAMES = tuple(name for name, _ in SHAPE_FEATURES)
ALL_FEATURES = (*FEATURES, *SHAPE_FEATURE_NAMES)            # what layer_features returns, in this order
_FUSING_KINDS = ("conv", "dwconv")  # kernels that absorb a following activation / residual add
_IMAGE_CHANNELS = 4                 # a conv input with at most this many channels is an image (not channel-padded)


def _padded(shape, channel_block: int) -> int:
    """Elements of an activation (C, H, W) with C rounded up to the channel block (other ranks: as they are)."""
    if channel_block > 1 and len(shape) == 3:
        return -(-int(shape[0]) // channel_block) * channel_block * int(shape[1]) * int(shape[2])
    return numel(shape)


def _padded_macs(layer: Layer, channel_block: int) -> int:
    """MACs with channels rounded up to the block, as a runtime that pads them computes (onnxruntime's NCHWc
    convolutions: zero-padded filters). An image-like input (<= 4 channels, the stem) is not padded; thin inputs
    (e.g. 8 or 12 channels at block 16) are: held-out fits on onnxruntime 1.32 / AVX-512 were better so (96% vs
    93% of models within +-10% in 5-fold CV)."""
    if channel_block <= 1 or layer.kind not in ("conv", "dwconv") or not layer.in_shapes or not layer.macs:
        return layer.macs
    c_out = int(layer.out_shape[0])
    pad_out = -(-c_out // channel_block) * channel_block
    if layer.kind == "dwconv":
        return layer.macs * pad_out // c_out
    c_in = int(layer.in_shapes[0][0])
    pad_in = -(-c_in // channel_block) * channel_block if c_in > _IMAGE_CHANNELS else c_in
    return layer.macs * pad_in * pad_out // (c_in * c_out)


def _input_channels(layer: Layer) -> int:
    shape = layer.in_shapes[0] if layer.in_shapes else ()
    return int(shape[0]) if len(shape) == 3 else int(shape[-1]) if shape else 0


def _plane(shape) -> tuple[int, int]:
    return (int(shape[1]), int(shape[2])) if len(shape) == 3 else (1, 1)


def layer_features(layer: Layer, bytes_per_element: int, channel_block: int = 1) -> tuple[int, ...]:
    """What the latency model sees of a layer (in the order of ALL_FEATURES, edgenas.targets LINEAR_FEATURES then
    SHAPE_FEATURES): 1 call, MACs, activation bytes read, activation bytes written, weight bytes; then output
    channels, output rows (channels x height), and the MACs again where the reduction is thin (fewer than
    THIN_REDUCTION input channels per group), the stride is above 1, or the output plane is small (<= SMALL_PLANE
    pixels). With channel_block > 1 (a runtime that pads channels, LatencyModel.channel_block) MACs and activation
    bytes are counted on the padded channels."""
    macs = _padded_macs(layer, channel_block)
    out = layer.out_shape
    c_out = int(out[0]) if out else 1
    h, w = _plane(out)
    convolution = layer.kind in ("conv", "dwconv")
    per_group = _input_channels(layer) / max(layer.groups, 1) if layer.kind == "conv" else 1
    thin = macs if convolution and per_group < THIN_REDUCTION else 0
    strided = macs if layer.stride > 1 else 0
    small = macs if len(out) == 3 and h * w <= SMALL_PLANE else 0
    return (1, macs, sum(_padded(s, channel_block) for s in layer.in_shapes) * bytes_per_element,
            _padded(out, channel_block) * bytes_per_element, layer.params * bytes_per_element,
            c_out, c_out * h, thin, strided, small)


def tree_descriptor(layer: Layer, kind: str, kinds: Sequence[str], f: Sequence[float]) -> tuple[float, ...]:
    """The layer as the trees of a TreeCorrection see it (edgenas.targets.TREE_DESCRIPTORS); f: its layer_features."""
    h, w = _plane(layer.out_shape)
    c_out = int(layer.out_shape[0]) if layer.out_shape else 1
    return (float(kinds.index(kind)) if kind in kinds else -1.0, math.log2(1 + f[1]), float(_input_channels(layer)),
            float(c_out), float(h), float(w), float(layer.kernel), float(layer.stride), float(layer.groups),
            math.log2(1 + f[2]), math.log2(1 + f[3]), math.log2(1 + f[4]))


def fused_layers(g: CostGraph) -> set[str]:
    """Names of the activations and residual adds a runtime fuses into the kernel next to them (onnxruntime's
    Conv+activation and NCHWc Conv+Sum(+Relu) fusions, TVM's fused conv kernels): an activation whose input is a
    conv output (the conv's only reader, no activation fused yet), an add whose input is such a conv output with
    neither an activation nor an add fused yet; and the sigmoid of a SiLU, x * sigmoid(x), which onnxruntime
    computes in the product's kernel (its QuickGelu fusion)."""
    readers: dict[str, list[Layer]] = {}
    for layer in g.layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer)
    kernel: dict[str, tuple[bool, bool]] = {}  # conv output tensor -> (activation fused, add fused)
    fused = set()
    for layer in g.layers:
        if layer.kind in _FUSING_KINDS:
            kernel[layer.output] = (False, False)
        elif layer.kind == "act" and len(layer.inputs) == 1 and _gates_its_input(layer, readers):
            fused.add(layer.name)
        elif layer.kind in ("act", "add"):
            for t in layer.inputs:
                state = kernel.get(t)
                if state is None or len(readers.get(t, ())) != 1 or state[0]:
                    continue
                if layer.kind == "act" and len(layer.inputs) == 1:
                    fused.add(layer.name)
                    kernel[layer.output] = (True, state[1])
                    break
                if layer.kind == "add" and len(layer.inputs) == 2 and not state[1]:
                    fused.add(layer.name)
                    kernel[layer.output] = (False, True)
                    break
    return fused


def _gates_its_input(act: Layer, readers: dict[str, list[Layer]]) -> bool:
    """act's only reader multiplies it with act's own input (x * f(x): SiLU / swish)."""
    out_readers = readers.get(act.output, [])
    return len(out_readers) == 1 and out_readers[0].kind == "mul" and \
        sorted(out_readers[0].inputs) == sorted((act.inputs[0], act.output))


def latency_kind(layer: Layer, channel_block: int = 1, fused: bool = False) -> str:
    """The latency model's kind of a layer (edgenas.targets.LATENCY_KINDS): the layer kind refined where runtimes
    behave differently; a kind without coefficients of its own falls back to the layer kind (KIND_FALLBACK)."""
    if layer.kind == "conv" and layer.in_shapes and len(layer.in_shapes[0]) == 3:
        if layer.groups > 1:
            return "gconv"
        if layer.in_shapes[0][0] < channel_block:
            return "conv_narrow"
        return "conv1x1" if conv_kernel_size(layer) == 1 else "conv"
    if layer.kind == "dwconv" and layer.in_shapes:
        k = conv_kernel_size(layer)
        return "dwconv3" if k <= 3 else "dwconv5" if k <= 5 else "dwconv7"
    if fused and layer.kind in ("act", "add"):
        return f"{layer.kind}_fused"
    if layer.kind == "concat" and len(layer.inputs) == 1:
        return "copy"
    return layer.kind


def latency_kinds(g: CostGraph, channel_block: int = 1) -> list[str]:
    """latency_kind of every layer of g (aligned with g.layers)."""
    fused = fused_layers(g)
    return [latency_kind(layer, channel_block, layer.name in fused) for layer in g.layers]


def layer_cycles(layer: Layer, model, kind: str | None = None) -> float:
    """cycles = sum over ALL_FEATURES of the kind's coefficient times the feature (KindCost.coefficients: fixed +
    per MAC + per byte read / written / of weights + the shape terms), plus the learned correction of a
    "boosted-trees" model; never below 0. A "macs-only" model counts plain MACs with its default coefficients; a
    model of a runtime that folds constants (folds_zero_ops) charges nothing for a folded layer.
    `kind` from latency_kinds (default: the layer's own kind refined without the graph's fusion context)."""
    if layer.folded and getattr(model, "folds_zero_ops", False):
        return 0.0
    block = getattr(model, "channel_block", 1)
    kind = kind or latency_kind(layer, block)
    bpe = BYTES_PER_ELEMENT[model.dtype]
    features = layer_features(layer, bpe, block)
    cycles = sum(c * f for c, f in zip(model.for_kind(kind).coefficients(), features))
    trees = getattr(model, "trees", None)
    if trees is not None:
        cycles += trees.cycles(tree_descriptor(layer, kind, trees.kinds, features))
    return max(cycles, 0.0)


def latency_model_for(target, dtype: str | None = None):
    """The latency model that predicts `dtype` on `target`: the target's model of that dtype (Target.latency_for),
    else its [latency] model, whose `dtype` then says what was used (an int8 prediction of a target without an
    int8 model is an fp32 prediction: LatencyPrediction.dtype / CostReport.latency_dtype say so). None: [latency]."""
    if dtype is None:
        return target.latency
    if dtype not in BYTES_PER_ELEMENT:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use one of {', '.join(BYTES_PER_ELEMENT)}")
    latency_for = getattr(target, "latency_for", None)
    own = latency_for(dtype) if latency_for is not None else None
    return own if own is not None else target.latency


def latency_fallback_note(requested: str, used: str) -> str:
    """The line to show when a prediction of `requested` dtype used the `used` dtype's model ("" when they agree)."""
    if requested == used:
        return ""
    short = {"float32": "fp32"}
    return f"{requested} latency not calibrated for this target; {short.get(used, used)} model used"


def predict_latency(g: CostGraph, target, dtype: str | None = None) -> LatencyPrediction:
    """Predicted seconds per layer and per exit. dtype: the arithmetic deployed ("float32" or "int8"); its own
    latency model when the target has one, else the [latency] model (latency_model_for; the prediction's `dtype`
    is the model's). None: the [latency] model."""
    model = latency_model_for(target, dtype)
    kinds = latency_kinds(g, getattr(model, "channel_block", 1))
    cycles = [layer_cycles(layer, model, kind) for layer, kind in zip(g.layers, kinds)]
    cumulative = _per_exit(g, cycles)
    per_exit = tuple((c + model.per_inference_cycles + (i + 1) * model.per_exit_cycles) / target.clock_hz
                     for i, c in enumerate(cumulative))
    return LatencyPrediction(target=target.name, clock_hz=target.clock_hz, dtype=model.dtype,
                             layer_names=tuple(layer.name for layer in g.layers), layer_cycles=tuple(cycles),
                             layer_s=tuple(c / target.clock_hz for c in cycles), per_exit_s=per_exit)


def expected_latency_s(pred: LatencyPrediction, exit_rates: Sequence[float]) -> float:
    """Mean predicted latency when a fraction exit_rates[i] of inputs leaves at exit i."""
    rates = check_exit_rates(len(pred.per_exit_s), exit_rates)
    return float(sum(r * s for r, s in zip(rates, pred.per_exit_s)))


def layer_table(g: CostGraph, target, dtype: str | None = None) -> list[dict]:
    """One JSON-ready row per layer (what `edgenas analyze` prints): where it runs, its size and predicted time, by
    the latency model of `dtype` (latency_model_for; bytes at that model's dtype)."""
    model = latency_model_for(target, dtype)
    pred = predict_latency(g, target, dtype)
    width = BYTES_PER_ELEMENT[model.dtype]
    live = sram_timeline(g, width)
    kinds = latency_kinds(g, model.channel_block)
    rows = []
    for layer, cycles, seconds, live_bytes, lkind in zip(g.layers, pred.layer_cycles, pred.layer_s, live, kinds):
        _, _, b_in, b_out, b_w = layer_features(layer, width)[:len(FEATURES)]
        rows.append(dict(name=layer.name, kind=layer.kind, latency_kind=lkind, part=layer.part, index=layer.index,
                         in_shapes=[list(s) for s in layer.in_shapes], out_shape=list(layer.out_shape),
                         macs=layer.macs, params=layer.params, input_bytes=b_in, output_bytes=b_out, weight_bytes=b_w,
                         bytes_moved=layer_bytes(layer, width), live_sram_bytes=live_bytes, cycles=cycles,
                         latency_s=seconds))
    return rows


# ------------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class CostReport:
    target: str
    dtype: str                       # arithmetic of `peak_sram_bytes`, `flash_bytes` and the latency figures
    n_exits: int
    macs_per_exit: tuple[int, ...]
    params: int
    activation_sram_bytes: int       # peak activations at `dtype`
    peak_sram_bytes: int             # activations + kernel scratch + driver state + target.workspace_bytes
    peak_sram_bytes_int8: int
    flash_bytes: int                 # weights at `dtype` + kernel/driver code + target.code_size_bytes
    flash_bytes_fp32: int
    flash_bytes_int8: int
    latency_per_exit_s: tuple[float, ...]
    latency_interval: tuple[float, float] | None = None  # the latency model's 90 % interval, ratios (None: none)
    latency_dtype: str = "float32"   # the dtype of the latency model used: `dtype` unless the target has no model of
    #                                  it (int8 without [latency_int8]: the fp32 model predicted; latency_note says so)

    @property
    def latency_note(self) -> str:
        """"" when the latency figures are of `dtype`, else the line saying which model they come from."""
        return latency_fallback_note(self.dtype, self.latency_dtype)

    @property
    def macs_worst(self) -> int:
        return self.macs_per_exit[-1]

    @property
    def latency_worst_s(self) -> float:
        return self.latency_per_exit_s[-1]

    def to_dict(self) -> dict:
        """JSON-ready figures (tuples become lists)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out.update(macs_worst=self.macs_worst, latency_worst_s=self.latency_worst_s,
                   latency_note=self.latency_note or None,
                   latency_interval_per_exit_s=None if self.latency_interval is None else
                   [list(latency_interval(s, self.latency_interval)) for s in self.latency_per_exit_s])
        return out


def analyze(g: CostGraph, target, dtype: str = "float32") -> CostReport:
    """Every cost figure at `dtype`; latency by the target's model of `dtype`, or its fp32 model marked as such
    (CostReport.latency_dtype / latency_note) when it has none."""
    if dtype not in BYTES_PER_ELEMENT:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use one of {', '.join(BYTES_PER_ELEMENT)}")
    width = BYTES_PER_ELEMENT[dtype]
    act = peak_sram_bytes(g, width)
    # runtime code, kernel scratch and driver state (tvm-static-c); the int8 figures assume the same kernel code
    code, ram = runtime_allowances(g, target, width)
    code8, ram8 = runtime_allowances(g, target, 1)
    code32, _ = runtime_allowances(g, target, 4)
    model = latency_model_for(target, dtype)
    pred = predict_latency(g, target, dtype)
    return CostReport(
        target=target.name, dtype=dtype, n_exits=g.n_exits, macs_per_exit=tuple(macs_per_exit(g)),
        params=total_params(g), activation_sram_bytes=act,
        peak_sram_bytes=act + ram + target.workspace_bytes,
        peak_sram_bytes_int8=peak_sram_bytes(g, 1) + ram8 + target.workspace_bytes,
        flash_bytes=flash_bytes(g, width, target.code_size_bytes + code),
        flash_bytes_fp32=flash_bytes(g, 4, target.code_size_bytes + code32),
        flash_bytes_int8=flash_bytes(g, 1, target.code_size_bytes + code8),
        latency_per_exit_s=pred.per_exit_s, latency_interval=getattr(model, "interval", None),
        latency_dtype=pred.dtype)


def near_edge(value: float, limit: float | None, interval: tuple[float, float] | None) -> bool:
    """Whether a latency budget lies inside a prediction's interval (ratios): the verdict may be wrong."""
    return limit_inside(latency_interval(value, interval), limit)


def limit_inside(interval_s: Sequence[float] | None, limit: float | None) -> bool:
    """Whether a budget lies inside an interval of seconds (False when either is missing)."""
    return limit is not None and bool(interval_s) and interval_s[0] <= limit <= interval_s[1]


def violations(report: CostReport, budgets, exit_rates: Sequence[float] | None = None,
               accuracy: float | None = None) -> dict[str, tuple[float, float, float]]:
    """Budgets exceeded: name -> (value, limit, relative excess (value - limit) / limit).

    Latency and MACs are checked as expected values when exit_rates are given, else at the worst case (final exit).
    Accuracy is checked only when `accuracy` is given (it is not a cost-model figure).
    """
    if exit_rates is not None:
        rates = check_exit_rates(report.n_exits, exit_rates)
        latency = sum(r * s for r, s in zip(rates, report.latency_per_exit_s))
        macs = sum(r * m for r, m in zip(rates, report.macs_per_exit))
    else:
        latency, macs = report.latency_worst_s, float(report.macs_worst)
    checks = {"latency_s": (latency, budgets.latency_s), "sram_bytes": (report.peak_sram_bytes, budgets.sram_bytes),
              "flash_bytes": (report.flash_bytes, budgets.flash_bytes), "macs": (macs, budgets.macs)}
    out = {}
    for name, (value, limit) in checks.items():
        if limit is not None and value > limit:
            out[name] = (float(value), float(limit), (float(value) - float(limit)) / float(limit))
    if accuracy is not None and budgets.min_accuracy is not None and accuracy < budgets.min_accuracy:
        out["min_accuracy"] = (float(accuracy), float(budgets.min_accuracy),
                               (budgets.min_accuracy - accuracy) / budgets.min_accuracy)
    return out
