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

Fit (edgenas.cost.fitting): non-negative least squares on *relative* error (latencies span orders of magnitude)
with a Huber loss (scipy.optimize.least_squares), so that a few disturbed measurements do not pull the coefficients. Held-out error comes from
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

import math
import stat
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Mapping, Sequence

from edgenas.cost.analysis import BYTES_PER_ELEMENT, FEATURES
from edgenas.cost.fitting import Fit, accuracy, cross_validate, fit, fit_macs_only, folds, kendall_tau, robust_nnls
from edgenas.cost.measurements import (PROFILE_FORMAT, Measurements, ModelTotal, Observation, graph_features,
                                       read_csv, read_measurements, read_ort_profile, read_profile_json)
from edgenas.errors import EdgenasError
from edgenas.fileio import atomic_write_text, missing_folders, remove_created

__all__ = [  # the calibration API: this module's own names and those of the modules it is built from
    "CHANNEL_BLOCKS", "FEATURES", "MIN_DISTINCT_MODELS", "PROFILE_FORMAT", "Calibration", "Fit", "Measurements",
    "ModelTotal", "Observation", "accuracy", "calibrate", "cross_validate", "fit", "fit_macs_only", "folds",
    "graph_features", "kendall_tau", "latency_model", "read_csv", "read_measurements", "read_ort_profile",
    "read_profile_json", "require_distinct_models", "robust_nnls", "write_override",
]
# channel blocks `calibrate` picks from by cross-validation (onnxruntime NCHWc pads to 8 on AVX2, 16 on AVX-512)
CHANNEL_BLOCKS = (1, 8, 16)


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
             f"bytes), Huber-loss non-negative least squares on relative error, {len(meas.observations)} observations from "
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
