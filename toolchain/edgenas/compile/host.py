"""`compile_host`: exported early-exit stages -> a TVM Relax VM library for the host (x86) or a Cortex-A board.

    report = compile_host("export/", load_target("rpi4"), "build/", tune_trials=0)

Why not import `model.onnx`: TVM 0.27's ONNX frontend emits both branches of an ONNX `If` into the enclosing block,
so every stage would run whatever exit is taken. Instead each stage file is imported on its own (`from_onnx`) and
kept as its own Relax function, and the exit chain is built in Relax:

    main(x)                 = o = stage0(x);  s = 1 - conf_0
                              if (1 - s >= thr_0) (logits_0, [0]) else exit_chain1(h_0, s)
    exit_chain_i(h, s)      = o = stage_i(h); s = s * (1 - conf_i)
                              if (1 - s >= thr_i) (logits_i, [i]) else exit_chain_{i+1}(h_i, s)
    exit_chain_{B-1}(h, s)  = (stage_{B-1}(h), [B-1])

`relax.If` branches *call* the next function, so the VM only runs the stages up to the exit taken (the exit rule
of exits.json, in float32). Kernels are fused (FuseOps/FuseTIR) and, with `tune_trials > 0`, the conv2d and
matmul kernels are tuned with MetaSchedule (`tune_relax`, measured on this machine; the cheap elementwise kernels
keep their default schedule, which saves most of the tuning time) and applied with MetaScheduleApplyDatabase.

Output folder (written to a temp folder and renamed into place only when every check passed):
    model.so         the Relax VM executable (`tvm.runtime.load_module` + `relax.VirtualMachine`); for a Cortex-A
                     target cross-linked with <triple>-gcc (aarch64-linux-gnu-gcc for the rpi4)
    model.onnx       the nested-If ONNX graph of the same network, for onnxruntime comparisons (`edgenas profile`)
    reference.json   the test inputs with onnxruntime's logits and exits (stage chain, exit rule in float32)
    build.json       this report, with the SHA-256 of model.so and model.onnx (`profile` loads no other bytes)
    static/          Cortex-A only: the functional check without a board: the MCU compiler's static C driver
                     (lowering, memplan, cdriver) with the TVM kernels for the target CPU and a hosted main
                     (mcu_files/hosted_main.c), linked -static and run under qemu-aarch64

Checks: on the host the library itself runs every test input (same exit as onnxruntime on all, max |logit
difference| <= 1e-4) and the VM is instrumented to count kernel calls per exit (early exits must call fewer
kernels). On a Cortex-A target the static executable runs under qemu-aarch64 with the same criteria; without
qemu-aarch64 the check is recorded as not run, with the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgenas.errors import EdgenasError

REPORT_FILE = "build.json"
LIBRARY_FILE = "model.so"
ONNX_FILE = "model.onnx"
STATIC_DIR = "static"
STATIC_EXE = "edgenas-check"
FORMAT = "edgenas-relax-build/1"
LOGIT_TOLERANCE = 1e-4
TARGET_KINDS = ("host", "cortex-a")
# LLVM triple -> cross compiler, and the Debian package that ships it (+ its static C library).
CROSS_GCC = {"aarch64-linux-gnu": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
             "arm-linux-gnueabihf": ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross")}
QEMU_USER = {"aarch64-linux-gnu": "qemu-aarch64", "arm-linux-gnueabihf": "qemu-arm"}
QEMU_PACKAGE = "qemu-user"
DEFAULT_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # random inputs at several scales reach more exits
RELAX_ENTRY = "main"
TUNED_OPS = ("conv2d", "matmul")  # the kernels worth MetaSchedule trials; the others keep their default schedule
TUNING_TIMEOUT_S = 300.0
MIN_TRIALS_PER_TASK = 4
TUNING_TVM_FFI = "0.1.14.post0"  # newer apache-tvm-ffi segfaults in MetaSchedule (tvm::ffi::ToJSONGraph)


@dataclass(frozen=True)
class HostBuildReport:
    format: str
    project_dir: str
    target: str
    target_kind: str
    tvm_target: dict
    library: str
    library_arch: str
    onnx_model: str
    n_stages: int
    n_classes: int
    input_shape: tuple[int, ...]
    thresholds: tuple[float, ...]
    tune_trials: int
    tuning_seconds: float
    compile_seconds: float
    n_test_inputs: int
    check: dict              # how the build was checked against onnxruntime, and the result
    source: str
    sha256: dict             # file -> SHA-256 of what `profile` loads (model.so is code); it refuses any other bytes

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def summary(self) -> str:
        c = self.check
        lines = [f"{self.library_arch} Relax VM library for {self.target}: {Path(self.project_dir) / self.library}",
                 f"  {self.n_stages} stages, tuning trials {self.tune_trials} ({self.tuning_seconds:.0f} s), "
                 f"compile {self.compile_seconds:.1f} s"]
        if c.get("ran"):
            lines.append(f"  check ({c['method']}): exit agreement {c['exit_agreement']:.3f}, max |dlogit| "
                         f"{c['max_abs_diff']:.2e} on {c['n_inputs']} inputs, exits {c['exits_exercised']}")
            if c.get("kernel_calls_per_exit"):
                lines.append(f"  kernel calls per exit: {c['kernel_calls_per_exit']}")
            if c.get("stages_run_per_exit"):
                lines.append(f"  stages run per exit: {dict(sorted(c['stages_run_per_exit'].items()))}")
        else:
            lines.append(f"  check not run: {c.get('reason')}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ inputs
def _as_target(target):
    from edgenas.targets import load_target
    return load_target(target) if isinstance(target, (str, Path)) else target


def _check_target(target) -> None:
    if target.kind not in TARGET_KINDS:
        raise EdgenasError(f"target {target.name} is a {target.kind} target; compile_host builds for "
                           f"{' and '.join(TARGET_KINDS)} targets",
                           "compile MCU targets (e.g. cortex-m7) with the firmware compiler")


def cross_toolchain(target) -> tuple[str, str] | None:
    """(cross gcc path, triple) for a Cortex-A target, None for the host. Missing tools -> EdgenasError."""
    if target.kind != "cortex-a":
        return None
    triple = str(target.tvm_target.get("mtriple", ""))
    if triple not in CROSS_GCC:
        raise EdgenasError(f"target {target.name}: no cross toolchain known for mtriple '{triple}'",
                           f"use one of {', '.join(CROSS_GCC)}")
    gcc, package, libc_package = CROSS_GCC[triple]
    path = shutil.which(gcc)
    if path is None:
        raise EdgenasError(f"{gcc} not found (needed to link the {target.name} library)",
                           f"install the Debian package {package}, or run `make setup` as root")
    out = subprocess.run([path, "-print-file-name=libc.a"], capture_output=True, text=True)
    if out.returncode != 0 or not Path(out.stdout.strip()).is_absolute():
        raise EdgenasError(f"the static C library for {triple} was not found (libc.a)",
                           f"install the Debian package {libc_package}")
    return path, triple


def _fresh_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / REPORT_FILE).exists())):
        raise EdgenasError(f"{out_dir} exists and is not an edgenas build folder",
                           "choose a new output folder (an earlier build folder is replaced)")


def _load_stage_models(src) -> list:
    from edgenas.export.checks import load_onnx, count_ops

    models = [load_onnx(s.path) for s in src.stages]
    if len(models) == 1 and count_ops(models[0]).get("If"):
        raise EdgenasError(f"{src.stages[0].path} holds ONNX `If` nodes but no exits.json beside it",
                           "pass the export folder (exits.json + stages/): TVM's ONNX `If` import runs both "
                           "branches, so edgenas composes the exits from the stage files")
    return models


def default_test_inputs(input_shape: Sequence[int], n_per_scale: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    sample = tuple(input_shape[1:])
    return np.concatenate([rng.standard_normal((n_per_scale, *sample)).astype(np.float32) * np.float32(s)
                           for s in DEFAULT_SCALES])


# ------------------------------------------------------------------------------------------------ Relax
def compose_relax(src, stage_models: Sequence[Any]):
    """The early-exit chain as one Relax IRModule: per-stage functions, exits composed with `relax.If`.

    Returns (module, names of its Relax functions). Outputs of `main`: (logits (1, K) float32, exit (1,) int64).
    """
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    bb = relax.BlockBuilder()
    stage_gvs = []
    for i, (stage, model) in enumerate(zip(src.stages, stage_models)):
        try:
            mod = from_onnx(model, shape_dict={stage.input: list(stage.input_shape)})
        except Exception as exc:  # the frontend raises tvm errors, KeyError and friends for unsupported ops
            raise EdgenasError(f"TVM's ONNX frontend cannot import stage {i} ({stage.path.name}): "
                               f"{' '.join(str(exc).split())[:200]}",
                               "use operators TVM 0.27's Relax ONNX frontend supports (export with opset 18)") from None
        stage_gvs.append(bb.add_func(mod["main"].without_attr("global_symbol"), f"stage{i}"))
    n = len(stage_gvs)
    one = relax.const(1.0, "float32")
    chain = [None] * n
    for i in reversed(range(n)):
        stage = src.stages[i]
        h = relax.Var("h", relax.TensorType(list(stage.input_shape), "float32"))
        params = [h]
        if i > 0:
            survival = relax.Var("survival", relax.TensorType([1], "float32"))
            params.append(survival)
        with bb.function(RELAX_ENTRY if i == 0 else f"exit_chain{i}", params, private=i != 0):
            out = bb.emit(relax.Call(stage_gvs[i], [h]))
            exit_id = relax.const(np.array([i], dtype=np.int64))
            if i == n - 1:
                logits = out if not isinstance(out.ty, relax.TupleType) else bb.emit(relax.TupleGetItem(out, 0))
                logits = bb.emit(relax.op.reshape(logits, [1, src.n_classes]))
                result = bb.emit(relax.Tuple([logits, exit_id]))
            else:
                h_out, logits, conf = (bb.emit(relax.TupleGetItem(out, k)) for k in range(3))
                keep = bb.emit(relax.op.subtract(one, bb.emit(relax.op.reshape(conf, [1]))))
                s = keep if i == 0 else bb.emit(relax.op.multiply(survival, keep))
                score = bb.emit(relax.op.subtract(one, s))
                take = bb.emit(relax.op.greater_equal(score, relax.const(np.float32(src.thresholds[i]), "float32")))
                take = bb.emit(relax.op.reshape(take, []))
                result = bb.emit(relax.If(take, relax.Tuple([logits, exit_id]), relax.Call(chain[i + 1], [h_out, s])))
            chain[i] = bb.emit_func_output(result)
    mod = bb.get()
    names = {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, relax.Function)}
    return mod, names


def tvm_target_for(target) -> dict:
    """The target's LLVM dict; for the host target the CPU of this machine is filled in when the file names none."""
    from tvm.target import codegen

    t = dict(target.tvm_target)
    if target.kind == "host" and "mcpu" not in t and "mtriple" not in t:
        t["mcpu"] = codegen.llvm_get_system_cpu()
    return t


