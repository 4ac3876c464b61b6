"""Latency models per dtype: the optional [latency_int8] table loads, round-trips and is what int8 predictions use;
a target without one predicts int8 with its fp32 model and says so; `calibrate --dtype int8` writes [latency_int8]
and leaves [latency] as it was. No QEMU: the measurements are the predictions of a known int8 model."""
import json
import tomllib

import numpy as np
import pytest

from edgenas import cost
from edgenas.cli import main
from edgenas.cost.calibrate import calibrate
from edgenas.errors import EdgenasError
from edgenas.targets import load_target, target_to_toml
from tests.onnx_models import conv_model

BASE = """name = "{name}"
kind = "mcu"
cpu = "cortex-m7"
clock_hz = 100_000_000
sram_bytes = "4MB"
flash_bytes = "8MB"
runtime = "tvm-static-c"
qemu_machine = "mps2-an500"
cpi = 1.0
[tvm_target]
kind = "llvm"
[latency]
dtype = "float32"
per_inference_cycles = 2000.0
per_exit_cycles = 300.0
[latency.kinds.default]
fixed_cycles = 400.0
cycles_per_mac = 4.0
cycles_per_byte = 0.5
"""
# the int8 truth: cheaper per MAC than fp32, costed per kind, so that a fit and a fallback are told apart
INT8 = """[latency_int8]
per_inference_cycles = 1500.0
per_exit_cycles = 200.0
[latency_int8.kinds.default]
fixed_cycles = 0.0
cycles_per_mac = 0.0
cycles_per_byte = 0.0
[latency_int8.kinds.conv]
fixed_cycles = 3000.0
cycles_per_mac = 1.25
cycles_per_byte = 0.0
[latency_int8.kinds.act_fused]
fixed_cycles = 0.0
cycles_per_mac = 0.0
cycles_per_byte = 0.0
cycles_per_output_byte = 0.5
[latency_int8.kinds.linear]
fixed_cycles = 500.0
cycles_per_mac = 1.5
cycles_per_byte = 0.0
"""


def write_target(tmp_path, name, int8=True, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name) + (INT8 if int8 else "") + extra)
    return path


@pytest.fixture
def graph(tmp_path):
    return cost.from_onnx(str(conv_model(tmp_path / "net.onnx", 3, 16, 16, 2, [True, True], n_classes=10)))


def test_int8_table_loads_and_round_trips(tmp_path):
    t = load_target(str(write_target(tmp_path, "board")))
    int8 = t.latency_for("int8")
    assert int8 is t.latency_int8 and int8.dtype == "int8"  # `dtype` may be left out of [latency_int8]
    assert int8.for_kind("conv").cycles_per_mac == 1.25 and int8.per_exit_cycles == 200.0
    assert t.latency_for("float32") is t.latency
    again = tmp_path / "again.toml"
    again.write_text(target_to_toml(t))
    assert tomllib.loads(again.read_text())["latency_int8"]["dtype"] == "int8"
    back = load_target(str(again))
    assert back.latency_int8 == t.latency_int8 and back.latency == t.latency


def test_no_int8_table_means_no_int8_model(tmp_path):
    t = load_target(str(write_target(tmp_path, "plain", int8=False)))
    assert t.latency_int8 is None and t.latency_for("int8") is None  # never the fp32 model in disguise
    assert "latency_int8" not in tomllib.loads(target_to_toml(t))


@pytest.mark.parametrize("extra, problem", [
    ('[latency_int8]\ndtype = "float32"\nper_inference_cycles = 1.0\nper_exit_cycles = 1.0\n'
     '[latency_int8.kinds.default]\nfixed_cycles = 1.0\ncycles_per_mac = 1.0\ncycles_per_byte = 1.0\n',
     "latency_int8.dtype"),
    ('[latency_int8]\nper_inference_cycles = 1.0\nper_exit_cycles = 1.0\n[latency_int8.kinds.conv]\n'
     'fixed_cycles = 1.0\ncycles_per_mac = 1.0\ncycles_per_byte = 1.0\n', "latency_int8.kinds.default"),
])
def test_bad_int8_tables_are_refused_naming_the_key(tmp_path, extra, problem):
    with pytest.raises(EdgenasError, match=problem.replace(".", r"\.")):
        load_target(str(write_target(tmp_path, "bad", int8=False, extra=extra)))


def test_two_int8_models_are_refused(tmp_path):
    path = write_target(tmp_path, "twice")
    path.write_text(path.read_text().replace('dtype = "float32"', 'dtype = "int8"'))
    with pytest.raises(EdgenasError, match="two int8 latency models"):
        load_target(str(path))


def test_analyze_int8_uses_the_int8_model(tmp_path, graph):
    t = load_target(str(write_target(tmp_path, "board")))
    report = cost.analyze(graph, t, "int8")
    assert report.latency_dtype == "int8" and report.latency_note == ""
    int8_pred = cost.predict_latency(graph, t, "int8")
    assert int8_pred.dtype == "int8" and report.latency_per_exit_s == int8_pred.per_exit_s
    fp32 = cost.analyze(graph, t, "float32")
    assert fp32.latency_dtype == "float32" and fp32.latency_per_exit_s == cost.predict_latency(graph, t).per_exit_s
    assert report.latency_worst_s < fp32.latency_worst_s  # 1.25 vs 4 cycles per MAC
    # the layer table's cycles add up to the int8 prediction
    rows = cost.layer_table(graph, t, "int8")
    assert sum(r["cycles"] for r in rows) == pytest.approx(sum(int8_pred.layer_cycles))


