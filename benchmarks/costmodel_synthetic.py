"""Latency-model selection on synthetic noisy, non-additive devices (-> benchmarks/results/costmodel_synthetic.json).

    python benchmarks/costmodel_synthetic.py            # ~3 min on 2 cores (export ~2 min, then calibrations)
    python benchmarks/costmodel_synthetic.py --quick    # smoke run, < 60 s
    python benchmarks/costmodel_synthetic.py --models-dir /tmp/cm-models   # keep the exported models for re-runs

Why: real runtimes are not a sum of per-layer costs (issue 14: TFLite on a Raspberry Pi 4 ranked NAS-Bench-201 nets
worse than counting MACs after per-kind calibration). A synthetic device whose rules are known and documented lets
the benchmark check that `edgenas calibrate` picks a model family that does not rank worse than MACs-only, on
held-out models of the own search spaces and on families it never saw, without a board.

The synthetic device (SyntheticDevice.latency_s) computes a latency from a model's CostGraph (cost.from_onnx) and
the ONNX node behind each layer (op type, kernel, stride, groups, constant operands):

- kernel calls: every layer that runs is one call and pays `call_s` (dispatch / kernel launch), plus `inference_s`
  per inference;
- fusion: an activation, and a residual add (then an activation), that follow a conv/dwconv/linear whose output has
  no other reader run inside that kernel: free. With `fuse_elementwise_chains` (the GPU-like device) an elementwise
  op (act, add, mul) whose input comes from such an op with no other reader joins its kernel too (SiLU's
  Sigmoid + Mul is one kernel);
- folding: reshapes are views (free); a concat whose inputs are all written by kernels with no other reader is
  written in place (free); constant folding: a Mul by a constant zero is a compile-time zero, so it and the layers
  that only feed it are free, and an Add/Sub of a zero is an alias (free);
- shape-dependent kernel efficiency: conv MACs are counted on channels padded to the vector width (per group; an
  image input with <= 4 channels is not padded but runs at `narrow_eff`); depthwise and grouped convs run at
  `depthwise_eff` / `grouped_eff`, 1x1 at `pointwise_eff`, kernels >= 5 at `large_kernel_eff`, stride 2 at
  `stride2_eff`, linear layers at `linear_eff`; a kernel with P output pixels reaches P / (P + spatial_half) of its
  efficiency (tiny spatial sizes are dominated by tiling / occupancy overhead); compute and memory time overlap
  (roofline: max) or add (in-order MCU); transcendental activations (Sigmoid, Tanh, Softmax, SiLU's Sigmoid) cost
  `transcendental_s` per element, others `cheap_s`;
- cache: when the working set (peak activations + weights, fp32) exceeds `cache_bytes`, the whole model slows by
  1 + cache_penalty * log2(working set / cache_bytes) (at most 3 doublings);
- noise: every measurement is the true latency times exp(noise * z), z ~ N(0, 1) from a seeded generator
  (lognormal, median-preserving): noise 0.05 / 0.10 / 0.15 for the three personalities below.

Protocol per device personality (DEVICES: an MCU-like core, a SIMD CPU, a GPU-like accelerator):
1. models: own-space random architectures (mbv3 backbones, nb201 networks: costmodel_host.build_models), random-block
   networks (foreign_models.random_block_specs, with dead branches) and the foreign families
   (foreign_models.foreign_specs: torchvision at the given resolutions, MLPerf Tiny);
2. calibration set: `--calib-own` own-space models + all random-block models; `--repeats` noisy measurements each,
   written to a CSV `model,latency_ms,threads` (one row per measurement) and fitted through `edgenas.api.calibrate`
   exactly as a user would; the override TOML is loaded with load_target and every held-out model predicted with
   cost.predict_latency;
3. held out: (a) the other own-space models, (b) the foreign families (never in a calibration set); scored against
   a fresh noisy measurement (what a user sees) and against the noise-free truth, per set and per family: within
   +-10 %, Kendall tau, and the same for a MACs-only baseline (a + b * MACs fitted on the calibration set);
4. the goal line: the family the selection picks is never below MACs-only in held-out Kendall tau
   (`goal_selection_not_below_macs_only`; MACs-only's tau is the ranking by MACs), judged per device on the sets
   own / foreign / all held out; per model family the same figures are reported, and the families (3-4 models
   each) where the selection ranks below MACs-only are listed (`families_below_macs_only`);
5. per family: every family fitted on the same calibration CSV at the channel block the selection chose and scored
   the same way (`per_family_unguarded`: what the family predicts when it is written whatever its CV says;
   `best_family_by_held_out_tau` tells whether the selection missed a better one), and `calibrate(families=[f])`
   per family as a user forces one (`forced_families_api`; it writes MACs-only instead of f when f is worse on CV).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgenas.fileio import json_finite

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import foreign_models  # noqa: E402  (a sibling script, not a package)

TRANSCENDENTAL_OPS = {"Sigmoid", "Tanh", "Softmax", "Exp", "Erf", "Gelu", "Elu", "Selu", "Softplus", "Mish", "Log",
                      "LogSoftmax"}
GOAL_SETS = ("own", "foreign", "all_held_out")
# accuracy() figures kept per group (against the noisy re-measurement; against the truth: within_10pct, tau only)
SCORE_KEYS = ("n", "within_5pct", "within_10pct", "kendall_tau", "median_abs_rel_error", "ratio_low", "ratio_high")  # the held-out sets the goal line is judged on
KERNEL_KINDS = ("conv", "dwconv", "linear")   # layers that absorb a following activation / add
ELEMENTWISE_KINDS = ("act", "add", "mul")
BYTES = 4                                     # fp32


@dataclass(frozen=True)
class SyntheticDevice:
    """A documented synthetic latency: see the module docstring for the rules; every field is one knob."""
    name: str
    base_target: str            # the edgenas target calibrated (its clock only scales the written coefficients)
    description: str
    macs_per_s: float           # dense k x k conv at full efficiency
    bytes_per_s: float          # activation and weight traffic
    call_s: float               # per kernel call
    inference_s: float          # per inference
    vector: int                 # channels are padded to a multiple of this
    roofline: bool              # compute and memory overlap (max) or add (sum)
    spatial_half: float         # output pixels at which a kernel reaches half its efficiency
    depthwise_eff: float
    grouped_eff: float
    pointwise_eff: float
    large_kernel_eff: float
    stride2_eff: float
    narrow_eff: float           # a conv reading an image (<= 4 channels)
    linear_eff: float
    transcendental_s: float     # per element of Sigmoid / Tanh / Softmax ...
    cheap_s: float              # per element of other elementwise ops, pooling window elements
    fuse_elementwise_chains: bool
    cache_bytes: float
    cache_penalty: float        # per doubling of the working set above cache_bytes
    noise: float                # sigma of the lognormal measurement noise

    # ------------------------------------------------------------------------------------------ the rules
    def layer_costs(self, graph, onnx_info: "OnnxInfo") -> list[float]:
        """Seconds of every layer of `graph` (aligned with graph.layers): 0 for fused and folded layers."""
        zero, live, alias = _folding(graph, onnx_info)
        readers = _readers(graph)
        fused = self._fused(graph, readers, live, alias)
        in_place_concat = _in_place_concats(graph, readers, fused, live, alias)
        costs = []
        for layer in graph.layers:
            if layer.name not in live or layer.name in alias or layer.name in fused or layer.kind == "reshape" \
                    or layer.name in in_place_concat:
                costs.append(0.0)
            else:
                costs.append(self.call_s + self._work_s(layer, onnx_info))
        return costs

    def latency_s(self, graph, onnx_info: "OnnxInfo") -> float:
        """Noise-free latency of one inference (final exit)."""
        import edgenas.cost as cost

        total = self.inference_s + sum(self.layer_costs(graph, onnx_info))
        working_set = cost.peak_sram_bytes(graph, BYTES) + BYTES * cost.total_params(graph)
        doublings = min(max(math.log2(working_set / self.cache_bytes), 0.0), 3.0) if working_set > 0 else 0.0
        return total * (1.0 + self.cache_penalty * doublings)

    def measure_s(self, true_s: float, rng) -> float:
        """One noisy measurement of a model whose true latency is true_s."""
        return float(true_s * math.exp(self.noise * rng.standard_normal()))

    def _fused(self, graph, readers: dict, live: set, alias: set) -> set:
        """Names of layers that run inside the kernel before them (see the module docstring)."""
        state: dict[str, str] = {}   # tensor -> what its kernel can still absorb: "conv", "conv+add", "chain"
        fused = set()
        producer_alias = {layer.output: layer.inputs for layer in graph.layers if layer.name in alias}
        for layer in graph.layers:
            if layer.name not in live or layer.name in alias:
                continue
            if layer.kind in KERNEL_KINDS:
                state[layer.output] = "conv"
                continue
            if layer.kind not in ELEMENTWISE_KINDS:
                continue
            ins = [_through(t, producer_alias) for t in layer.inputs]
            joined = None
            for t in ins:
                s = state.get(t)
                if s is None or readers.get(t, 0) != 1:
                    continue
                if s == "conv" and layer.kind == "act" and len(ins) == 1:
                    joined = "done"
                elif s == "conv" and layer.kind == "add" and len(ins) == 2:
                    joined = "conv+add"
                elif s == "conv+add" and layer.kind == "act" and len(ins) == 1:
                    joined = "done"
                elif s == "chain" and self.fuse_elementwise_chains:
                    joined = "chain"
                if joined:
                    break
            if joined:
                fused.add(layer.name)
                state[layer.output] = "chain" if self.fuse_elementwise_chains else joined
            elif self.fuse_elementwise_chains:
                state[layer.output] = "chain"
        return fused

    def _pad(self, c: int) -> int:
        return -(-int(c) // self.vector) * self.vector

    def _work_s(self, layer, info: "OnnxInfo") -> float:
        """Compute / memory time of one layer that runs (without the call overhead)."""
        from edgenas.cost import numel

        bytes_moved = BYTES * (sum(numel(s) for s in layer.in_shapes) + numel(layer.out_shape) + layer.params)
        memory = bytes_moved / self.bytes_per_s
        if layer.kind in ("conv", "dwconv") and len(layer.out_shape) == 3 and layer.in_shapes:
            kh, kw, stride, groups = info.conv_attrs(layer.output)
            c_in, c_out = int(layer.in_shapes[0][0]), int(layer.out_shape[0])
            pixels = int(layer.out_shape[1]) * int(layer.out_shape[2])
            eff = pixels / (pixels + self.spatial_half)
            if layer.kind == "dwconv":
                macs = pixels * self._pad(c_out) * kh * kw
                eff *= self.depthwise_eff
            else:
                cin_g, cout_g = c_in // groups, c_out // groups
                pad_in = cin_g if (groups == 1 and c_in <= 4) else self._pad(cin_g)
                macs = pixels * groups * self._pad(cout_g) * pad_in * kh * kw
                if groups > 1:
                    eff *= self.grouped_eff
                if groups == 1 and c_in <= 4:
                    eff *= self.narrow_eff
            if kh == kw == 1:
                eff *= self.pointwise_eff
            if max(kh, kw) >= 5:
                eff *= self.large_kernel_eff
            if stride >= 2:
                eff *= self.stride2_eff
            compute = macs / (self.macs_per_s * eff)
        elif layer.kind == "linear":
            out = int(layer.out_shape[-1]) if layer.out_shape else 1
            compute = layer.macs * self._pad(out) / max(out, 1) / (self.macs_per_s * self.linear_eff)
        elif layer.kind == "pool":
            kh, kw, _, _ = info.conv_attrs(layer.output)
            compute = numel(layer.out_shape) * kh * kw * self.cheap_s
        elif layer.kind == "gap":
            compute = sum(numel(s) for s in layer.in_shapes) * self.cheap_s
        else:
            op = info.op_type(layer.output)
            per = self.transcendental_s if op in TRANSCENDENTAL_OPS else \
                2 * self.cheap_s if op in ("HardSwish", "HardSigmoid") else self.cheap_s
            compute = numel(layer.out_shape) * per
        return max(compute, memory) if self.roofline else compute + memory


DEVICES = (
    SyntheticDevice(
        name="mcu", base_target="cortex-m7",
        description="in-order microcontroller core (Cortex-M7-like, fp32): compute and memory add, 4-wide channel "
                    "blocking, cheap calls, slow expf, on-chip SRAM of 512 KB (external memory above it)",
        macs_per_s=100e6, bytes_per_s=400e6, call_s=3e-6, inference_s=20e-6, vector=4, roofline=False,
        spatial_half=2.0, depthwise_eff=0.6, grouped_eff=0.7, pointwise_eff=0.9, large_kernel_eff=0.95,
        stride2_eff=0.9, narrow_eff=0.6, linear_eff=0.8, transcendental_s=0.3e-6, cheap_s=10e-9,
        fuse_elementwise_chains=False, cache_bytes=512e3, cache_penalty=0.35, noise=0.05),
    SyntheticDevice(
        name="simd_cpu", base_target="rpi4",
        description="SIMD application core (Cortex-A72/NEON-like): roofline, 8-channel vector blocks, slow depthwise "
                    "and grouped kernels, tiling overhead on small outputs, 1 MB L2",
        macs_per_s=4e9, bytes_per_s=4e9, call_s=4e-6, inference_s=30e-6, vector=8, roofline=True,
        spatial_half=16.0, depthwise_eff=0.25, grouped_eff=0.5, pointwise_eff=0.85, large_kernel_eff=0.75,
        stride2_eff=0.7, narrow_eff=0.5, linear_eff=0.5, transcendental_s=4e-9, cheap_s=0.5e-9,
        fuse_elementwise_chains=False, cache_bytes=1e6, cache_penalty=0.25, noise=0.10),
    SyntheticDevice(
        name="gpu_like", base_target="x86-host",
        description="accelerator with a large per-kernel launch cost: 32-wide channel vectors, occupancy needs "
                    "~1000 output pixels, elementwise chains fused into one kernel, 4 MB cache",
        macs_per_s=200e9, bytes_per_s=100e9, call_s=20e-6, inference_s=100e-6, vector=32, roofline=True,
        spatial_half=1024.0, depthwise_eff=0.1, grouped_eff=0.3, pointwise_eff=0.9, large_kernel_eff=0.8,
        stride2_eff=0.8, narrow_eff=0.5, linear_eff=0.2, transcendental_s=0.02e-9, cheap_s=0.01e-9,
        fuse_elementwise_chains=True, cache_bytes=4e6, cache_penalty=0.10, noise=0.15),
)


# ---------------------------------------------------------------------------------------------- graph helpers
class OnnxInfo:
    """What the synthetic device reads from the ONNX model beside the CostGraph: the node behind each layer (by its
    output tensor) and which constants are all zero."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        self.nodes, self.zero_consts = {}, set()
        values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        values[node.output[0]] = numpy_helper.to_array(a.t)
            for out in node.output:
                self.nodes[out] = node
        self.zero_consts = {name for name, v in values.items() if v.size and not np.any(v)}
        self.consts = set(values)

    def op_type(self, output: str) -> str:
        node = self.nodes.get(output)
        return node.op_type if node is not None else ""

    def conv_attrs(self, output: str) -> tuple[int, int, int, int]:
        """(kernel height, kernel width, stride, groups) of the Conv / pooling node writing `output`."""
        node = self.nodes.get(output)
        kh = kw = stride = groups = 1
        if node is None:
            return kh, kw, stride, groups
        for a in node.attribute:
            if a.name == "kernel_shape" and len(a.ints) >= 2:
                kh, kw = int(a.ints[0]), int(a.ints[1])
            elif a.name == "strides" and a.ints:
                stride = int(max(a.ints))
            elif a.name == "group":
                groups = int(a.i)
        return kh, kw, stride, groups

    def multiplies_by_zero(self, output: str) -> bool:
        node = self.nodes.get(output)
        return node is not None and node.op_type == "Mul" and any(i in self.zero_consts for i in node.input)


