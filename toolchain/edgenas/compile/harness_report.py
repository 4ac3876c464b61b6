"""The report the firmware harness (mcu_files/harness.c) and the hosted check (mcu_files/hosted_main.c) print, parsed.

For every embedded test input: the exit it took, the count of each stage that ran (timer ticks, cycles or
nanoseconds, as the `counter` field says) and the logits. The compile stage reads it for the Cortex-A static check;
`edgenas.profile` reads it from QEMU and from a board's UART, and turns the counts into labelled figures.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from edgenas.errors import EdgenasError

_BEGIN = re.compile(r"EDGENAS-REPORT 1 counter=(\w+) inputs=(\d+) stages=(\d+) classes=(\d+)")
_INPUT = re.compile(r"EDGENAS INPUT (\d+) rc=(-?\d+) exit=(-?\d+) ref_exit=(-?\d+) total=(\d+) stages=([\d,]*)")
_LOGITS = re.compile(r"EDGENAS LOGITS (\d+)((?: \S+)*)")
_END = re.compile(r"EDGENAS END fails=(\d+) workspace_peak=(\d+)")


@dataclass(frozen=True)
class InputRun:
    index: int
    rc: int
    exit: int
    firmware_ref_exit: int
    total: int                     # counter units (ticks, cycles or nanoseconds)
    stages: tuple[int, ...]        # per stage that ran, its exit decision included
    logits: tuple[float, ...]


@dataclass(frozen=True)
class HarnessReport:
    counter: str                   # "apb_timer_ticks", "dwt_cycles" or "monotonic_ns" (hosted check)
    n_stages: int
    n_classes: int
    inputs: tuple[InputRun, ...]
    fails: int                     # the harness's own check (exit and |logit difference| <= LOGIT_TOLERANCE)
    workspace_peak: int


def parse_report(text: str) -> HarnessReport:
    """Parse the harness output; other lines (boot messages, echo) are ignored."""
    lines = text.replace("\r", "").splitlines()
    begin = next((m for m in map(_BEGIN.search, lines) if m), None)
    end = next((m for m in map(_END.search, lines) if m), None)
    tail = " | ".join(ln.strip() for ln in lines[-3:] if ln.strip())[:300] or "no output"
    if begin is None or end is None:
        raise EdgenasError(f"incomplete firmware report (last output: {tail})",
                           "the firmware crashed, hung or timed out; rebuild it with `edgenas compile`")
    fault = next((ln for ln in lines if "EDGENAS FAULT" in ln or "EDGENAS KERNEL-ERROR" in ln), None)
    if fault:
        raise EdgenasError(f"firmware reported: {fault.strip()[:200]}", "rebuild the firmware; report this model")
    heads = {int(m.group(1)): m for m in map(_INPUT.search, lines) if m}
    logits = {int(m.group(1)): tuple(float(v) for v in m.group(2).split()) for m in map(_LOGITS.search, lines) if m}
    n = int(begin.group(2))
    if sorted(heads) != list(range(n)) or sorted(logits) != list(range(n)):
        raise EdgenasError(f"firmware report lists {len(heads)} of {n} inputs", "re-run the profile")
    runs = tuple(InputRun(t, int(heads[t].group(2)), int(heads[t].group(3)), int(heads[t].group(4)),
                          int(heads[t].group(5)), tuple(int(v) for v in heads[t].group(6).split(",") if v),
                          logits[t]) for t in range(n))
    return HarnessReport(counter=begin.group(1), n_stages=int(begin.group(3)), n_classes=int(begin.group(4)),
                         inputs=runs, fails=int(end.group(1)), workspace_peak=int(end.group(2)))
