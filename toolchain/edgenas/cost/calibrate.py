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

Per-layer and end-to-end sources mix; repeated measurements of one model are aggregated (their median), their
spread is the noise floor reported with the calibration, and repeats far from their median are flagged. A CSV may
carry a `threads` column: one thread count is calibrated at a time (`threads`).

One dtype is calibrated at a time (`dtype`): "float32" fits the target's [latency] model, "int8" its [latency_int8]
model (features count int8 bytes; a target without an int8 model starts from its fp32 one, whose coefficients
survive only for kinds the measurements lack, as the provenance notes say). The other table is left untouched.

Fit (edgenas.cost.fitting): every model family (macs-only, per-kind, per-kind-shape, boosted-trees) is fitted and
cross-validated (K folds over models: a model's observations never straddle folds); the family with the best
held-out figures for the objective is written, never one worse than MACs-only (then MACs-only is written and the
reason given). The override records the chosen family, every family's CV figures, the MACs-only baseline, the noise
floor, and a 90 % prediction interval (held-out measured / predicted quantiles of the chosen family) that `analyze`
and the search report show.

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

import math
import stat
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Mapping, Sequence

from edgenas.cost.analysis import ALL_FEATURES, BYTES_PER_ELEMENT, FEATURES
from edgenas.cost.fitting import (OBJECTIVES, Fit, Selection, accuracy, cross_validate, fit, fit_family,
                                  fit_macs_only, fit_macs_only_model, folds, kendall_tau, robust_nnls, select_family,
                                  tree_correction)
from edgenas.cost.measurements import (PROFILE_FORMAT, Measurements, ModelTotal, Observation, aggregate_repeats,
                                       graph_features, read_csv, read_measurements, read_ort_profile,
                                       read_profile_json)
from edgenas.errors import EdgenasError
from edgenas.targets import (ENGINE_NAMES, LATENCY_DTYPES, LATENCY_FAMILIES, LATENCY_RUNTIMES, LATENCY_SECTIONS,
                             engine_of)
from edgenas.fileio import atomic_write_text, json_finite, missing_folders, remove_created

__all__ = [  # the calibration API: this module's own names and those of the modules it is built from
    "ALL_FEATURES", "CHANNEL_BLOCKS", "FEATURES", "MIN_DISTINCT_MODELS", "OBJECTIVES", "PROFILE_FORMAT",
    "Calibration", "Fit", "Measurements", "ModelTotal", "Observation", "Selection", "accuracy", "aggregate_repeats",
    "calibrate", "cross_validate", "fit", "fit_family", "fit_macs_only", "fit_macs_only_model", "folds",
    "graph_features", "kendall_tau", "latency_model", "read_csv", "read_measurements", "read_ort_profile",
    "read_profile_json", "require_distinct_models", "robust_nnls", "select_family", "write_override",
]
# channel blocks `calibrate` picks from by cross-validation (onnxruntime NCHWc pads to 8 on AVX2, 16 on AVX-512)
CHANNEL_BLOCKS = (1, 8, 16)


# ------------------------------------------------------------------------------------------------ target model
def latency_model(fitted: Fit, base_model, clock_hz: float, channel_block: int | None = None, runtime: str = "",
                  interval: tuple[float, float] | None = None, selection: dict | None = None,
                  folds_zero_ops: bool = False):
    """The base target's LatencyModel with the fitted kinds replaced (coefficients in cycles at clock_hz), the
    channel block the features were computed with (default: the base's; 1 for macs-only, which counts plain MACs),
    the family, its trees, the engine, the prediction interval and the selection record."""
    from edgenas.targets import SHAPE_FEATURES, KindCost, LatencyModel

    kinds = dict(base_model.kinds)
    for kind, coef in fitted.kinds.items():
        shape = {key: coef[len(FEATURES) + i] * clock_hz for i, (_, key) in enumerate(SHAPE_FEATURES)}
        kinds[kind] = KindCost(fixed_cycles=coef[0] * clock_hz, cycles_per_mac=coef[1] * clock_hz, cycles_per_byte=0.0,
                               cycles_per_input_byte=coef[2] * clock_hz, cycles_per_output_byte=coef[3] * clock_hz,
                               cycles_per_weight_byte=coef[4] * clock_hz, **shape)
    block = base_model.channel_block if channel_block is None else channel_block
    if fitted.family == "macs-only":
        block = 1
    return LatencyModel(kinds=kinds, per_inference_cycles=fitted.per_inference_s * clock_hz,
                        per_exit_cycles=base_model.per_exit_cycles, dtype=base_model.dtype, channel_block=block,
                        family=fitted.family, runtime=runtime, trees=tree_correction(fitted, clock_hz),
                        interval=interval, selection=selection, folds_zero_ops=folds_zero_ops)


@dataclass(frozen=True)
class Calibration:
    target: str                 # base target name
    latency: object             # edgenas.targets.LatencyModel
    fit: Fit
    cv: dict | None             # cross_validate(...): "model" is the chosen family's held-out accuracy
    n_models: int
    n_observations: int
    sources: tuple[str, ...]
    device: str
    runtime: str                # the engine the model is for (LATENCY_RUNTIMES, "" unknown)
    threads: int | None
    toml: str                   # the override file's text
    channel_block: int = 1      # the one the model uses (chosen by cross-validation unless given)
    block_cv: Mapping[int, dict] = field(default_factory=dict)  # candidate channel block -> its cross_validate
    family: str = "per-kind"    # the family written
    family_cv: Mapping[str, dict] = field(default_factory=dict)  # family -> held-out accuracy at the chosen block
    fallback: str = ""          # why MACs-only was written ("" when a richer family qualified)
    objective: str = "both"
    interval: tuple[float, float] | None = None
    noise_floor: float | None = None
    repeated_models: int = 0
    outliers: tuple[str, ...] = ()
    runtime_version: str = ""   # provenance text (e.g. "onnxruntime 1.32 CPU")
    dtype: str = "float32"      # the arithmetic calibrated (LATENCY_DTYPES)
    section: str = "latency"    # the override's table holding the model ([latency] or [latency_int8])

    def to_dict(self) -> dict:
        """What `summary` says, as JSON values (`calibrate --json`); NaN (e.g. Kendall tau of constant
        predictions) becomes None, since JSON has no NaN."""
        from edgenas.targets import latency_to_dict

        latency = latency_to_dict(self.latency)
        return json_finite({"target": self.target, "dtype": self.dtype, "section": self.section,
                      "n_models": self.n_models, "n_observations": self.n_observations,
                      "sources": list(self.sources), "device": self.device, "runtime": self.runtime,
                      "runtime_version": self.runtime_version, "threads": self.threads,
                      "family": self.family, "objective": self.objective, "fallback": self.fallback or None,
                      "family_cv": dict(self.family_cv), "interval": self.interval,
                      "noise_floor": self.noise_floor, "repeated_models": self.repeated_models,
                      "outliers": list(self.outliers), "channel_block": self.channel_block,
                      "channel_block_cv": {b: cv["families"].get(self.family, cv["macs_only"])
                                           for b, cv in sorted(self.block_cv.items())},
                      "cross_validation": self.cv, "latency": latency})

    def summary(self) -> str:
        engine = ENGINE_NAMES.get(self.runtime, "unknown engine")
        lines = [f"calibrated the {self.dtype} latency model [{self.section}] of '{self.target}' for {engine} on "
                 f"{self.n_models} models ({self.n_observations} observations; device: {self.device or 'unknown'}, runtime: {self.runtime_version or 'unknown'}, "
                 f"threads: {self.threads or 'unknown'}); channel block {self.channel_block}"]
        if self.noise_floor is not None:
            lines.append(f"noise floor: {100 * self.noise_floor:.1f}% (median deviation of repeated measurements, "
                         f"{self.repeated_models} model(s) measured more than once)")
        else:
            lines.append("noise floor: unknown (no model was measured more than once; repeat rows to get it)")
        for note in self.outliers[:5]:
            lines.append(f"outlier (ignored by the median): {note}")
        if len(self.outliers) > 5:
            lines.append(f"... and {len(self.outliers) - 5} more outliers")
        if len(self.block_cv) > 1:
            lines.append("channel block chosen by cross-validation: " + ", ".join(
                f"{b}: {cv['families'].get(self.family, cv['macs_only'])['within_10pct']:.1f}% within +-10%"
                for b, cv in sorted(self.block_cv.items())))
        if self.cv is None:
            lines.append(f"cross-validation needs at least 3 models: no held-out error reported; {self.family} model "
                         "written")
            return "\n".join(lines)
        lines.append(f"{self.cv['folds']}-fold cross-validated, held-out models (objective: {self.objective}):")
        rows = [*((f, self.family_cv[f]) for f in LATENCY_FAMILIES if f in self.family_cv),
                ("MACs-only baseline", self.cv["macs_only"])]
        for name, m in rows:
            mark = "*" if name == self.family else " "
            lines.append(f" {mark}{name:<19} within +-5%: {m['within_5pct']:5.1f}%  within +-10%: "
                         f"{m['within_10pct']:5.1f}%  Kendall tau: {m['kendall_tau']:.3f}  "
                         f"median |error|: {100 * m['median_abs_rel_error']:.1f}%")
        if self.fallback:
            lines.append(f"fell back to MACs-only: {self.fallback}")
        else:
            lines.append(f"wrote the {self.family} model (*): the best held-out figures, none worse than MACs-only")
        if self.latency.folds_zero_ops:
            lines.append("folded constant operands (x*0, x+0 and their dead branches) cost nothing: that fitted the "
                         "measurements better on cross-validation")
        if self.interval is not None:
            lines.append(f"90% prediction interval: {100 * (self.interval[0] - 1):+.1f}% .. "
                         f"{100 * (self.interval[1] - 1):+.1f}% of a prediction (held-out measured / predicted)")
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
                           f"({meas.n_measured or len(meas.totals)} measured), calibrate needs at least {MIN_DISTINCT_MODELS}",
                           f"measure at least {MIN_DISTINCT_MODELS} different networks (copies of one model count "
                           "once), so that cross-validation can report the held-out error")
    return n