def _readers(graph) -> dict[str, int]:
    readers: dict[str, int] = {}
    for layer in graph.layers:
        for t in layer.inputs:
            readers[t] = readers.get(t, 0) + 1
    for t in graph.exit_outputs:
        readers[t] = readers.get(t, 0) + 1
    return readers


def _through(tensor: str, producer_alias: dict) -> str:
    """The tensor an alias layer (add of a zero) passes on, followed to its source."""
    while tensor in producer_alias and len(producer_alias[tensor]) == 1:
        tensor = producer_alias[tensor][0]
    return tensor


def _folding(graph, info: OnnxInfo) -> tuple[set, set, set]:
    """(zero tensors, live layer names, alias layer names): a Mul by a constant zero is a zero; a Mul, reshape or
    concat of zeros only is a zero; an Add/Sub with a zero operand passes the other one on (alias); a layer is live
    when a live layer (or an exit) needs its output's value."""
    zero = set()
    alias = {}
    for layer in graph.layers:
        op = info.op_type(layer.output)
        if info.multiplies_by_zero(layer.output) or \
                (layer.inputs and all(t in zero for t in layer.inputs) and layer.kind in ("mul", "reshape", "concat")):
            zero.add(layer.output)
        elif layer.kind == "add" and op in ("Add", "Sub") and any(t in zero for t in layer.inputs):
            alias[layer.name] = [t for t in layer.inputs if t not in zero]
    needed = set(graph.exit_outputs)
    live = set()
    for layer in reversed(graph.layers):
        if layer.output not in needed or layer.output in zero:
            continue
        live.add(layer.name)
        needed.update(alias.get(layer.name, layer.inputs))
    return zero, live, set(alias)


