"""TVM Relax builds for the host (x86) and a Cortex-A board (rpi4): exits composed with relax.If, checked against
onnxruntime, and the aarch64 static C-driver check under qemu-aarch64.

The tiny 3-exit digits net of tests/exit_net.py (fixture exit_net_export: trained once per session, exported per
stage with thresholds set from its own confidences on the test inputs so that every exit is taken).
"""
import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from edgenas.cli import main
from edgenas.compile.harness_report import parse_report
from edgenas.compile.host import LIBRARY_FILE, STATIC_DIR, compile_host, load_build_report
from edgenas.compile.host_checks import STATIC_EXE, run_library
from edgenas.compile.mcu import load_model_source, reference_outputs
from edgenas.errors import EdgenasError
from edgenas.export.checks import ort_session, run_early_exit

N_TEST = 24
ELF_MACHINE_AARCH64 = 183


@pytest.fixture(scope="module")
def model(exit_net_export):
    return exit_net_export(N_TEST)


@pytest.fixture(scope="module")
def host_build(model, tmp_path_factory):
    export_dir, x_test = model
    out = tmp_path_factory.mktemp("host") / "tvm-x86-host"
    return out, compile_host(export_dir, "x86-host", out, test_inputs=x_test)


def _reference(export_dir, x):
    return reference_outputs(load_model_source(export_dir, "float32"), x)


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def test_host_library_agrees_with_onnxruntime_on_every_input(model, host_build):
    export_dir, x_test = model
    out, report = host_build
    ref_logits, ref_exits = _reference(export_dir, x_test)
    assert sorted(set(ref_exits.tolist())) == [0, 1, 2]
    logits, exits, _ = run_library(out / LIBRARY_FILE, x_test)  # the library as written, loaded afresh
    assert (exits == ref_exits).all()
    assert np.abs(logits - ref_logits).max() <= 1e-4
    # the nested-If ONNX graph written beside it takes the same exits in onnxruntime
    ort_logits, ort_exits = run_early_exit(ort_session(out / "model.onnx"), x_test)
    assert (ort_exits == exits).all() and np.abs(ort_logits - logits).max() <= 1e-4
    check = load_build_report(out)["check"]
    assert check["passed"] and check["exit_agreement"] == 1.0 and check["exits_exercised"] == [0, 1, 2]
    assert report.library_arch == "x86_64" and report.tune_trials == 0


