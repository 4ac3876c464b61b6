"""Measurements for calibration, read into observations: a measured time and the summed features of the layers it
covers (sources and the edgenas-profile/1 format: edgenas.cost.calibrate)."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgenas.cost.analysis import ALL_FEATURES, latency_kinds, layer_features, macs_per_exit, tree_descriptor
from edgenas.cost.graph import CostGraph
from edgenas.errors import EdgenasError
from edgenas.targets import ENGINE_NAMES

PROFILE_FORMAT = "edgenas-profile/1"
_FUSED_INTO_PRODUCER = ("act", "add", "mul", "reshape")  # kinds ORT folds into the kernel before them
_CSV_UNITS = {"latency_s": 1.0, "latency_ms": 1e-3, "latency_us": 1e-6}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}


# ------------------------------------------------------------------------------------------------ observations
# One layer as the fits see it: its latency kind, its layer_features and its tree_descriptor (kind index -1: the
# boosted-trees fit numbers the kinds it sees)
LayerRow = tuple[str, tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Observation:
    """One measured time and the features of what it covers."""
    model: str                                     # folds never split a model
    seconds: float
    features: Mapping[str, tuple[float, ...]]      # kind -> summed ALL_FEATURES of the covered layers
    overhead: int = 0                              # 1 when the time includes the per-inference constant
    exits: int = 0                                 # exit decisions included (costed at the base per_exit_cycles)
    layers: tuple[LayerRow, ...] = ()             # each covered layer (the learned family fits per layer)
    end_to_end: bool = False                       # the whole model's time (repeats of it are aggregated)


@dataclass(frozen=True)
class ModelTotal:
    """What cross-validation compares: a model's whole measured time and its summed features."""
    model: str
    seconds: float
    features: Mapping[str, tuple[float, ...]]
    overhead: int
    exits: int
    macs: int
    layers: tuple[LayerRow, ...] = ()


@dataclass
class Measurements:
    observations: list[Observation] = field(default_factory=list)
    totals: list[ModelTotal] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    device: str = ""
    runtime: str = ""
    threads: int | None = None
    noise_floor: float | None = None   # median relative deviation of repeated measurements of one model
    repeated_models: int = 0           # models measured more than once (what noise_floor is computed from)
    outliers: list[str] = field(default_factory=list)  # repeated measurements far from their model's median
    n_measured: int = 0                # model measurements read, repeats included (totals holds one per model)