def build_relax(mod, tvm_target: Mapping[str, Any], tune_trials: int, work_dir: Path,
                max_trials_per_task: int | None = None):
    """Compile the Relax module: fused kernels; MetaSchedule-tuned when tune_trials > 0. Returns the executable."""
    import tvm
    from tvm import relax

    fuse = tvm.transform.Sequential([
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()])
    if tune_trials <= 0:
        target = tvm.target.Target(dict(tvm_target))
        with tvm.transform.PassContext(opt_level=3):
            return tvm.compile(fuse(mod), target=target)
    import tvm_ffi
    if tvm_ffi.__version__ != TUNING_TVM_FFI:
        raise EdgenasError(f"MetaSchedule tuning crashes with apache-tvm-ffi {tvm_ffi.__version__}",
                           f"pip install apache-tvm-ffi=={TUNING_TVM_FFI}, or compile with --tune-trials 0")
    from tvm.s_tir import meta_schedule as ms

    t = dict(tvm_target)
    t.setdefault("num-cores", os.cpu_count() or 1)  # MetaSchedule needs it on CPU targets
    target = tvm.target.Target(t)
    with tvm.transform.PassContext(opt_level=3):
        fused = fuse(mod)
    tasks = [task for task in ms.relax_integration.extract_tasks(fused, target)
             if any(op in task.task_name for op in TUNED_OPS)]
    if not max_trials_per_task:  # an equal share each: every tuned kernel gets trials (one search round each)
        max_trials_per_task = max(MIN_TRIALS_PER_TASK, int(tune_trials) // max(len(tasks), 1))
    max_trials_per_task = min(int(max_trials_per_task), int(tune_trials))
    try:
        database = ms.relax_integration.tune_relax(
            fused, params={}, target=target, work_dir=str(work_dir), max_trials_global=int(tune_trials),
            max_trials_per_task=max_trials_per_task, op_names=list(TUNED_OPS),
            num_trials_per_iter=min(32, max_trials_per_task), seed=0,
            # generous timeouts: on a loaded machine a fresh build worker spends seconds importing TVM
            builder=ms.builder.LocalBuilder(timeout_sec=TUNING_TIMEOUT_S),
            runner=ms.runner.LocalRunner(timeout_sec=TUNING_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=40)))
        with target, database, tvm.transform.PassContext(opt_level=3):
            tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        return tvm.compile(tuned, target=target)
    except Exception as exc:
        raise EdgenasError(f"MetaSchedule tuning failed: {' '.join(str(exc).split())[:240]}",
                           "check that apache-tvm-ffi==0.1.14.post0 and the meta-schedule extras (xgboost, psutil) "
                           "are installed, or compile with --tune-trials 0") from None