def _score(sel: Selection) -> float:
    """The selection score of the family a Selection chose (-inf when it has none)."""
    return sel.scores.get(sel.family, -math.inf)


def _interval(acc: Mapping) -> tuple[float, float]:
    """A prediction interval from held-out ratios, widened to hold 1 (a prediction is inside its own interval)."""
    return min(float(acc["ratio_low"]), 1.0), max(float(acc["ratio_high"]), 1.0)


def _selection_record(sel: Selection, cv: dict, noise_floor: float | None, n_models: int) -> dict:
    keys = ("within_10pct", "within_5pct", "kendall_tau", "median_abs_rel_error", "n")
    record = {"family": sel.family, "objective": sel.objective, "folds": cv["folds"], "n_models": n_models,
              "cv": {f: {k: acc[k] for k in keys} for f, acc in cv["families"].items()},
              "macs_only": {k: cv["macs_only"][k] for k in keys}}
    if sel.fallback:
        record["fallback"] = sel.fallback
    if noise_floor is not None:
        record["noise_floor"] = noise_floor
    return record


def calibrate(target, sources: Sequence[str], device: str = "", runtime: str = "", threads: int | None = None,
              name: str | None = None, extends: str | None = None, k: int = 5,
              channel_block: int | None = None, families: Sequence[str] | None = None, objective: str = "both",
              runtime_version: str = "", dtype: str = "float32", notes: str = "") -> Calibration:
    """Fit `target`'s latency model (a loaded edgenas.targets.Target) from measurement files; nothing is written.

    families: the LATENCY_FAMILIES to consider (default all); the one with the best cross-validated figures for
    `objective` (OBJECTIVES: ranking = Kendall tau, budgets = share within +-10 %, both = their mean) is written,
    never one worse than MACs-only in either figure (fitting.select_family). channel_block: the runtime's channel
    padding (LatencyModel.channel_block); None: the candidates CHANNEL_BLOCKS and the target's own are each tried
    and the best pair (family, block) kept. runtime: the engine measured ("ort" or "tvm"; "" = named by the
    profiles' runtime text, if they name one). threads: the thread count calibrated (selects CSV rows). Measurements
    of fewer than MIN_DISTINCT_MODELS distinct models are refused, as is a name check_target_name refuses.
    dtype: the arithmetic measured ("float32": the [latency] model; "int8": [latency_int8], see the module text);
    notes: free text appended to the provenance entry's notes (e.g. the firmware's kernel flavour)."""
    from dataclasses import replace

    from edgenas import __version__
    from edgenas.targets import Provenance, check_target_name, latency_override_toml

    if dtype not in LATENCY_DTYPES:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use one of {', '.join(LATENCY_DTYPES)}")
    # the model refitted: the target's own of this dtype, else (int8 on a target with only [latency]) its fp32
    # model as the starting point, relabelled
    base_model = target.latency_for(dtype)
    seeded_from_fp32 = base_model is None
    if seeded_from_fp32:
        base_model = replace(target.latency, dtype=dtype)
    section = "latency" if target.latency.dtype == dtype else LATENCY_SECTIONS[dtype]
    new_name = check_target_name(name or f"{target.name}-calibrated", "calibrated target name")
    if runtime and runtime not in LATENCY_RUNTIMES:
        raise EdgenasError(f"runtime '{runtime}' is not an engine edgenas calibrates for",
                           f"use one of {', '.join(LATENCY_RUNTIMES)} (free text goes to --runtime-version)")
    families = list(LATENCY_FAMILIES if families is None else families)
    unknown = [f for f in families if f not in LATENCY_FAMILIES]
    if unknown or not families:
        raise EdgenasError(f"unknown latency model family '{unknown[0] if unknown else ''}'",
                           f"use some of {', '.join(LATENCY_FAMILIES)}")
    if objective not in OBJECTIVES:
        raise EdgenasError(f"unknown selection objective '{objective}'", f"use one of {', '.join(OBJECTIVES)}")
    bpe = BYTES_PER_ELEMENT[dtype]
    per_exit_s = base_model.per_exit_cycles / target.clock_hz
    own = base_model.channel_block
    candidates = [channel_block] if channel_block is not None else sorted({own, *CHANNEL_BLOCKS})
    if families == ["macs-only"]:
        candidates = [1]  # plain MACs: the block changes nothing
    tried: dict[int, tuple] = {}  # block -> (measurements, cross-validation, its Selection, folds_zero_ops)
    folds_matter = False
    for block in candidates:
        meas = read_measurements(sources, bpe, block, threads, engine=runtime)
        folded = None
        if not tried:
            require_distinct_models(meas)
            # a runtime may or may not fold constant operands (Layer.folded): try both when the models have any
            folded = read_measurements(sources, bpe, block, threads, folds=True, engine=runtime)
            folds_matter = [o.features for o in folded.observations] != [o.features for o in meas.observations]
        cv = cross_validate(meas, per_exit_s, k, families=families)
        if cv is None:  # too few models to compare: keep the given / the target's block
            block = channel_block if channel_block is not None else own
            if block != candidates[0]:
                meas = read_measurements(sources, bpe, block, threads, engine=runtime)
            tried = {block: (meas, None, None, False)}
            break
        tried[block] = (meas, cv, select_family(cv["families"], cv["macs_only"], objective), False)
        if folds_matter:
            folded = folded or read_measurements(sources, bpe, block, threads, folds=True, engine=runtime)
            folded_cv = cross_validate(folded, per_exit_s, k, families=families)
            folded_sel = select_family(folded_cv["families"], folded_cv["macs_only"], objective)
            if _score(folded_sel) > _score(tried[block][2]):
                tried[block] = (folded, folded_cv, folded_sel, True)
    selections = {b: sel for b, (_, _, sel, _) in tried.items() if sel is not None}
    if selections:
        block = max(selections, key=lambda b: (_score(selections[b]) if not selections[b].fallback else -math.inf,
                                               b == own, -b))
        sel = selections[block]
        if sel.fallback:  # every block fell back: MACs-only does not depend on the block
            block = own if own in selections else block
        meas, cv, _, folds = tried[block]
        cv = {**cv, "model": cv["families"].get(sel.family, cv["macs_only"])}
        family = sel.family
    else:
        block = next(iter(tried))
        meas, cv, _, folds = tried[block]
        family = "per-kind" if "per-kind" in families else families[0]
        sel = None
    fitted = fit_family(meas.observations, per_exit_s, family, meas.totals)
    interval = _interval(cv["model"]) if cv is not None else None
    n_models = len({t.model for t in meas.totals})
    selection = _selection_record(sel, cv, meas.noise_floor, n_models) if sel is not None else None
    device = device or meas.device
    runtime_version = runtime_version or meas.runtime
    runtime = runtime or engine_of(runtime_version)
    threads = threads or meas.threads
    model = latency_model(fitted, base_model, target.clock_hz, block, runtime, interval, selection,
                          folds and family != "macs-only")
    chosen = f" (chosen by cross-validation among {', '.join(map(str, sorted(tried)))})" if len(tried) > 1 else ""
    record = (f"fitted by edgenas {__version__} calibrate, {dtype} [{section}]: family {family}"
              + (f" (fell back: {sel.fallback})" if sel is not None and sel.fallback else
                 f" (chosen by {cv['folds']}-fold CV for objective {objective})" if sel is not None else "")
              + f", {len(meas.observations)} observations from {n_models} models ({', '.join(sorted(fitted.kinds))});"
              f" channels padded to a multiple of {model.channel_block}{chosen}"
              f"{'; folded constant operands cost nothing (chosen by CV)' if model.folds_zero_ops else ''}"
              "; per_exit_cycles kept from the base.")
    inherited = sorted(set(base_model.kinds) - set(fitted.kinds)) if family != "macs-only" else []
    if seeded_from_fp32 and inherited:
        record += (f" No {dtype} model in the base: kinds not measured ({', '.join(inherited)}) keep its "
                   f"{target.latency.dtype} coefficients.")
    if cv is not None:
        m, b = cv["model"], cv["macs_only"]
        record += (f" {cv['folds']}-fold CV on held-out models: {m['within_10pct']:.1f}% within +-10%, "
                   f"{m['within_5pct']:.1f}% within +-5%, Kendall tau {m['kendall_tau']:.3f} (MACs-only baseline: "
                   f"{b['within_10pct']:.1f}% / {b['within_5pct']:.1f}% / {b['kendall_tau']:.3f}).")
    record += (f" Noise floor {100 * meas.noise_floor:.1f}% ({meas.repeated_models} repeated models)."
               if meas.noise_floor is not None else " Noise floor unknown (no repeated measurements).")
    if notes:
        record += f" {notes}"
    prov = Provenance(source=f"edgenas calibrate on {n_models} models: {', '.join(meas.sources)}"[:500],
                      measured_on=device or "unknown device",
                      runtime=f"{runtime_version or 'unknown runtime'}, {threads or 'unknown'} thread(s)",
                      date=date.today().isoformat(), notes=record)
    text = latency_override_toml(extends or target.name, new_name, model, [prov], section=section)
    return Calibration(target=target.name, latency=model, fit=fitted, cv=cv, n_models=n_models,
                       n_observations=len(meas.observations), sources=tuple(meas.sources), device=device,
                       runtime=runtime, threads=threads, toml=text, channel_block=model.channel_block,
                       block_cv={b: c for b, (_, c, _, _) in tried.items() if c is not None}, family=family,
                       family_cv=dict(cv["families"]) if cv is not None else {},
                       fallback=sel.fallback if sel is not None else "", objective=objective, interval=interval,
                       noise_floor=meas.noise_floor, repeated_models=meas.repeated_models,
                       outliers=tuple(meas.outliers), runtime_version=runtime_version, dtype=dtype, section=section)


def write_override(cal: Calibration, out: Path) -> Path:
    """Write the override TOML atomically (no partial file on failure) and check that it loads before it takes the
    final name; folders this call creates are removed again when it fails."""
    from edgenas.targets import load_target

    out = Path(out)
    if out.is_file() and not out.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        # the rename would replace it (only the folder's permissions count): honour the file's own
        raise EdgenasError(f"cannot write {out}: the file is read-only", "pass another --out, or make it writable")
    created = missing_folders(out.parent)
    try:
        # the temporary file's name does not end in .toml: an absolute path is what makes load_target read a file
        atomic_write_text(out, cal.toml, check=lambda tmp: load_target(str(Path(tmp).absolute())))
    except OSError as exc:
        remove_created(created)
        folder = next((p for p in out.parents if p.exists()), None)
        why = f"{folder} is not a folder" if folder is not None and not folder.is_dir() else exc.strerror or str(exc)
        raise EdgenasError(f"cannot write {out}: {why}", "pass an --out path in a writable folder") from None
    except BaseException:
        remove_created(created)
        raise
    return out