def _add(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    return tuple(x + y for x, y in zip(a, b))


def graph_features(g: CostGraph, bytes_per_element: int, layers=None, channel_block: int = 1, folds: bool = False
                   ) -> dict[str, tuple[float, ...]]:
    """latency kind -> summed layer_features over the given layers (default: all layers, i.e. the worst-case
    path). Kinds are edgenas.cost.analysis.latency_kinds of the whole graph (fusion needs the graph's context)."""
    return graph_rows(g, bytes_per_element, layers, channel_block, folds)[0]


def graph_rows(g: CostGraph, bytes_per_element: int, layers=None, channel_block: int = 1, folds: bool = False
               ) -> tuple[dict[str, tuple[float, ...]], tuple[LayerRow, ...]]:
    """graph_features and the LayerRow of each layer; folds: leave out the layers a constant-folding runtime skips
    (Layer.folded, LatencyModel.folds_zero_ops)."""
    kinds = dict(zip((layer.name for layer in g.layers), latency_kinds(g, channel_block)))
    out: dict[str, tuple[float, ...]] = {}
    rows = []
    for layer in (g.layers if layers is None else layers):
        if folds and layer.folded:
            continue
        f = layer_features(layer, bytes_per_element, channel_block)
        kind = kinds[layer.name]
        out[kind] = _add(out.get(kind, (0,) * len(ALL_FEATURES)), f)
        rows.append((kind, f, tree_descriptor(layer, kind, (), f)))
    return out, tuple(rows)


def _merge_features(parts) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = _add(out.get(k, (0,) * len(ALL_FEATURES)), v)
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


def read_csv(path: Path, bpe: int, channel_block: int = 1, threads: int | None = None, folds: bool = False
             ) -> Measurements:
    """End-to-end measurements: a header with `model` and one of latency_s / latency_ms / latency_us, optionally
    `threads` (the rows measured with `threads` are used; a CSV mixing thread counts needs one chosen). A model may
    appear on several rows (repeated measurements: aggregate_repeats takes their median)."""
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
                   f"{', '.join(_CSV_UNITS)}", "e.g. `model,latency_ms` (optionally `threads`)")
    if len(rows) < 2:
        raise _bad(str(path), "has a header but no measurements", "add one row per model")
    i_model, i_lat = header.index("model"), header.index(units[0])
    i_threads = header.index("threads") if "threads" in header else None
    out = Measurements(sources=[str(path)])
    graphs: dict[Path, CostGraph] = {}
    unit = units[0][len("latency_"):]
    by_threads: dict[int | None, list[tuple[Path, float, str]]] = {}
    for n, row in zip(line_numbers[1:], rows[1:]):
        where = f"{path}:{n}"
        if len(row) != len(header):
            raise _bad(where, f"has {len(row)} fields, the header has {len(header)}", "one value per column")
        try:
            value = float(row[i_lat])
        except ValueError:
            raise _bad(where, f"latency {row[i_lat][:40]!r} is not a number", f"write the time in {unit}") from None
        seconds = _positive_time(value, where, units[0], unit, _CSV_UNITS[units[0]], typed=row[i_lat])
        row_threads = None
        if i_threads is not None:
            text = row[i_threads].strip()
            if not text.isdigit() or int(text) < 1:
                raise _bad(where, f"threads {text[:20]!r} is not a positive whole number", "e.g. 1 or 4")
            row_threads = int(text)
        by_threads.setdefault(row_threads, []).append(((path.parent / row[i_model].strip()).resolve(), seconds, where))
    if threads is not None and i_threads is not None:
        if threads not in by_threads:
            raise _bad(str(path), f"has no rows measured with {threads} thread(s) (it has "
                       f"{', '.join(map(str, sorted(by_threads)))})", "pass --threads with a count the CSV holds")
        chosen = threads
    elif len(by_threads) > 1:
        raise _bad(str(path), f"mixes measurements with {', '.join(map(str, sorted(by_threads)))} threads",
                   "calibrate one thread count at a time: pass --threads N")
    else:
        chosen = next(iter(by_threads))
    out.threads = chosen
    for model_path, seconds, where in by_threads[chosen]:
        if model_path not in graphs:
            graphs[model_path] = _graph(model_path, where)
        g = graphs[model_path]
        feats, rows_ = graph_rows(g, bpe, channel_block=channel_block, folds=folds)
        key = str(model_path)
        out.observations.append(Observation(key, seconds, feats, overhead=1, exits=g.n_exits, layers=rows_,
                                            end_to_end=True))
        out.totals.append(ModelTotal(key, seconds, feats, 1, g.n_exits, macs_per_exit(g)[-1], rows_))
    return out


# A repeated measurement of one model further than this from the model's median (relative) is reported as an
# outlier, unless the model's own spread is wider (OUTLIER_MADS robust standard deviations)
OUTLIER_REL = 0.25
OUTLIER_MADS = 5.0


def aggregate_repeats(meas: Measurements) -> Measurements:
    """One end-to-end observation and one total per model: repeated whole-model measurements (rows of one or several
    CSVs, total_s of several profiles) become their median, and the repeats give the noise floor (median over
    repeated models of the median relative deviation from the model's median); repeats far from their median are
    listed in `outliers` (the median already ignores them)."""
    whole: dict[str, list[Observation]] = {}
    for o in meas.observations:
        if o.end_to_end:
            whole.setdefault(o.model, []).append(o)
    observations = [o for o in meas.observations if not o.end_to_end]
    deviations, outliers = [], []
    for model, obs in whole.items():
        times = np.array([o.seconds for o in obs])
        median = float(np.median(times))
        observations.append(Observation(model, median, obs[0].features, obs[0].overhead, obs[0].exits,
                                        obs[0].layers, True))
        if len(obs) > 1:
            rel = np.abs(times / median - 1.0)
            deviations.append(float(np.median(rel)))
            limit = max(OUTLIER_REL, OUTLIER_MADS * 1.4826 * float(np.median(rel)))
            outliers += [f"{Path(model).name}: {t * 1e3:.4g} ms vs median {median * 1e3:.4g} ms"
                         for t, r in zip(times, rel) if r > limit]
    totals: dict[str, list[ModelTotal]] = {}
    for t in meas.totals:
        totals.setdefault(t.model, []).append(t)
    merged_totals = []
    for model, ts in totals.items():
        whole_runs = [t for t in ts if t.overhead] or ts  # a whole-inference time beats a sum of layers
        pick = whole_runs[0]
        merged_totals.append(ModelTotal(model, float(np.median([t.seconds for t in whole_runs])), pick.features,
                                        pick.overhead, pick.exits, pick.macs, pick.layers))
    return Measurements(observations=observations, totals=merged_totals, sources=meas.sources, device=meas.device,
                        runtime=meas.runtime, threads=meas.threads,
                        noise_floor=float(np.median(deviations)) if deviations else meas.noise_floor,
                        repeated_models=len(deviations), outliers=outliers, n_measured=len(meas.totals))


