"""What a target is: the frozen dataclasses a target file validates into, and the operator kinds the latency model
(and the cost model's layers, edgenas.cost.graph) is keyed by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

TARGET_KINDS = ("mcu", "cortex-a", "host")
LATENCY_DTYPES = ("float32", "int8")
# Operator kinds of the cost model (edgenas.cost.Layer.kind) plus the fallback entry "default".
OPERATOR_KINDS = ("conv", "dwconv", "linear", "pool", "gap", "add", "mul", "act", "reshape", "concat", "other")
# Finer kinds the latency model may cost separately (edgenas.cost.analysis.latency_kinds), each with the kind whose
# coefficients it falls back to: pointwise vs k x k convs, convs whose input has fewer channels than the model's
# `channel_block` (the stem; on onnxruntime's NCHWc path they read plain NCHW input), depthwise convs by kernel size
# (<= 3, <= 5, larger), and activations / residual adds fused into the conv kernel before them.
KIND_FALLBACK = {"conv1x1": "conv", "conv_narrow": "conv", "dwconv3": "dwconv", "dwconv5": "dwconv",
                 "dwconv7": "dwconv", "act_fused": "act", "add_fused": "add"}
LATENCY_KINDS = (*OPERATOR_KINDS, *KIND_FALLBACK)

# KindCost fields a file may leave out (0), and the Provenance fields, as written in target files
SPLIT_BYTE_KEYS = ("cycles_per_input_byte", "cycles_per_output_byte", "cycles_per_weight_byte")
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


@dataclass(frozen=True)
class LatencyModel:
    kinds: Mapping[str, KindCost]  # always holds "default"; read through `for_kind`
    per_inference_cycles: float    # driver entry/exit, input copy
    per_exit_cycles: float         # evaluating one exit decision (sigmoid, survival product, compare)
    dtype: str                     # "float32" or "int8": the arithmetic the coefficients were measured for
    channel_block: int = 1         # the runtime pads channels to a multiple of this (onnxruntime NCHWc: 8 or 16)

    def for_kind(self, kind: str) -> KindCost:
        """The one place coefficients are looked up: the kind's own entry, else the kind it refines
        (KIND_FALLBACK, e.g. conv1x1 -> conv), else "default"."""
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
