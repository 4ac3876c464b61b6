"""Profile a host build (`edgenas compile --target x86-host`) on this machine: onnxruntime and TVM, 1 and N threads.

    profile = profile_host("build/", load_target("x86-host"), threads=(1, 2), rel_ci=0.02, runtime="both")

The measuring code is `runner.py`, the same file `profile_ssh` copies to a Cortex-A board, imported here and run
in-process, so both devices produce the same JSON (format edgenas-host-profile/1): per exit and per node for
onnxruntime (its profiler), per exit and per kernel for TVM (VM instrument + time_evaluator), the agreement of both
with the compile-time onnxruntime reference, plus `device` and `target`. Latencies follow the protocol of
`timing.py` (interleaved rounds until each input's median is known to +-rel_ci, or the budget runs out): the profile's
`timing` says whether that target was met and the noise floor. `runtime` ("ort", "tvm", "both") measures only the
engine the target deploys with.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Sequence

from edgenas.errors import EdgenasError
from edgenas.fileio import atomic_write_json
from edgenas.profile.tvm_build import (DEFAULT_CI, DEFAULT_MAX_SECONDS, DEFAULT_REPEATS, check_artefact, check_profile,
                                      validate_threads, validate_timing)
from edgenas.targets import as_target


def profile_host(artefact, target, threads: Sequence[int | str] = (1, "max"), repeats: int = DEFAULT_REPEATS,
                 check: bool = True, rel_ci: float = DEFAULT_CI, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                 runtime: str = "both") -> dict:
    """Profile a build folder on this machine; returns the JSON-ready profile.

    `threads`: intra-op thread counts for onnxruntime and the TVM thread pool; "max" = this machine's CPU count.
    `repeats`: the fewest timed rounds per input; `rel_ci`: stop when every input's median is known to +-rel_ci
    (95 % interval); `max_seconds`: budget of all timed rounds (None: until rel_ci or the runner's round cap).
    """
    from edgenas.profile import runner

    target = as_target(target)
    build = check_artefact(artefact, target)
    if build["library_arch"] != platform.machine():
        raise EdgenasError(f"{artefact} holds a library for {build['library_arch']}; this machine is {platform.machine()}",
                           f"profile it on the board: --device ssh:USER@HOST (target {build['target']})")
    engines = validate_timing(repeats, rel_ci, max_seconds, runtime)
    thread_counts = runner.resolve_threads(validate_threads(threads))
    doc = runner.profile_artefact(artefact, thread_counts, repeats, engines, rel_ci=rel_ci, max_seconds=max_seconds)
    doc = {"device": "host", "target": target.name, "artefact": str(Path(artefact).resolve()), **doc}
    return check_profile(doc) if check else doc


def write_profile(doc: dict, out) -> Path:
    return atomic_write_json(out, doc, sort_keys=False)


def _percent(value) -> str:
    return "n/a (too few rounds)" if value is None else f"+-{100 * value:.1f} %"


def summary(doc: dict) -> str:
    """Latency per engine, thread count and exit; whether the CI target was met and the noise floor."""
    timing = doc["timing"]
    met = ("met" if timing["converged"] else
           f"NOT met for {timing['items_not_converged']} input timing(s) (rounds or --max-seconds ran out)")
    lines = [f"{doc['device']} ({doc['machine']['arch']}, {doc['machine']['cpu_count']} CPUs), target {doc['target']}, "
             f"{doc['n_inputs']} inputs; latency per input = median (p10 when the spread is one-sided), interleaved "
             f"rounds; CI target +-{100 * timing['rel_ci']:g} % at {100 * timing['confidence']:g} %: {met}; "
             f"noise floor {_percent(timing['noise_floor'])} (median CI half-width)"]
    for engine in ("onnxruntime", "tvm"):
        for t, run in doc.get(engine, {}).get("runs", {}).items():
            exits = ", ".join(f"exit {e}: {r['latency_us']['median']:.1f}" for e, r in run["exits"].items())
            late = [str(r["index"]) for r in run["per_input"] if not r["timing"]["converged"]]
            note = f"; CI not met for input(s) {', '.join(late)}" if late else ""
            lines.append(f"  {engine:<11} {t} thread(s): median {run['latency_us']['median']:.1f} us ({exits}); "
                         f"noise floor {_percent(run['timing']['noise_floor'])}, {run['timing']['rounds']} rounds"
                         f"{note}")
    for name, c in doc["check"].items():
        lines.append(f"  {name}: exit agreement {c['exit_agreement']:.3f}, max |dlogit| {c['max_abs_diff']:.2e}")
    return "\n".join(lines)


def profile_device(artefact, target, device: str = "host", threads: Sequence[int | str] = (1, "max"),
                   repeats: int = DEFAULT_REPEATS, rel_ci: float = DEFAULT_CI,
                   max_seconds: float | None = DEFAULT_MAX_SECONDS, runtime: str = "both") -> dict:
    """`--device host` (this machine) or `--device ssh:USER@HOST[:PORT]` (a Cortex-A board) for a TVM build folder."""
    timing = {"repeats": repeats, "rel_ci": rel_ci, "max_seconds": max_seconds, "runtime": runtime}
    if device == "host":
        return profile_host(artefact, target, threads=threads, **timing)
    if device.startswith("ssh:"):
        from edgenas.profile.ssh import profile_ssh
        return profile_ssh(artefact, target, device, threads=threads, **timing)
    raise EdgenasError(f"device '{device}' cannot run a TVM build folder", "use --device host or ssh:USER@HOST")
