"""The firmware harness's report (parsed by edgenas.compile.harness_report) turned into labelled figures.

The harness (edgenas/compile/mcu_files/harness.c) prints, for every embedded test input, the exit it took, the
count of each stage that ran and the logits; QEMU and a real board print the same lines. Counts are labelled by
what they are: under QEMU `apb_timer_ticks`, converted to *instructions* (ticks * 40 / 2^icount_shift: the APB
timer runs at 25 MHz and -icount shift=N makes one instruction last 2^N ns); on a board `dwt_cycles`, which are
cycles. A latency from instructions is an *estimate* (instructions * target.cpi / clock_hz), and says so.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from edgenas.agreement import LOGIT_TOLERANCE, agreement
from edgenas.compile.harness_report import HarnessReport
from edgenas.errors import EdgenasError

APB_TIMER_NS = 40  # 25 MHz CMSDK APB timer


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
    # a LOGITS line without values compares as infinitely far (as its per-input difference says)
    logits = np.asarray([r.logits or (np.inf,) * ref_logits.shape[1] for r in runs], dtype=np.float64)
    ag = agreement(logits, [r.exit for r in runs], ref_logits[[r.index for r in runs]],
                   ref_exits[[r.index for r in runs]], firmware.get("logit_tolerance", LOGIT_TOLERANCE))
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
        "check": {"exit_agreement": ag.exit_agreement if runs else 0.0,
                  "max_abs_diff": ag.max_abs_diff,
                  "tolerance": ag.tolerance,
                  "kernel_errors": sum(1 for r in runs if r.rc != 0),
                  "passed": ag.passed and all(r.rc == 0 for r in runs)},
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