def _in_place_concats(graph, readers: dict, fused: set, live: set, alias: set) -> set:
    """Concats whose every input is written by a kernel that runs (not a view, not an alias) with no other reader:
    the kernels write straight into the concat's buffer."""
    producer = {layer.output: layer for layer in graph.layers}
    out = set()
    for layer in graph.layers:
        if layer.kind != "concat" or len(layer.inputs) < 2:
            continue
        ok = True
        for t in layer.inputs:
            p = producer.get(t)
            if p is None or readers.get(t, 0) != 1 or p.name not in live or p.name in alias or p.kind == "reshape":
                ok = False
                break
        if ok:
            out.add(layer.name)
    return out


# ---------------------------------------------------------------------------------------------- the benchmark
def _families_available() -> tuple[str, ...]:
    from edgenas.targets import LATENCY_FAMILIES
    return LATENCY_FAMILIES


def _calibrate(device: SyntheticDevice, csv_path: Path, out_toml: Path, families=None):
    """edgenas.api.calibrate as a user calls it; families=[f] forces one family (None: the selection)."""
    from edgenas.api import calibrate

    # the engine is neither ort nor tvm: the runtime is provenance text only
    kwargs = {"device": f"synthetic {device.name} (benchmarks/costmodel_synthetic.py)", "threads": 1,
              "runtime_version": "synthetic device"}
    if families is not None:
        kwargs["families"] = list(families)
    return calibrate(device.base_target, [str(csv_path)], out=out_toml, **kwargs)


