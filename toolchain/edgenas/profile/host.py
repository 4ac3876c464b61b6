"""Profile a host build (`edgenas compile --target x86-host`) on this machine: onnxruntime and TVM, 1 and N threads.

    profile = profile_host("build/", load_target("x86-host"), threads=(1, 2))

The measuring code is `runner.py`, the same file `profile_ssh` copies to a Cortex-A board, imported here and run
in-process, so both devices produce the same JSON (format edgenas-host-profile/1): per exit and per node for
onnxruntime (its profiler), per exit and per kernel for TVM (VM instrument + time_evaluator), the agreement of both
with the compile-time onnxruntime reference, plus `device` and `target`.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Sequence

from edgenas.errors import EdgenasError
from edgenas.fileio import atomic_write_json
from edgenas.profile.tvm_build import DEFAULT_REPEATS, check_artefact, check_profile, validate_threads
from edgenas.targets import as_target


def profile_host(artefact, target, threads: Sequence[int | str] = (1, "max"), repeats: int = DEFAULT_REPEATS,
                 check: bool = True) -> dict:
    """Profile a build folder on this machine; returns the JSON-ready profile.

    `threads`: intra-op thread counts for onnxruntime and the TVM thread pool; "max" = this machine's CPU count.
    """
    from edgenas.profile import runner

    target = as_target(target)
    build = check_artefact(artefact, target)
    if build["library_arch"] != platform.machine():
        raise EdgenasError(f"{artefact} holds a library for {build['library_arch']}; this machine is {platform.machine()}",
                           f"profile it on the board: --device ssh:USER@HOST (target {build['target']})")
    if repeats < 1:
        raise EdgenasError(f"repeats must be >= 1, got {repeats}", "pass e.g. --repeats 20")
    thread_counts = runner.resolve_threads(validate_threads(threads))
    doc = runner.profile_artefact(artefact, thread_counts, repeats)
    doc = {"device": "host", "target": target.name, "artefact": str(Path(artefact).resolve()), **doc}
    return check_profile(doc) if check else doc


def write_profile(doc: dict, out) -> Path:
    return atomic_write_json(out, doc, sort_keys=False)


def summary(doc: dict) -> str:
    lines = [f"{doc['device']} ({doc['machine']['arch']}, {doc['machine']['cpu_count']} CPUs), target {doc['target']}, "
             f"{doc['n_inputs']} inputs; {doc['timing']}"]
    for engine in ("onnxruntime", "tvm"):
        for t, run in doc.get(engine, {}).get("runs", {}).items():
            exits = ", ".join(f"exit {e}: {r['latency_us']['median']:.1f}" for e, r in run["exits"].items())
            lines.append(f"  {engine:<11} {t} thread(s): median {run['latency_us']['median']:.1f} us ({exits})")
    for name, c in doc["check"].items():
        lines.append(f"  {name}: exit agreement {c['exit_agreement']:.3f}, max |dlogit| {c['max_abs_diff']:.2e}")
    return "\n".join(lines)


def profile_device(artefact, target, device: str = "host", threads: Sequence[int | str] = (1, "max"),
                   repeats: int = DEFAULT_REPEATS) -> dict:
    """`--device host` (this machine) or `--device ssh:USER@HOST[:PORT]` (a Cortex-A board) for a TVM build folder."""
    if device == "host":
        return profile_host(artefact, target, threads=threads, repeats=repeats)
    if device.startswith("ssh:"):
        from edgenas.profile.ssh import profile_ssh
        return profile_ssh(artefact, target, device, threads=threads, repeats=repeats)
    raise EdgenasError(f"device '{device}' cannot run a TVM build folder", "use --device host or ssh:USER@HOST")
