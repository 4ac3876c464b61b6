"""What a target is: the frozen dataclasses a target file validates into, and the operator kinds the latency model
(and the cost model's layers, edgenas.cost.graph) is keyed by."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

TARGET_KINDS = ("mcu", "cortex-a", "host")
LATENCY_DTYPES = ("float32", "int8")
# The target-file table of each dtype's latency model: `[latency]` is the float32 model every target has (a target
# may also declare its one model int8 there); `[latency_int8]` (same keys, `dtype` optional) the int8 model, optional.
LATENCY_SECTIONS = {"float32": "latency", "int8": "latency_int8"}
# Operator kinds of the cost model (edgenas.cost.Layer.kind) plus the fallback entry "default".
OPERATOR_KINDS = ("conv", "dwconv", "linear", "pool", "gap", "add", "mul", "act", "reshape", "concat", "other")
# Finer kinds the latency model may cost separately (edgenas.cost.analysis.latency_kinds), each with the kind whose
# coefficients it falls back to: pointwise vs k x k convs, convs whose input has fewer channels than the model's
# `channel_block` (the stem; on onnxruntime's NCHWc path they read plain NCHW input), depthwise convs by kernel size
# (<= 3, <= 5, larger), grouped convs, activations / residual adds fused into the kernel before them (or, for a
# sigmoid gating its own input, SiLU, into the product after it), and single-input copies (transpose, slice, split).
KIND_FALLBACK = {"conv1x1": "conv", "conv_narrow": "conv", "gconv": "conv", "dwconv3": "dwconv", "dwconv5": "dwconv",
                 "dwconv7": "dwconv", "act_fused": "act", "add_fused": "add", "copy": "concat"}
LATENCY_KINDS = (*OPERATOR_KINDS, *KIND_FALLBACK)

# The layer features a latency model is linear in (edgenas.cost.analysis.layer_features computes them), each with
# the KindCost coefficient (cycles per unit) that multiplies it. LINEAR_FEATURES are what every per-kind model uses;
# SHAPE_FEATURES are the shape interactions of the "per-kind-shape" family: costs per output channel and per output
# row (loop and packing overheads), and extra costs per MAC of convs whose reduction is thin (fewer than
# THIN_REDUCTION input channels per group: depthwise, grouped, the stem), of strided convs, and of layers whose
# output plane is small (at most SMALL_PLANE pixels: vector lanes run empty).
LINEAR_FEATURES = (("calls", "fixed_cycles"), ("macs", "cycles_per_mac"), ("input_bytes", "cycles_per_input_byte"),
                   ("output_bytes", "cycles_per_output_byte"), ("weight_bytes", "cycles_per_weight_byte"))
SHAPE_FEATURES = (("out_channels", "cycles_per_out_channel"), ("out_rows", "cycles_per_out_row"),
                  ("thin_macs", "cycles_per_thin_mac"), ("strided_macs", "cycles_per_strided_mac"),
                  ("small_plane_macs", "cycles_per_small_plane_mac"))
THIN_REDUCTION = 8
SMALL_PLANE = 16
# How a latency model predicts (edgenas calibrate picks one by cross-validation): a + b * MACs for the whole network;
# per latency kind, linear in LINEAR_FEATURES; the same plus SHAPE_FEATURES; and the last with a learned correction
# per layer (gradient-boosted regression trees over the layer's shape, TreeCorrection).
LATENCY_FAMILIES = ("macs-only", "per-kind", "per-kind-shape", "boosted-trees")
# Engines a latency model can be calibrated for (`edgenas profile --runtime`, `calibrate --runtime`), with the name
# each goes by in profiles and runtime texts
ENGINE_NAMES = {"ort": "onnxruntime", "tvm": "tvm"}
LATENCY_RUNTIMES = tuple(ENGINE_NAMES)
_ENGINE_WORDS = {"ort": re.compile(r"onnxruntime|\bort\b", re.IGNORECASE), "tvm": re.compile("tvm", re.IGNORECASE)}


def engine_of(runtime_text: str) -> str:
    """The LATENCY_RUNTIMES engine a runtime text names: a target's `runtime` ("tvm-relax-vm") or a profile's
    ("onnxruntime 1.32 CPU"); "" when it names neither or both."""
    found = [engine for engine, words in _ENGINE_WORDS.items() if words.search(runtime_text)]
    return found[0] if len(found) == 1 else ""


def engine_mismatch(target) -> str:
    """A one-line warning when the target's latency model was calibrated for another engine than it deploys with
    ("" when they agree or either is unknown)."""
    deployed, measured = engine_of(target.runtime), target.latency.runtime
    if deployed and measured and deployed != measured:
        return (f"the latency model of '{target.name}' was calibrated on {measured}, but the target deploys with "
                f"{target.runtime}: predictions rank networks for {measured}")
    return ""
# What a tree of a TreeCorrection splits on, per layer: the index of its latency kind in TreeCorrection.kinds, log2
# of its MACs and byte counts (+1), and its shape
TREE_DESCRIPTORS = ("kind", "log2_macs", "c_in", "c_out", "h_out", "w_out", "kernel", "stride", "groups",
                    "log2_input_bytes", "log2_output_bytes", "log2_weight_bytes")

# KindCost fields a file may leave out (0), and the Provenance fields, as written in target files
SPLIT_BYTE_KEYS = ("cycles_per_input_byte", "cycles_per_output_byte", "cycles_per_weight_byte")
OPTIONAL_COEFFICIENTS = (*SPLIT_BYTE_KEYS, *(key for _, key in SHAPE_FEATURES))
PROVENANCE_FIELDS = ("source", "measured_on", "runtime", "date", "notes")


# --------------------------------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class KindCost:
    """Latency coefficients of one operator kind (all non-negative):

        cycles = fixed + per_mac * MACs + per_byte * (in + out + weight bytes)
                 + per_input_byte * in + per_output_byte * out + per_weight_byte * weight bytes

    Bytes are at the deployed dtype. Seed targets use one shared `cycles_per_byte`; `edgenas calibrate` fits the
    three separate byte coefficients (and writes cycles_per_byte = 0). Keys absent from a file are 0.
    """
    fixed_cycles: float
    cycles_per_mac: float
    cycles_per_byte: float  # bytes moved: input + output activations + weights at the deployed dtype
    cycles_per_input_byte: float = 0.0
    cycles_per_output_byte: float = 0.0
    cycles_per_weight_byte: float = 0.0
    cycles_per_out_channel: float = 0.0      # SHAPE_FEATURES (family per-kind-shape)
    cycles_per_out_row: float = 0.0
    cycles_per_thin_mac: float = 0.0
    cycles_per_strided_mac: float = 0.0
    cycles_per_small_plane_mac: float = 0.0

    def coefficients(self) -> tuple[float, ...]:
        """Cycles per unit of each of LINEAR_FEATURES + SHAPE_FEATURES (the shared cycles_per_byte folded into the
        three byte coefficients)."""
        shared = self.cycles_per_byte
        linear = [getattr(self, key) + (shared if key in SPLIT_BYTE_KEYS else 0.0) for _, key in LINEAR_FEATURES]
        return (*linear, *(getattr(self, key) for _, key in SHAPE_FEATURES))


@dataclass(frozen=True)
class RegressionTree:
    """One binary regression tree as arrays (node i: split on descriptor `feature[i]` at `threshold[i]`, going to
    `left[i]` when the value is <= the threshold, else `right[i]`; a leaf has left[i] == -1 and gives value[i]
    cycles). Data, not code: evaluated by edgenas.cost.analysis, never unpickled."""
    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    def evaluate(self, descriptor) -> float:
        node = 0
        while self.left[node] != -1:
            node = self.left[node] if descriptor[self.feature[node]] <= self.threshold[node] else self.right[node]
        return self.value[node]


@dataclass(frozen=True)
class TreeCorrection:
    """The learned part of the "boosted-trees" family: cycles added to each layer's per-kind-shape cost, the sum of
    the trees evaluated on the layer's TREE_DESCRIPTORS (kind as its index in `kinds`, -1 for a kind not seen)."""
    kinds: tuple[str, ...]
    trees: tuple[RegressionTree, ...]

    def cycles(self, descriptor) -> float:
        return sum(tree.evaluate(descriptor) for tree in self.trees)


