"""Latency calibration: coefficients recovered from synthetic profiles and CSVs, CV metrics, override round trip,
malformed inputs rejected with one line and exit code 2 (and nothing written)."""
import json

import numpy as np
import pytest

from edgenas import cost
from edgenas.cli import main
from edgenas.cost.calibrate import (FEATURES, Measurements, ModelTotal, Observation, accuracy, calibrate,
                                    cross_validate, fit, kendall_tau, write_override)
from edgenas.errors import EdgenasError
from edgenas.targets import load_target
from tests.onnx_models import conv_model

CLOCK = 3e9  # x86-host clock: coefficients in seconds * CLOCK = cycles


# ------------------------------------------------------------------------------------------------ per-layer profile
TRUE = {  # seconds per (call, MAC, input byte, output byte, weight byte)
    "conv": (2e-6, 1.5e-10, 0.0, 4e-11, 0.0),
    "dwconv": (1e-6, 6e-10, 2e-11, 0.0, 0.0),
    "act": (5e-7, 0.0, 0.0, 3e-11, 0.0),
}
TRUE_OVERHEAD = 8e-6


def synthetic_profile(path, n_models=12, seed=0, outlier=False):
    rng = np.random.default_rng(seed)
    models = []
    for m in range(n_models):
        layers, total = [], TRUE_OVERHEAD
        for _ in range(int(rng.integers(6, 12))):
            kind = str(rng.choice(list(TRUE)))
            f = {"macs": int(rng.integers(10_000, 3_000_000)) if kind != "act" else 0,
                 "input_bytes": int(rng.integers(1_000, 200_000)), "output_bytes": int(rng.integers(1_000, 200_000)),
                 "weight_bytes": int(rng.integers(0, 50_000)) if kind != "act" else 0}
            t = sum(c * x for c, x in zip(TRUE[kind], (1, f["macs"], f["input_bytes"], f["output_bytes"],
                                                        f["weight_bytes"])))
            layers.append({"kind": kind, **f, "latency_s": t})
            total += t
        models.append({"layers": layers, "total_s": total})
    if outlier:  # one disturbed measurement (a context switch) must not pull the fit
        first = models[0]["layers"][0]
        models[0]["total_s"] += 5 * first["latency_s"]
        first["latency_s"] *= 6
    doc = {"format": "edgenas-profile/1", "device": "synthetic board", "runtime": "synthetic rt", "threads": 1,
           "models": models}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("outlier", [False, True])
def test_per_layer_profile_recovers_the_coefficients(tmp_path, outlier):
    path = synthetic_profile(tmp_path / "prof.json", outlier=outlier)
    cal = calibrate(load_target("x86-host"), [str(path)])
    for kind, coefs in TRUE.items():
        assert cal.fit.kinds[kind][:len(coefs)] == pytest.approx(coefs, rel=1e-3, abs=1e-14), kind
    assert cal.fit.per_inference_s == pytest.approx(TRUE_OVERHEAD, rel=1e-3)
    assert all(v >= 0 for c in cal.fit.kinds.values() for v in c)
    assert cal.n_models == 12 and cal.device == "synthetic board" and cal.threads == 1
    # the model whose total holds the disturbed layer cannot be predicted from the others; all the rest can
    assert cal.cv["model"]["within_5pct"] == pytest.approx(100.0 * (11 / 12 if outlier else 1.0))
    # the target's latency model carries the same numbers, in cycles, in the split byte coefficients
    conv = cal.latency.for_kind("conv")
    assert conv.cycles_per_mac == pytest.approx(1.5e-10 * CLOCK, rel=1e-3) and conv.cycles_per_byte == 0.0
    assert conv.cycles_per_output_byte == pytest.approx(4e-11 * CLOCK, rel=1e-3)


