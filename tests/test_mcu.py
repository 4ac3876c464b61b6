"""Cortex-M firmware: TVM kernels + static C driver, built with arm-none-eabi-gcc, run under qemu-system-arm.

The tiny 3-exit digits net of tests/exit_net.py (fixture exit_net_export: trained once per session, exported per
stage with thresholds set from its own confidences on the test inputs so that every exit is taken).
The firmware must take the same exit as onnxruntime on every input, with logits within 1e-4, and fit the target.
"""
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from edgenas.compile import compile_mcu, plan_arena
from edgenas.compile import firmware as fw_mod
from edgenas.compile.lowering import lower_onnx, stage_program
from edgenas.compile.mcu import load_model_source, reference_outputs
from edgenas.errors import EdgenasError
from edgenas.profile import profile_qemu, profile_serial
from edgenas.profile.qemu import qemu_command
from edgenas.targets import load_target

N_TEST = 24


@pytest.fixture(scope="module")
def model(exit_net_export):
    return exit_net_export(N_TEST)


@pytest.fixture(scope="module")
def target():
    return load_target("cortex-m7")


@pytest.fixture(scope="module")
def firmware_llvm(model, target, tmp_path_factory):
    export_dir, x_test = model
    out = tmp_path_factory.mktemp("fw") / "llvm"
    report = compile_mcu(export_dir, target, out, codegen="llvm", test_inputs=x_test)
    return out, report


def test_reference_takes_every_exit(model):
    export_dir, x_test = model
    _, exits = reference_outputs(load_model_source(export_dir, "float32"), x_test)
    assert sorted(set(exits.tolist())) == [0, 1, 2]


def test_arena_reuses_memory_and_never_overlaps_live_buffers(model):
    export_dir, _ = model
    src = load_model_source(export_dir, "float32")
    import onnx
    programs = [stage_program(lower_onnx(onnx.load(str(s.path)), s.input, s.input_shape), i, s.input)
                for i, s in enumerate(src.stages)]
    plan = plan_arena(programs)
    spans = plan.lifetimes
    assert plan.size < sum(s.size for s in spans)          # planned, not one buffer per tensor
    assert plan.size >= plan.peak_live_bytes
    for a in spans:
        for b in spans:
            if a.name < b.name and a.first <= b.last and b.first <= a.last:
                oa, ob = plan.offsets[a.name], plan.offsets[b.name]
                assert oa + a.size <= ob or ob + b.size <= oa, (a, b)
    # the h that stage 1 consumes is stage 0's h_out, alive until stage 1's last read of it
    h0 = programs[0].outputs[0]
    assert plan.offsets["s1_in"] == plan.offsets[h0]
    life = {s.name: s for s in spans}[h0]
    assert life.last > len(programs[0].calls)


@pytest.mark.toolchain
def test_llvm_firmware_matches_onnxruntime_on_every_exit(firmware_llvm, target):
    out, report = firmware_llvm
    assert report.fits and report.sizes["flash_bytes"] <= target.flash_bytes
    assert report.sizes["ram_bytes"] <= target.sram_bytes
    assert (out / "firmware.elf").is_file() and (out / "firmware.map").is_file()
    assert (out / "firmware-board.elf").is_file()
    assert json.loads((out / "firmware.json").read_text())["fits"] is True
    profile = profile_qemu(out, target)
    assert profile["n_inputs"] == N_TEST
    assert profile["exits_exercised"] == [0, 1, 2]
    assert profile["check"]["exit_agreement"] == 1.0
    assert profile["check"]["max_abs_diff"] <= 1e-4
    assert profile["check"]["passed"]
    assert profile["unit"] == "instructions"
    means = [profile["exits"][str(e)]["instructions"]["mean"] for e in range(3)]
    assert means[0] < means[1] < means[2]  # early exits run fewer stages
    assert "estimated_latency_s" in profile["exits"]["0"]
    assert profile["workspace_peak_bytes"] <= report.workspace_pool_bytes


@pytest.mark.toolchain
def test_c_codegen_firmware_matches_onnxruntime(model, target, tmp_path):
    export_dir, x_test = model
    report = compile_mcu(export_dir, target, tmp_path / "c", codegen="c", test_inputs=x_test[:6])
    assert (tmp_path / "c" / "kernels.c").is_file() and report.codegen == "c"
    profile = profile_qemu(tmp_path / "c", target)
    assert profile["check"]["passed"] and profile["check"]["exit_agreement"] == 1.0


