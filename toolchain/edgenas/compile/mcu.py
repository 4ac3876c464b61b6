"""`compile_mcu`: exported early-exit stages -> a self-contained Cortex-M firmware project, built and sized.

    report = compile_mcu("export/", load_target("cortex-m7"), "fw/", codegen="llvm", test_inputs=x)

Pipeline: each stage file (exits.json `stages`, or one plain ONNX model = one stage without exits) is lowered by
TVM to fused TIR kernels (`lowering.py`); all kernels are built into one LLVM object for the target CPU
(`codegen="llvm"`, the target's `tvm_target` dict) or into C source (`codegen="c"`, compiled by arm-none-eabi-gcc
-O2). A generated static C driver (`cdriver.py`) holds the weights as `const` arrays (flash), one activation arena
whose offsets come from buffer lifetimes over the whole stage chain (`memplan.py`), and `edgenas_run` with the exit
rule in C. The project (`firmware.py`) is built for QEMU (`firmware.elf`, APB timer) and for a real board
(`firmware-board.elf`, DWT cycle counter), both reporting over the UART without semihosting, and sized from the
linker output. `firmware.json` records the report; `reference.json` the test inputs' onnxruntime logits and exits
that `edgenas.profile` checks against.

int8 (`dtype="int8"`, the default for a model that carries int8): the stages are QDQ models (`stages_int8/` of an
export folder, a QDQ ONNX file from onnxruntime's `quantize_static` or another tool, or a float model quantised here
from `calib_data`). `qdq.rewrite_qdq` replaces every quantised operator by our integer kernel (`int8_kernels.py`:
int8 weights in flash, int8 activations in the arena, int32 accumulation, onnxruntime's requantisation; the SMLAD
micro-kernel on cores with the DSP extension) before TVM legalises anything, and refuses a quantised layer it cannot
lower (one line naming the node) instead of running it in float. The firmware takes a float input and quantises it
in its first kernel; exits compare in float on the dequantised outputs, as onnxruntime does on the same QDQ model,
which is the reference (`reference.json`): same exits, logits within one quantisation step.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgenas.agreement import LOGIT_TOLERANCE
from edgenas.compile.outputs import REFERENCE_FILE, reference_document
from edgenas.compile.test_inputs import checked_test_inputs
from edgenas.errors import EdgenasError

CODEGENS = ("llvm", "c")
DTYPES = ("float32", "int8")
REPORT_FILE = "firmware.json"


@dataclass(frozen=True)
class StageSource:
    """One stage to compile: its ONNX file, input name and shape, and its role in the chain."""
    path: Path
    input: str
    input_shape: tuple[int, ...]
    final: bool


@dataclass(frozen=True)
class ModelSource:
    stages: tuple[StageSource, ...]
    thresholds: tuple[float, ...]
    n_classes: int
    input_shape: tuple[int, ...]
    macs_per_exit: tuple[int, ...] | None
    fp32_stage_paths: tuple[Path, ...]   # for the cost-model prediction (the int8 files carry QDQ nodes)


@dataclass(frozen=True)
class FirmwareReport:
    project_dir: str
    target: str
    codegen: str
    dtype: str
    n_stages: int
    n_classes: int
    thresholds: tuple[float, ...]
    elf: str
    board_elf: str | None
    sizes: dict
    arena_bytes: int
    arena_peak_live_bytes: int
    workspace_pool_bytes: int
    weight_bytes: int
    macs_per_exit: tuple[int, ...] | None
    predicted: dict | None              # cost-model figures (edgenas.cost.analyze) for the same target and dtype
    n_test_inputs: int
    fits: bool
    excess: dict
    report_channel: str = "uart"        # report and exit over UART0, no semihosting (edgenas.profile.qemu)
    logit_tolerance: float = LOGIT_TOLERANCE  # largest |logit - reference| a correct build shows (int8: one step)
    int8: dict | None = None            # int8 builds: integer kernels by kind, float operators left, input

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def summary(self) -> str:
        """What `edgenas compile` prints: where the firmware is and how it fits, measured and predicted."""
        sz, pred = self.sizes, self.predicted or {}

        def line(what, measured, budget, predicted):
            p = f", cost model {predicted / 1024:.1f} KiB ({(measured - predicted) / predicted:+.1%})" if predicted else ""
            return f"  {what}: {measured / 1024:.1f} KiB of {budget / 1024:.0f} KiB ({measured / budget:.0%}){p}"
        return "\n".join([
            f"firmware for {self.target} ({self.codegen}, {self.dtype}) in {self.project_dir}: {self.elf} (QEMU)"
            + (f", {self.board_elf} (board)" if self.board_elf else ""),
            line("flash", sz["flash_bytes"], sz["flash_budget"], None),
            line("flash without the embedded test inputs (a deployed image)",
                 sz["flash_bytes"] - sz.get("flash_parts", {}).get("test_data", 0), sz["flash_budget"],
                 pred.get("flash_bytes")),
            line("RAM", sz["ram_bytes"], sz["ram_budget"], pred.get("peak_sram_bytes")),
            *([self._int8_line()] if self.int8 else []),
            f"  {self.n_stages} segments, {self.n_test_inputs} embedded test inputs; "
            f"run `edgenas profile {self.project_dir} --target {self.target} --device qemu`"])

    def _int8_line(self) -> str:
        def counts(d):
            return ", ".join(f"{k} {n}" for k, n in sorted(d.items())) or "none"
        return (f"  int8: integer kernels: {counts(self.int8['integer_kernels'])}; left in float as in the QDQ "
                f"model: {counts(self.int8['float_ops'])}; input: {self.int8['input']}")


# ------------------------------------------------------------------------------------------------ inputs
def _onnx_input(model) -> tuple[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [inp.name for inp in model.graph.input if inp.name not in inits]
    if len(inputs) > 1:  # the driver and the host library feed one image; the rest would be left unset
        raise EdgenasError(f"the ONNX model has {len(inputs)} inputs ({', '.join(inputs[:4])}); compile takes models "
                           "with one image input", "turn the other inputs into initializers, or export the "
                           "part of the model that takes the image")
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        batch = inp.type.tensor_type.shape.dim[:1]
        if batch and batch[0].HasField("dim_value") and batch[0].dim_value > 1:
            raise EdgenasError(f"input {inp.name} has batch size {batch[0].dim_value}; the firmware and the host "
                               "library run one input at a time", "export the model with batch 1 or a symbolic batch")
        dims = []
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_value"):
                shape = [int(e.dim_value) if e.HasField("dim_value") else e.dim_param
                         for e in inp.type.tensor_type.shape.dim]
                raise EdgenasError(f"input {inp.name} is zero-sized: dimension {k} is 0 (shape {shape})",
                                   "export the model with its real input size (every dimension at least 1)")
            elif k == 0:
                dims.append(1)  # symbolic batch: compile for batch 1
            else:
                raise EdgenasError(f"input {inp.name} has a symbolic dimension {k} ({d.dim_param})",
                                   "export the model with static shapes")
        return inp.name, tuple(dims)
    raise EdgenasError("the ONNX model has no input", "pass a model with one image input")


def load_model_source(path: Path, dtype: str) -> ModelSource:
    """An export folder (exits.json + stage files) or a plain ONNX file (one stage, no exits)."""
    import onnx

    from edgenas.export.exits_json import EXITS_FILE, read_exits_json

    path = resolve_model_path(path)
    if path.is_dir():
        doc = read_exits_json(path)
        key = "int8_file" if dtype == "int8" else "file"
        stages, fp32 = [], []
        for i, st in enumerate(doc["stages"]):
            if not st.get(key):
                raise EdgenasError(f"{path / EXITS_FILE} lists no int8 file for stage {i}",
                                   "export with int8 (`edgenas export` writes stages_int8/) or compile fp32")
            file = path / st[key]
            if not file.is_file():
                raise EdgenasError(f"stage file {file} not found", "re-run `edgenas export`")
            stages.append(StageSource(file, st["input"], tuple(st["input_shape"]), i == doc["n_exits"] - 1))
            fp32.append(path / st["file"])
        macs = [e.get("macs") for e in doc["exits"]]
        return ModelSource(tuple(stages), tuple(float(t) for t in doc["thresholds"]), int(doc["n_classes"]),
                           tuple(doc["input_shape"]), tuple(macs) if all(m is not None for m in macs) else None,
                           tuple(fp32))
    if not path.is_file() or path.suffix != ".onnx":
        raise EdgenasError(f"{path} is neither an export folder (with exits.json) nor an .onnx file",
                           "pass the folder written by `edgenas export` or an ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors
        raise EdgenasError(f"cannot read {path} as ONNX: {' '.join(str(exc).split())[:160]}",
                           "pass a model written by onnx.save or torch.onnx.export") from None
    if dtype == "int8" and not is_qdq(model):
        raise EdgenasError(f"{path} is a float model; an int8 build needs its quantised (QDQ) version or "
                           "calibration data", "pass --calib-data (a dataset spec or an .npy of inputs), a QDQ "
                           "model, or --dtype float32")
    if dtype == "float32" and is_qdq(model):
        raise EdgenasError(f"{path} is a quantised (QDQ) model; a float32 build would compute it in float",
                           "compile it with --dtype int8, or pass the float model for --dtype float32")
    from edgenas.compile.lowering import check_operators
    check_operators(model, str(path))
    name, shape = _onnx_input(model)
    out = model.graph.output[0].type.tensor_type.shape.dim
    n_classes = int(np.prod([d.dim_value for d in out if d.dim_value > 0])) if out else 1
    return ModelSource((StageSource(path, name, shape, True),), (), n_classes, shape, None, (path,))


def is_qdq(model) -> bool:
    """Whether an ONNX model is quantised: a DequantizeLinear of an int8/uint8 initializer (a quantised weight)."""
    from onnx import TensorProto
    int8 = {i.name for i in model.graph.initializer if i.data_type in (TensorProto.INT8, TensorProto.UINT8)}
    return any(n.op_type == "DequantizeLinear" and n.input[0] in int8 for n in model.graph.node)


def resolve_model_path(path) -> Path:
    """What a model argument names: a run folder -> its one exported candidate's folder, the model.onnx of an
    export folder -> that folder (its stages are compiled), anything else as given."""
    from edgenas.export.exits_json import EXITS_FILE

    path = Path(path)
    if path.is_dir() and (path / "archive.jsonl").is_file() and not (path / EXITS_FILE).is_file():
        path = _run_export(path)
    if path.is_file() and (path.parent / EXITS_FILE).is_file() and path.suffix == ".onnx":
        path = path.parent
    return path


def is_qdq_file(path) -> bool:
    """Whether `path` is a readable ONNX file holding a quantised (QDQ) model (an unreadable file: False; the
    compiler reports it)."""
    import onnx

    path = Path(path)
    if not (path.is_file() and path.suffix == ".onnx"):
        return False
    try:
        return is_qdq(onnx.load(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001  (protobuf decode errors: load_model_source names the file)
        return False


def default_dtype(path: Path, calib_data) -> str:
    """int8 where the model carries int8 (calibration data, an export folder with `stages_int8/`, a QDQ model),
    else float32: what `edgenas compile` builds for an MCU target when --dtype is not given."""
    from edgenas.export.exits_json import read_exits_json

    if calib_data is not None:
        return "int8"
    path = resolve_model_path(path)
    if path.is_dir():
        stages = read_exits_json(path)["stages"]
        return "int8" if stages and all(st.get("int8_file") for st in stages) else "float32"
    return "int8" if is_qdq_file(path) else "float32"


def calibration_inputs(calib_data, input_shape, limit: int = 256) -> np.ndarray:
    """Calibration inputs from an .npy file (N, *sample) or a dataset spec (its training split, resized): float32."""
    sample = tuple(input_shape[1:])
    if isinstance(calib_data, np.ndarray):
        x = calib_data
    elif str(calib_data).endswith(".npy"):
        try:
            x = np.load(str(calib_data), allow_pickle=False)  # data, never code
        except (OSError, ValueError) as exc:
            raise EdgenasError(f"cannot read --calib-data {calib_data}: {' '.join(str(exc).split())[:120]}",
                               "pass an .npy file saved by numpy.save (no pickled objects)") from None
    else:
        from edgenas.data import load_dataset, resize
        x = resize(load_dataset(str(calib_data)).train.x, sample[-1]).numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(sample) + 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != len(sample) + 1 or tuple(x.shape[1:]) != sample or len(x) < 1:
        raise EdgenasError(f"calibration data of shape {list(x.shape)} does not fit the model input "
                           f"{list(input_shape)}", f"pass inputs of shape (N, {', '.join(map(str, sample))})")
    return np.ascontiguousarray(x[:limit])


def quantised_source(src: ModelSource, calib: np.ndarray, folder: Path) -> ModelSource:
    """`src`'s float stages quantised with onnxruntime (QDQ, export's scheme) on `calib`, into `folder`."""
    from dataclasses import replace

    from edgenas.export.quantize import array_reader_factory, quantize_stages, stage_calibration_inputs
    paths = [st.path for st in src.stages]
    int8 = quantize_stages(paths, array_reader_factory(stage_calibration_inputs(paths, calib)), folder)
    return replace(src, stages=tuple(replace(st, path=p) for st, p in zip(src.stages, int8)))


def _run_export(run: Path) -> Path:
    """The export folder of a search run folder: its one exported candidate (a sub-folder with exits.json)."""
    from edgenas.export.exits_json import EXITS_FILE

    found = sorted(p.parent for p in run.glob(f"*/{EXITS_FILE}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise EdgenasError(f"run folder {run} holds no exported candidate",
                           f"export one first (`edgenas export {run} --candidate K`), or use `edgenas compile {run}`")
    raise EdgenasError(f"run folder {run} holds {len(found)} exported candidates "
                       f"({', '.join(p.name for p in found[:4])})", "pass the export folder of the one to compile")


def reference_outputs(src: ModelSource, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime on the stage chain with the exit rule in float32, exactly as the C driver applies it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(s.path), so, providers=["CPUExecutionProvider"]) for s in src.stages]
    logits_out, exits = [], []
    for k in range(x.shape[0]):
        h = x[k:k + 1]
        survival = np.float32(1.0)
        for i, (stage, sess) in enumerate(zip(src.stages, sessions)):
            outs = sess.run(None, {stage.input: h.reshape(stage.input_shape).astype(np.float32)})
            if stage.final:
                logits_out.append(outs[0].reshape(-1))
                exits.append(i)
                break
            h, logits, conf = outs[0], outs[1], outs[2]
            survival = np.float32(survival * (np.float32(1.0) - np.float32(conf.reshape(-1)[0])))
            if np.float32(1.0) - survival >= np.float32(src.thresholds[i]):
                logits_out.append(logits.reshape(-1))
                exits.append(i)
                break
    return np.stack(logits_out).astype(np.float32), np.asarray(exits, dtype=np.int64)


def predicted_costs(src: ModelSource, target, dtype: str) -> dict:
    """What the cost model predicts for this network on this target (the figures `edgenas analyze` prints).

    The cost model reads the nested-If graph composed from the fp32 stages. Where its ONNX front end rejects that
    graph, each stage is analysed as its own one-exit graph and the figures are combined: MACs accumulate along
    the chain, weights add up, and peak activations are the largest stage's (stages run one after another, and a
    stage's graph input is the h carried over from the previous stage).
    """
    import onnx

    from edgenas.cost import analyze, from_onnx

    models = [onnx.load(str(p)) for p in src.fp32_stage_paths]
    if len(models) == 1:
        return dict(analyze(from_onnx(models[0]), target, dtype).to_dict(), method="single graph")
    from edgenas.export.compose import compose_if_graph
    try:
        return dict(analyze(from_onnx(compose_if_graph(models, src.thresholds)), target, dtype).to_dict(),
                    method="nested-If graph")
    except EdgenasError as exc:
        reason = exc.line()
    parts = [analyze(from_onnx(m), target, dtype) for m in models]
    macs = np.cumsum([p.macs_worst for p in parts]).tolist()
    width = 1 if dtype == "int8" else 4
    params = sum(p.params for p in parts)
    act = max(p.activation_sram_bytes for p in parts)
    return {"target": target.name, "dtype": dtype, "n_exits": len(parts), "macs_per_exit": [int(m) for m in macs],
            "params": int(params), "activation_sram_bytes": int(act),
            "peak_sram_bytes": int(act + target.workspace_bytes),
            "flash_bytes": int(params * width + target.code_size_bytes),
            "method": "per stage", "note": f"nested-If graph not analysable: {reason}"}


# ------------------------------------------------------------------------------------------------ compile
def compile_mcu(model_or_run, target, out_dir, codegen: str = "llvm", dtype: str | None = None,
                test_inputs: np.ndarray | None = None, reference: tuple[np.ndarray, np.ndarray] | None = None,
                build_board: bool = True, keep_failed: bool = False, calib_data=None) -> FirmwareReport:
    """Build a firmware project in `out_dir` (replacing an earlier one atomically) and return its report.

    `model_or_run`: an export folder (exits.json + stage files), its model.onnx, a plain ONNX model (one stage), or
    a search run folder holding one exported candidate.

    `dtype`: "float32", "int8" or None (int8 where the model carries int8: `default_dtype`). `calib_data` (an .npy
    path, an array or a dataset spec) quantises the float stages here (onnxruntime, the export's scheme); the QDQ
    stage files compiled are kept in the project (`stages_int8/`).

    Raises EdgenasError when the firmware exceeds the target's flash or RAM budget. Nothing is left behind then
    (nor on any other error), unless `keep_failed`: then the project, with its `firmware.json` size report, is
    kept in `out_dir`. TVM's and LLVM's messages go to `build.log` in the project, not to the terminal.
    """
    from edgenas.compile import cdriver, firmware
    from edgenas.compile.outputs import OutputFolder, check_replaceable, check_target_kind, publish_project
    from edgenas.compile.qdq import integer_report

    if codegen not in CODEGENS:
        raise EdgenasError(f"unknown codegen '{codegen}'", f"use one of {', '.join(CODEGENS)}")
    if dtype is None:
        dtype = default_dtype(Path(model_or_run), calib_data)
    if dtype not in DTYPES:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    check_target_kind(target, ("mcu",), ", not an MCU",
                      "compile MCU firmware for an MCU target (e.g. cortex-m7), or use the host/Cortex-A compiler")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, REPORT_FILE, "firmware")
    gcc = firmware.require_tool(firmware.GCC)
    firmware.require_newlib(gcc, firmware.cpu_flags(target))
    firmware.require_tool(firmware.SIZE)

    if calib_data is not None and dtype != "int8":
        raise EdgenasError("--calib-data quantises the model for an int8 build, but dtype is float32",
                           "drop --calib-data, or compile with --dtype int8")
    src = load_model_source(Path(model_or_run), "float32" if calib_data is not None else dtype)
    calib = calibration_inputs(calib_data, src.input_shape) if calib_data is not None else None
    x = checked_test_inputs(test_inputs, src.input_shape)
    if reference is not None:
        ref_logits = np.asarray(reference[0], np.float32).reshape(x.shape[0], -1)
        ref_exits = np.asarray(reference[1], np.int64).reshape(-1)
        if ref_logits.shape != (x.shape[0], src.n_classes) or ref_exits.shape != (x.shape[0],):
            raise EdgenasError(f"reference of shapes {list(ref_logits.shape)}/{list(ref_exits.shape)} does not "
                               f"match {x.shape[0]} inputs and {src.n_classes} classes",
                               "pass (logits (N, n_classes), exits (N,)) for the test inputs")

    import onnx
    with OutputFolder(out_dir, keep_failed) as work:  # an unwritable out_dir fails here, before the long build
        tmp = work.tmp
        summaries: dict = {}
        if calib is not None:
            with work.captured_log():
                src = quantised_source(src, calib, tmp / "stages_int8")
        if reference is None:
            ref_logits, ref_exits = reference_outputs(src, x)
        stage_models = [onnx.load(str(st.path)) for st in src.stages]
        tolerance = logit_tolerance(stage_models, src.stages) if dtype == "int8" else LOGIT_TOLERANCE
        with work.captured_log():
            programs, plan, pool = cdriver.driver_project(
                stage_models, src.stages, src.thresholds, src.n_classes,
                src.input_shape, x, ref_logits, ref_exits, codegen, target.tvm_target, tmp, dtype=dtype,
                integer_summary=summaries, logit_tolerance=tolerance)
        for name, text in {"firmware.ld": firmware.linker_script(target, "qemu", firmware.STACK_BYTES),
                           "firmware-board.ld": firmware.linker_script(target, "board", firmware.STACK_BYTES),
                           "Makefile": firmware.makefile(target, codegen)}.items():
            (tmp / name).write_text(text)
        firmware.copy_fixed_files(tmp)
        weight_bytes = int(sum(cdriver.tensor_summary(programs).values()))
        _check_weights_fit_the_link(target, weight_bytes, work)
        elf = _build(work, target, codegen, "qemu")
        sizes = firmware.size_report(elf, tmp / "firmware.map", target, plan.size, pool, firmware.STACK_BYTES)
        excess = sizes.excess()
        board_elf = None
        if build_board and not excess:
            board_elf = _build(work, target, codegen, "board").name
        try:
            predicted = predicted_costs(src, target, dtype)
        except EdgenasError as exc:
            predicted = {"error": exc.line()}
        report = FirmwareReport(
            project_dir=str(out_dir), target=target.name, codegen=codegen, dtype=dtype, n_stages=len(programs),
            n_classes=src.n_classes, thresholds=src.thresholds, elf=elf.name, board_elf=board_elf,
            sizes=sizes.to_dict(), arena_bytes=plan.size, arena_peak_live_bytes=plan.peak_live_bytes,
            workspace_pool_bytes=pool, weight_bytes=weight_bytes,
            macs_per_exit=src.macs_per_exit or _macs_from_prediction(predicted), predicted=predicted,
            n_test_inputs=int(x.shape[0]), fits=not excess, excess=excess,
            logit_tolerance=tolerance,
            int8=integer_report(summaries) if dtype == "int8" else None)
        if excess and not keep_failed:
            raise EdgenasError(_too_big_message(target, sizes), "shrink the model (fewer channels or exits) or pick "
                                                                "a larger target; --keep-failed keeps the project")
        publish_project(tmp, out_dir, REPORT_FILE, report.to_dict(), reference_document(x, ref_logits, ref_exits))
        work.published = True
    if excess:
        raise EdgenasError(_too_big_message(target, sizes), "shrink the model (fewer channels or exits) or pick a "
                                                            f"larger target; kept in {out_dir} because --keep-failed "
                                                            f"(size report: {out_dir / REPORT_FILE})")
    return report


def logit_tolerance(stage_models, stages: Sequence[StageSource]) -> float:
    """One quantisation step of the int8 logits (the largest scale of a DequantizeLinear producing an exit's
    logits), at least LOGIT_TOLERANCE: how far an int8 build may differ from onnxruntime on the same QDQ model (a
    requantisation tie rounded the other way). Logits of a float head keep the float tolerance."""
    from onnx import numpy_helper

    step = LOGIT_TOLERANCE
    for model, stage in zip(stage_models, stages):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        logits = model.graph.output[0 if stage.final else 1].name
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and logits in node.output and node.input[1] in inits:
                # one step, plus the float32 rounding of two dequantised values' difference
                step = max(step, float(np.max(inits[node.input[1]])) * (1 + 1e-4))
    return step


def _build(work, target, codegen: str, variant: str) -> Path:
    """build_firmware, with an error that names no folder about to be deleted."""
    from edgenas.compile import firmware
    try:
        return firmware.build_firmware(work.tmp, target, codegen, variant)
    except EdgenasError as exc:
        if work.keep_failed:
            kept = work.keep()
            raise EdgenasError(exc.problem, f"kept in {kept} because --keep-failed: run `make` there to see the "
                                            "full compiler output") from None
        raise EdgenasError(exc.problem, "rerun with --keep-failed to keep the project, then run `make` in it") from None


def _qemu_flash_bytes() -> int:
    from edgenas.compile.firmware import QEMU_MEMORY
    length = QEMU_MEMORY["flash_length"]
    return int(length[:-1]) * 1024 * 1024 if length.endswith("M") else int(length, 0)


def _check_weights_fit_the_link(target, weight_bytes: int, work) -> None:
    """Weights beyond the QEMU image's flash region make the link itself fail, before any size report: say what
    the size report would have said (the budget is exceeded by at least the weights) instead of a linker error."""
    budget = target.budgets.flash_bytes or target.flash_bytes
    if weight_bytes <= _qemu_flash_bytes() or budget is None or weight_bytes <= budget:
        return
    problem = (f"firmware does not fit target {target.name}: flash of at least {weight_bytes} B (the weights alone) "
               f"exceeds the {budget} B budget by at least {weight_bytes - budget} B")
    if work.keep_failed:
        kept = work.keep()
        raise EdgenasError(problem, f"shrink the model (fewer channels or exits) or pick a larger target; kept in "
                                    f"{kept} (not linked: over the QEMU image's flash) because --keep-failed")
    raise EdgenasError(problem, "shrink the model (fewer channels or exits) or pick a larger target")


def _macs_from_prediction(predicted: dict | None) -> tuple[int, ...] | None:
    if predicted and "macs_per_exit" in predicted:
        return tuple(int(m) for m in predicted["macs_per_exit"])
    return None


def _too_big_message(target, sizes) -> str:
    parts = []
    for name, over in sizes.excess().items():
        value, budget = (sizes.flash_bytes, sizes.flash_budget) if name == "flash" else (sizes.ram_bytes, sizes.ram_budget)
        parts.append(f"{name} {value} B exceeds the {budget} B budget by {over} B")
    return f"firmware does not fit target {target.name}: " + "; ".join(parts)


def load_firmware_report(project_dir: Path) -> dict:
    path = Path(project_dir) / REPORT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgenasError(f"{path} not found", "build the firmware with `edgenas compile` first") from None
    except json.JSONDecodeError as exc:
        raise EdgenasError(f"{path} is not valid JSON ({exc.msg})", "re-run `edgenas compile`") from None


def load_reference(project_dir: Path) -> dict[str, Any]:
    path = Path(project_dir) / REFERENCE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgenasError(f"{path} not found", "build the firmware with `edgenas compile` first") from None