def _compact_json(doc) -> str:
    """Indented JSON with every list of plain values on one line (the per-model tables stay readable and small);
    JSON strings hold no raw newlines, so only the layout's newlines are joined."""
    import re

    text = json.dumps(doc, indent=1, allow_nan=False)
    return re.sub(r"\[\n[^\[\]{}]*?\n\s*\]", lambda m: re.sub(r"\n\s*", " ", m.group(0)).replace("[ ", "[")
                  .replace(" ]", "]"), text)


def _cal_summary(cal) -> dict:
    return json_finite({"family": cal.family, "fallback": cal.fallback, "family_cv": cal.family_cv, "cv": cal.cv,
                        "channel_block": cal.channel_block, "noise_floor": cal.noise_floor,
                        "interval": cal.interval})


def _scores(models: list[dict], key: str, groups: dict[str, list[dict]]) -> dict:
    """accuracy() of prediction `key` against the noisy re-measurement and the truth, per group of models."""
    from edgenas.cost.calibrate import accuracy

    out = {}
    for group, ms in groups.items():
        ms = [m for m in ms if key in m]
        if not ms:
            continue
        pred = [m[key] for m in ms]
        truth = accuracy([m["true_s"] for m in ms], pred)
        entry = {"measured": {k: v for k, v in accuracy([m["measured_s"] for m in ms], pred).items()
                              if k in SCORE_KEYS},
                 "truth": {k: truth[k] for k in ("within_10pct", "kendall_tau")}}
        lo_key, hi_key = f"{key}_lo", f"{key}_hi"
        if all(lo_key in m for m in ms):
            inside = [m[lo_key] <= m["measured_s"] <= m[hi_key] for m in ms]
            entry["interval_coverage_pct"] = 100.0 * float(np.mean(inside))
        out[group] = entry
    return out