def test_analyze_int8_without_an_int8_model_marks_the_fp32_fallback(tmp_path, graph):
    t = load_target(str(write_target(tmp_path, "plain", int8=False)))
    report = cost.analyze(graph, t, "int8")
    assert report.dtype == "int8" and report.latency_dtype == "float32"
    assert report.latency_per_exit_s == cost.predict_latency(graph, t).per_exit_s  # the fp32 prediction, kept
    doc = report.to_dict()
    assert doc["latency_dtype"] == "float32"
    assert doc["latency_note"] == "int8 latency not calibrated for this target; fp32 model used"
    assert cost.analyze(graph, t, "float32").to_dict()["latency_note"] is None


def test_analyze_command_prints_the_fallback_line(tmp_path, capsys):
    model = conv_model(tmp_path / "net.onnx", 3, 8, 16, 1, [True])
    plain, board = write_target(tmp_path, "plain", int8=False), write_target(tmp_path, "board")
    main(["analyze", str(model), "--target", str(plain), "--dtype", "int8"])
    assert "int8 latency not calibrated for this target; fp32 model used" in capsys.readouterr().out
    main(["analyze", str(model), "--target", str(board), "--dtype", "int8", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["latency_model"]["dtype"] == "int8" and doc["latency_model"]["note"] is None
    assert doc["totals"]["latency_dtype"] == "int8"


def int8_csv(tmp_path, truth, n=12, seed=0):
    """End-to-end 'measurements' of n conv nets: the int8 truth's predictions."""
    rng = np.random.default_rng(seed)
    rows = ["model,latency_s"]
    for i in range(n):
        n_conv = int(rng.integers(1, 4))
        path = conv_model(tmp_path / f"m{i}.onnx", int(rng.integers(1, 4)), int(rng.choice([4, 8, 16])),
                          int(rng.choice([8, 12, 16])), n_conv, [True] * n_conv,
                          n_classes=int(rng.choice([10, 100, 400])))
        rows.append(f"{path.name},{cost.predict_latency(cost.from_onnx(str(path)), truth, 'int8').worst_s:.12g}")
    csv_path = tmp_path / "int8.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def test_calibrate_int8_writes_the_int8_table_and_keeps_latency(tmp_path):
    truth = load_target(str(write_target(tmp_path, "truth")))
    csv_path = int8_csv(tmp_path, truth)
    base = write_target(tmp_path, "base", int8=False)
    out = tmp_path / "base-int8.toml"
    rc = main(["calibrate", "--target", str(base), str(csv_path), "--out", str(out), "--dtype", "int8",
               "--family", "per-kind", "--device", "qemu-system-arm mps2-an500 -icount, instructions x cpi 1",
               "--runtime", "tvm", "--runtime-version", "tvm-static-c"])
    assert rc == 0
    written = tomllib.loads(out.read_text())
    assert "latency_int8" in written and "latency" not in written  # [latency] is inherited from the base as it is
    fitted, before = load_target(str(out)), load_target(str(base))
    assert fitted.latency == before.latency
    assert fitted.latency_int8.dtype == "int8" and fitted.latency_int8.runtime == "tvm"
    assert fitted.latency_int8.for_kind("conv").cycles_per_mac == pytest.approx(1.25, rel=1e-2)
    prov = fitted.provenance[-1]
    assert "int8 [latency_int8]" in prov.notes and prov.measured_on.startswith("qemu-system-arm")
    assert prov.runtime.startswith("tvm-static-c")
    g = cost.from_onnx(str(conv_model(tmp_path / "held.onnx", 3, 12, 20, 2, [True, True], n_classes=50, seed=5)))
    assert cost.predict_latency(g, fitted, "int8").worst_s == pytest.approx(
        cost.predict_latency(g, truth, "int8").worst_s, rel=2e-2)


def test_calibrate_float32_leaves_the_int8_table(tmp_path):
    truth = load_target(str(write_target(tmp_path, "truth")))
    csv_path = int8_csv(tmp_path, truth)  # any measurements: what matters is which table is written
    base = load_target(str(write_target(tmp_path, "base")))
    cal = calibrate(base, [str(csv_path)], families=["per-kind"], extends=str(tmp_path / "base.toml"))
    assert cal.dtype == "float32" and cal.section == "latency"
    written = tomllib.loads(cal.toml)
    assert "latency" in written and "latency_int8" not in written
    out = tmp_path / "fp32.toml"
    out.write_text(cal.toml)
    assert load_target(str(out)).latency_int8 == base.latency_int8


def test_override_does_not_inherit_the_base_s_shape_terms(tmp_path):
    # a per-kind fit over a per-kind-shape base: every coefficient and the family are written, none inherited
    shaped = write_target(tmp_path, "shaped", extra="")
    text = shaped.read_text().replace("[latency_int8.kinds.conv]\n", "[latency_int8.kinds.conv]\n"
                                      "cycles_per_out_channel = 50.0\n").replace(
        "[latency_int8]\n", '[latency_int8]\nfamily = "per-kind-shape"\n')
    shaped.write_text(text)
    truth = load_target(str(write_target(tmp_path, "truth")))
    cal = calibrate(load_target(str(shaped)), [str(int8_csv(tmp_path, truth))], families=["per-kind"],
                    extends=str(shaped), dtype="int8")
    out = tmp_path / "over.toml"
    out.write_text(cal.toml)
    fitted = load_target(str(out)).latency_int8
    assert fitted.family == "per-kind" and fitted.for_kind("conv").cycles_per_out_channel == 0.0