def _layer_entry(e, where: str, g: CostGraph | None, by_name: dict, bpe: int, channel_block: int = 1,
                 folds: bool = False):
    if not isinstance(e, dict):
        raise _bad(where, "must be an object", 'e.g. {"name": "conv1", "latency_s": 2e-4}')
    if "kind" in e:
        from edgenas.targets import LATENCY_KINDS

        if e["kind"] not in LATENCY_KINDS:
            raise _bad(where, f"kind {e['kind']!r} is not a layer kind", f"use one of {', '.join(LATENCY_KINDS)}")
        vals = []
        for f in ALL_FEATURES[1:]:
            v = e.get(f, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise _bad(where, f"{f} must be a non-negative number, got {v!r}", "give MACs and byte counts")
            vals.append(float(v))
        features = (1.0, *vals)
        # no shape known: the trees see the kind, MACs and bytes, and a 1 x 1 plane
        descriptor = (-1.0, math.log2(1 + vals[0]), 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                      *(math.log2(1 + v) for v in vals[1:4]))
        return {e["kind"]: features}, ((e["kind"], features, descriptor),)
    names = e.get("names", [e["name"]] if "name" in e else None)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _bad(where, "needs `name`, `names` (a list) or inline features (`kind`, `macs`, ...)",
                   "see the edgenas-profile/1 format in edgenas.cost.calibrate")
    if g is None:
        raise _bad(where, "names layers but its model has no `model` file", "add \"model\": \"path.onnx\"")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise _bad(where, f"layer {missing[0]!r} is not a layer of the model", "use the names `edgenas analyze` prints")
    return graph_rows(g, bpe, [by_name[n] for n in names], channel_block, folds)


def read_profile_json(path: Path, bpe: int, doc=None, channel_block: int = 1, folds: bool = False) -> Measurements:
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
    floor = doc.get("noise_floor")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or
                              not math.isfinite(floor) or floor < 0):
        raise _bad(str(path), f"key `noise_floor` must be a non-negative number, got {floor!r}",
                   "e.g. \"noise_floor\": 0.02 (the relative spread of re-measurements)")
    out = Measurements(sources=[str(path)], device=str(doc.get("device", "")), runtime=str(doc.get("runtime", "")),
                       threads=threads, noise_floor=None if floor is None else float(floor))
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
        parts, layer_sum, part_rows = [], 0.0, ()
        for j, e in enumerate(layers):
            w = f"{where}.layers[{j}]"
            feats, rows = _layer_entry(e, w, g, by_name, bpe, channel_block, folds)
            seconds = _positive_time(e.get("latency_s") if isinstance(e, dict) else None, w, "latency_s")
            out.observations.append(Observation(key, seconds, feats, layers=rows))
            parts.append(feats)
            part_rows += rows
            layer_sum += seconds
        _finish_model(out, key, g, bpe, parts, layer_sum, total, where, channel_block, part_rows, folds)
    return out


