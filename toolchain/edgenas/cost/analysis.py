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
    """Weights at the deployed width plus the target's allowance for runtime and driver code."""
    return total_params(g) * bytes_per_param + code_size_bytes


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


def layer_bytes(layer: Layer, bytes_per_element: int) -> int:
    """Bytes a layer moves: activations read and written plus its weights, at the deployed width."""
    elements = sum(numel(s) for s in layer.in_shapes) + numel(layer.out_shape) + layer.params
    return elements * bytes_per_element


def layer_cycles(layer: Layer, model) -> float:
    """cycles = fixed + cycles_per_mac * MACs + cycles_per_byte * bytes moved (coefficients per layer kind)."""
    c = model.for_kind(layer.kind)
    return c.fixed_cycles + c.cycles_per_mac * layer.macs + \
        c.cycles_per_byte * layer_bytes(layer, BYTES_PER_ELEMENT[model.dtype])


def predict_latency(g: CostGraph, target) -> LatencyPrediction:
    model = target.latency
    cycles = [layer_cycles(layer, model) for layer in g.layers]
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


def layer_table(g: CostGraph, target) -> list[dict]:
    """One JSON-ready row per layer (what `edgenas analyze` prints): where it runs, its size and predicted time."""
    pred = predict_latency(g, target)
    width = BYTES_PER_ELEMENT[target.latency.dtype]
    return [dict(name=layer.name, kind=layer.kind, part=layer.part, index=layer.index, out_shape=list(layer.out_shape),
                 macs=layer.macs, params=layer.params, bytes_moved=layer_bytes(layer, width), cycles=cycles,
                 latency_s=seconds)
            for layer, cycles, seconds in zip(g.layers, pred.layer_cycles, pred.layer_s)]


# ------------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class CostReport:
    target: str
    dtype: str                       # arithmetic of `peak_sram_bytes`, `flash_bytes` and the latency figures
    n_exits: int
    macs_per_exit: tuple[int, ...]
    params: int
    activation_sram_bytes: int       # peak activations at `dtype`
    peak_sram_bytes: int             # activations + target.workspace_bytes (what must fit in SRAM)
    peak_sram_bytes_int8: int
    flash_bytes: int                 # weights at `dtype` + target.code_size_bytes
    flash_bytes_fp32: int
    flash_bytes_int8: int
    latency_per_exit_s: tuple[float, ...]

    @property
    def macs_worst(self) -> int:
        return self.macs_per_exit[-1]

    @property
    def latency_worst_s(self) -> float:
        return self.latency_per_exit_s[-1]

    def to_dict(self) -> dict:
        """JSON-ready figures (tuples become lists)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out.update(macs_worst=self.macs_worst, latency_worst_s=self.latency_worst_s)
        return out


def analyze(g: CostGraph, target, dtype: str = "float32") -> CostReport:
    if dtype not in BYTES_PER_ELEMENT:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use one of {', '.join(BYTES_PER_ELEMENT)}")
    width = BYTES_PER_ELEMENT[dtype]
    act = peak_sram_bytes(g, width)
    return CostReport(
        target=target.name, dtype=dtype, n_exits=g.n_exits, macs_per_exit=tuple(macs_per_exit(g)),
        params=total_params(g), activation_sram_bytes=act,
        peak_sram_bytes=act + target.workspace_bytes,
        peak_sram_bytes_int8=peak_sram_bytes(g, 1) + target.workspace_bytes,
        flash_bytes=flash_bytes(g, width, target.code_size_bytes),
        flash_bytes_fp32=flash_bytes(g, 4, target.code_size_bytes),
        flash_bytes_int8=flash_bytes(g, 1, target.code_size_bytes),
        latency_per_exit_s=predict_latency(g, target).per_exit_s)


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
