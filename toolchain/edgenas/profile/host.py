"""Profile a host build (`edgenas compile --target x86-host`) on this machine: onnxruntime and TVM, 1 and N threads.

    profile = profile_host("build/", load_target("x86-host"), threads=(1, 2))

The measuring code is `runner.py`, the same file `profile_ssh` copies to a Cortex-A board, imported here and run
in-process, so both devices produce the same JSON (format edgenas-host-profile/1): per exit and per node for
onnxruntime (its profiler), per exit and per kernel for TVM (VM instrument + time_evaluator), the agreement of both
with the compile-time onnxruntime reference, plus `device` and `target`.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from edgenas.errors import EdgenasError

DEFAULT_REPEATS = 20
LOGIT_TOLERANCE = 1e-4


def _as_target(target):
    from edgenas.targets import load_target
    return load_target(target) if isinstance(target, (str, Path)) else target


BUILD_KEYS = {"target": str, "library": str, "library_arch": str, "onnx_model": str, "input_shape": list,
              "n_classes": int, "n_test_inputs": int, "sha256": dict}


def check_artefact(artefact, target) -> dict:
    """The build report of `artefact`, checked against the target it is profiled for, before anything is loaded.

    model.so is code: its constructor runs when it is loaded. It is loaded only when its SHA-256 is the one
    `compile` recorded in build.json (so is model.onnx); whoever can replace the library can also rewrite
    build.json, so this catches a changed or foreign file, not a forged folder: profile only folders you built.
    """
    from edgenas.compile.host import LIBRARY_FILE, ONNX_FILE, REPORT_FILE, load_build_report
    from edgenas.profile.artefact import artefact_folder, check_sha256, load_reference, read_json_object

    artefact = artefact_folder(artefact, REPORT_FILE)
    load_build_report(artefact)  # the format
    report = artefact / REPORT_FILE
    build = read_json_object(report, BUILD_KEYS)
    if build["target"] != target.name:
        raise EdgenasError(f"{artefact} was built for target {build['target']}, not {target.name}",
                           f"profile it with --target {build['target']}, or recompile it for {target.name}")
    if (build["library"], build["onnx_model"]) != (LIBRARY_FILE, ONNX_FILE):
        raise EdgenasError(f"{report} names library '{build['library']}' and model '{build['onnx_model']}', not "
                           f"{LIBRARY_FILE} and {ONNX_FILE} of the folder", "rebuild the folder with `edgenas compile`")
    shape = build["input_shape"]
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise EdgenasError(f"{report}: 'input_shape' {shape} is not a list of positive integers",
                           "rebuild the folder with `edgenas compile`")
    for name in (LIBRARY_FILE, ONNX_FILE):
        if not (artefact / name).is_file():
            raise EdgenasError(f"{artefact / name} not found", "rebuild the folder with `edgenas compile`")
        check_sha256(artefact / name, build["sha256"].get(name), report)
    load_reference(artefact, build["n_test_inputs"], build["n_classes"], int(np.prod(shape[1:])))
    return build


def check_profile(doc: dict) -> dict:
    """Fail loudly when the profiled build disagrees with the reference or an engine could not run."""
    for engine in ("onnxruntime", "tvm"):
        if "error" in doc.get(engine, {}):
            raise EdgenasError(f"{engine} could not run on {doc.get('device', 'the device')}: {doc[engine]['error']}",
                               "install it there (pip install onnxruntime apache-tvm) or rebuild the artefact")
    for name, c in doc["check"].items():
        if c["exit_agreement"] < 1.0 or c["max_abs_diff"] > LOGIT_TOLERANCE:
            raise EdgenasError(f"profile check {name} failed: exit agreement {c['exit_agreement']:.3f}, "
                               f"max |logit difference| {c['max_abs_diff']:.2e}",
                               "rebuild the artefact; report this model")
    return doc


def validate_threads(threads: Sequence[int | str]) -> list[int | str]:
    """Thread counts as given: positive integers or "max" (the CPU count of the machine that runs them)."""
    out = []
    for t in threads:
        t = str(t).strip()
        if t != "max" and not (t.isdigit() and int(t) >= 1):
            raise EdgenasError(f"bad thread count '{t}'", "pass thread counts like 1,4 or 1,max")
        out.append(t if t == "max" else int(t))
    if not out:
        raise EdgenasError("no thread counts given", "pass thread counts like 1,4 or 1,max")
    return out


def profile_host(artefact, target, threads: Sequence[int | str] = (1, "max"), repeats: int = DEFAULT_REPEATS,
                 check: bool = True) -> dict:
    """Profile a build folder on this machine; returns the JSON-ready profile.

    `threads`: intra-op thread counts for onnxruntime and the TVM thread pool; "max" = this machine's CPU count.
    """
    from edgenas.profile import runner

    target = _as_target(target)
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    return out


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
