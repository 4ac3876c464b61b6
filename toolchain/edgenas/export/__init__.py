"""Export: early-exit network -> per-stage ONNX files -> If-graph (fp32, int8) + static graph + exits.json.

Modules: `stages` (torch -> stage files), `compose` (ModelProto -> ModelProto graph passes), `quantize` (QDQ int8 per
stage), `checks` (checker, onnxruntime runs, comparison with PyTorch, ORT profiling), `exits_json` (the format every
later tool reads), `onnx_export` (`export_model`, the whole pipeline). Names resolve lazily so that importing
`edgenas.export` (or reading exits.json) does not import torch or onnxruntime.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_model": "onnx_export", "export_static": "onnx_export", "ExportReport": "onnx_export",
    "ExitReport": "onnx_export",
    "export_stages": "stages", "export_stage_protos": "stages", "stage_infos": "stages", "StageModule": "stages",
    "compose_if_graph": "compose", "compose_static_graph": "compose", "stamp_metadata": "compose",
    "quantize_stages": "quantize", "ArrayCalibrationReader": "quantize", "confidence_path_nodes": "quantize",
    "stage_calibration_inputs": "quantize",
    "load_onnx": "checks", "check_onnx": "checks", "ort_session": "checks", "run_early_exit": "checks",
    "run_static": "checks", "exit_metrics": "checks", "compare_with_torch": "checks",
    "profile_ort_nodes": "checks", "count_ops": "checks", "NodeRun": "checks", "save_model": "checks",
    "torch_early_exit": "checks", "stages_in_profile": "checks",
    "write_exits_json": "exits_json", "read_exits_json": "exits_json", "exits_document": "exits_json",
    "StageInfo": "exits_json", "ExitMetrics": "exits_json",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgenas.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgenas.export.{_LAZY[name]}"), name)
