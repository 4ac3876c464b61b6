"""Latency-model calibration: fit the per-kind coefficients of a target's latency model from measurements.

The model is the one `predict_latency` evaluates (edgenas.cost.analysis.layer_cycles): per layer,

    seconds = sum over FEATURES of coefficient[kind, feature] * feature(layer)      (all coefficients >= 0)

with FEATURES = (calls, MACs, input bytes, output bytes, weight bytes), plus a per-inference constant. Every
measurement is an *observation*: a measured time and the summed features of the layers it covers. Three sources:

- per-layer profiles (`edgenas-profile/1` JSON, below): one observation per layer or fused layer group, and one for
  the per-inference overhead when the profile gives the whole-inference time;
- onnxruntime's own profile JSON, given as `MODEL.onnx=PROFILE.json`: every kernel event is attributed to the
  CostGraph layers of MODEL it covers (ORT fuses Conv+activation(+Add) and inserts layout reorders; see
  `_ort_groups`). ORT rounds kernel times to whole microseconds and profiling adds per-node bookkeeping, so this
  source suits models whose kernels take well over a microsecond; the per-inference constant is not observed
  (model_run is inflated by the profiler) and stays 0 unless other sources give it;
- end-to-end measurements (CSV: `model,latency_ms` or `latency_s` / `latency_us`): one observation per model whose
  features are the sums over all its layers (what a user often has from a board).

Fit: non-negative least squares on *relative* error (latencies span orders of magnitude), inside an iteratively
reweighted Huber loop so that a few disturbed measurements do not pull the coefficients. Held-out error comes from
K-fold cross-validation over models (a model's observations never straddle folds), compared with a MACs-only
baseline (seconds = a + b * MACs, fitted the same way).

`edgenas-profile/1` JSON (paths relative to the JSON file; times in seconds):

    {"format": "edgenas-profile/1", "device": "rpi4 #2", "runtime": "onnxruntime 1.32 CPU", "threads": 1,
     "models": [
       {"model": "m1.onnx", "total_s": 0.00125,                  # total_s optional: whole inference
        "layers": [{"name": "conv1", "latency_s": 2.1e-4},       # a layer of from_onnx(m1.onnx), by name
                   {"names": ["conv2", "relu2"], "latency_s": 3e-4},   # a fused group of layers
                   {"kind": "conv", "macs": 1000, "input_bytes": 4096, "output_bytes": 4096,
                    "weight_bytes": 1200, "latency_s": 1e-5}]},  # inline features (no model needed)
       {"model": "m2.onnx", "total_s": 0.002}]}                  # end to end only
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgenas.cost.analysis import BYTES_PER_ELEMENT, FEATURES, latency_kinds, layer_features, macs_per_exit
from edgenas.cost.graph import CostGraph
from edgenas.errors import EdgenasError

PROFILE_FORMAT = "edgenas-profile/1"
KIND_FIELDS = ("fixed_cycles", "cycles_per_mac", "cycles_per_input_byte", "cycles_per_output_byte",
               "cycles_per_weight_byte")  # aligned with FEATURES
_FUSED_INTO_PRODUCER = ("act", "add", "mul", "reshape")  # kinds ORT folds into the kernel before them
_CSV_UNITS = {"latency_s": 1.0, "latency_ms": 1e-3, "latency_us": 1e-6}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}
# channel blocks `calibrate` picks from by cross-validation (onnxruntime NCHWc pads to 8 on AVX2, 16 on AVX-512)
CHANNEL_BLOCKS = (1, 8, 16)


# ------------------------------------------------------------------------------------------------ observations
@dataclass(frozen=True)
class Observation:
    """One measured time and the features of what it covers."""
    model: str                                     # folds never split a model
    seconds: float
    features: Mapping[str, tuple[float, ...]]      # kind -> summed FEATURES of the covered layers
    overhead: int = 0                              # 1 when the time includes the per-inference constant
    exits: int = 0                                 # exit decisions included (costed at the base per_exit_cycles)


@dataclass(frozen=True)
class ModelTotal:
    """What cross-validation compares: a model's whole measured time and its summed features."""
    model: str
    seconds: float
    features: Mapping[str, tuple[float, ...]]
    overhead: int
    exits: int
    macs: int


@dataclass
class Measurements:
    observations: list[Observation] = field(default_factory=list)
    totals: list[ModelTotal] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    device: str = ""
    runtime: str = ""
    threads: int | None = None