@pytest.mark.toolchain
def test_size_report_splits_flash_and_ram(firmware_llvm):
    _, report = firmware_llvm
    sizes = report.sizes
    assert sizes["flash_parts"]["weights"] == report.weight_bytes
    assert sizes["flash_parts"]["kernels"] > 0 and sizes["flash_parts"]["driver"] > 0
    assert sizes["ram_parts"]["stack"] == fw_mod.STACK_BYTES
    assert report.arena_bytes >= report.arena_peak_live_bytes
    assert report.predicted["activation_sram_bytes"] > 0
    assert report.macs_per_exit and len(report.macs_per_exit) == 3


FOOTPRINT_TOLERANCE = 0.05  # cost-model flash and RAM vs the linker map (benchmarks/mcu_footprint.py: mbv3 nets)


@pytest.mark.toolchain
def test_cost_model_predicts_linker_flash_and_ram(firmware_llvm):
    """The cost model's flash (weights + fixed code + per-kernel code) and peak RAM (activations + kernel scratch +
    driver state + fixed RAM) agree with the linker map within 5%; the harness's embedded test vectors are not part
    of a deployed image and are left out of the flash figure."""
    _, report = firmware_llvm
    sizes, pred = report.sizes, report.predicted
    flash = sizes["flash_bytes"] - sizes["flash_parts"].get("test_data", 0)
    assert abs(pred["flash_bytes"] - flash) <= FOOTPRINT_TOLERANCE * flash, (pred["flash_bytes"], flash)
    assert abs(pred["peak_sram_bytes"] - sizes["ram_bytes"]) <= FOOTPRINT_TOLERANCE * sizes["ram_bytes"], \
        (pred["peak_sram_bytes"], sizes["ram_bytes"])


def _plain_onnx(path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=True, opset_version=18,
                      input_names=["image"], output_names=["scores"])
    return path


@pytest.mark.toolchain
@pytest.mark.parametrize("name,machine", [("cortex-m7", "mps2-an500"), ("cortex-m4", "mps2-an386"),
                                          ("stm32h743", "mps2-an500")])
def test_plain_onnx_is_one_stage_without_exits(tmp_path, name, machine):
    target = load_target(name)
    assert target.qemu_machine == machine
    path = _plain_onnx(tmp_path / "plain.onnx")
    report = compile_mcu(path, target, tmp_path / "fw", build_board=False)
    assert report.n_stages == 1 and report.n_classes == 5 and report.target == name
    profile = profile_qemu(tmp_path / "fw", target)
    assert profile["check"]["passed"] and profile["exits_exercised"] == [0]
    assert profile["device"] == f"qemu:{machine}"


def test_run_folder_resolves_to_its_exported_candidate(model, tmp_path):
    export_dir, _ = model
    run = tmp_path / "run"
    run.mkdir()
    (run / "archive.jsonl").write_text("")
    with pytest.raises(EdgenasError, match="no exported candidate") as err:
        load_model_source(run, "float32")
    assert "\n" not in str(err.value)
    shutil.copytree(export_dir, run / "export-7")
    src = load_model_source(run, "float32")
    assert len(src.stages) == 3 and src.stages[0].path.parent.parent == run / "export-7"
    assert load_model_source(run / "export-7" / "stages" / "stage_0.onnx", "float32").stages[0].final  # plain file


def _fake_which(missing):
    real = shutil.which
    return lambda name, *a, **k: None if name == missing else real(name, *a, **k)


@pytest.mark.parametrize("tool,package", [("arm-none-eabi-gcc", "gcc-arm-none-eabi"),
                                          ("qemu-system-arm", "qemu-system-arm")])
def test_missing_tool_names_the_debian_package(monkeypatch, model, target, tmp_path, tool, package):
    monkeypatch.setattr(shutil, "which", _fake_which(tool))
    with pytest.raises(EdgenasError) as err:
        if tool == "qemu-system-arm":
            (tmp_path / "fw").mkdir()
            (tmp_path / "fw" / "firmware.json").write_text(json.dumps(
                {"target": target.name, "elf": "firmware.elf", "n_test_inputs": 1}))
            profile_qemu(tmp_path / "fw", target)
        else:
            compile_mcu(model[0], target, tmp_path / "fw")
    text = str(err.value)
    assert tool in text and package in text and "\n" not in text
    assert not (tmp_path / "fw" / "firmware.elf").exists()