def test_relax_if_skips_the_stages_after_the_exit(model, host_build):
    """Our build calls fewer kernels (and takes less time) for early exits; TVM's own ONNX `If` import does not."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    export_dir, x_test = model
    out, report = host_build
    calls = {int(e): c for e, c in report.check["kernel_calls_per_exit"].items()}
    assert calls[0] < calls[1] < calls[2]

    _, ref_exits = _reference(export_dir, x_test)
    early, late = int(np.flatnonzero(ref_exits == 0)[0]), int(np.flatnonzero(ref_exits == 2)[0])
    lib = tvm.runtime.load_module(str(out / LIBRARY_FILE))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    medians = []
    for k in (early, late):
        te = vm.time_evaluator("main", tvm.cpu(), number=20, repeat=15)
        medians.append(te(tvm.runtime.tensor(x_test[k:k + 1])).median)
    assert medians[0] < medians[1]

    # TVM's ONNX frontend on the nested-If graph: the early-exit input runs as many kernels as the late one
    whole = from_onnx(onnx.load(str(out / "model.onnx")), shape_dict={"x": [1, 1, 8, 8]})
    ex = tvm.compile(whole, target=tvm.target.Target({"kind": "llvm"}))
    path = out.parent / "onnx-if.so"
    ex.export_library(str(path))
    _, exits_if, calls_if = run_library(path, x_test[[early, late]])
    assert exits_if.tolist() == [0, 2]
    assert abs(calls_if[0] - calls_if[1]) <= 2  # both branches computed whatever the exit (+-1 tuple copy)


@pytest.mark.toolchain
def test_rpi4_build_and_static_aarch64_check_under_qemu(model, tmp_path, require_tools):
    require_tools(("aarch64-linux-gnu-gcc", "qemu-aarch64"), "gcc-aarch64-linux-gnu, qemu-user")
    export_dir, x_test = model
    out = tmp_path / "tvm-rpi4"
    report = compile_host(export_dir, "rpi4", out, test_inputs=x_test)
    assert report.library_arch == "aarch64" and _elf_machine(out / LIBRARY_FILE) == ELF_MACHINE_AARCH64
    check = report.check
    assert check["ran"] and check["passed"], check
    assert check["exit_agreement"] == 1.0 and check["max_abs_diff"] <= 1e-4
    assert check["exits_exercised"] == [0, 1, 2]
    assert check["stages_run_per_exit"] == {"0": 1, "1": 2, "2": 3}
    # run the static executable again, independently of compile_host
    exe = out / STATIC_DIR / STATIC_EXE
    assert _elf_machine(exe) == ELF_MACHINE_AARCH64
    run = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-500:]
    rep = parse_report(run.stdout)
    ref_logits, ref_exits = _reference(export_dir, x_test)
    assert [r.exit for r in rep.inputs] == ref_exits.tolist()
    assert np.abs(np.asarray([r.logits for r in rep.inputs]) - ref_logits).max() <= 1e-4
    assert rep.fails == 0


def test_tuning_for_a_board_is_refused(model, tmp_path):
    with pytest.raises(EdgenasError, match="tune-trials 0"):
        compile_host(model[0], "rpi4", tmp_path / "b", tune_trials=8)
    assert not (tmp_path / "b").exists()


def _fake_which(missing):
    real = shutil.which
    return lambda name, *a, **k: None if name == missing else real(name, *a, **k)


def _no_partial_output(parent, name):
    return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))


def test_missing_cross_compiler_names_the_debian_package(monkeypatch, model, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", _fake_which("aarch64-linux-gnu-gcc"))
    with pytest.raises(EdgenasError) as err:
        compile_host(model[0], "rpi4", tmp_path / "out")
    text = str(err.value)
    assert "aarch64-linux-gnu-gcc" in text and "gcc-aarch64-linux-gnu" in text and "\n" not in text
    assert main(["compile", str(model[0]), "--target", "rpi4", "--out", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.count("\n") == 0 and "gcc-aarch64-linux-gnu" in stderr
    assert _no_partial_output(tmp_path, "out")


def test_missing_and_corrupt_models_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(EdgenasError, match="neither an export folder"):
        compile_host(tmp_path / "nope.onnx", "x86-host", tmp_path / "out")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    with pytest.raises(EdgenasError, match="bad.onnx"):
        compile_host(bad, "x86-host", tmp_path / "out")
    for model in (tmp_path / "nope", bad):
        assert main(["compile", str(model), "--target", "x86-host", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert _no_partial_output(tmp_path, "out")


def test_corrupt_stage_file_in_an_export_folder(model, tmp_path):
    export_dir, _ = model
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    (copy / "stages" / "stage_1.onnx").write_bytes(b"not onnx")
    with pytest.raises(EdgenasError, match="stage_1.onnx"):
        compile_host(copy, "x86-host", tmp_path / "out")
    assert _no_partial_output(tmp_path, "out")


def test_cli_compile_writes_the_build_report(model, tmp_path, capsys):
    export_dir, _ = model
    out = tmp_path / "cli-build"
    assert main(["compile", str(export_dir), "--target", "x86-host", "--out", str(out)]) == 0
    doc = json.loads((out / "build.json").read_text())
    assert doc["target"] == "x86-host" and doc["check"]["passed"]
    assert (out / LIBRARY_FILE).is_file() and (out / "model.onnx").is_file()


def test_tuning_plumbing_tunes_conv_and_matmul_kernels_only(model, tmp_path, monkeypatch):
    """The MetaSchedule path without the minutes of measuring: tune_relax is replaced by an empty database, so the
    build falls back to default schedules; what is checked is which tasks are tuned and with what trial budget."""
    from tvm.s_tir import meta_schedule as ms

    seen = {}

    def fake_tune(mod, params, target, work_dir, max_trials_global, max_trials_per_task=None, op_names=None, **kw):
        tasks = ms.relax_integration.extract_tasks(mod, target)
        seen.update(total=max_trials_global, per_task=max_trials_per_task, op_names=op_names,
                    tuned=[t.task_name for t in tasks if any(op in t.task_name for op in op_names)],
                    num_cores=target.attrs["num-cores"], builder=kw["builder"])
        return ms.database.MemoryDatabase()

    monkeypatch.setattr(ms.relax_integration, "tune_relax", fake_tune)
    export_dir, x_test = model
    report = compile_host(export_dir, "x86-host", tmp_path / "tuned", tune_trials=30, test_inputs=x_test[:8])
    assert report.tune_trials == 30 and report.check["passed"]
    assert seen["total"] == 30 and seen["op_names"] == ["conv2d", "matmul"]
    assert seen["tuned"] and all("conv2d" in n or "matmul" in n for n in seen["tuned"])
    assert seen["per_task"] == max(4, 30 // len(seen["tuned"]))  # every tuned kernel gets its share
    assert seen["num_cores"] >= 1


def test_tuning_refuses_an_incompatible_tvm_ffi(model, tmp_path, monkeypatch):
    import tvm_ffi
    monkeypatch.setattr(tvm_ffi, "__version__", "0.1.15.post2")
    with pytest.raises(EdgenasError, match="apache-tvm-ffi==0.1.14.post0"):
        compile_host(model[0], "x86-host", tmp_path / "t", tune_trials=4)
    assert _no_partial_output(tmp_path, "t")


def test_cli_build_writes_the_build_log_and_a_clean_terminal(model, tmp_path, capfd):
    """Third-party messages of a host build (TVM's native logging writes to file descriptor 2) go to build.log."""
    assert main(["compile", str(model[0]), "--target", "x86-host", "--out", str(tmp_path / "new" / "lib")]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "Relax VM library for x86-host" in out
    assert (tmp_path / "new" / "lib" / "build.log").is_file()


def test_unsupported_operators_and_bad_out_fail_before_building(tmp_path, capsys):
    """An LSTM, NonMaxSuppression (data-dependent shape) or an --out under a file: one line, nothing written, no
    parent folder left behind."""
    from tests.onnx_models import small_model
    for kind, fragment in (("lstm", "LSTM (node y)"), ("nms", "NonMaxSuppression (node y)")):
        path = tmp_path / f"{kind}.onnx"
        onnx.save(small_model(kind), str(path))
        assert main(["compile", str(path), "--target", "x86-host", "--out", str(tmp_path / "new" / "a" / "lib")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
        assert not (tmp_path / "new").exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["compile", str(path), "--target", "x86-host", "--out", str(tmp_path / "notes.txt" / "lib")]) == 2
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err