def test_fit_is_non_negative_when_the_truth_would_need_a_negative_coefficient():
    # time falls with MACs: least squares would give a negative per-MAC cost, NNLS clamps it at 0
    obs = [Observation(f"m{i}", 1e-3 - 1e-10 * m, {"conv": (1, m, 0, 0, 0)}) for i, m in enumerate((1e5, 1e6, 5e6))]
    f = fit(obs)
    assert all(v >= 0 for v in f.kinds["conv"]) and f.kinds["conv"][1] == 0.0


# ------------------------------------------------------------------------------------------------ end-to-end CSV
def truth_target(tmp_path):
    """A target whose latency model is known: fitted coefficients must come back from its predictions."""
    text = """extends = "x86-host"
name = "truth"
[latency]
per_inference_cycles = 30000.0
per_exit_cycles = 6000.0
[latency.kinds.default]
fixed_cycles = 0.0
cycles_per_mac = 0.0
cycles_per_byte = 0.0
[latency.kinds.conv]
fixed_cycles = 9000.0
cycles_per_mac = 0.5
cycles_per_byte = 0.0
[latency.kinds.act]
fixed_cycles = 0.0
cycles_per_mac = 0.0
cycles_per_byte = 0.0
cycles_per_output_byte = 0.25
[latency.kinds.linear]
fixed_cycles = 0.0
cycles_per_mac = 2.0
cycles_per_byte = 0.0
[latency.kinds.gap]
fixed_cycles = 0.0
cycles_per_mac = 0.0
cycles_per_byte = 0.0
[latency.kinds.reshape]
fixed_cycles = 0.0
cycles_per_mac = 0.0
cycles_per_byte = 0.0
"""
    p = tmp_path / "truth.toml"
    p.write_text(text)
    return load_target(str(p))


def e2e_csv(tmp_path, n=14, seed=0):
    truth = truth_target(tmp_path)
    rng = np.random.default_rng(seed)
    rows = ["# synthetic end-to-end measurements", "model,latency_ms"]
    for i in range(n):
        n_conv = int(rng.integers(1, 4))
        path = conv_model(tmp_path / f"m{i}.onnx", int(rng.integers(1, 4)), int(rng.choice([4, 8, 16])),
                          int(rng.choice([8, 12, 16])), n_conv, [bool(b) for b in rng.integers(0, 2, n_conv)],
                          n_classes=int(rng.choice([10, 100, 400])))
        seconds = cost.predict_latency(cost.from_onnx(str(path)), truth).worst_s
        rows.append(f"{path.name},{seconds * 1e3:.12g}")
    csv_path = tmp_path / "e2e.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path, truth


def test_end_to_end_csv_recovers_the_coefficients(tmp_path):
    csv_path, truth = e2e_csv(tmp_path)
    cal = calibrate(load_target("x86-host"), [str(csv_path)])
    got = cal.latency
    assert got.for_kind("conv").fixed_cycles == pytest.approx(9000.0, rel=2e-3)
    assert got.for_kind("conv").cycles_per_mac == pytest.approx(0.5, rel=2e-3)
    assert cal.channel_block == 1  # the truth pads nothing; every candidate block fits, the target's own wins ties
    # every Relu follows a conv: the calibrated model costs it as a fused activation (edgenas.cost.analysis)
    assert "act_fused" in cal.fit.kinds and "act" not in cal.fit.kinds
    act = got.for_kind("act_fused")  # an activation reads as many bytes as it writes: only the sum is determined
    assert act.cycles_per_input_byte + act.cycles_per_output_byte == pytest.approx(0.25, rel=2e-3)
    assert got.for_kind("linear").cycles_per_mac == pytest.approx(2.0, rel=2e-3)
    # every model has exactly one gap, flatten and linear: their call costs and the per-inference constant are one
    # collinear sum, which is all the data can determine
    collinear = got.per_inference_cycles + sum(got.for_kind(k).fixed_cycles for k in ("gap", "reshape", "linear"))
    assert collinear == pytest.approx(30000.0, rel=2e-3)
    assert cal.cv["model"]["within_5pct"] == 100.0 and cal.n_models == 14
    # predict_latency with the fitted model reproduces the truth on a model not in the CSV
    extra = conv_model(tmp_path / "extra.onnx", 3, 12, 20, 2, [True, False], n_classes=50, seed=5)
    g = cost.from_onnx(str(extra))
    from dataclasses import replace
    fitted_target = replace(truth, latency=got)
    assert cost.predict_latency(g, fitted_target).worst_s == pytest.approx(cost.predict_latency(g, truth).worst_s,
                                                                           rel=2e-3)


