"""`export_model`: early-exit network -> an export folder, checked against PyTorch.

Folder layout (written into a temp folder next to `out_dir`, renamed into place only when every check passed):

    model.onnx          nested-If early-exit graph, fp32; outputs logits (1, K), exit_index (1,) int64
    model.static.onnx   every exit as an output (logits_i, conf_i), no control flow; for analysis
    model.int8.onnx     nested-If graph composed from the QDQ int8 stages
    stages/stage_i.onnx, stages_int8/stage_i.onnx   per-stage files (see stages.py), the compilers' input
    exits.json          thresholds, MACs, exit rates and accuracies (format in exits_json.py)

Checks after export: ONNX checker (full) on every model; onnxruntime vs PyTorch eager (`net(x)`, batch 1) on the
whole check set: same exit on 100% of samples and max |logit difference| <= edgenas.agreement.LOGIT_TOLERANCE
(1e-4) on them, else EdgenasError (nothing is written). For int8 the accuracy drop and the exit agreement with fp32
are reported, not enforced.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from edgenas import __version__
from edgenas.agreement import LOGIT_TOLERANCE, Agreement, agreement
from edgenas.errors import EdgenasError
from edgenas.export.checks import (compare_with_torch, exit_metrics, load_onnx, ort_session, run_early_exit, run_static,
                                   save_model)
from edgenas.export.compose import compose_if_graph, compose_static_graph, stamp_metadata
from edgenas.export.exits_json import EXITS_FILE, ExitMetrics, exits_document, write_exits_json
from edgenas.export.quantize import (SCHEME, STAGES_INT8_DIR, array_reader_factory, quantize_stages,
                                     stage_calibration_inputs)
from edgenas.export.stages import eval_mode, export_stage_protos, stage_infos
from edgenas.fileio import missing_folders, naming_path, nearest_existing, publish_folder, remove_created, temp_folder
from edgenas.nn.early_exit import EarlyExitNet

MODEL_FILE = "model.onnx"
STATIC_FILE = "model.static.onnx"
INT8_FILE = "model.int8.onnx"
STATIC_CHECK_SAMPLES = 32     # the static graph is checked on the first samples of the check set


@dataclass(frozen=True)
class ExitReport:
    index: int
    threshold: float | None
    macs: int
    exit_rate: float
    accuracy: float | None         # of the samples leaving here; None if none did
    int8_exit_rate: float
    int8_accuracy: float | None


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    n_exits: int
    thresholds: tuple[float, ...]
    exits: tuple[ExitReport, ...]
    n_check_samples: int           # the labelled test samples every check below ran on
    fp32_accuracy: float           # of the nested-If graph in onnxruntime
    fp32_exit_agreement: float     # vs PyTorch eager; 1.0 by construction (the export fails otherwise)
    fp32_max_abs_diff: float
    int8_accuracy: float
    int8_accuracy_drop: float      # fp32 - int8, in [0, 1] units (0.02 = 2 points)
    int8_exit_agreement: float     # share of samples taking the same exit as fp32 ORT
    int8_max_abs_diff: float       # vs fp32 ORT, on samples that took the same exit
    expected_macs: float
    sizes: Mapping[str, int] = field(default_factory=dict)  # file (relative) -> bytes

    # the files of the export folder
    model = property(lambda self: self.out_dir / MODEL_FILE)
    static_model = property(lambda self: self.out_dir / STATIC_FILE)
    int8_model = property(lambda self: self.out_dir / INT8_FILE)
    exits_json = property(lambda self: self.out_dir / EXITS_FILE)

    def summary(self) -> str:
        """What `edgenas export` prints: files, the checks, and one line per exit."""
        lines = [f"exported to {self.out_dir}: {MODEL_FILE} ({self.sizes.get(MODEL_FILE, 0) / 1024:.0f} KiB), "
                 f"{STATIC_FILE}, {INT8_FILE} ({self.sizes.get(INT8_FILE, 0) / 1024:.0f} KiB), {EXITS_FILE}",
                 f"checked on {self.n_check_samples} test samples: fp32 accuracy {self.fp32_accuracy:.4f}, same exit as "
                 f"PyTorch {self.fp32_exit_agreement:.1%}, max |dlogit| {self.fp32_max_abs_diff:.1e} (<= {LOGIT_TOLERANCE:g}); "
                 f"int8 accuracy {self.int8_accuracy:.4f} (drop {self.int8_accuracy_drop * 100:+.2f} pt), same exit as "
                 f"fp32 {self.int8_exit_agreement:.1%}",
                 f"expected MACs {self.expected_macs:,.0f} of {self.exits[-1].macs:,} worst case"]
        for e in self.exits:
            thr = "final" if e.threshold is None else f"threshold {e.threshold:g}"
            acc = "-" if e.accuracy is None else f"{e.accuracy:.4f}"
            lines.append(f"  exit {e.index} ({thr}): {e.macs:,} MACs, rate {e.exit_rate:.3f}, accuracy {acc}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["sizes"] = dict(self.sizes)
        return d


# ---------------------------------------------------------------------------------------------------------------
# input validation
def _check_samples(net: EarlyExitNet, x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    want = tuple(net.input_shape)
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want or len(x) == 0:
        raise EdgenasError(f"{what} has shape {list(x.shape)}, expected [N, {', '.join(map(str, want))}] with N >= 1",
                           "pass images shaped like the network input, stacked on axis 0")
    if not np.isfinite(x).all():
        raise EdgenasError(f"{what} contains NaN or inf", "clean the data")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_inputs(net: EarlyExitNet, check_x, check_y, calib_x, macs_per_exit) -> tuple:
    check_x = _check_samples(net, check_x, "check_x")
    calib_x = _check_samples(net, calib_x, "calib_x")
    check_y = np.asarray(check_y).reshape(-1)
    if len(check_y) != len(check_x):
        raise EdgenasError(f"check_y has {len(check_y)} labels for {len(check_x)} samples", "pass one label per sample")
    if not np.issubdtype(check_y.dtype, np.integer) or check_y.min() < 0 or check_y.max() >= net.n_classes:
        raise EdgenasError(f"check_y must hold class indices in [0, {net.n_classes})", "pass integer labels")
    macs = [int(m) for m in macs_per_exit]
    if len(macs) != net.n_exits or any(m < 0 for m in macs):
        raise EdgenasError(f"macs_per_exit {macs} does not give {net.n_exits} non-negative counts",
                           "give the cumulative MACs to reach every exit, heads included")
    if not all(np.isfinite(t) for t in net.thresholds):
        raise EdgenasError(f"thresholds must be finite, got {net.thresholds}", "choose thresholds again")
    return check_x, check_y.astype(np.int64), calib_x, macs


def _prepare_out_dir(out_dir: Path) -> tuple[Path, list[Path]]:
    """Refuse to replace a folder that is not an earlier export (it would be deleted). Returns the folder and the
    parent folders created for it (outermost first), which a failed export removes again."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise EdgenasError(f"{out_dir} exists and is not a folder", "choose another --out")
        if any(out_dir.iterdir()) and not (out_dir / EXITS_FILE).is_file():
            raise EdgenasError(f"{out_dir} is not empty and holds no earlier export",
                               "choose an empty or new folder for --out")
    created = missing_folders(out_dir.parent)
    below = nearest_existing(out_dir)
    if not below.is_dir():
        raise EdgenasError(f"--out {out_dir} is below {below}, which is a file", "choose another --out")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_created(created)
        raise
    return out_dir, created