# ------------------------------------------------------------------------------------------------ checks
def run_library(library: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Run every input through the VM library (this machine's architecture): logits, exits, kernel calls per input.

    Kernel calls are counted with a VM instrument: a called function is a TIR kernel when the library's compiled
    code implements it (VM builtins `vm.*` and the Relax stage / exit-chain functions are not kernels).
    """
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    lib = tvm.runtime.load_module(str(library))
    kernels = lib.imports[0] if lib.imports else lib
    vm = relax.VirtualMachine(lib, dev)
    calls = [0]

    def count(func, name, before_run, ret, *args):
        if before_run and not name.startswith("vm.") and kernels.implements_function(name):
            calls[0] += 1
        return relax.VMInstrumentReturnKind.NO_OP

    vm.set_instrument(count)
    logits, exits, n_calls = [], [], []
    for k in range(x.shape[0]):
        calls[0] = 0
        lg, ex = vm[RELAX_ENTRY](tvm.runtime.tensor(np.ascontiguousarray(x[k:k + 1], dtype=np.float32)))
        logits.append(lg.numpy().reshape(-1))
        exits.append(int(ex.numpy().reshape(-1)[0]))
        n_calls.append(calls[0])
    return np.stack(logits), np.asarray(exits, np.int64), n_calls


def _agreement(logits, exits, ref_logits, ref_exits) -> dict:
    same = exits == ref_exits
    diff = float(np.max(np.abs(logits - ref_logits))) if len(exits) else 0.0
    return {"n_inputs": int(len(exits)), "exit_agreement": float(same.mean()) if len(exits) else 1.0,
            "max_abs_diff": diff, "tolerance": LOGIT_TOLERANCE, "exits_exercised": sorted(set(exits.tolist())),
            "passed": bool(len(exits)) and bool(same.all()) and diff <= LOGIT_TOLERANCE}


def check_host_library(library: Path, x, ref_logits, ref_exits) -> dict:
    logits, exits, n_calls = run_library(library, x)
    check = {"ran": True, "method": "tvm-relax-vm on this machine", **_agreement(logits, exits, ref_logits, ref_exits)}
    per_exit: dict[int, set[int]] = {}
    for e, c in zip(exits.tolist(), n_calls):
        per_exit.setdefault(e, set()).add(c)
    check["kernel_calls_per_exit"] = {str(e): sorted(v)[0] if len(v) == 1 else sorted(v)
                                      for e, v in sorted(per_exit.items())}
    return check


def _static_project(src, stage_models, target, x, ref_logits, ref_exits, project: Path) -> None:
    """The MCU compiler's static C driver + the TVM kernels for the target CPU + a hosted main."""
    from edgenas.compile import cdriver, firmware
    project.mkdir(parents=True)
    cdriver.driver_project(stage_models, src.stages, src.thresholds, src.n_classes, src.input_shape, x, ref_logits,
                           ref_exits, "llvm", target.tvm_target, project)
    firmware.copy_fixed_files(project, ("hosted_main.c", "tvm_stubs.c"))


STATIC_SOURCES = ("hosted_main.c", "tvm_stubs.c", "model.c", "weights.c", "test_io.c")


def static_build_command(gcc: str) -> list[str]:
    return [gcc, "-O2", "-static", "-DEDGENAS_PROFILE", "-I.", "-Iinclude", *STATIC_SOURCES, "kernels.o", "-lm",
            "-o", STATIC_EXE]


def build_static_check(project: Path, gcc: str) -> Path:
    out = subprocess.run(static_build_command(gcc), cwd=project, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if "error" in ln.lower()] or \
            (out.stderr + out.stdout).splitlines()
        raise EdgenasError(f"linking the static check executable failed: {' | '.join(lines[:3])[:400]}",
                           f"rerun `{' '.join(static_build_command(Path(gcc).name))}` in {project} to see why")
    return project / STATIC_EXE


def run_static_check(exe: Path, triple: str, ref_logits, ref_exits, timeout_s: float = 300.0) -> dict:
    """Run the static executable under qemu-user and compare it with the onnxruntime reference."""
    from edgenas.profile.mcu_report import parse_report

    qemu = QEMU_USER[triple]
    if shutil.which(qemu) is None:
        return {"ran": False, "method": f"{qemu} static C driver",
                "reason": f"{qemu} not found (install the Debian package {QEMU_PACKAGE})"}
    try:
        run = subprocess.run([qemu, str(exe), "3"], capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgenasError(f"{qemu} {exe.name} did not finish in {timeout_s:g} s",
                           "check the executable by hand; report this model") from None
    report = parse_report(run.stdout + run.stderr)
    logits = np.asarray([r.logits for r in report.inputs], dtype=np.float32)
    exits = np.asarray([r.exit for r in report.inputs], dtype=np.int64)
    check = {"ran": True, "method": f"{qemu} static C driver (TVM kernels for the target CPU)",
             **_agreement(logits, exits, ref_logits, ref_exits),
             "kernel_errors": sum(1 for r in report.inputs if r.rc != 0), "exit_code": run.returncode,
             "stages_run_per_exit": {str(r.exit): len(r.stages) for r in report.inputs},
             "emulated_ns_per_exit": {}}
    for r in report.inputs:
        check["emulated_ns_per_exit"].setdefault(str(r.exit), []).append(r.total)
    check["emulated_ns_per_exit"] = {e: float(np.median(v)) for e, v in sorted(check["emulated_ns_per_exit"].items())}
    check["note"] = "emulated_ns are qemu-user wall-clock times on this machine, not Cortex-A latencies"
    check["passed"] = check["passed"] and check["kernel_errors"] == 0 and run.returncode == 0
    return check


# ------------------------------------------------------------------------------------------------ compile
def _onnx_for_ort(path: Path, src, stage_models, dst: Path) -> None:
    """The nested-If graph of the export (or the plain model) for onnxruntime, next to the library."""
    from edgenas.export.exits_json import EXITS_FILE, read_exits_json

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / EXITS_FILE).is_file():
        model_file = read_exits_json(folder).get("files", {}).get("model")
        if model_file and (folder / model_file).is_file():
            shutil.copyfile(folder / model_file, dst)
            return
        from edgenas.export.checks import save_model
        from edgenas.export.compose import compose_if_graph
        save_model(compose_if_graph(stage_models, src.thresholds), dst)
        return
    shutil.copyfile(src.stages[0].path, dst)


def compile_host(model_path, target, out_dir, tune_trials: int = 0, test_inputs: np.ndarray | None = None,
                 max_trials_per_task: int | None = None, qemu_timeout_s: float = 300.0) -> HostBuildReport:
    """Build the Relax VM library for a host or Cortex-A target into `out_dir` and check it against onnxruntime.

    `model_path`: an export folder (exits.json + stages/), its model.onnx, or a plain single-graph ONNX file.
    `target`: a Target or a target name/file. `tune_trials > 0` tunes with MetaSchedule (host targets only: the
    candidates are measured on this machine). Raises EdgenasError, leaving nothing behind, on bad input, a missing
    toolchain or a build that disagrees with onnxruntime.
    """
    from edgenas.compile.mcu import (_test_inputs, load_model_source, publish_project, reference_document,
                                     reference_outputs)
    from edgenas.profile.artefact import sha256_of

    target = _as_target(target)
    _check_target(target)
    if tune_trials < 0:
        raise EdgenasError(f"--tune-trials must be >= 0, got {tune_trials}", "pass 0 (no tuning) or a trial count")
    if tune_trials and target.kind != "host":
        raise EdgenasError(f"MetaSchedule tuning for {target.name} needs measurements on the board itself",
                           "compile with --tune-trials 0 here, or run `edgenas compile --tune-trials N` on the board")
    out_dir = Path(out_dir)
    _fresh_out_dir(out_dir)
    cross = cross_toolchain(target)
    src = load_model_source(Path(model_path), "float32")
    stage_models = _load_stage_models(src)
    x = _test_inputs(test_inputs if test_inputs is not None else default_test_inputs(src.input_shape),
                     src.input_shape)
    ref_logits, ref_exits = reference_outputs(src, x)
    mod, _ = compose_relax(src, stage_models)
    tvm_target = tvm_target_for(target)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        t0 = time.perf_counter()
        ex = build_relax(mod, tvm_target, tune_trials, tmp / "tuning", max_trials_per_task)
        build_s = time.perf_counter() - t0
        library = tmp / LIBRARY_FILE
        try:
            if cross:
                ex.export_library(str(library), cc=cross[0])
            else:
                ex.export_library(str(library))
        except Exception as exc:
            raise EdgenasError(f"linking {LIBRARY_FILE} failed: {' '.join(str(exc).split())[:240]}",
                               "check the C compiler (gcc on the host, the cross gcc for Cortex-A)") from None
        compile_s = time.perf_counter() - t0
        if cross:
            _static_project(src, stage_models, target, x, ref_logits, ref_exits, tmp / STATIC_DIR)
            exe = build_static_check(tmp / STATIC_DIR, cross[0])
            check = run_static_check(exe, cross[1], ref_logits, ref_exits, qemu_timeout_s)
            arch = cross[1].split("-")[0]
        else:
            check = check_host_library(library, x, ref_logits, ref_exits)
            arch = os.uname().machine
        if check.get("ran") and not check["passed"]:
            raise EdgenasError(
                f"the {target.name} build disagrees with onnxruntime ({check['method']}): exit agreement "
                f"{check['exit_agreement']:.3f}, max |logit difference| {check['max_abs_diff']:.2e} "
                f"(tolerance {LOGIT_TOLERANCE:g})", "report this model; nothing was written")
        _onnx_for_ort(Path(model_path), src, stage_models, tmp / ONNX_FILE)
        report = HostBuildReport(
            format=FORMAT, project_dir=str(out_dir), target=target.name, target_kind=target.kind,
            tvm_target=tvm_target, library=LIBRARY_FILE, library_arch=arch, onnx_model=ONNX_FILE,
            n_stages=len(src.stages), n_classes=src.n_classes, input_shape=tuple(src.input_shape),
            thresholds=tuple(src.thresholds), tune_trials=int(tune_trials),
            tuning_seconds=round(build_s if tune_trials else 0.0, 2),
            compile_seconds=round(compile_s, 2), n_test_inputs=int(x.shape[0]), check=check,
            source=str(Path(model_path).resolve()),
            sha256={name: sha256_of(tmp / name) for name in (LIBRARY_FILE, ONNX_FILE)})
        publish_project(tmp, out_dir, REPORT_FILE, report.to_dict(),
                        reference_document(x, ref_logits, ref_exits, input_shape=list(src.input_shape)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def load_build_report(build_dir) -> dict:
    path = Path(build_dir) / REPORT_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgenasError(f"{path} not found",
                           "build the library with `edgenas compile MODEL --target T` first") from None
    except json.JSONDecodeError as exc:
        raise EdgenasError(f"{path} is not valid JSON ({exc.msg})", "re-run `edgenas compile`") from None
    if doc.get("format") != FORMAT:
        raise EdgenasError(f"{path} is not an {FORMAT} report", "re-run `edgenas compile` with this edgenas version")
    return doc
