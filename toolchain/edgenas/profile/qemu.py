"""Profile a Cortex-M firmware under QEMU: deterministic instruction counts per stage and per exit.

    profile = profile_qemu("fw/", load_target("cortex-m7"))

Runs `qemu-system-arm -M <target.qemu_machine> -nographic -icount shift=N -semihosting-config
enable=on,target=native -kernel firmware.elf` (mps2-an500 for the Cortex-M7, mps2-an386 for the Cortex-M4), reads
the harness report and checks every output against the onnxruntime reference stored at compile time. QEMU models
no pipeline, cache or flash wait states: the figures are instruction counts, and latencies derived from them are
labelled estimates (target.cpi).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from edgenas.errors import EdgenasError
from edgenas.profile.mcu_report import parse_report, summarize

QEMU = "qemu-system-arm"


def qemu_command(elf: Path, machine: str, icount_shift: int = 0) -> list[str]:
    return [QEMU, "-M", machine, "-nographic", "-icount", f"shift={icount_shift}",
            "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]


def profile_qemu(firmware_dir, target, n_inputs: int | None = None, timeout_s: float = 120.0,
                 icount_shift: int = 0) -> dict:
    """Run the QEMU build of `firmware_dir` and return a JSON-ready profile (see mcu_report.summarize)."""
    import shutil

    from edgenas.compile.mcu import load_firmware_report, load_reference

    firmware_dir = Path(firmware_dir)
    fw = load_firmware_report(firmware_dir)
    if fw["target"] != target.name:
        raise EdgenasError(f"{firmware_dir} was built for target {fw['target']}, not {target.name}",
                           f"profile it with --target {fw['target']}, or recompile it for {target.name}")
    if not target.qemu_machine:
        raise EdgenasError(f"target {target.name} names no QEMU machine", "set qemu_machine in the target file")
    if shutil.which(QEMU) is None:
        raise EdgenasError(f"{QEMU} not found", "install the Debian package qemu-system-arm, or run `make setup` as root")
    elf = firmware_dir / fw["elf"]
    if not elf.is_file():
        raise EdgenasError(f"{elf} not found", "rebuild the firmware with `edgenas compile`")
    if n_inputs is not None and not 1 <= n_inputs <= fw["n_test_inputs"]:
        raise EdgenasError(f"n_inputs={n_inputs}, but the firmware embeds {fw['n_test_inputs']} test inputs",
                           f"use 1..{fw['n_test_inputs']}, or compile with more test inputs")
    try:
        run = subprocess.run(qemu_command(elf, target.qemu_machine, icount_shift), capture_output=True, text=True,
                             timeout=timeout_s, stdin=subprocess.DEVNULL)
        output = run.stdout + run.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise EdgenasError(f"QEMU did not finish in {timeout_s:g} s (last output: {out.strip()[-200:] or 'none'})",
                           "raise timeout_s for large models, or check the firmware with `make run`") from None
    report = parse_report(output)
    profile = summarize(report, load_reference(firmware_dir), fw, target, device=f"qemu:{target.qemu_machine}",
                        icount_shift=icount_shift, n_inputs=n_inputs)
    profile.update(firmware=str(firmware_dir), codegen=fw["codegen"], dtype=fw["dtype"], qemu_exit_code=run.returncode)
    return profile