# ---------------------------------------------------------------------------------------------------------------
# checks
def _require_match(ag: Agreement) -> None:
    if not ag.passed:  # a NaN difference fails too
        raise EdgenasError(
            f"the exported model does not reproduce PyTorch: exit differs on {ag.n_exit_mismatches} of "
            f"{ag.n_samples} samples, max |logit difference| {ag.max_abs_diff:.3g} (limit {LOGIT_TOLERANCE:g})",
            "a threshold within float rounding of a sample's exit score flips that sample: move the threshold by "
            "1e-6; otherwise report the network")


def _check_static(net: EarlyExitNet, static_path: Path, x: np.ndarray) -> None:
    x = x[:STATIC_CHECK_SAMPLES]
    out = run_static(ort_session(static_path), x)
    with eval_mode(net), torch.no_grad():
        logits, conf = net.forward_all(torch.from_numpy(x))
    diffs = [float(np.abs(out[f"logits_{i}"] - lg.numpy()).max()) for i, lg in enumerate(logits)]
    diffs += [float(np.abs(out[f"conf_{i}"] - conf[:, i].numpy()).max()) for i in range(conf.shape[1])]
    diff = max(diffs)
    if not all(d <= LOGIT_TOLERANCE for d in diffs):  # a NaN fails (max() would hide it)
        raise EdgenasError(f"the static model differs from PyTorch by {diff:.3g} (limit {LOGIT_TOLERANCE:g})",
                           "report the network: an exported stage does not reproduce its module")


# ---------------------------------------------------------------------------------------------------------------
def export_static(net: EarlyExitNet, path: Path) -> Path:
    """Write the all-exits static graph (no control flow) to `path`."""
    model = compose_static_graph(export_stage_protos(net))
    model = stamp_metadata(model, {"edgenas.kind": "static-all-exits", "edgenas.n_exits": net.n_exits})
    return save_model(model, Path(path))


def _metadata(net: EarlyExitNet, meta: Mapping[str, Any], kind: str) -> dict[str, str]:
    return {
        "edgenas.producer": f"edgenas {__version__}",
        "edgenas.kind": kind,
        "edgenas.n_exits": str(net.n_exits),
        "edgenas.n_classes": str(net.n_classes),
        "edgenas.thresholds": json.dumps([float(t) for t in net.thresholds]),
        "edgenas.exit_rule": "cumulative-survival",
        "edgenas.candidate": str(meta.get("candidate", "")),
        "edgenas.meta": json.dumps(dict(meta), default=str, sort_keys=True),
    }


