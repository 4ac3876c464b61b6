"""Profile a Cortex-M firmware on a real board: read the harness report from a serial port (pyserial).

Flash `firmware-board.elf` (built by `edgenas compile`: DWT cycle counter, report over the UART), reset the board,
then `profile_serial("/dev/ttyACM0", "fw/", target)`. The counts are cycles of the real core, so the latencies are
measurements (cycles / clock_hz), unlike QEMU's instruction counts.
"""
from __future__ import annotations

import time

from edgenas.compile.harness_report import parse_report
from edgenas.errors import EdgenasError
from edgenas.profile.mcu_report import summarize

END_MARK = "EDGENAS END"


def read_report(port, baudrate: int = 115200, timeout_s: float = 60.0) -> str:
    """Text from `port` until the report's END line (or the timeout).

    `port` is a device name (opened here at `baudrate`) or an open pyserial port (e.g. from serial_for_url),
    which is read but left open.
    """
    import serial

    if isinstance(port, str):
        try:
            conn = serial.Serial(port, baudrate=baudrate, timeout=0.2)
        except (serial.SerialException, OSError) as exc:
            raise EdgenasError(f"cannot open serial port {port}: {exc}",
                               "check the port name and permissions (e.g. the dialout group)") from None
        with conn:
            return _read_until_end(conn, timeout_s)
    return _read_until_end(port, timeout_s)


def _read_until_end(conn, timeout_s: float) -> str:
    text, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = conn.read(4096)
        if data:
            text += data.decode(errors="replace")
            end = text.find(END_MARK)
            if end >= 0 and "\n" in text[end:]:
                break
    return text


def profile_serial(port, firmware_dir, target, baudrate: int = 115200, timeout_s: float = 60.0,
                   n_inputs: int | None = None) -> dict:
    """Read one report from a board running `firmware-board.elf` and return a JSON-ready profile."""
    from edgenas.profile.artefact import load_firmware_folder

    firmware_dir, fw, reference = load_firmware_folder(firmware_dir, target)
    report = parse_report(read_report(port, baudrate, timeout_s))
    name = port if isinstance(port, str) else getattr(port, "port", None) or "open port"
    profile = summarize(report, reference, fw, target, device=f"serial:{name}",
                        n_inputs=n_inputs)
    profile.update(firmware=str(firmware_dir), codegen=fw["codegen"], dtype=fw["dtype"])
    return profile
