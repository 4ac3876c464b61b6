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

int8 (`dtype="int8"`, the QDQ stage files of `stages_int8/`): TVM 0.27's Relax ONNX frontend imports
QuantizeLinear/DequantizeLinear as `R.quantize`/`R.dequantize`, and LegalizeOps lowers them to float TIR. FoldConstant
then dequantizes the int8 weights at compile time, so the firmware stores float32 weights and computes in float32
on fake-quantised activations: it runs and reproduces the QDQ model's numbers, but it is not int8 inference (no
int8 weights in flash, no integer MACs). Real int8 needs QDQ pattern fusion into integer kernels
(quantized conv2d/dense with int32 accumulation and requantisation) before legalisation, which TVM 0.27's Relax
pipeline does not provide; the size report of an int8 build shows this plainly (weights at 4 bytes each).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
            f"  {self.n_stages} segments, {self.n_test_inputs} embedded test inputs; "
            f"run `edgenas profile {self.project_dir} --target {self.target} --device qemu`"])


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

    path = Path(path)
    if path.is_dir() and (path / "archive.jsonl").is_file() and not (path / EXITS_FILE).is_file():
        path = _run_export(path)
    if path.is_file() and (path.parent / EXITS_FILE).is_file() and path.suffix == ".onnx":
        path = path.parent  # model.onnx of an export folder: compile its stages
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
    if dtype == "int8":
        raise EdgenasError("dtype int8 needs an export folder with stages_int8/",
                           "pass the export folder, or compile this model with dtype float32")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors
        raise EdgenasError(f"cannot read {path} as ONNX: {' '.join(str(exc).split())[:160]}",
                           "pass a model written by onnx.save or torch.onnx.export") from None
    from edgenas.compile.lowering import check_operators
    check_operators(model, str(path))
    name, shape = _onnx_input(model)
    out = model.graph.output[0].type.tensor_type.shape.dim
    n_classes = int(np.prod([d.dim_value for d in out if d.dim_value > 0])) if out else 1
    return ModelSource((StageSource(path, name, shape, True),), (), n_classes, shape, None, (path,))


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
def compile_mcu(model_or_run, target, out_dir, codegen: str = "llvm", dtype: str = "float32",
                test_inputs: np.ndarray | None = None, reference: tuple[np.ndarray, np.ndarray] | None = None,
                build_board: bool = True, keep_failed: bool = False) -> FirmwareReport:
    """Build a firmware project in `out_dir` (replacing an earlier one atomically) and return its report.

    `model_or_run`: an export folder (exits.json + stage files), its model.onnx, a plain ONNX model (one stage), or
    a search run folder holding one exported candidate.

    Raises EdgenasError when the firmware exceeds the target's flash or RAM budget. Nothing is left behind then
    (nor on any other error), unless `keep_failed`: then the project, with its `firmware.json` size report, is
    kept in `out_dir`. TVM's and LLVM's messages go to `build.log` in the project, not to the terminal.
    """
    from edgenas.compile import cdriver, firmware
    from edgenas.compile.outputs import OutputFolder, check_replaceable, check_target_kind, publish_project

    if codegen not in CODEGENS:
        raise EdgenasError(f"unknown codegen '{codegen}'", f"use one of {', '.join(CODEGENS)}")
    if dtype not in DTYPES:
        raise EdgenasError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    check_target_kind(target, ("mcu",), ", not an MCU",
                      "compile MCU firmware for an MCU target (e.g. cortex-m7), or use the host/Cortex-A compiler")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, REPORT_FILE, "firmware")
    gcc = firmware.require_tool(firmware.GCC)
    firmware.require_newlib(gcc, firmware.cpu_flags(target))
    firmware.require_tool(firmware.SIZE)

    src = load_model_source(Path(model_or_run), dtype)
    x = checked_test_inputs(test_inputs, src.input_shape)
    if reference is None:
        ref_logits, ref_exits = reference_outputs(src, x)
    else:
        ref_logits = np.asarray(reference[0], np.float32).reshape(x.shape[0], -1)
        ref_exits = np.asarray(reference[1], np.int64).reshape(-1)
        if ref_logits.shape != (x.shape[0], src.n_classes) or ref_exits.shape != (x.shape[0],):
            raise EdgenasError(f"reference of shapes {list(ref_logits.shape)}/{list(ref_exits.shape)} does not "
                               f"match {x.shape[0]} inputs and {src.n_classes} classes",
                               "pass (logits (N, n_classes), exits (N,)) for the test inputs")

    import onnx
    with OutputFolder(out_dir, keep_failed) as work:  # an unwritable out_dir fails here, before the long build
        tmp = work.tmp
        with work.captured_log():
            programs, plan, pool = cdriver.driver_project(
                [onnx.load(str(st.path)) for st in src.stages], src.stages, src.thresholds, src.n_classes,
                src.input_shape, x, ref_logits, ref_exits, codegen, target.tvm_target, tmp)
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
            n_test_inputs=int(x.shape[0]), fits=not excess, excess=excess)
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
