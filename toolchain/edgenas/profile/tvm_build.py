"""A TVM build folder (`edgenas compile --target x86-host|rpi4`) before and after it is profiled, on this machine
(`profile_host`) or on a board (`profile_ssh`): its build report checked against the target before anything is
loaded, the thread counts asked for, and the profile's outputs checked against the compile-time reference.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgenas.agreement import LOGIT_TOLERANCE
from edgenas.errors import EdgenasError
from edgenas.targets import ENGINE_NAMES

DEFAULT_REPEATS = 20      # the fewest timed rounds per input
DEFAULT_CI = 0.02         # stop timing when every input's median is known to +-2 % (95 % interval)
DEFAULT_MAX_SECONDS = 60.0  # time budget of all timed rounds of one profile
RUNTIMES = {**{e: (name,) for e, name in ENGINE_NAMES.items()}, "both": tuple(ENGINE_NAMES.values())}

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


def validate_timing(repeats: int, rel_ci: float, max_seconds: float | None, runtime: str) -> tuple[str, ...]:
    """Check the timing settings of a host / ssh profile; the engines `runtime` names."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise EdgenasError(f"repeats must be an integer >= 1, got {repeats!r}", "pass e.g. --repeats 20")
    if not (isinstance(rel_ci, (int, float)) and 0 < rel_ci < 1):
        raise EdgenasError(f"the CI target must be a fraction in (0, 1), got {rel_ci!r}", "pass e.g. --ci 0.02 (+-2 %)")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise EdgenasError(f"max_seconds must be > 0, got {max_seconds!r}", "pass e.g. --max-seconds 60")
    if runtime not in RUNTIMES:
        raise EdgenasError(f"unknown runtime '{runtime}'", f"use one of {', '.join(RUNTIMES)}")
    return RUNTIMES[runtime]


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
