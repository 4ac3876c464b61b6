"""int8 firmware: QDQ models through integer kernels (int8 weights in flash, int8 activations, int32 accumulation),
run under qemu-system-arm and checked against onnxruntime on the same QDQ model: the same exit on every input and
logits within one quantisation step.

Two inputs: a QDQ model made by onnxruntime's own `quantize_static` from a float model with every integer kernel
(tests/qdq_models.py), and the tiny 3-exit digits net of tests/exit_net.py quantised from calibration data at
compile time. Both on cortex-m7; the early-exit net on cortex-m4 too (the other DSP core).
"""
import json
import re
import shlex
import subprocess

import numpy as np
import onnx
import pytest

from edgenas.cli import main as cli_main
from edgenas.compile import compile_mcu
from edgenas.profile import profile_qemu
from edgenas.targets import load_target
from tests.qdq_models import hardswish_se_net, matmul_mlp, quantize_with_onnxruntime, residual_net

N_TEST = 16
TOOLS = (("arm-none-eabi-gcc", "qemu-system-arm"), "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    """(folder with float.onnx and model.qdq.onnx, test inputs)."""
    folder = tmp_path_factory.mktemp("qdq")
    onnx.save(residual_net(), folder / "float.onnx")
    x = np.random.default_rng(1).standard_normal((64 + N_TEST, 3, 8, 8)).astype(np.float32)
    quantize_with_onnxruntime(folder / "float.onnx", folder / "model.qdq.onnx", x[:64])
    return folder, x[64:]


def _const_arrays(project) -> list[tuple[str, int]]:
    """(C type, elements) of every `const` array in weights.c (what the firmware keeps in flash)."""
    return [(ctype, int(n)) for ctype, n in re.findall(r"const (\w+) \w+\[(\d+)\]",
                                                        (project / "weights.c").read_text())]


@pytest.mark.toolchain
def test_onnxruntime_qdq_model_runs_on_integer_kernels_and_matches_onnxruntime(qdq_model, tmp_path, require_tools):
    require_tools(*TOOLS)
    folder, x = qdq_model
    target = load_target("cortex-m7")
    report = compile_mcu(folder / "model.qdq.onnx", target, tmp_path / "fw", test_inputs=x)
    assert report.dtype == "int8"  # the default for a QDQ model
    kernels = report.int8["integer_kernels"]
    assert set(kernels) == {"conv", "depthwise conv", "add", "max pool", "global average pool", "dense"}, kernels
    assert report.int8["float_ops"] == {}, report.int8["float_ops"]
    weight_sizes = {int(np.prod(i.dims)) for i in residual_net().graph.initializer if len(i.dims) > 1}
    float_sizes = {n for ctype, n in _const_arrays(tmp_path / "fw") if ctype == "float"}
    assert not weight_sizes & float_sizes, "a weight tensor kept in float"  # scales and tables only
    profile = profile_qemu(tmp_path / "fw", target)
    check = profile["check"]
    assert check["passed"] and check["exit_agreement"] == 1.0, check
    assert check["max_abs_diff"] <= report.logit_tolerance < 0.1
    fp32 = compile_mcu(folder / "float.onnx", target, tmp_path / "fp32", test_inputs=x, build_board=False)
    assert fp32.dtype == "float32"
    # int8 weights packed 4 to a word; on this tiny model the add's dequantisation tables (2 x 256 floats) weigh in
    assert report.weight_bytes <= 0.7 * fp32.weight_bytes


@pytest.mark.toolchain
@pytest.mark.parametrize("cpu", ["cortex-m7", "cortex-m4"])
def test_early_exit_net_quantised_from_calibration_data_agrees_with_onnxruntime(exit_net_export, cpu, tmp_path,
                                                                                require_tools):
    require_tools(*TOOLS)
    from tests.exit_net import digits
    export_dir, x_test = exit_net_export(N_TEST)
    x_calib = digits()[0][:256]
    target = load_target(cpu)
    report = compile_mcu(export_dir, target, tmp_path / "fw", test_inputs=x_test, calib_data=x_calib,
                         build_board=False)
    assert report.dtype == "int8" and report.n_stages == 3
    assert (tmp_path / "fw" / "stages_int8" / "stage_2.onnx").is_file()  # the QDQ stages compiled are kept
    assert report.int8["integer_kernels"]["conv"] == 3
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(tmp_path / "fw" / "kernels.o")], capture_output=True,
                               text=True, check=True).stdout
    assert "nearbyint" not in undefined and "roundf" not in undefined  # rounding without libm (M4 has no VRINT)
    profile = profile_qemu(tmp_path / "fw", target)
    assert profile["check"]["passed"] and profile["check"]["exit_agreement"] == 1.0, profile["check"]
    reference = json.loads((tmp_path / "fw" / "reference.json").read_text())
    assert len(set(reference["exits"])) >= 2  # the int8 reference itself leaves at more than one exit


@pytest.mark.toolchain
def test_matmul_weights_quantised_per_column_and_a_constant_add_run_as_integer_kernels(tmp_path, require_tools):
    require_tools(*TOOLS)
    onnx.save(matmul_mlp(), tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).standard_normal((48, 40)).astype(np.float32)
    quantize_with_onnxruntime(tmp_path / "mlp.onnx", tmp_path / "mlp.qdq.onnx", x[:40])
    target = load_target("cortex-m7")
    report = compile_mcu(tmp_path / "mlp.qdq.onnx", target, tmp_path / "fw", test_inputs=x[40:], build_board=False)
    assert report.int8["integer_kernels"] == {"dense": 2, "add": 1}, report.int8  # the bias is its own Add
    check = profile_qemu(tmp_path / "fw", target)["check"]
    assert check["passed"] and check["exit_agreement"] == 1.0, check


@pytest.mark.toolchain
@pytest.mark.parametrize("cpu", ["cortex-m7", "cortex-m4"])
def test_hardswish_and_squeeze_excite_run_as_lookup_tables_and_an_integer_product(cpu, tmp_path, require_tools):
    require_tools(*TOOLS)
    onnx.save(hardswish_se_net(), tmp_path / "se.onnx")
    x = np.random.default_rng(3).standard_normal((48, 3, 8, 8)).astype(np.float32)
    quantize_with_onnxruntime(tmp_path / "se.onnx", tmp_path / "se.qdq.onnx", x[:40])
    target = load_target(cpu)
    report = compile_mcu(tmp_path / "se.qdq.onnx", target, tmp_path / "fw", test_inputs=x[40:], build_board=False)
    kernels = report.int8["integer_kernels"]
    assert kernels.get("lookup table", 0) >= 2 and kernels.get("multiply") == 1, report.int8
    assert report.int8["float_ops"] == {}, report.int8  # nothing between a dequantize and a quantize runs in float
    check = profile_qemu(tmp_path / "fw", target)["check"]
    assert check["passed"] and check["exit_agreement"] == 1.0, check


def _dilated_qdq(folder, samples):
    """A QDQ conv with dilation 2: quantised by onnxruntime, but no integer kernel of ours takes it."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 2], name="dilated")],
                              "dilated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "dilated.onnx")
    return quantize_with_onnxruntime(folder / "dilated.onnx", folder / "dilated.qdq.onnx", samples)


def _one_line_error(capsys, argv: str, fragment: str, tmp_path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli_main(shlex.split(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial output


@pytest.mark.toolchain
def test_a_quantised_pattern_without_integer_kernel_is_a_one_line_error_naming_the_node(qdq_model, tmp_path, capsys,
                                                                                       require_tools):
    require_tools(*TOOLS)
    path = _dilated_qdq(tmp_path, qdq_model[1])
    _one_line_error(capsys, f"compile {path} --target cortex-m7 --out {tmp_path / 'fw'}",
                    "node dilated (Conv) is quantised but its pattern cannot be lowered", tmp_path)


def test_int8_requests_that_cannot_be_int8_are_refused(qdq_model, tmp_path, capsys):
    folder, x = qdq_model
    np.save(tmp_path / "calib.npy", x)
    cases = [
        (f"compile {folder / 'float.onnx'} --target cortex-m7 --dtype int8 --out {tmp_path / 'a'}",
         "is a float model; an int8 build needs"),
        (f"compile {folder / 'model.qdq.onnx'} --target cortex-m7 --dtype float32 --out {tmp_path / 'b'}",
         "is a quantised (QDQ) model; a float32 build"),
        (f"compile {folder / 'model.qdq.onnx'} --target x86-host --out {tmp_path / 'c'}",
         "int8 builds are for MCU targets"),
        (f"compile {folder / 'float.onnx'} --target cortex-m7 --dtype float32 --calib-data {tmp_path / 'calib.npy'} "
         f"--out {tmp_path / 'd'}", "--calib-data quantises the model for an int8 build"),
    ]
    for argv, fragment in cases:
        _one_line_error(capsys, argv, fragment, tmp_path)


def test_calibration_data_of_the_wrong_shape_is_refused(qdq_model, tmp_path):
    from edgenas.compile.mcu import calibration_inputs
    from edgenas.errors import EdgenasError
    np.save(tmp_path / "calib.npy", np.zeros((4, 3, 9, 9), np.float32))
    with pytest.raises(EdgenasError, match=r"calibration data of shape \[4, 3, 9, 9\] does not fit"):
        calibration_inputs(tmp_path / "calib.npy", (1, 3, 8, 8))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EdgenasError, match="no pickled objects"):
        calibration_inputs(tmp_path / "objects.npy", (1, 3, 8, 8))
