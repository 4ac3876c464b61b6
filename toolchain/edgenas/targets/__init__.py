"""Targets are data: one TOML file per device, validated once into frozen dataclasses.

A target names the CPU and its LLVM target dict for TVM, the clock, SRAM and flash, the runtime allowances, the
default budgets, the latency model (coefficients per operator kind) and the provenance of those coefficients.
`[latency]` is the float32 model; an optional `[latency_int8]` (same keys) is the int8 model, which
`Target.latency_for("int8")` returns (None without one: int8 predictions then say they used the fp32 model).

`load_target` takes a shipped name (`edgenas targets` lists them) or a path to a user file. A user file may start
with `extends = "cortex-m7"` (a shipped name, or a path relative to the file) and override only what differs:
tables merge key by key, other values replace, and `[[provenance]]` entries are appended to the base's, so a
calibrated target keeps the record of where the base numbers came from.

Units in budget strings follow MCU datasheets: KB = K = KiB = 1024 bytes and MB = M = MiB = 1024**2 bytes
("320KB" of SRAM on an STM32F746 is 327,680 bytes). MAC counts use decimal prefixes (k = 1e3, M = 1e6, G = 1e9).

Modules: `model` (the dataclasses and operator kinds), `units` (budget strings, names, command-line overrides),
`loading` (files, `extends`), `validation` (TOML table -> Target), `writing` (Target -> TOML/JSON values).
"""
from edgenas.targets.loading import MAX_EXTENDS_DEPTH, as_target, list_targets, load_target
from edgenas.targets.model import (ENGINE_NAMES, KIND_FALLBACK, LATENCY_DTYPES, LATENCY_FAMILIES, LATENCY_KINDS,
                                   LATENCY_RUNTIMES, LATENCY_SECTIONS,
                                   LINEAR_FEATURES, OPERATOR_KINDS, PROVENANCE_FIELDS, SHAPE_FEATURES, SMALL_PLANE,
                                   SPLIT_BYTE_KEYS, TARGET_KINDS, THIN_REDUCTION, TREE_DESCRIPTORS, Budgets, KindCost,
                                   LatencyModel, Provenance, RegressionTree, Target, TreeCorrection, engine_mismatch,
                                   engine_of)
from edgenas.targets.units import (MAX_DURATION_S, MAX_MACS, MAX_NUMBER, MAX_SIZE, MIN_DURATION_S, TARGET_NAME,
                                   check_target_name, parse_accuracy, parse_duration, parse_macs, parse_size,
                                   target_with_budgets)
from edgenas.targets.writing import latency_override_toml, latency_to_dict, target_to_dict, target_to_toml

__all__ = [
    "Budgets", "ENGINE_NAMES", "KIND_FALLBACK", "KindCost", "LATENCY_DTYPES", "LATENCY_FAMILIES", "LATENCY_KINDS", "LATENCY_RUNTIMES",
    "LATENCY_SECTIONS",
    "LINEAR_FEATURES", "LatencyModel", "MAX_DURATION_S", "RegressionTree", "SHAPE_FEATURES", "SMALL_PLANE",
    "THIN_REDUCTION", "TREE_DESCRIPTORS", "TreeCorrection", "engine_mismatch", "engine_of",
    "MAX_EXTENDS_DEPTH", "MAX_MACS", "MAX_NUMBER", "MAX_SIZE", "MIN_DURATION_S", "OPERATOR_KINDS", "PROVENANCE_FIELDS",
    "Provenance", "SPLIT_BYTE_KEYS", "TARGET_KINDS", "TARGET_NAME", "Target", "as_target", "check_target_name",
    "latency_override_toml", "latency_to_dict", "list_targets", "load_target", "parse_accuracy", "parse_duration",
    "parse_macs", "parse_size", "target_to_dict", "target_to_toml", "target_with_budgets",
]