def _finish_model(out: Measurements, key: str, g, bpe: int, parts, layer_sum: float, total, where: str,
                  channel_block: int = 1, layer_rows: tuple = (), folds: bool = False) -> None:
    """The overhead observation (whole time minus the layers) and the model's total for cross-validation;
    layer_rows: the LayerRows of the measured parts."""
    rows = ()
    if g is not None and (total is not None or not parts):
        (feats, rows), exits, macs = graph_rows(g, bpe, None, channel_block, folds), g.n_exits, macs_per_exit(g)[-1]
    else:
        feats, exits = _merge_features(parts), 0
        macs = int(sum(v[1] for v in feats.values()))
    if total is None:
        out.totals.append(ModelTotal(key, layer_sum, feats, 0, 0, macs, rows or layer_rows))
        return
    if parts:
        if total < layer_sum * (1 - 1e-9):
            raise _bad(where, f"total_s {total:.6g} s is less than the sum of its layers {layer_sum:.6g} s",
                       "total_s is the whole inference, layers included")
        if total > layer_sum:
            out.observations.append(Observation(key, total - layer_sum, {}, overhead=1, exits=exits))
    else:
        out.observations.append(Observation(key, total, feats, overhead=1, exits=exits, layers=rows, end_to_end=True))
    out.totals.append(ModelTotal(key, total, feats, 1, exits, macs, rows or layer_rows))


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(str(path), "not found", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise _bad(str(path), f"is not valid JSON: {msg}", "pass the file the profiler wrote, unmodified") from None


def read_ort_profile(model_path: Path, profile_path: Path, bpe: int, channel_block: int = 1, folds: bool = False
                     ) -> Measurements:
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
    parts, layer_sum, part_rows = [], 0.0, ()
    for layers, nodes in groups:
        seconds = sum(node_s[n] for n in nodes)
        if seconds <= 0:
            continue
        _positive_time(seconds, f"{where}: kernels {', '.join(nodes)[:80]}", "kernel time")
        feats, rows = graph_rows(g, bpe, layers, channel_block, folds)
        out.observations.append(Observation(key, seconds, feats, layers=rows))
        parts.append(feats)
        part_rows += rows
        layer_sum += seconds
    # model_run is not used as the whole-inference time: with profiling on, ORT's per-node bookkeeping inflates
    # it (and every kernel time is rounded to whole microseconds), so only kernel times are observations.
    _finish_model(out, key, g, bpe, parts, layer_sum, None, where, channel_block, part_rows, folds)
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


HOST_PROFILE_FORMAT = "edgenas-host-profile/1"  # what `edgenas profile --device host|ssh:...` writes


def read_host_profile(path: Path, bpe: int, doc: dict, channel_block: int = 1, threads: int | None = None,
                      folds: bool = False, engine: str = "") -> Measurements:
    """A profile of a host / Cortex-A build folder (`edgenas profile --out`): one end-to-end observation per exit
    taken, of the path to that exit (segments and heads 0..i of the build's model.onnx, i + 1 exit decisions),
    timed by `engine` ("ort" or "tvm"; needed when the profile timed both) at `threads` (needed when it timed
    several counts). Each exit's path counts as a model of its own for cross-validation."""
    where = str(path)
    runs_by_engine = {e: doc[key]["runs"] for e, key in ENGINE_NAMES.items()
                      if isinstance(doc.get(key), dict) and doc[key].get("runs")}
    if not runs_by_engine:
        raise _bad(where, "holds no timed run of onnxruntime or tvm", "profile the build again; check its errors")
    if engine and engine not in runs_by_engine:
        raise _bad(where, f"has no {ENGINE_NAMES.get(engine, engine)} timings (it has "
                   f"{', '.join(ENGINE_NAMES[e] for e in runs_by_engine)})", "profile with --runtime " + engine)
    if not engine:
        if len(runs_by_engine) > 1:
            raise _bad(where, "times both onnxruntime and tvm", "pass --runtime ort or --runtime tvm: the engine "
                       "the target deploys with")
        engine = next(iter(runs_by_engine))
    runs = runs_by_engine[engine]
    if threads is None and len(runs) > 1:
        raise _bad(where, f"times {', '.join(sorted(runs))} threads", "calibrate one thread count: pass --threads N")
    key = str(threads) if threads is not None else next(iter(runs))
    if key not in runs:
        raise _bad(where, f"has no run with {threads} thread(s) (it has {', '.join(sorted(runs))})",
                   "pass --threads with a count the profile timed")
    folder = Path(str(doc.get("artefact", "")))
    model_path = folder / str((doc.get("onnxruntime") or {}).get("file", "model.onnx"))  # the build's ONNX graph
    if not model_path.is_file():
        raise _bad(where, f"the build folder it profiled ({folder}) holds no {model_path.name}",
                   "calibrate on the machine that has the build folder, or fix the profile's `artefact` path")
    g = _graph(model_path, where)
    run = runs[key]
    out = Measurements(sources=[str(path)], device=str(doc.get("device", "")),
                       runtime=f"{ENGINE_NAMES[engine]} {doc.get('versions', {}).get(ENGINE_NAMES[engine], '')}".strip(),
                       threads=int(key), noise_floor=(run.get("timing") or {}).get("noise_floor"))
    macs = macs_per_exit(g)
    for exit_name, row in sorted(run.get("exits", {}).items()):
        e = int(exit_name)
        seconds = _positive_time(row["latency_us"]["median"], f"{where}: exit {e}", "latency_us", "us", 1e-6)
        feats, rows = graph_rows(g, bpe, [layer for layer in g.layers if layer.index <= e], channel_block, folds)
        model = f"{model_path}#exit{e}"
        out.observations.append(Observation(model, seconds, feats, overhead=1, exits=e + 1, layers=rows,
                                            end_to_end=True))
        out.totals.append(ModelTotal(model, seconds, feats, 1, e + 1, macs[e], rows))
    return out


def read_measurements(sources: Sequence[str], bpe: int, channel_block: int = 1, threads: int | None = None,
                      folds: bool = False, engine: str = "") -> Measurements:
    """Every source: `*.csv`, an edgenas-profile/1 `*.json`, an `edgenas profile` host/ssh profile (engine picks
    its onnxruntime or TVM timings), or `MODEL.onnx=ORT_PROFILE.json`; per-layer and end-to-end sources mix, and
    repeated measurements of one model are aggregated (aggregate_repeats). `threads`: the thread count to
    calibrate for (selects CSV rows and profile runs; a profile measured with another count is refused)."""
    if not sources:
        raise EdgenasError("no profiles given", "pass per-layer profile JSON files, MODEL.onnx=ORT.json pairs or a CSV")
    merged = Measurements()
    floors = []
    for src in sources:
        src = str(src)
        if "=" in src and src.split("=", 1)[0].endswith(".onnx"):
            model, prof = src.split("=", 1)
            m = read_ort_profile(Path(model), Path(prof), bpe, channel_block, folds)
        elif src.lower().endswith(".csv"):
            m = read_csv(Path(src), bpe, channel_block, threads, folds)
        else:
            doc = _load_json(Path(src))
            if isinstance(doc, list) or (isinstance(doc, dict) and "traceEvents" in doc):
                raise _bad(src, "is an onnxruntime profile without its model",
                           f"pass it as MODEL.onnx={src}")
            if isinstance(doc, dict) and doc.get("format") == HOST_PROFILE_FORMAT:
                m = read_host_profile(Path(src), bpe, doc, channel_block, threads, folds, engine)
            else:
                m = read_profile_json(Path(src), bpe, doc, channel_block, folds)
        if threads is not None and m.threads is not None and m.threads != threads:
            raise _bad(src, f"was measured with {m.threads} thread(s), not {threads}",
                       "calibrate one thread count at a time: leave this file out or change --threads")
        if merged.threads is not None and m.threads is not None and m.threads != merged.threads:
            raise _bad(src, f"was measured with {m.threads} thread(s), an earlier source with {merged.threads}",
                       "calibrate one thread count at a time: pass --threads N and the files measured so")
        merged.observations += m.observations
        merged.totals += m.totals
        merged.sources += m.sources
        if m.noise_floor is not None:
            floors.append(m.noise_floor)
        for attr in ("device", "runtime"):
            if getattr(m, attr) and getattr(m, attr) not in getattr(merged, attr).split(" | "):
                setattr(merged, attr, " | ".join(x for x in (getattr(merged, attr), getattr(m, attr)) if x))
        merged.threads = merged.threads or m.threads
    merged.noise_floor = float(np.median(floors)) if floors else None
    return aggregate_repeats(merged)