def _sizes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _exit_reports(net: EarlyExitNet, macs: Sequence[int], fp32: ExitMetrics, int8: ExitMetrics,
                  ) -> tuple[ExitReport, ...]:
    return tuple(ExitReport(index=i, threshold=net.thresholds[i] if i < net.n_exits - 1 else None, macs=macs[i],
                            exit_rate=fp32.exit_rates[i], accuracy=fp32.exit_accuracies[i],
                            int8_exit_rate=int8.exit_rates[i], int8_accuracy=int8.exit_accuracies[i])
                 for i in range(net.n_exits))


def export_model(net: EarlyExitNet, out_dir: Path, check_x: np.ndarray, check_y: np.ndarray, calib_x: np.ndarray,
                 macs_per_exit: Sequence[int], meta: Mapping[str, Any] | None = None) -> ExportReport:
    """Export `net` into `out_dir` (fp32 If-graph, static graph, int8 If-graph, stage files, exits.json).

    check_x/check_y: the labelled test split (N, C, H, W) / (N,), used for the ORT-vs-PyTorch check and the exit
    statistics. calib_x: training images for int8 calibration (a few hundred are plenty). macs_per_exit: MACs to
    reach each exit, earlier heads included. meta: free-form provenance (run folder, candidate id) for the files.
    """
    meta = dict(meta or {})
    check_x, check_y, calib_x, macs = _check_inputs(net, check_x, check_y, calib_x, macs_per_exit)
    out_dir, created = _prepare_out_dir(out_dir)
    try:
        tmp = temp_folder(out_dir)
    except OSError:
        remove_created(created)
        raise
    try:
        infos = stage_infos(net)
        protos = export_stage_protos(net)
        stage_paths = [save_model(m, tmp / info.file) for m, info in zip(protos, infos)]

        model = stamp_metadata(compose_if_graph(protos, net.thresholds), _metadata(net, meta, "early-exit-if"))
        save_model(model, tmp / MODEL_FILE)
        static = stamp_metadata(compose_static_graph(protos), _metadata(net, meta, "static-all-exits"))
        save_model(static, tmp / STATIC_FILE)

        ag, fp32_logits, fp32_exits = compare_with_torch(net, ort_session(tmp / MODEL_FILE), check_x)
        _require_match(ag)
        _check_static(net, tmp / STATIC_FILE, check_x)
        fp32 = exit_metrics(fp32_logits, fp32_exits, check_y, net.n_exits)

        calib_inputs = stage_calibration_inputs(stage_paths, calib_x)
        int8_paths = quantize_stages(stage_paths, array_reader_factory(calib_inputs), tmp / STAGES_INT8_DIR)
        int8_model = compose_if_graph([load_onnx(p) for p in int8_paths], net.thresholds)
        int8_model = stamp_metadata(int8_model, {**_metadata(net, meta, "early-exit-if-int8"),
                                                 "edgenas.quantization": json.dumps(SCHEME, sort_keys=True)})
        save_model(int8_model, tmp / INT8_FILE)
        int8_logits, int8_exits = run_early_exit(ort_session(tmp / INT8_FILE), check_x)
        int8 = exit_metrics(int8_logits, int8_exits, check_y, net.n_exits)
        ag8 = agreement(int8_logits, int8_exits, fp32_logits, fp32_exits)

        infos = [replace(info, int8_file=f"{STAGES_INT8_DIR}/stage_{info.index}.onnx") for info in infos]
        fp32_checks = {"exit_agreement_vs_torch": ag.exit_agreement, "max_abs_logit_diff": ag.max_abs_diff}
        int8_checks = {"accuracy_drop": fp32.accuracy - int8.accuracy, "exit_agreement": ag8.exit_agreement,
                       "max_abs_logit_diff_vs_fp32": ag8.max_abs_diff, "scheme": SCHEME}
        doc = exits_document(infos, net.n_classes, net.thresholds, macs_per_exit=macs, fp32=fp32, int8=int8,
                             fp32_checks=fp32_checks, int8_checks=int8_checks,
                             files={"model": MODEL_FILE, "static": STATIC_FILE, "int8": INT8_FILE}, meta=meta)
        write_exits_json(tmp, doc)
        sizes = _sizes(tmp)
        publish_folder(tmp, out_dir)  # an earlier export is replaced as a whole
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. disk full: the CLI's one line names the folder
            raise naming_path(exc, out_dir) from None
        raise
    return ExportReport(
        out_dir=out_dir, n_exits=net.n_exits, thresholds=tuple(net.thresholds),
        exits=_exit_reports(net, macs, fp32, int8), n_check_samples=len(check_x),
        fp32_accuracy=fp32.accuracy, fp32_exit_agreement=ag.exit_agreement, fp32_max_abs_diff=ag.max_abs_diff,
        int8_accuracy=int8.accuracy, int8_accuracy_drop=fp32.accuracy - int8.accuracy,
        int8_exit_agreement=ag8.exit_agreement, int8_max_abs_diff=ag8.max_abs_diff,
        expected_macs=float(doc["expected_macs"]), sizes=sizes)
