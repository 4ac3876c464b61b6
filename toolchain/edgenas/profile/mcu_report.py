"""The firmware harness's report: parsing it and turning its counts into labelled figures.

The harness (edgenas/compile/mcu_files/harness.c) prints, for every embedded test input, the exit it took, the
count of each stage that ran and the logits; QEMU and a real board print the same lines. Counts are labelled by
what they are: under QEMU `apb_timer_ticks`, converted to *instructions* (ticks * 40 / 2^icount_shift: the APB
timer runs at 25 MHz and -icount shift=N makes one instruction last 2^N ns); on a board `dwt_cycles`, which are
cycles. A latency from instructions is an *estimate* (instructions * target.cpi / clock_hz), and says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from edgenas.errors import EdgenasError

APB_TIMER_NS = 40  # 25 MHz CMSDK APB timer
LOGIT_TOLERANCE = 1e-4

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
    total: int                     # counter units (ticks or cycles)
    stages: tuple[int, ...]        # per stage that ran, its exit decision included
    logits: tuple[float, ...]


@dataclass(frozen=True)
class HarnessReport:
    counter: str                   # "apb_timer_ticks" or "dwt_cycles"
    n_stages: int
    n_classes: int
    inputs: tuple[InputRun, ...]
    fails: int                     # the firmware's own check (exit and |logit difference| <= 1e-4)
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


def _stats(values: Sequence[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def summarize(report: HarnessReport, reference: Mapping, firmware: Mapping, target, *, device: str,
              icount_shift: int = 0, n_inputs: int | None = None) -> dict:
    """JSON-ready profile: outputs checked against the compile-time reference, counts per exit and per stage."""
    runs = report.inputs[:n_inputs] if n_inputs else report.inputs
    ref_logits = np.asarray(reference["logits"], dtype=np.float64)
    ref_exits = np.asarray(reference["exits"], dtype=np.int64)
    if len(ref_exits) < len(runs):
        raise EdgenasError(f"reference holds {len(ref_exits)} inputs, the firmware ran {len(runs)}",
                           "rebuild the firmware and its reference.json together with `edgenas compile`")
    if report.counter == "apb_timer_ticks":
        unit, scale = "instructions", APB_TIMER_NS / 2 ** icount_shift
    elif report.counter == "dwt_cycles":
        unit, scale = "cycles", 1.0
    else:
        raise EdgenasError(f"unknown counter '{report.counter}' in the firmware report", "rebuild the firmware")
    diffs = [float(np.max(np.abs(np.asarray(r.logits) - ref_logits[r.index]))) if r.logits else float("inf")
             for r in runs]
    same_exit = [r.exit == int(ref_exits[r.index]) for r in runs]
    macs = firmware.get("macs_per_exit")
    per_exit, per_stage = {}, {}
    for r in runs:
        per_exit.setdefault(r.exit, []).append(r.total * scale)
        for s, c in enumerate(r.stages):
            per_stage.setdefault(s, []).append(c * scale)
    exits = {}
    for e in sorted(per_exit):
        row = {unit: _stats(per_exit[e])}
        if macs and 0 <= e < len(macs) and macs[e]:
            row["macs"] = int(macs[e])
            row[f"{unit}_per_mac"] = float(np.mean(per_exit[e]) / macs[e])
        row.update(_latency(np.mean(per_exit[e]), unit, target))
        exits[str(e)] = row
    stages = {str(s): {unit: _stats(v)} for s, v in sorted(per_stage.items())}
    return {
        "device": device, "target": target.name, "counter": report.counter, "unit": unit,
        "icount_shift": icount_shift if unit == "instructions" else None,
        "resolution": f"{scale:g} {unit}" if unit == "instructions" else "1 cycle",
        "n_inputs": len(runs),
        "exits": exits, "stages": stages,
        "per_input": [{"index": r.index, "rc": r.rc, "exit": r.exit, "ref_exit": int(ref_exits[r.index]),
                       unit: r.total * scale, f"stage_{unit}": [c * scale for c in r.stages],
                       "max_abs_diff": d} for r, d in zip(runs, diffs)],
        "check": {"exit_agreement": float(np.mean(same_exit)) if runs else 0.0,
                  "max_abs_diff": max(diffs) if diffs else 0.0,
                  "tolerance": LOGIT_TOLERANCE,
                  "kernel_errors": sum(1 for r in runs if r.rc != 0),
                  "passed": bool(runs) and all(same_exit) and max(diffs) <= LOGIT_TOLERANCE
                  and all(r.rc == 0 for r in runs)},
        "exits_exercised": sorted(int(e) for e in per_exit),
        "workspace_peak_bytes": report.workspace_peak,
    }


def _latency(count: float, unit: str, target) -> dict:
    if unit == "cycles":
        return {"latency_s": count / target.clock_hz}
    if target.cpi is None:
        return {}
    return {"estimated_latency_s": count * target.cpi / target.clock_hz,
            "estimate_basis": f"instructions x cpi {target.cpi} / {target.clock_hz:g} Hz (not a measurement)"}
