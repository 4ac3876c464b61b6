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

Checks (host_checks.py): on the host the library itself runs every test input (same exit as onnxruntime on all,
max |logit difference| <= edgenas.agreement.LOGIT_TOLERANCE on them) and the VM is instrumented to count kernel calls
per exit (early exits must call fewer kernels). On a Cortex-A target the static executable runs under qemu-aarch64
with the same criteria; without qemu-aarch64 the check is recorded as not run, with the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgenas.agreement import LOGIT_TOLERANCE
from edgenas.compile.host_checks import (RELAX_ENTRY, build_static_check, check_host_library, run_static_check,
                                         static_project)
from edgenas.compile.outputs import (check_replaceable, check_target_kind, publish_project, reference_document,
                                     sha256_of)
from edgenas.compile.test_inputs import checked_test_inputs, default_test_inputs
from edgenas.errors import EdgenasError
from edgenas.fileio import temp_folder
from edgenas.targets import as_target

REPORT_FILE = "build.json"
LIBRARY_FILE = "model.so"
ONNX_FILE = "model.onnx"
STATIC_DIR = "static"
FORMAT = "edgenas-relax-build/1"
TARGET_KINDS = ("host", "cortex-a")
# LLVM triple -> cross compiler, and the Debian package that ships it (+ its static C library).
CROSS_GCC = {"aarch64-linux-gnu": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
             "arm-linux-gnueabihf": ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross")}
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
    input_shape: tuple[int, ...]     # NCHW, batch 1: the library runs one input at a time
    thresholds: tuple[float, ...]
    tune_trials: int
    tuning_seconds: float            # tuning plus the build of the tuned kernels (0 without tuning)
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


def _load_stage_models(src) -> list:
    from edgenas.export.checks import load_onnx, count_ops

    models = [load_onnx(s.path) for s in src.stages]
    if len(models) == 1 and count_ops(models[0]).get("If"):
        raise EdgenasError(f"{src.stages[0].path} holds ONNX `If` nodes but no exits.json beside it",
                           "pass the export folder (exits.json + stages/): TVM's ONNX `If` import runs both "
                           "branches, so edgenas composes the exits from the stage files")
    return models


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
    from edgenas.compile.mcu import load_model_source, reference_outputs

    target = as_target(target)
    check_target_kind(target, TARGET_KINDS, f"; compile_host builds for {' and '.join(TARGET_KINDS)} targets",
                      "compile MCU targets (e.g. cortex-m7) with the firmware compiler")
    if tune_trials < 0:
        raise EdgenasError(f"--tune-trials must be >= 0, got {tune_trials}", "pass 0 (no tuning) or a trial count")
    if tune_trials and target.kind != "host":
        raise EdgenasError(f"MetaSchedule tuning for {target.name} needs measurements on the board itself",
                           "compile with --tune-trials 0 here, or run `edgenas compile --tune-trials N` on the board")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, REPORT_FILE, "build")
    cross = cross_toolchain(target)
    src = load_model_source(Path(model_path), "float32")
    stage_models = _load_stage_models(src)
    x = checked_test_inputs(test_inputs if test_inputs is not None else default_test_inputs(src.input_shape),
                            src.input_shape)
    ref_logits, ref_exits = reference_outputs(src, x)
    mod, _ = compose_relax(src, stage_models)
    tvm_target = tvm_target_for(target)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(out_dir)
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
            static_project(src, stage_models, target, x, ref_logits, ref_exits, tmp / STATIC_DIR)
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