def test_missing_newlib_names_the_debian_package(monkeypatch):
    def bare_name(cmd, **kwargs):  # what gcc prints for a library it cannot find
        return subprocess.CompletedProcess(cmd, 0, stdout=cmd[-1].split("=")[1] + "\n", stderr="")
    monkeypatch.setattr(fw_mod.subprocess, "run", bare_name)
    with pytest.raises(EdgenasError, match="libnewlib-arm-none-eabi"):
        fw_mod.require_newlib("arm-none-eabi-gcc", ["-mcpu=cortex-m7"])


@pytest.mark.toolchain
def test_model_too_big_names_budget_and_excess(model, tmp_path):
    small = tmp_path / "tiny-m7.toml"
    small.write_text('extends = "cortex-m7"\nname = "tiny-m7"\nflash_bytes = "16KB"\n\n[budgets]\nflash = "16KB"\n')
    export_dir, x_test = model
    with pytest.raises(EdgenasError) as err:
        compile_mcu(export_dir, load_target(str(small)), tmp_path / "fw", test_inputs=x_test[:2], keep_failed=True)
    text = str(err.value)
    report = json.loads((tmp_path / "fw" / "firmware.json").read_text())  # kept because keep_failed
    assert f"kept in {tmp_path / 'fw'} because --keep-failed" in text
    over = report["sizes"]["flash_bytes"] - 16 * 1024
    assert "flash" in text and f"by {over} B" in text and "16384 B budget" in text
    assert report["fits"] is False and report["excess"] == {"flash": over}
    assert "RAM" not in text


@pytest.mark.toolchain
def test_serial_profile_replays_a_recorded_report_through_a_pty(firmware_llvm, target):
    out, _ = firmware_llvm
    recorded = subprocess.run(qemu_command(out / "firmware.elf", target.qemu_machine), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL).stdout
    master, slave = os.openpty()
    board_text = ("boot\r\n" + recorded.replace("\n", "\r\n")).encode()

    def board():
        for k in range(0, len(board_text), 64):  # a UART delivers in small pieces
            os.write(master, board_text[k:k + 64])

    import serial
    port = serial.Serial(os.ttyname(slave), 115200, timeout=0.2)  # open (and configure) before the board talks
    writer = threading.Thread(target=board)
    writer.start()
    try:
        profile = profile_serial(port, out, target, timeout_s=30)
    finally:
        writer.join()
        port.close()
        os.close(master)
        os.close(slave)
    assert profile["device"].startswith("serial:")
    assert profile["check"]["passed"] and profile["exits_exercised"] == [0, 1, 2]
    assert profile["exits"] == profile_qemu(out, target)["exits"]


def test_serial_report_cut_short_is_an_error(tmp_path, target):
    from edgenas.compile.harness_report import parse_report
    with pytest.raises(EdgenasError, match="incomplete firmware report"):
        parse_report("EDGENAS-REPORT 1 counter=dwt_cycles inputs=2 stages=3 classes=10\nEDGENAS INPUT 0 rc=0")


SEMIHOSTING_ATTACK = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
extern void edgenas_uart_init(void);
static int semihost(int op, const void *args) { /* ARM semihosting call: r0 = operation, r1 = argument block */
  register int r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = args;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}