def _add(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    return tuple(x + y for x, y in zip(a, b))


def graph_features(g: CostGraph, bytes_per_element: int, layers=None, channel_block: int = 1
                   ) -> dict[str, tuple[float, ...]]:
    """latency kind -> summed layer_features over the given layers (default: all layers, i.e. the worst-case
    path). Kinds are edgenas.cost.analysis.latency_kinds of the whole graph (fusion needs the graph's context)."""
    kinds = dict(zip((layer.name for layer in g.layers), latency_kinds(g, channel_block)))
    out: dict[str, tuple[float, ...]] = {}
    for layer in (g.layers if layers is None else layers):
        f = layer_features(layer, bytes_per_element, channel_block)
        kind = kinds[layer.name]
        out[kind] = _add(out.get(kind, (0,) * len(FEATURES)), f)
    return out


def _merge_features(parts) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = _add(out.get(k, (0,) * len(FEATURES)), v)
    return out


# ------------------------------------------------------------------------------------------------ readers
def _bad(where: str, problem: str, fix: str) -> EdgenasError:
    return EdgenasError(f"{where}: {problem}", fix)


def _positive_time(value, where: str, what: str, unit: str = "s", scale: float = 1.0, typed: str | None = None
                   ) -> float:
    """`value` (in `unit`, `scale` seconds each) as seconds, if it is a plausible measurement: 1 ns to one hour,
    the range of budget durations (edgenas.targets). Outside it the time is a typo or a unit mix-up, and a fit that
    took it would be degenerate (a 1e308 ms row zeroes every coefficient). `typed`: the value as written, for
    messages (1e-400 reads as 0.0)."""
    from edgenas.targets import MAX_DURATION_S, MIN_DURATION_S

    shown = repr(value) if typed is None else repr(typed.strip()[:40])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _bad(where, f"{what} must be a positive number of {_UNIT_NAMES[unit]}, got {shown}",
                   "e.g. 1.25e-3 s, written in the file's unit")
    seconds = float(value) * scale
    if not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        raise _bad(where, f"{what} {shown} {unit} is out of range (1 ns to 1 hour per measurement)",
                   "check the number and the unit of the column")
    return seconds


_GRAPHS: dict[tuple[str, int, int], CostGraph] = {}  # (path, mtime_ns, size) -> graph: calibrate reads each model once


def _graph(path: Path, where: str) -> CostGraph:
    from edgenas.cost.onnx_frontend import from_onnx

    if not path.is_file():
        raise _bad(where, f"model file {path} not found", "paths are relative to the profile / CSV file")
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _GRAPHS:
        try:
            _GRAPHS[key] = from_onnx(str(path))
        except EdgenasError as exc:
            raise _bad(where, f"model {path.name}: {exc.problem}", exc.fix) from None
        if len(_GRAPHS) > 4096:
            _GRAPHS.pop(next(iter(_GRAPHS)))
    return _GRAPHS[key]


def read_csv(path: Path, bpe: int, channel_block: int = 1) -> Measurements:
    """End-to-end measurements: a header with `model` and one of latency_s / latency_ms / latency_us."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(str(path), f"cannot read: {exc}", "pass a UTF-8 CSV file") from None
    kept = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.reader(line for _, line in kept)
    rows, line_numbers = [], []
    for row in reader:
        rows.append(row)
        line_numbers.append(kept[reader.line_num - 1][0])  # messages name the file's line, comments included
    if not rows:
        raise _bad(str(path), "is empty", "write a header `model,latency_ms` and one row per model")
    header = [h.strip().lower() for h in rows[0]]
    units = [h for h in header if h in _CSV_UNITS]
    if "model" not in header or len(units) != 1:
        raise _bad(str(path), f"header {rows[0]} needs a `model` column and exactly one of "
                   f"{', '.join(_CSV_UNITS)}", "e.g. `model,latency_ms`")
    if len(rows) < 2:
        raise _bad(str(path), "has a header but no measurements", "add one row per model")
    i_model, i_lat = header.index("model"), header.index(units[0])
    out = Measurements(sources=[str(path)])
    graphs: dict[Path, CostGraph] = {}
    unit = units[0][len("latency_"):]
    for n, row in zip(line_numbers[1:], rows[1:]):
        where = f"{path}:{n}"
        if len(row) != len(header):
            raise _bad(where, f"has {len(row)} fields, the header has {len(header)}", "one value per column")
        try:
            value = float(row[i_lat])
        except ValueError:
            raise _bad(where, f"latency {row[i_lat][:40]!r} is not a number", f"write the time in {unit}") from None
        seconds = _positive_time(value, where, units[0], unit, _CSV_UNITS[units[0]], typed=row[i_lat])
        model_path = (path.parent / row[i_model].strip()).resolve()
        if model_path not in graphs:
            graphs[model_path] = _graph(model_path, where)
        g = graphs[model_path]
        feats = graph_features(g, bpe, channel_block=channel_block)
        key = str(model_path)
        out.observations.append(Observation(key, seconds, feats, overhead=1, exits=g.n_exits))
        out.totals.append(ModelTotal(key, seconds, feats, 1, g.n_exits, macs_per_exit(g)[-1]))
    return out


def _layer_entry(e, where: str, g: CostGraph | None, by_name: dict, bpe: int, channel_block: int = 1
                 ) -> dict[str, tuple[float, ...]]:
    if not isinstance(e, dict):
        raise _bad(where, "must be an object", 'e.g. {"name": "conv1", "latency_s": 2e-4}')
    if "kind" in e:
        from edgenas.targets import LATENCY_KINDS

        if e["kind"] not in LATENCY_KINDS:
            raise _bad(where, f"kind {e['kind']!r} is not a layer kind", f"use one of {', '.join(LATENCY_KINDS)}")
        vals = []
        for f in FEATURES[1:]:
            v = e.get(f, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise _bad(where, f"{f} must be a non-negative number, got {v!r}", "give MACs and byte counts")
            vals.append(float(v))
        return {e["kind"]: (1.0, *vals)}
    names = e.get("names", [e["name"]] if "name" in e else None)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _bad(where, "needs `name`, `names` (a list) or inline features (`kind`, `macs`, ...)",
                   "see the edgenas-profile/1 format in edgenas.cost.calibrate")
    if g is None:
        raise _bad(where, "names layers but its model has no `model` file", "add \"model\": \"path.onnx\"")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise _bad(where, f"layer {missing[0]!r} is not a layer of the model", "use the names `edgenas analyze` prints")
    return graph_features(g, bpe, [by_name[n] for n in names], channel_block)


def read_profile_json(path: Path, bpe: int, doc=None, channel_block: int = 1) -> Measurements:
    """An edgenas-profile/1 file (see the module docstring)."""
    path = Path(path)
    if doc is None:
        doc = _load_json(path)
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise _bad(str(path), f"is not an {PROFILE_FORMAT} profile", "write the format described in "
                   "edgenas.cost.calibrate, or pass an onnxruntime profile as MODEL.onnx=PROFILE.json")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise _bad(str(path), "key `models` must be a non-empty list", "one entry per profiled model")
    threads = doc.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise _bad(str(path), f"key `threads` must be a positive integer, got {threads!r}", "e.g. \"threads\": 1")
    out = Measurements(sources=[str(path)], device=str(doc.get("device", "")), runtime=str(doc.get("runtime", "")),
                       threads=threads)
    for i, m in enumerate(models):
        where = f"{path}: models[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, "must be an object", 'e.g. {"model": "m.onnx", "total_s": 1e-3}')
        g = None
        if "model" in m:
            if not isinstance(m["model"], str):
                raise _bad(where, "key `model` must be a path", '"model": "m.onnx"')
            g = _graph((path.parent / m["model"]).resolve(), where)
        key = str((path.parent / m["model"]).resolve()) if g is not None else f"{path}#{i}"
        by_name = {layer.name: layer for layer in g.layers} if g is not None else {}
        layers = m.get("layers", [])
        if not isinstance(layers, list):
            raise _bad(where, "key `layers` must be a list", "one entry per layer or fused group")
        total = _positive_time(m["total_s"], where, "total_s") if "total_s" in m else None
        if not layers and total is None:
            raise _bad(where, "has neither `layers` nor `total_s`", "give per-layer times, the whole time, or both")
        if not layers and g is None:
            raise _bad(where, "gives only `total_s` but no `model`", "name the model file it was measured on")
        parts, layer_sum = [], 0.0
        for j, e in enumerate(layers):
            w = f"{where}.layers[{j}]"
            feats = _layer_entry(e, w, g, by_name, bpe, channel_block)
            seconds = _positive_time(e.get("latency_s") if isinstance(e, dict) else None, w, "latency_s")
            out.observations.append(Observation(key, seconds, feats))
            parts.append(feats)
            layer_sum += seconds
        _finish_model(out, key, g, bpe, parts, layer_sum, total, where, channel_block)
    return out


def _finish_model(out: Measurements, key: str, g, bpe: int, parts, layer_sum: float, total, where: str,
                  channel_block: int = 1) -> None:
    """The overhead observation (whole time minus the layers) and the model's total for cross-validation."""
    if g is not None and (total is not None or not parts):
        feats, exits, macs = graph_features(g, bpe, channel_block=channel_block), g.n_exits, macs_per_exit(g)[-1]
    else:
        feats, exits = _merge_features(parts), 0
        macs = int(sum(v[1] for v in feats.values()))
    if total is None:
        out.totals.append(ModelTotal(key, layer_sum, feats, 0, 0, macs))
        return
    if parts:
        if total < layer_sum * (1 - 1e-9):
            raise _bad(where, f"total_s {total:.6g} s is less than the sum of its layers {layer_sum:.6g} s",
                       "total_s is the whole inference, layers included")
        if total > layer_sum:
            out.observations.append(Observation(key, total - layer_sum, {}, overhead=1, exits=exits))
    else:
        out.observations.append(Observation(key, total, feats, overhead=1, exits=exits))
    out.totals.append(ModelTotal(key, total, feats, 1, exits, macs))


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(str(path), "not found", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise _bad(str(path), f"is not valid JSON: {msg}", "pass the file the profiler wrote, unmodified") from None


def read_ort_profile(model_path: Path, profile_path: Path, bpe: int, channel_block: int = 1) -> Measurements:
    """onnxruntime's profile JSON (SessionOptions.enable_profiling) of runs of `model_path`."""
    profile_path, model_path = Path(profile_path), Path(model_path)
    events = _load_json(profile_path)
    if isinstance(events, dict):
        events = events.get("traceEvents")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise _bad(str(profile_path), "is not an onnxruntime profile (a JSON list of trace events)",
                   "enable SessionOptions.enable_profiling and pass the file end_profiling() returns")
    where = str(profile_path)
    g = _graph(model_path.resolve(), where)
    runs = [float(e.get("dur", 0)) * 1e-6 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels: dict[str, list[float]] = {}
    order: list[str] = []
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and isinstance(name, str) and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            if node not in kernels:
                kernels[node] = []
                order.append(node)
            try:
                kernels[node].append(float(e["dur"]) * 1e-6)
            except (KeyError, TypeError, ValueError):
                raise _bad(where, f"kernel event {name} has no numeric `dur`", "pass the profile unmodified") from None
    if not runs or not kernels:
        raise _bad(where, "holds no model_run or kernel events", "run the session at least once with profiling on")
    n_runs = len(runs)
    node_s = {n: float(np.median(v[1:] if len(v) > 1 and len(v) == n_runs else v)) for n, v in kernels.items()}
    groups = _ort_groups(g, order)
    if not groups:
        raise _bad(where, f"no kernel event matches a layer of {model_path.name}",
                   "profile the same .onnx file that is passed before the '='")
    key = str(model_path.resolve())
    out = Measurements(sources=[f"{model_path}={profile_path}"], runtime="onnxruntime (profile)")
    parts, layer_sum = [], 0.0
    for layers, nodes in groups:
        seconds = sum(node_s[n] for n in nodes)
        if seconds <= 0:
            continue
        _positive_time(seconds, f"{where}: kernels {', '.join(nodes)[:80]}", "kernel time")
        feats = graph_features(g, bpe, layers, channel_block)
        out.observations.append(Observation(key, seconds, feats))
        parts.append(feats)
        layer_sum += seconds
    # model_run is not used as the whole-inference time: with profiling on, ORT's per-node bookkeeping inflates
    # it (and every kernel time is rounded to whole microseconds), so only kernel times are observations.
    _finish_model(out, key, g, bpe, parts, layer_sum, None, where, channel_block)
    return out


def _ort_groups(g: CostGraph, nodes: Sequence[str]) -> list[tuple[list, list[str]]]:
    """(layers, ORT kernel names) groups: each kernel goes to the layer whose node or output tensor name is the
    longest prefix of the kernel's name (ORT names fused and re-laid-out nodes after the tensor they write, e.g.
    `<relu output>_nchwc`). Layers no kernel names were fused: activations, adds, muls, reshapes into the kernel
    before them, other kinds into the one after. Kernels that match no layer (layout reorders) join the next group."""
    keys = sorted(((k, i) for i, layer in enumerate(g.layers) for k in {layer.name, layer.output}),
                  key=lambda t: -len(t[0]))
    anchor_nodes: dict[int, list[str]] = {}
    pending: list[str] = []
    for node in nodes:
        hit = next((i for k, i in keys if node.startswith(k)), None)
        if hit is None:
            pending.append(node)
            continue
        anchor_nodes.setdefault(hit, []).extend([*pending, node])
        pending = []
    if not anchor_nodes:
        return []
    anchors = sorted(anchor_nodes)
    if pending:
        anchor_nodes[anchors[-1]].extend(pending)
    members: dict[int, list] = {a: [] for a in anchors}
    for i, layer in enumerate(g.layers):
        if i in members:
            members[i].append(layer)
            continue
        prev = [a for a in anchors if a < i]
        nxt = [a for a in anchors if a > i]
        if layer.kind in _FUSED_INTO_PRODUCER:
            target = prev[-1] if prev else nxt[0]
        else:
            target = nxt[0] if nxt else prev[-1]
        members[target].append(layer)
    return [(members[a], anchor_nodes[a]) for a in anchors]


def read_measurements(sources: Sequence[str], bpe: int, channel_block: int = 1) -> Measurements:
    """Every source: `*.csv`, an edgenas-profile/1 `*.json`, or `MODEL.onnx=ORT_PROFILE.json`."""
    if not sources:
        raise EdgenasError("no profiles given", "pass per-layer profile JSON files, MODEL.onnx=ORT.json pairs or a CSV")
    merged = Measurements()
    for src in sources:
        src = str(src)
        if "=" in src and src.split("=", 1)[0].endswith(".onnx"):
            model, prof = src.split("=", 1)
            m = read_ort_profile(Path(model), Path(prof), bpe, channel_block)
        elif src.lower().endswith(".csv"):
            m = read_csv(Path(src), bpe, channel_block)
        else:
            doc = _load_json(Path(src))
            if isinstance(doc, list) or (isinstance(doc, dict) and "traceEvents" in doc):
                raise _bad(src, "is an onnxruntime profile without its model",
                           f"pass it as MODEL.onnx={src}")
            m = read_profile_json(Path(src), bpe, doc, channel_block)
        merged.observations += m.observations
        merged.totals += m.totals
        merged.sources += m.sources
        for attr in ("device", "runtime"):
            if getattr(m, attr) and getattr(m, attr) not in getattr(merged, attr).split(" | "):
                setattr(merged, attr, " | ".join(x for x in (getattr(merged, attr), getattr(m, attr)) if x))
        merged.threads = merged.threads or m.threads
    return merged


# ------------------------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class Fit:
    """Fitted coefficients in seconds: kind -> one per FEATURES, the per-inference constant."""
    kinds: Mapping[str, tuple[float, ...]]
    per_inference_s: float
    per_exit_s: float          # fixed (from the base target), not fitted

    def predict(self, features: Mapping[str, Sequence[float]], overhead: int = 0, exits: int = 0) -> float:
        s = overhead * self.per_inference_s + exits * self.per_exit_s
        for kind, f in features.items():
            s += sum(c * x for c, x in zip(self.kinds.get(kind, (0.0,) * len(FEATURES)), f))
        return s


def robust_nnls(a: np.ndarray, y: np.ndarray, huber_k: float = 1.345, iters: int = 50, ridge: float = 1e-10
                ) -> np.ndarray:
    """min sum_i rho((a_i . beta - y_i) / y_i) over beta >= 0, rho = Huber, by iteratively reweighted NNLS.

    Rows are divided by y (relative error), columns scaled to unit norm; a tiny ridge keeps collinear columns
    (e.g. every conv followed by an activation) determined. Residual scale: MAD of the relative residuals."""
    from scipy.optimize import nnls

    a, y = np.asarray(a, float), np.asarray(y, float)
    rel = a / y[:, None]
    norms = np.linalg.norm(rel, axis=0)
    live = norms > 0
    beta = np.zeros(a.shape[1])
    if not live.any():
        return beta
    r_a = rel[:, live] / norms[live]
    n_live = int(live.sum())
    reg = math.sqrt(ridge * len(y)) * np.eye(n_live)
    w = np.ones(len(y))
    b = np.zeros(n_live)
    for _ in range(iters):
        sw = np.sqrt(w)
        lhs = np.vstack([r_a * sw[:, None], reg])
        rhs = np.concatenate([sw, np.zeros(n_live)])
        b_new, _ = nnls(lhs, rhs, maxiter=50 * n_live)
        resid = r_a @ b_new - 1.0
        scale = max(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 1e-4)
        u = np.abs(resid) / (huber_k * scale)
        w = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        done = np.allclose(b_new, b, rtol=1e-6, atol=1e-12)
        b = b_new
        if done:
            break
    beta[live] = b / norms[live]
    return beta


def _design(observations, kinds: Sequence[str], per_exit_s: float):
    n_f = len(FEATURES)
    a = np.zeros((len(observations), len(kinds) * n_f + 1))
    y = np.zeros(len(observations))
    for r, o in enumerate(observations):
        for kind, f in o.features.items():
            k = kinds.index(kind)
            a[r, k * n_f:(k + 1) * n_f] = f
        a[r, -1] = o.overhead
        y[r] = o.seconds - o.exits * per_exit_s
    return a, y


def fit(observations: Sequence[Observation], per_exit_s: float = 0.0) -> Fit:
    """Non-negative per-kind coefficients (seconds) from observations, robust to outliers, on relative error."""
    kinds = sorted({k for o in observations for k in o.features})
    a, y = _design(observations, kinds, per_exit_s)
    keep = y > 0
    if not keep.any():
        raise EdgenasError("no usable measurement (every time is below the fixed per-exit cost)",
                           "check the units of the measurements")
    beta = robust_nnls(a[keep], y[keep])
    n_f = len(FEATURES)
    return Fit({k: tuple(float(v) for v in beta[i * n_f:(i + 1) * n_f]) for i, k in enumerate(kinds)},
               float(beta[-1]), per_exit_s)


def fit_macs_only(totals: Sequence[ModelTotal], per_exit_s: float = 0.0) -> tuple[float, float]:
    """Baseline: seconds = a + b * MACs per model (same robust relative-error fit)."""
    a = np.array([[1.0, t.macs] for t in totals])
    y = np.array([t.seconds - t.exits * per_exit_s for t in totals])
    keep = y > 0
    beta = robust_nnls(a[keep], y[keep])
    return float(beta[0]), float(beta[1])


# ------------------------------------------------------------------------------------------------ metrics
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 2:
        return float("nan")
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(n, 1)
    s = float((dx * dy)[iu].sum())
    n0 = n * (n - 1) / 2
    tx, ty = float((dx[iu] == 0).sum()), float((dy[iu] == 0).sum())
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return s / denom if denom > 0 else float("nan")


def accuracy(measured: Sequence[float], predicted: Sequence[float]) -> dict:
    """Share of predictions within +-5 % / +-10 % of the measurement (percent), Kendall tau, error quantiles."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    rel = np.abs(p / m - 1.0)
    return {"n": int(len(m)), "within_5pct": float(100.0 * np.mean(rel <= 0.05)),
            "within_10pct": float(100.0 * np.mean(rel <= 0.10)), "kendall_tau": kendall_tau(m, p),
            "median_abs_rel_error": float(np.median(rel)), "max_abs_rel_error": float(rel.max())}


def folds(models: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Models split into k folds (deterministic shuffle)."""
    uniq = sorted(set(models))
    order = np.random.default_rng(seed).permutation(len(uniq))
    return [[uniq[i] for i in order[j::k]] for j in range(k)]


def cross_validate(meas: Measurements, per_exit_s: float = 0.0, k: int = 5, seed: int = 0) -> dict | None:
    """Held-out accuracy of the fitted model and of the MACs-only baseline on model totals (None: < 3 models)."""
    models = sorted({t.model for t in meas.totals})
    if len(models) < 3:
        return None
    k = min(k, len(models))
    measured, pred, base = [], [], []
    for held in folds(models, k, seed):
        held_set = set(held)
        f = fit([o for o in meas.observations if o.model not in held_set], per_exit_s)
        a, b = fit_macs_only([t for t in meas.totals if t.model not in held_set], per_exit_s)
        for t in meas.totals:
            if t.model in held_set:
                measured.append(t.seconds)
                pred.append(f.predict(t.features, t.overhead, t.exits))
                base.append(t.overhead * a + b * t.macs + t.exits * per_exit_s)
    return {"folds": k, "model": accuracy(measured, pred), "macs_only": accuracy(measured, base)}


# ------------------------------------------------------------------------------------------------ target model
def latency_model(fitted: Fit, base_model, clock_hz: float, channel_block: int | None = None):
    """The base target's LatencyModel with the fitted kinds replaced (coefficients in cycles at clock_hz) and the
    channel block the features were computed with (default: the base's)."""
    from edgenas.targets import KindCost, LatencyModel

    kinds = dict(base_model.kinds)
    for kind, coef in fitted.kinds.items():
        kinds[kind] = KindCost(fixed_cycles=coef[0] * clock_hz, cycles_per_mac=coef[1] * clock_hz, cycles_per_byte=0.0,
                               cycles_per_input_byte=coef[2] * clock_hz, cycles_per_output_byte=coef[3] * clock_hz,
                               cycles_per_weight_byte=coef[4] * clock_hz)
    block = base_model.channel_block if channel_block is None else channel_block
    return LatencyModel(kinds=kinds, per_inference_cycles=fitted.per_inference_s * clock_hz,
                        per_exit_cycles=base_model.per_exit_cycles, dtype=base_model.dtype, channel_block=block)


@dataclass(frozen=True)
class Calibration:
    target: str                 # base target name
    latency: object             # edgenas.targets.LatencyModel
    fit: Fit
    cv: dict | None             # cross_validate(...)
    n_models: int
    n_observations: int
    sources: tuple[str, ...]
    device: str
    runtime: str
    threads: int | None
    toml: str                   # the override file's text
    channel_block: int = 1      # the one the model uses (chosen by cross-validation unless given)
    block_cv: Mapping[int, dict] = field(default_factory=dict)  # candidate channel block -> its cross_validate

    def to_dict(self) -> dict:
        """What `summary` says, as JSON values (`calibrate --json`); NaN (e.g. Kendall tau of constant
        predictions) becomes None, since JSON has no NaN."""
        from edgenas.targets import latency_to_dict

        def clean(v):
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        latency = latency_to_dict(self.latency)
        return clean({"target": self.target, "n_models": self.n_models, "n_observations": self.n_observations,
                      "sources": list(self.sources), "device": self.device, "runtime": self.runtime,
                      "threads": self.threads, "channel_block": self.channel_block,
                      "channel_block_cv": {b: cv["model"] for b, cv in sorted(self.block_cv.items())},
                      "cross_validation": self.cv, "latency": latency})

    def summary(self) -> str:
        lines = [f"calibrated '{self.target}' on {self.n_models} models ({self.n_observations} observations; "
                 f"device: {self.device or 'unknown'}, runtime: {self.runtime or 'unknown'}, "
                 f"threads: {self.threads or 'unknown'}); channel block {self.channel_block}"]
        if len(self.block_cv) > 1:
            lines.append("channel block chosen by cross-validation: " + ", ".join(
                f"{b}: {cv['model']['within_10pct']:.1f}% within +-10%" for b, cv in sorted(self.block_cv.items())))
        if self.cv is None:
            lines.append("cross-validation needs at least 3 models: no held-out error reported")
        else:
            lines.append(f"{self.cv['folds']}-fold cross-validated, held-out models:")
            for name, key in (("per-kind model", "model"), ("MACs-only baseline", "macs_only")):
                m = self.cv[key]
                lines.append(f"  {name:<19} within +-5%: {m['within_5pct']:5.1f}%  within +-10%: "
                             f"{m['within_10pct']:5.1f}%  Kendall tau: {m['kendall_tau']:.3f}  "
                             f"median |error|: {100 * m['median_abs_rel_error']:.1f}%")
        return "\n".join(lines)


# Fewest distinct models `calibrate` fits. Held-out error from cross-validation over models is the only evidence that
# the fitted coefficients predict a network they were not fitted on, and what `--json`/the summary report; with the
# default 5 folds every fold holds out at least one model only from 5 distinct models on. Fewer models (or copies of
# one, which add no information) leave the per-kind coefficients free to fit anything.
MIN_DISTINCT_MODELS = 5


def _model_signature(total: ModelTotal) -> tuple:
    # two measurements of models with the same features are one model for the fit, whatever their file names
    return (total.overhead, total.exits, tuple(sorted((k, tuple(round(v, 6) for v in f))
                                                      for k, f in total.features.items())))


def require_distinct_models(meas: Measurements) -> int:
    """The number of distinct models measured; an EdgenasError below MIN_DISTINCT_MODELS."""
    n = len({_model_signature(t) for t in meas.totals})
    if n < MIN_DISTINCT_MODELS:
        raise EdgenasError(f"the measurements cover {n} distinct model{'s' if n != 1 else ''} "
                           f"({len(meas.totals)} measured), calibrate needs at least {MIN_DISTINCT_MODELS}",
                           f"measure at least {MIN_DISTINCT_MODELS} different networks (copies of one model count "
                           "once), so that cross-validation can report the held-out error")
    return n


def _cv_rank(cv: dict | None) -> tuple:
    if cv is None:
        return (0.0, 0.0, 0.0)
    m = cv["model"]
    return (m["within_10pct"], m["within_5pct"], -m["median_abs_rel_error"])


def calibrate(target, sources: Sequence[str], device: str = "", runtime: str = "", threads: int | None = None,
              name: str | None = None, extends: str | None = None, k: int = 5,
              channel_block: int | None = None) -> Calibration:
    """Fit `target`'s latency model (a loaded edgenas.targets.Target) from measurement files; nothing is written.

    channel_block: the runtime's channel padding (LatencyModel.channel_block). None: the candidates CHANNEL_BLOCKS
    and the target's own are each fitted and the one with the best K-fold held-out accuracy is kept. Measurements
    of fewer than MIN_DISTINCT_MODELS distinct models are refused, as is a name check_target_name refuses."""
    from edgenas.targets import Provenance, check_target_name, latency_override_toml

    new_name = check_target_name(name or f"{target.name}-calibrated", "calibrated target name")
    bpe = BYTES_PER_ELEMENT[target.latency.dtype]
    per_exit_s = target.latency.per_exit_cycles / target.clock_hz
    own = target.latency.channel_block
    candidates = [channel_block] if channel_block is not None else sorted({own, *CHANNEL_BLOCKS})
    tried: dict[int, tuple] = {}
    for block in candidates:
        meas = read_measurements(sources, bpe, block)
        if not tried:
            require_distinct_models(meas)
        cv = cross_validate(meas, per_exit_s, k)
        tried[block] = (meas, cv)
        if cv is None:  # too few models to compare: keep the given / the target's block
            candidates = [channel_block if channel_block is not None else own]
            if candidates[0] != block:
                meas = read_measurements(sources, bpe, candidates[0])
                tried = {candidates[0]: (meas, None)}
            break
    block = max(tried, key=lambda b: (_cv_rank(tried[b][1]), b == own, -b))
    meas, cv = tried[block]
    fitted = fit(meas.observations, per_exit_s)
    model = latency_model(fitted, target.latency, target.clock_hz, block)
    device = device or meas.device
    runtime = runtime or meas.runtime
    threads = threads or meas.threads
    n_models = len({t.model for t in meas.totals})
    chosen = f" (chosen by cross-validation among {', '.join(map(str, sorted(tried)))})" if len(tried) > 1 else ""
    notes = (f"fitted by edgenas calibrate: non-negative per-kind coefficients (calls, MACs, input/output/weight "
             f"bytes), Huber-reweighted NNLS on relative error, {len(meas.observations)} observations from "
             f"{n_models} models ({', '.join(sorted(fitted.kinds))}); channels padded to a multiple of {block}"
             f"{chosen}; per_exit_cycles kept from the base.")
    if cv is not None:
        m, b = cv["model"], cv["macs_only"]
        notes += (f" {cv['folds']}-fold CV on held-out models: {m['within_10pct']:.1f}% within +-10%, "
                  f"{m['within_5pct']:.1f}% within +-5%, Kendall tau {m['kendall_tau']:.3f} (MACs-only baseline: "
                  f"{b['within_10pct']:.1f}% / {b['within_5pct']:.1f}% / {b['kendall_tau']:.3f}).")
    prov = Provenance(source=f"edgenas calibrate on {n_models} models: {', '.join(meas.sources)}"[:500],
                      measured_on=device or "unknown device",
                      runtime=f"{runtime or 'unknown runtime'}, {threads or 'unknown'} thread(s)",
                      date=date.today().isoformat(), notes=notes)
    text = latency_override_toml(extends or target.name, new_name, model, [prov])
    return Calibration(target=target.name, latency=model, fit=fitted, cv=cv, n_models=n_models,
                       n_observations=len(meas.observations), sources=tuple(meas.sources), device=device,
                       runtime=runtime, threads=threads, toml=text, channel_block=block,
                       block_cv={b: c for b, (_, c) in tried.items() if c is not None})


def write_override(cal: Calibration, out: Path) -> Path:
    """Write the override TOML atomically (no partial file on failure) and check that it loads."""
    import tempfile

    from edgenas.targets import load_target

    import stat

    out = Path(out)
    if out.is_file() and not out.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        # the rename below would replace it (only the folder's permissions count): honour the file's own
        raise EdgenasError(f"cannot write {out}: the file is read-only", "pass another --out, or make it writable")
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on failure
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".toml")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(cal.toml)
        load_target(tmp)  # the file must be a valid target before it takes the final name
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        folder = next((p for p in out.parents if p.exists()), None)
        why = f"{folder} is not a folder" if folder is not None and not folder.is_dir() else exc.strerror or str(exc)
        raise EdgenasError(f"cannot write {out}: {why}", "pass an --out path in a writable folder") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if tmp is not None or not out.exists():
            for folder in created:  # innermost first; only the empty folders this call made
                try:
                    folder.rmdir()
                except OSError:
                    break
    return out