# ------------------------------------------------------------------------------------------------ metrics
def test_accuracy_metrics_by_hand():
    measured = [1.0, 2.0, 4.0, 10.0]
    predicted = [1.04, 2.3, 2.2, 10.8]  # relative errors 4 %, 15 %, 45 %, 8 %; the pair (2, 4) swaps order
    m = accuracy(measured, predicted)
    assert m["within_5pct"] == 25.0 and m["within_10pct"] == 50.0
    assert m["kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert m["median_abs_rel_error"] == pytest.approx((0.08 + 0.15) / 2)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: tau-b, as scipy computes it
    from scipy.stats import kendalltau
    x, y = [1, 2, 2, 3, 5], [2, 1, 1, 4, 3]
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic)


def test_cross_validation_holds_models_out_and_beats_macs_only_on_a_kind_mix():
    # truth: dwconv MACs cost 10x conv MACs, so MACs alone cannot rank a dwconv-heavy model against a conv-heavy one
    meas = Measurements()
    rng = np.random.default_rng(1)
    for i in range(10):
        conv, dw = float(rng.integers(1e5, 1e6)), float(rng.integers(1e4, 1e5))
        feats = {"conv": (3, conv, 0, 0, 0), "dwconv": (3, dw, 0, 0, 0)}
        t = 1e-5 + 1e-10 * conv + 1e-9 * dw
        meas.observations.append(Observation(f"m{i}", t, feats, overhead=1))
        meas.totals.append(ModelTotal(f"m{i}", t, feats, 1, 0, int(conv + dw)))
    cv = cross_validate(meas, k=5)
    assert cv["folds"] == 5 and cv["model"]["n"] == 10
    assert cv["model"]["within_5pct"] == 100.0 and cv["model"]["kendall_tau"] == pytest.approx(1.0)
    assert cv["macs_only"]["within_10pct"] < 100.0
    assert cross_validate(Measurements(meas.observations[:2], meas.totals[:2])) is None


# ------------------------------------------------------------------------------------------------ override round trip
def test_override_round_trips_through_load_target(tmp_path):
    csv_path, truth = e2e_csv(tmp_path, n=6)
    cal = calibrate(load_target("x86-host"), [str(csv_path)], device="dev", runtime_version="rt", threads=1, name="host-cal")
    out = write_override(cal, tmp_path / "out" / "host-cal.toml")
    t = load_target(str(out))
    base = load_target("x86-host")
    assert t.name == "host-cal" and t.latency == cal.latency and t.clock_hz == base.clock_hz
    assert t.provenance[:-1] == base.provenance
    p = t.provenance[-1]
    assert p.measured_on == "dev" and "rt, 1 thread" in p.runtime and "6 models" in p.source and p.date
    assert "within +-10%" in p.notes
    # the override is a working --target: CLI analyze accepts it (and the small m0.onnx is within x86-host's budgets)
    assert main(["analyze", str(tmp_path / "m0.onnx"), "--target", str(out), "--json"]) == 0


