"""Compile: exported early-exit stages -> TVM kernels + static C driver -> Cortex-M firmware (`mcu`).

Modules: `lowering` (ONNX -> Relax -> fused TIR kernels, read into plain data), `memplan` (one activation arena,
offsets from buffer lifetimes), `cdriver` (generated C: weights, driver, exit logic, API header), `firmware`
(project files, arm-none-eabi-gcc build, size report), `mcu` (`compile_mcu`, the whole pipeline), `host`
(`compile_host`: Relax VM library for x86 / Cortex-A, exits composed with relax.If), `host_checks` (its checks: the
VM library here, the static C driver under qemu-user), `harness_report` (the report the test harnesses print),
`test_inputs` (the inputs a build is checked on), `outputs` (the output folder: created up front, removed with its
new parents on failure, TVM's messages in build.log; what both compilers write into it).
Names resolve lazily so that importing `edgenas.compile` imports neither TVM nor onnx.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "compile_mcu": "mcu", "FirmwareReport": "mcu", "load_model_source": "mcu", "reference_outputs": "mcu",
    "predicted_costs": "mcu", "load_firmware_report": "mcu", "load_reference": "mcu",
    "build_firmware": "firmware", "size_report": "firmware", "SizeReport": "firmware",
    "plan_arena": "memplan", "ArenaPlan": "memplan",
    "lower_onnx": "lowering", "stage_program": "lowering", "StageProgram": "lowering",
    "compile_host": "host", "HostBuildReport": "host", "load_build_report": "host", "compose_relax": "host",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgenas.compile' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgenas.compile.{_LAZY[name]}"), name)