@dataclass(frozen=True)
class LatencyModel:
    kinds: Mapping[str, KindCost]  # always holds "default"; read through `for_kind`
    per_inference_cycles: float    # driver entry/exit, input copy
    per_exit_cycles: float         # evaluating one exit decision (sigmoid, survival product, compare)
    dtype: str                     # "float32" or "int8": the arithmetic the coefficients were measured for
    channel_block: int = 1         # the runtime pads channels to a multiple of this (onnxruntime NCHWc: 8 or 16)
    family: str = "per-kind"       # LATENCY_FAMILIES: how layer costs are computed
    runtime: str = ""              # LATENCY_RUNTIMES: the engine the coefficients were measured on ("" unknown)
    trees: TreeCorrection | None = None            # family "boosted-trees" only
    interval: tuple[float, float] | None = None    # 90 % prediction interval as ratios of the prediction
    selection: Mapping[str, Any] | None = None     # how `calibrate` chose the family (CV figures per family)
    folds_zero_ops: bool = False   # the runtime folds constant operands away: Layer.folded layers cost nothing

    def for_kind(self, kind: str) -> KindCost:
        """The one place coefficients are looked up: the kind's own entry, else the kind it refines
        (KIND_FALLBACK, e.g. conv1x1 -> conv), else "default". A macs-only model has only its default."""
        if self.family == "macs-only":
            return self.kinds["default"]
        while kind is not None:
            if kind in self.kinds:
                return self.kinds[kind]
            kind = KIND_FALLBACK.get(kind)
        return self.kinds["default"]


@dataclass(frozen=True)
class Provenance:
    source: str = ""
    measured_on: str = ""
    runtime: str = ""
    date: str = ""
    notes: str = ""


@dataclass(frozen=True)
class Budgets:
    latency_s: float | None = None
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    macs: int | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str                        # "mcu", "cortex-a" or "host"
    cpu: str
    clock_hz: float
    sram_bytes: int                  # on-chip SRAM (MCU) or the RAM granted to the model (Cortex-A, host)
    flash_bytes: int | None          # None: no flash limit (Cortex-A, host)
    tvm_target: Mapping[str, Any]    # LLVM target dict for tvm.target.Target
    runtime: str
    code_size_bytes: int             # flash allowance for runtime + driver code
    workspace_bytes: int             # RAM allowance for stack + runtime state
    qemu_machine: str | None
    cpi: float | None                # cycles per emulated instruction: instruction counts -> an *estimated* latency
    budgets: Budgets
    latency: LatencyModel
    provenance: tuple[Provenance, ...] = ()
    source_path: str = ""
    latency_int8: LatencyModel | None = None   # the [latency_int8] table: int8 kernels' model (None: not calibrated)

    def latency_for(self, dtype: str) -> LatencyModel | None:
        """The latency model measured for `dtype` ("float32" or "int8"), None when the target has none: an int8
        prediction must not silently use fp32 coefficients (`edgenas.cost.predict_latency` marks that fallback)."""
        if dtype not in LATENCY_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(LATENCY_DTYPES)}")
        for model in (self.latency, self.latency_int8):
            if model is not None and model.dtype == dtype:
                return model
        return None