def _tau(scores: dict, group: str) -> float:
    v = scores.get(group, {}).get("measured", {}).get("kendall_tau")
    return float("nan") if v is None else v


def _family_predictions(calib_csv: Path, held_csv: Path, base, block: int, families) -> dict:
    """What every family predicts for the held-out models when it is written whatever its cross-validation says
    (calibrate(families=[f]) falls back to MACs-only when f is worse on CV, so it reports the fallback, not f):
    each family fitted once on the calibration CSV at the channel block the selection chose, through the library's
    own fitting (edgenas.cost.fitting.fit_family), and evaluated on the held-out models' totals.
    {family: {resolved model path: seconds}}, or {family: error text}."""
    from edgenas.cost import BYTES_PER_ELEMENT
    from edgenas.cost.calibrate import read_measurements
    from edgenas.cost.fitting import fit_family

    bpe = BYTES_PER_ELEMENT[base.latency.dtype]
    per_exit_s = base.latency.per_exit_cycles / base.clock_hz
    train = read_measurements([str(calib_csv)], bpe, block)
    held = read_measurements([str(held_csv)], bpe, block)
    out = {}
    for family in families:
        try:
            fitted = fit_family(train.observations, per_exit_s, family, train.totals)
            out[family] = {t.model: fitted.predict_total(t) for t in held.totals}
        except Exception as exc:  # noqa: BLE001  (a family that cannot be fitted here is reported, not fatal)
            out[family] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _write_csv(path: Path, models: list[dict], key: str) -> Path:
    """model,latency_ms,threads rows; m[key] is one latency or a list of repeated ones (one row each)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "latency_ms", "threads"])
        for m in models:
            for seconds in (m[key] if isinstance(m[key], list) else [m[key]]):
                w.writerow([os.path.relpath(m["path"], path.parent), f"{seconds * 1e3:.9f}", 1])
    return path


def _goal(selected: dict, macs_only: dict, groups) -> dict:
    goal = {}
    for group in groups:
        sel, base_tau = _tau(selected, group), _tau(macs_only, group)
        goal[group] = {"selected_tau": sel, "macs_only_tau": base_tau, "selected_minus_macs_only": sel - base_tau,
                       "not_below": bool(sel >= base_tau) if math.isfinite(sel) and math.isfinite(base_tau) else None}
    return goal


def run_device(device: SyntheticDevice, models: list[dict], calib: list[dict], held_out: dict[str, list[dict]],
               work: Path, seed: int, forced_api: bool, repeats: int = 2) -> dict:
    from edgenas import cost
    from edgenas.cost.calibrate import ModelTotal, fit_macs_only, kendall_tau
    from edgenas.targets import load_target

    rng = np.random.default_rng([seed, DEVICES.index(device) if device in DEVICES else 99])
    for m in models:
        m["true_s"] = device.latency_s(m["graph"], m["info"])
        # what a calibration sees: `repeats` measurements, CSV rows that calibrate aggregates (median); and an
        # independent measurement to score the held-out predictions against
        m["calib_measured"] = [device.measure_s(m["true_s"], rng) for _ in range(repeats)]
        m["calib_measured_s"] = float(np.median(m["calib_measured"]))
        m["measured_s"] = device.measure_s(m["true_s"], rng)
    folder = work / device.name
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = _write_csv(folder / "calib.csv", calib, "calib_measured")
    scored = [m for m in models if any(m is h for ms in held_out.values() for h in ms)]
    held_csv = _write_csv(folder / "held_out.csv", scored, "measured_s")
    base = load_target(device.base_target)
    per_exit_s = base.latency.per_exit_cycles / base.clock_hz
    a, b = fit_macs_only([ModelTotal(m["name"], m["calib_measured_s"], {}, 1, 1, m["macs"]) for m in calib],
                         per_exit_s)
    for m in scored:
        m["pred_macs_only"] = a + b * m["macs"] + per_exit_s

    def predict(tag: str, families):
        t0 = time.time()
        cal, path = _calibrate(device, csv_path, folder / f"{device.name}-{tag}.toml", families)
        target = load_target(str(path))
        for m in scored:
            pred = cost.predict_latency(m["graph"], target)
            m[f"pred_{tag}"] = pred.worst_s
            interval = cost.latency_interval(pred.worst_s, target.latency.interval)  # None: it has none
            if interval is not None:
                m[f"pred_{tag}_lo"], m[f"pred_{tag}_hi"] = interval
        return cal, {**_cal_summary(cal), "held_out": _scores(scored, f"pred_{tag}", held_out),
                     "seconds": time.time() - t0}

    cal, selected = predict("selected", None)
    macs_only = _scores(scored, "pred_macs_only", held_out)
    for group, ms in held_out.items():  # MACs-only ranks by MACs, whatever the fitted slope (0 gives no ranking)
        if group in macs_only and len(ms) > 1:
            for ref, key in (("measured", "measured_s"), ("truth", "true_s")):
                macs_only[group][ref]["kendall_tau"] = kendall_tau([m[key] for m in ms], [m["macs"] for m in ms])
    families = _families_available()
    per_family = {}
    t0 = time.time()
    if families:
        predictions = _family_predictions(csv_path, held_csv, base, cal.channel_block, families)
        for family, pred in predictions.items():
            if isinstance(pred, str):
                per_family[family] = {"error": pred}
                continue
            for m in scored:
                m[f"pred_family_{family}"] = pred[str(Path(m["path"]).resolve())]
            per_family[family] = {"held_out": _scores(scored, f"pred_family_{family}", held_out)}
    forced = {}
    if forced_api and families:
        for family in families:
            try:
                forced[family] = predict(f"forced_{family}", [family])[1]
            except Exception as exc:  # noqa: BLE001  (a family that cannot be fitted here is reported, not fatal)
                forced[family] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    goal = _goal(selected["held_out"], macs_only, held_out)
    best = {}
    for group in held_out:
        taus = {f: _tau(r["held_out"], group) for f, r in per_family.items() if "held_out" in r}
        taus = {f: t for f, t in taus.items() if math.isfinite(t)}
        if taus:
            best[group] = max(taus, key=taus.get)
    columns = ["name", "family", "macs", "true_s", "measured_s", *sorted(k for k in scored[0] if k.startswith("pred_"))]
    per_model = {"columns": columns,  # one row per held-out model, seconds to 4 significant digits
                 "rows": [[float(f"{m[c]:.4g}") if isinstance(m[c], float) else m[c] for c in columns]
                          for m in scored]}
    for m in scored:  # the next device writes its own predictions
        for k in [k for k in m if k.startswith("pred_")]:
            del m[k]
    return {"device": asdict(device), "n_calibration": len(calib),
            "n_held_out": {g: len(ms) for g, ms in held_out.items()},
            "selected": selected, "macs_only": {"a_s": a, "b_s_per_mac": b, "held_out": macs_only},
            "goal_selection_not_below_macs_only": goal,
            # the goal is judged on the sets; a family of 3-4 models (one swapped pair moves its tau by 1/3 or
            # more, as 5-15 % noise does) is listed, not judged
            "goal_met": all(goal[g]["not_below"] is not False for g in GOAL_SETS),
            "families_below_macs_only": sorted(g for g, v in goal.items() if v["not_below"] is False
                                               and g not in GOAL_SETS),
            "per_family_unguarded": per_family, "per_family_seconds": time.time() - t0,
            "best_family_by_held_out_tau": best,
            "forced_families_api": forced if forced else "not run (--no-forced-api)",
            "held_out_models": per_model}


def _build_all(args, work: Path) -> list[dict]:
    """Export own-space, random-block and foreign models to work/models (or reuse --models-dir)."""
    import costmodel_host  # noqa: E402  (sibling script: own-space builders)

    where = Path(args.models_dir) if args.models_dir else work / "models"
    specs = foreign_models.random_block_specs(args.random_blocks, args.seed, dead_branch_rate=0.1) + \
        foreign_models.foreign_specs(tuple(args.resolutions), args.seed)
    key = {**{k: getattr(args, k) for k in ("seed", "mbv3", "nb201", "random_blocks", "resolutions")},
           "specs": foreign_models.specs_digest(specs)}
    index = where / "models.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        if doc.get("key") == key and all(Path(m["path"]).is_file() for m in doc["models"]):
            return doc["models"]
    where.mkdir(parents=True, exist_ok=True)
    pending = foreign_models.PendingExport(specs, where, max(1, args.processes - 1)).start() \
        if args.processes > 1 else None
    own = costmodel_host.build_models(where, args.mbv3, args.nb201, args.seed)
    others = pending.result() if pending else foreign_models.export_all(specs, where, 1)
    models = [{"family": m["family"], "name": Path(m["path"]).stem, "arch": m["arch"], "path": m["path"],
               "set": "own"} for m in own]
    models += [{"family": r["family"], "name": r["name"], "arch": r["arch"], "path": r["path"],
                "set": "random" if r["family"] == foreign_models.RANDOM_FAMILY else "foreign"} for r in others]
    index.write_text(json.dumps({"key": key, "models": models}, indent=1))
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbv3", type=int, default=120)
    ap.add_argument("--nb201", type=int, default=30)
    ap.add_argument("--calib-own", type=int, default=75, help="own-space models in the calibration set")
    ap.add_argument("--random-blocks", type=int, default=60, help="random-block models (all in the calibration set)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=list(foreign_models.FOREIGN_RESOLUTIONS))
    ap.add_argument("--devices", nargs="+", default=[d.name for d in DEVICES], choices=[d.name for d in DEVICES])
    ap.add_argument("--no-forced-api", action="store_true",
                    help="skip running edgenas calibrate with families=[f] for every family")
    ap.add_argument("--repeats", type=int, default=2, help="noisy measurements of each calibration model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=2, help="processes exporting models")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: few models, foreign at 32 px, the simd_cpu device unless --devices names some")
    ap.add_argument("--models-dir", default=None, help="keep the exported models here (reused when they match)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.mbv3, args.nb201, args.calib_own, args.random_blocks, args.resolutions = 16, 6, 12, 10, [32]
        args.devices = args.devices if len(args.devices) < len(DEVICES) else ["simd_cpu"]
    out = Path(args.out) if args.out else \
        HERE / "results" / f"costmodel_synthetic{'_quick' if args.quick else ''}.json"

    import torch

    from edgenas import cost

    torch.set_num_threads(1)
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgenas-costmodel-synthetic-"))
    try:
        models = _build_all(args, work)
        t_export = time.time() - t_start
        print(f"exported {len(models)} models in {t_export:.0f} s", file=sys.stderr)
        analysed, not_analysable = [], {}
        for m in models:
            try:
                m["graph"] = cost.from_onnx(m["path"])
            except Exception as exc:  # noqa: BLE001  (a foreign model the front end cannot read is reported)
                not_analysable[m["name"]] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            m["info"] = OnnxInfo(m["path"])
            m["macs"] = cost.macs_per_exit(m["graph"])[-1]
            analysed.append(m)
        own = [m for m in analysed if m["set"] == "own"]
        order = np.random.default_rng(args.seed + 1).permutation(len(own))
        calib = [own[i] for i in order[:args.calib_own]] + [m for m in analysed if m["set"] == "random"]
        held_own = [own[i] for i in order[args.calib_own:]]
        foreign = [m for m in analysed if m["set"] == "foreign"]
        held_out = {"own": held_own, "foreign": foreign, "all_held_out": held_own + foreign}
        for family in sorted({m["family"] for m in held_own + foreign}):
            held_out[f"family:{family}"] = [m for m in held_own + foreign if m["family"] == family]
        results = {}
        for device in [d for d in DEVICES if d.name in args.devices]:
            t0 = time.time()
            results[device.name] = run_device(device, analysed, calib, held_out, work, args.seed,
                                              not args.no_forced_api, args.repeats)
            r = results[device.name]
            sel = r["selected"]["held_out"]
            print(f"{device.name}: family {r['selected']['family']}; held-out tau own "
                  f"{_tau(sel, 'own'):.3f} (MACs-only {_tau(r['macs_only']['held_out'], 'own'):.3f}), foreign "
                  f"{_tau(sel, 'foreign'):.3f} (MACs-only {_tau(r['macs_only']['held_out'], 'foreign'):.3f}); "
                  f"goal met: {r['goal_met']} ({time.time() - t0:.0f} s)", file=sys.stderr)
        doc = {
            "benchmark": "costmodel_synthetic",
            "what": "model-family selection of edgenas calibrate on synthetic noisy, non-additive devices: held-out "
                    "accuracy on own-space and foreign families vs MACs-only (see the script's docstring for the "
                    "device rules)",
            "goal": "the selected family's held-out Kendall tau is never below MACs-only's (per device and set)",
            "goal_met_all_devices": all(r["goal_met"] for r in results.values()),
            "quick": args.quick, "seed": args.seed,
            "families_available": list(_families_available()),
            "n_models": {"own": len(own), "random_blocks": sum(m["set"] == "random" for m in analysed),
                         "foreign": len(foreign), "calibration": len(calib), "held_out_own": len(held_own)},
            "calibration_set": "own-space models + random-block models; foreign families are never in it",
            "foreign_resolutions": args.resolutions,
            "not_analysable": not_analysable,
            "devices": results,
            "seconds": {"export": t_export, "total": time.time() - t_start},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        text = _compact_json(json_finite(doc)).replace(str(work), "<work>")
        out.write_text(text)
        print(f"wrote {out} in {time.time() - t_start:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
