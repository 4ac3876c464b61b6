"""How `compile_host` checks a build against onnxruntime before it publishes it.

On the host the VM library itself runs every test input (`check_host_library`), instrumented to count kernel calls
per exit. A Cortex-A library cannot run here: the MCU compiler's static C driver with the TVM kernels for the target
CPU and a hosted main (mcu_files/hosted_main.c) is linked -static (`static_project`, `build_static_check`) and run
under qemu-user (`run_static_check`), which parses the same report as the firmware harness. Both checks use the one
agreement rule of edgenas.agreement.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgenas.agreement import LOGIT_TOLERANCE, agreement
from edgenas.compile.harness_report import parse_report
from edgenas.errors import EdgenasError

RELAX_ENTRY = "main"  # the Relax function compose_relax builds, which the VM runs
STATIC_EXE = "edgenas-check"
QEMU_USER = {"aarch64-linux-gnu": "qemu-aarch64", "arm-linux-gnueabihf": "qemu-arm"}
QEMU_PACKAGE = "qemu-user"


def run_library(library: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Run every input through the VM library (this machine's architecture): logits, exits, kernel calls per input.

    Kernel calls are counted with a VM instrument: a called function is a TIR kernel when the library's compiled
    code implements it (VM builtins `vm.*` and the Relax stage / exit-chain functions are not kernels).
    """
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    lib = tvm.runtime.load_module(str(library))
    kernels = lib.imports[0] if lib.imports else lib
    vm = relax.VirtualMachine(lib, dev)
    calls = [0]

    def count(func, name, before_run, ret, *args):
        if before_run and not name.startswith("vm.") and kernels.implements_function(name):
            calls[0] += 1
        return relax.VMInstrumentReturnKind.NO_OP

    vm.set_instrument(count)
    logits, exits, n_calls = [], [], []
    for k in range(x.shape[0]):
        calls[0] = 0
        lg, ex = vm[RELAX_ENTRY](tvm.runtime.tensor(np.ascontiguousarray(x[k:k + 1], dtype=np.float32)))
        logits.append(lg.numpy().reshape(-1))
        exits.append(int(ex.numpy().reshape(-1)[0]))
        n_calls.append(calls[0])
    return np.stack(logits), np.asarray(exits, np.int64), n_calls


def agreement_check(logits, exits, ref_logits, ref_exits) -> dict:
    """The check fields of build.json (edgenas.agreement's rule; max_abs_diff over the inputs whose exit matched)."""
    ag = agreement(logits, exits, ref_logits, ref_exits)
    return {"n_inputs": ag.n_samples, "exit_agreement": ag.exit_agreement, "max_abs_diff": ag.max_abs_diff,
            "tolerance": LOGIT_TOLERANCE, "exits_exercised": sorted(set(exits.tolist())), "passed": ag.passed}


def check_host_library(library: Path, x, ref_logits, ref_exits) -> dict:
    logits, exits, n_calls = run_library(library, x)
    check = {"ran": True, "method": "tvm-relax-vm on this machine",
             **agreement_check(logits, exits, ref_logits, ref_exits)}
    per_exit: dict[int, set[int]] = {}
    for e, c in zip(exits.tolist(), n_calls):
        per_exit.setdefault(e, set()).add(c)
    check["kernel_calls_per_exit"] = {str(e): sorted(v)[0] if len(v) == 1 else sorted(v)
                                      for e, v in sorted(per_exit.items())}
    return check


def static_project(src, stage_models, target, x, ref_logits, ref_exits, project: Path) -> None:
    """The MCU compiler's static C driver + the TVM kernels for the target CPU + a hosted main."""
    from edgenas.compile import cdriver, firmware
    project.mkdir(parents=True)
    cdriver.driver_project(stage_models, src.stages, src.thresholds, src.n_classes, src.input_shape, x, ref_logits,
                           ref_exits, "llvm", target.tvm_target, project)
    firmware.copy_fixed_files(project, ("hosted_main.c", "tvm_stubs.c"))


STATIC_SOURCES = ("hosted_main.c", "tvm_stubs.c", "model.c", "weights.c", "test_io.c")


def static_build_command(gcc: str) -> list[str]:
    return [gcc, "-O2", "-static", "-DEDGENAS_PROFILE", "-I.", "-Iinclude", *STATIC_SOURCES, "kernels.o", "-lm",
            "-o", STATIC_EXE]


def build_static_check(project: Path, gcc: str) -> Path:
    out = subprocess.run(static_build_command(gcc), cwd=project, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if "error" in ln.lower()] or \
            (out.stderr + out.stdout).splitlines()
        raise EdgenasError(f"linking the static check executable failed: {' | '.join(lines[:3])[:400]}",
                           f"rerun `{' '.join(static_build_command(Path(gcc).name))}` in {project} to see why")
    return project / STATIC_EXE


def run_static_check(exe: Path, triple: str, ref_logits, ref_exits, timeout_s: float = 300.0) -> dict:
    """Run the static executable under qemu-user and compare it with the onnxruntime reference."""
    qemu = QEMU_USER[triple]
    if shutil.which(qemu) is None:
        return {"ran": False, "method": f"{qemu} static C driver",
                "reason": f"{qemu} not found (install the Debian package {QEMU_PACKAGE})"}
    try:
        run = subprocess.run([qemu, str(exe), "3"], capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgenasError(f"{qemu} {exe.name} did not finish in {timeout_s:g} s",
                           "check the executable by hand; report this model") from None
    report = parse_report(run.stdout + run.stderr)
    logits = np.asarray([r.logits for r in report.inputs], dtype=np.float32)
    exits = np.asarray([r.exit for r in report.inputs], dtype=np.int64)
    check = {"ran": True, "method": f"{qemu} static C driver (TVM kernels for the target CPU)",
             **agreement_check(logits, exits, ref_logits, ref_exits),
             "kernel_errors": sum(1 for r in report.inputs if r.rc != 0), "exit_code": run.returncode,
             "stages_run_per_exit": {str(r.exit): len(r.stages) for r in report.inputs},
             "emulated_ns_per_exit": {}}
    for r in report.inputs:
        check["emulated_ns_per_exit"].setdefault(str(r.exit), []).append(r.total)
    check["emulated_ns_per_exit"] = {e: float(np.median(v)) for e, v in sorted(check["emulated_ns_per_exit"].items())}
    check["note"] = "emulated_ns are qemu-user wall-clock times on this machine, not Cortex-A latencies"
    check["passed"] = check["passed"] and check["kernel_errors"] == 0 and run.returncode == 0
    return check
