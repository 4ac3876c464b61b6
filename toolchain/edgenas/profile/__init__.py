"""Profile: run compiled artefacts and measure them. `qemu` (Cortex-M firmware, instruction counts), `serial`
(a real board's report over UART, cycles), `mcu_report` (the harness report both read, as labelled figures), `host`
(TVM host builds: onnxruntime and TVM per exit / node / kernel on this machine), `ssh` (the same on a Cortex-A
board, through a transport), `tvm_build` (the build folder's checks both run), `runner` (the self-contained
measuring script both run), `artefact` (the compiled folder and its JSON files, checked as untrusted data before
anything runs). Lazy names: importing `edgenas.profile` starts nothing.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"profile_qemu": "qemu", "qemu_command": "qemu", "profile_serial": "serial", "read_report": "serial",
         "parse_report": "qemu", "summarize": "mcu_report", "HarnessReport": "mcu_report",
         "profile_host": "host", "profile_device": "host", "profile_ssh": "ssh", "SshTransport": "ssh",
         "LocalTransport": "ssh"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgenas.profile' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgenas.profile.{_LAZY[name]}"), name)
