"""Cost model: one layer-level representation (CostGraph), two front ends, one analysis.

    graph = from_torch(net)            # EarlyExitNet (search) or from_onnx(model) (`edgenas analyze`)
    report = analyze(graph, target)    # MACs per exit, params, peak SRAM, flash, latency per exit
    violations(report, target.budgets, exit_rates)

torch and onnx are imported only inside the front ends, so importing this package stays cheap.
"""
from edgenas.cost.analysis import (BYTES_PER_ELEMENT, FEATURES, CostReport, LatencyPrediction, analyze,
                                   check_exit_rates, expected_latency_s, expected_macs, flash_bytes, layer_bytes,
                                   latency_fallback_note, latency_interval, latency_model_for, layer_cycles,
                                   layer_features, layer_table, limit_inside, macs_per_exit, near_edge, peak_sram_bytes, predict_latency, sram_timeline, total_params,
                                   violations)
from edgenas.cost.graph import LAYER_KINDS, CostGraph, Layer, numel, validate
from edgenas.cost.onnx_frontend import from_onnx
from edgenas.cost.torch_frontend import from_torch

__all__ = [
    "BYTES_PER_ELEMENT", "FEATURES", "CostGraph", "CostReport", "LAYER_KINDS", "LatencyPrediction", "Layer", "analyze",
    "check_exit_rates", "expected_latency_s", "expected_macs", "flash_bytes", "from_onnx", "from_torch",
    "latency_fallback_note", "latency_interval", "latency_model_for", "layer_bytes", "layer_cycles", "layer_features", "layer_table", "limit_inside",
    "macs_per_exit",
    "near_edge", "numel", "peak_sram_bytes",
    "predict_latency", "sram_timeline", "total_params", "validate", "violations",
]