def test_cli_calibrate_writes_the_override_and_prints_held_out_error(tmp_path, capsys):
    csv_path, _ = e2e_csv(tmp_path, n=8)
    out = tmp_path / "board.toml"
    rc = main(["calibrate", "--target", "x86-host", str(csv_path), "--out", str(out), "--device", "bench",
               "--runtime", "ort", "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "within +-10%" in text and "MACs-only baseline" in text and "Kendall tau" in text
    assert load_target(str(out)).name == "board"


# ------------------------------------------------------------------------------------------------ malformed input
def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("name, content, message", [
    ("bad.json", "{not json", "is not valid JSON"),
    ("wrong.json", json.dumps({"format": "other"}), "is not an edgenas-profile/1 profile"),
    ("ort.json", json.dumps([{"cat": "Session", "name": "model_run", "dur": 5}]), "onnxruntime profile without"),
    ("neg.json", json.dumps({"format": "edgenas-profile/1", "models": [
        {"layers": [{"kind": "conv", "macs": 10, "latency_s": -1}]}]}), "latency_s must be a positive"),
    ("kind.json", json.dumps({"format": "edgenas-profile/1", "models": [
        {"layers": [{"kind": "lstm", "latency_s": 1e-3}]}]}), "is not a layer kind"),
    ("cols.csv", "file,time\nm.onnx,1\n", "needs a `model` column"),
    ("nan.csv", "model,latency_ms\nm0.onnx,fast\n", "is not a number"),
    ("zero.csv", "model,latency_ms\nm0.onnx,0\n", "must be a positive"),
    ("missing.csv", "model,latency_ms\nnope.onnx,1.0\n", "model file"),
    ("empty.csv", "", "is empty"),
])
def test_malformed_files_fail_with_one_line_and_exit_2_and_write_nothing(tmp_path, capsys, name, content, message):
    conv_model(tmp_path / "m0.onnx", 1, 4, 8, 1, [True])
    bad = tmp_path / name
    bad.write_text(content)
    out = tmp_path / "never.toml"
    assert main(["calibrate", "--target", "x86-host", str(bad), "--out", str(out)]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists() and not list(tmp_path.glob(".never.toml*"))
    with pytest.raises(EdgenasError, match="error: "):
        calibrate(load_target("x86-host"), [str(bad)])


def test_ort_profile_of_a_real_session_is_attributed_to_layers(tmp_path):
    import onnxruntime as ort
    path = conv_model(tmp_path / "m.onnx", 3, 16, 16, 3, [True, True, False])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 16, 16), np.float32)
    for _ in range(5):
        sess.run(None, {"x": x})
    prof = sess.end_profiling()
    from edgenas.cost.analysis import latency_kinds
    from edgenas.cost.calibrate import read_measurements
    meas = read_measurements([f"{path}={prof}"], 4)
    covered = {}
    for o in meas.observations:
        for kind, f in o.features.items():
            covered[kind] = covered.get(kind, 0) + f[FEATURES.index("calls")]
    # every layer of the model lands in exactly one observed group (fused ones included)
    g = cost.from_onnx(str(path))
    want = {}
    for kind in latency_kinds(g):  # the latency model's kinds (a Relu after a conv is a fused activation)
        want[kind] = want.get(kind, 0) + 1
    assert covered == want
    assert len(meas.totals) == 1 and meas.totals[0].seconds > 0


# ------------------------------------------------------------------------------------------------ issue 15
def _distinct_models(tmp_path, n):
    return [conv_model(tmp_path / f"d{i}.onnx", 1, 4, 8, i + 1, [True] * (i + 1)) for i in range(n)]


def test_too_few_distinct_models_are_refused_and_copies_count_once(tmp_path, capsys):
    from edgenas.cost.calibrate import MIN_DISTINCT_MODELS
    models = _distinct_models(tmp_path, MIN_DISTINCT_MODELS)
    for i in range(3):  # byte-identical copies under other names: the same features, no new information
        (tmp_path / f"copy{i}.onnx").write_bytes(models[0].read_bytes())
    rows = [f"{p.name},{1 + i}" for i, p in enumerate(models[:-1])] + [f"copy{i}.onnx,1.1" for i in range(3)]
    csv_path = tmp_path / "few.csv"
    csv_path.write_text("model,latency_ms\n" + "\n".join(rows) + "\n")
    out = tmp_path / "never.toml"
    assert main(["calibrate", "--target", "x86-host", str(csv_path), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert f"{MIN_DISTINCT_MODELS - 1} distinct models (7 measured)" in err and f"at least {MIN_DISTINCT_MODELS}" in err
    assert not out.exists()
    csv_path.write_text(csv_path.read_text() + f"{models[-1].name},9\n")  # one more distinct model: enough
    cal = calibrate(load_target("x86-host"), [str(csv_path)])
    assert cal.cv is not None and cal.cv["model"]["n"] == 8


def test_csv_errors_name_the_file_line_counting_comments(tmp_path, capsys):
    models = _distinct_models(tmp_path, 5)
    for cell, message in (("1e308", "latency_ms '1e308' ms is out of range"),
                          ("1e-400", "latency_ms must be a positive number of milliseconds, got '1e-400'"),
                          ("nan", "latency_ms must be a positive"), ("-inf", "latency_ms must be a positive"),
                          ("1e-7", "latency_ms '1e-7' ms is out of range")):
        lines = ["# measured on bench 3", "model,latency_ms", "", f"{models[0].name},1.5", "# rerun:",
                 f"{models[1].name},{cell}"] + [f"{p.name},2" for p in models[2:]]
        bad = tmp_path / "rows.csv"
        bad.write_text("\n".join(lines) + "\n")
        assert main(["calibrate", "--target", "x86-host", str(bad), "--out", str(tmp_path / "never.toml")]) == 2
        err = _one_line_error(capsys)
        assert f"rows.csv:6: {message}" in err, err
    assert not (tmp_path / "never.toml").exists()


def _strict_json(text):
    """json.loads that refuses NaN and Infinity, which Python writes but JSON does not have."""
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_calibrate_json_names_and_unwritable_outputs(tmp_path, capsys, monkeypatch):
    csv_path, _ = e2e_csv(tmp_path, n=6)
    out = tmp_path / "board.toml"
    assert main(["calibrate", "--target", "x86-host", str(csv_path), "--out", str(out), "--json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["wrote"] == str(out) and doc["n_models"] == 6 and doc["target"] == "x86-host"
    assert doc["cross_validation"]["model"]["n"] == 6 and "within_10pct" in doc["cross_validation"]["macs_only"]
    from edgenas.targets import latency_to_dict
    assert doc["latency"] == latency_to_dict(load_target(str(out)).latency)
    # a name that would inject TOML is refused before anything is fitted or written
    for name in ('x"\nsram_bytes = "1KB', "a/b", "", "x" * 65):
        assert main(["calibrate", "--target", "x86-host", str(csv_path), "--out", str(tmp_path / "n.toml"),
                     "--name", name]) == 2
        assert "--name" in _one_line_error(capsys)
    with pytest.raises(EdgenasError, match="calibrated target name"):
        calibrate(load_target("x86-host"), [str(csv_path)], name="two words")
    # an output that cannot be written: one line, and no folder or temporary file left behind
    (tmp_path / "notes.txt").write_text("mine")
    for bad_out in (tmp_path / "notes.txt" / "o.toml", tmp_path / "notes.txt" / "new" / "deeper" / "o.toml"):
        assert main(["calibrate", "--target", "x86-host", str(csv_path), "--out", str(bad_out)]) == 2
        assert "notes.txt is not a folder" in _one_line_error(capsys)
    cal = calibrate(load_target("x86-host"), [str(csv_path)], name="ok")
    fresh = tmp_path / "made" / "by" / "write"

    def failing_replace(src, dst):  # a read-only folder, as root cannot make one
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("edgenas.fileio.os.replace", failing_replace)
    with pytest.raises(EdgenasError, match="cannot write .*Permission denied"):
        write_override(cal, fresh / "o.toml")
    assert not (tmp_path / "made").exists()  # the folders it made are removed again, with the temporary file
