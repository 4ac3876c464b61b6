"""Profile a Cortex-M firmware under QEMU: deterministic instruction counts per stage and per exit.

    profile = profile_qemu("fw/", load_target("cortex-m7"))

Runs `qemu-system-arm -M <target.qemu_machine> ... -icount shift=N -kernel firmware.elf` (mps2-an500 for the
Cortex-M7, mps2-an386 for the Cortex-M4), reads the harness report and checks every output against the onnxruntime
reference stored at compile time. QEMU models no pipeline, cache or flash wait states: the figures are instruction
counts, and latencies derived from them are labelled estimates (target.cpi).

A firmware folder is data from wherever it came from, and its ELF runs here, so QEMU gives it nothing of the host:
semihosting is off (no host files, no host exit status: a `bkpt 0xab` is a HardFault), a network card with no
peer, no monitor, stdin closed. The firmware reports over UART0 (the only output) and ends by printing
`EDGENAS EXIT status=N` and requesting a system reset, which `-no-reboot` turns into QEMU's exit; the status is read
from that line, and a firmware that never ends is killed at the timeout.
"""
from __future__ import annotations

import re
import subprocess

from edgenas.compile.firmware import QEMU, qemu_command
from edgenas.compile.harness_report import parse_report
from edgenas.errors import EdgenasError
from edgenas.profile.artefact import load_firmware_folder
from edgenas.profile.mcu_report import summarize

REPORT_CHANNEL = "uart"  # firmware.json `report_channel` of builds without semihosting (uart_retarget.c)
_EXIT = re.compile(r"EDGENAS EXIT status=(-?\d+)")


def firmware_exit_status(output: str) -> int | None:
    """The status the firmware printed on its way out (uart_retarget.c `_exit`); None when it never got there."""
    found = _EXIT.findall(output)
    return int(found[-1]) if found else None


def profile_qemu(firmware_dir, target, n_inputs: int | None = None, timeout_s: float = 120.0,
                 icount_shift: int = 0) -> dict:
    """Run the QEMU build of `firmware_dir` and return a JSON-ready profile (see mcu_report.summarize)."""
    import shutil

    if not target.qemu_machine:
        raise EdgenasError(f"target {target.name} names no QEMU machine", "set qemu_machine in the target file")
    if shutil.which(QEMU) is None:
        raise EdgenasError(f"{QEMU} not found", "install the Debian package qemu-system-arm, or run `make setup` as root")
    firmware_dir, fw, reference = load_firmware_folder(firmware_dir, target)
    if fw.get("report_channel") != REPORT_CHANNEL:
        raise EdgenasError(f"{firmware_dir} is a semihosting build of an older edgenas, which QEMU no longer runs",
                           "rebuild it with `edgenas compile` (the firmware now reports over the UART)")
    elf = firmware_dir / fw["elf"]
    if not elf.is_file():
        raise EdgenasError(f"{elf} not found", "rebuild the firmware with `edgenas compile`")
    if n_inputs is not None and not 1 <= n_inputs <= fw["n_test_inputs"]:
        raise EdgenasError(f"n_inputs={n_inputs}, but the firmware embeds {fw['n_test_inputs']} test inputs",
                           f"use 1..{fw['n_test_inputs']}, or compile with more test inputs")
    try:
        run = subprocess.run(qemu_command(elf, target.qemu_machine, icount_shift), capture_output=True, text=True,
                             errors="replace", timeout=timeout_s, stdin=subprocess.DEVNULL)
        output = run.stdout + run.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise EdgenasError(f"QEMU did not finish in {timeout_s:g} s (last output: {out.strip()[-200:] or 'none'})",
                           "raise timeout_s for large models, or check the firmware with `make run`") from None
    report = parse_report(output)
    profile = summarize(report, reference, fw, target, device=f"qemu:{target.qemu_machine}",
                        icount_shift=icount_shift, n_inputs=n_inputs)
    profile.update(firmware=str(firmware_dir), codegen=fw["codegen"], dtype=fw["dtype"],
                   firmware_exit_status=firmware_exit_status(output))
    return profile