void edgenas_fault(void) { printf("EDGENAS FAULT\n"); exit(3); }
int main(void) {
  edgenas_uart_init();
  static const char path[] = HOST_PATH;
  uint32_t open_args[3] = {(uint32_t)path, 4 /* "w" */, sizeof(path) - 1};
  int fd = semihost(0x01 /* SYS_OPEN */, open_args);
  static const char text[] = "written by the firmware\n";
  uint32_t write_args[3] = {(uint32_t)fd, (uint32_t)text, sizeof(text) - 1};
  semihost(0x05 /* SYS_WRITE */, write_args);
  semihost(0x02 /* SYS_CLOSE */, &fd);
  printf("SEMIHOSTING RETURNED fd=%d\n", fd);
  return 0;
}
"""


@pytest.mark.toolchain
@pytest.mark.parametrize("name", ["cortex-m7", "cortex-m4"])
def test_firmware_cannot_reach_host_files_through_semihosting(tmp_path, require_tools, name):
    """A firmware folder is untrusted: an image that opens and writes a host file with semihosting (SYS_OPEN,
    SYS_WRITE) must fault under the profile's QEMU command and leave the host untouched."""
    require_tools((fw_mod.GCC, fw_mod.QEMU), "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
    target = load_target(name)
    victim = tmp_path / "host-file.txt"
    project = tmp_path / "fw"
    project.mkdir()
    fw_mod.copy_fixed_files(project, ("startup.c", "uart_retarget.c"))
    (project / "attack.c").write_text(SEMIHOSTING_ATTACK)
    (project / "firmware.ld").write_text(fw_mod.linker_script(target, "qemu", fw_mod.STACK_BYTES))
    subprocess.run([fw_mod.GCC, *fw_mod.cpu_flags(target), "-O2", f'-DHOST_PATH="{victim}"', "attack.c",
                    "startup.c", "uart_retarget.c", *fw_mod.link_flags("firmware"), "-o", "firmware.elf"],
                   cwd=project, check=True, capture_output=True)
    cmd = qemu_command(project / "firmware.elf", target.qemu_machine)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert not victim.exists()
    assert "SEMIHOSTING RETURNED" not in run.stdout
    assert "EDGENAS FAULT" in run.stdout and "EDGENAS EXIT status=3" in run.stdout  # the bkpt faulted, QEMU ended
    # the same image with semihosting on does write the file: the check above can fail
    unsafe = [a if a != "enable=off" else "enable=on,target=native" for a in cmd]
    subprocess.run(unsafe, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert victim.read_text() == "written by the firmware\n"


@pytest.mark.toolchain
def test_profile_refuses_a_semihosting_build_of_an_older_edgenas(firmware_llvm, target, tmp_path):
    out, _ = firmware_llvm
    old = tmp_path / "old-fw"
    shutil.copytree(out, old)
    report = json.loads((old / "firmware.json").read_text())
    del report["report_channel"]
    (old / "firmware.json").write_text(json.dumps(report))
    with pytest.raises(EdgenasError, match="semihosting build") as err:
        profile_qemu(old, target)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- issue 15
def _matmul_onnx(path, k: int):
    """One 1xk @ kx1024 weight matrix (tests/onnx_models.py): k * 4 KiB of weights (k=384: 1.5 MiB, over cortex-m7's
    1 MiB flash)."""
    import onnx

    from tests.onnx_models import small_model
    onnx.save(small_model(f"matmul{k}"), str(path))
    return path


@pytest.mark.toolchain
def test_over_budget_compile_keeps_its_project_only_with_keep_failed(tmp_path, capfd):
    from edgenas.cli import main
    model = _matmul_onnx(tmp_path / "mid.onnx", 384)
    assert main(["compile", str(model), "--out", str(tmp_path / "new" / "fw")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit target cortex-m7: flash" in err[0] and "--keep-failed" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.onnx"]  # no project, no parent folder
    assert main(["compile", str(model), "--out", str(tmp_path / "new" / "fw"), "--keep-failed"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"kept in {tmp_path / 'new' / 'fw'} because --keep-failed" in err[0], err
    report = json.loads((tmp_path / "new" / "fw" / "firmware.json").read_text())
    assert report["fits"] is False and "flash" in report["excess"]
    assert (tmp_path / "new" / "fw" / "firmware.elf").is_file()


@pytest.mark.toolchain
def test_tvm_and_llvm_messages_go_to_the_build_log_not_the_terminal(tmp_path, capfd):
    """TVM's C++ logging writes to file descriptor 2 from native code (capfd sees it, capsys would not)."""
    from edgenas.cli import main
    assert main(["compile", str(_matmul_onnx(tmp_path / "small.onnx", 16)), "--out", str(tmp_path / "fw")]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "firmware for cortex-m7" in out
    assert "Warning" in (tmp_path / "fw" / "build.log").read_text()  # LLVM's vector-width note for thumbv7em
    # a failed build: one line, naming the log that holds the messages (the project itself is gone)
    assert main(["compile", str(_matmul_onnx(tmp_path / "mid.onnx", 384)), "--out", str(tmp_path / "fw2")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "messages are in " in err[0], err
    log = Path(err[0].split("messages are in ")[1].rstrip(")"))
    try:
        assert "Warning" in log.read_text() and not (tmp_path / "fw2").exists()
    finally:
        log.unlink()


@pytest.mark.toolchain
def test_weights_beyond_the_qemu_flash_get_the_budget_message_before_linking(tmp_path):
    with pytest.raises(EdgenasError) as err:
        compile_mcu(_matmul_onnx(tmp_path / "big.onnx", 1100), load_target("cortex-m7"), tmp_path / "a" / "fw")
    text = str(err.value)
    assert "does not fit target cortex-m7: flash of at least 4505600 B (the weights alone)" in text
    assert "1048576 B budget" in text and "\n" not in text
    log = text.split("messages are in ")[1].rstrip(")") if "messages are in " in text else None
    if log:
        Path(log).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]
