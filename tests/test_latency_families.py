"""Latency model families: selection by cross-validation (never worse than MACs-only), every family round-trips
through the override TOML, repeated measurements and thread counts, prediction intervals in `analyze`."""
import json
from dataclasses import replace

import numpy as np
import pytest

from edgenas import cost
from edgenas.cli import main
from edgenas.cost.calibrate import calibrate, write_override
from edgenas.cost.fitting import accuracy, select_family
from edgenas.errors import EdgenasError
from edgenas.targets import LATENCY_FAMILIES, load_target
from tests.onnx_models import conv_model
from tests.test_calibrate import synthetic_profile


def _acc(within, tau):
    return {"within_10pct": within, "within_5pct": within / 2, "kendall_tau": tau, "median_abs_rel_error": 0.1,
            "n": 50}


# ------------------------------------------------------------------------------------------------ selection rule
def test_selection_falls_back_to_macs_only_when_every_richer_family_is_worse():
    base = _acc(60.0, 0.70)
    sel = select_family({"per-kind": _acc(70.0, 0.60), "per-kind-shape": _acc(50.0, 0.80)}, base)
    assert sel.family == "macs-only" and "MACs-only" in sel.fallback and "per-kind" in sel.fallback
    ok = select_family({"per-kind": _acc(70.0, 0.60), "per-kind-shape": _acc(61.0, 0.71)}, base)
    assert ok.family == "per-kind-shape" and not ok.fallback


def test_selection_follows_the_objective_and_prefers_the_simpler_family_on_a_tie():
    base = _acc(30.0, 0.50)
    cv = {"per-kind": _acc(90.0, 0.80), "per-kind-shape": _acc(80.0, 0.95),
          "boosted-trees": _acc(90.2, 0.802)}
    assert select_family(cv, base, "budgets").family == "per-kind"      # 90.2 vs 90.0 is a tie: simpler wins
    assert select_family(cv, base, "ranking").family == "per-kind-shape"
    with pytest.raises(EdgenasError, match="objective"):
        select_family(cv, base, "speed")


def test_accuracy_gives_the_interval_of_measured_over_predicted():
    measured = np.linspace(1.0, 2.0, 101)
    acc = accuracy(measured, measured / 1.05)
    assert acc["ratio_low"] == pytest.approx(1.05) and acc["ratio_high"] == pytest.approx(1.05)
    assert acc["within_10pct"] == 100.0


# ------------------------------------------------------------------------------------------------ calibrate
def misleading_profile(path, n_models=15, seed=0):
    """Per-layer times that say nothing (tiny random numbers) under whole-model times that follow the MACs: a
    per-layer model is fitted to the layers and cannot rank the models, MACs-only can."""
    rng = np.random.default_rng(seed)
    models = []
    for _ in range(n_models):
        layers = [{"kind": str(rng.choice(["conv", "dwconv3", "act"])), "macs": int(rng.integers(1e4, 3e6)),
                   "input_bytes": int(rng.integers(1e3, 1e5)), "output_bytes": int(rng.integers(1e3, 1e5)),
                   "latency_s": float(rng.uniform(1e-9, 1e-8))} for _ in range(int(rng.integers(4, 9)))]
        macs = sum(e["macs"] for e in layers)
        models.append({"layers": layers, "total_s": 1e-4 + 2e-10 * macs})
    path.write_text(json.dumps({"format": "edgenas-profile/1", "device": "d", "runtime": "r", "threads": 1,
                                "models": models}))
    return path


def test_calibrate_writes_macs_only_and_says_so_when_richer_families_lose(tmp_path):
    path = misleading_profile(tmp_path / "prof.json")
    cal = calibrate(load_target("x86-host"), [str(path)], channel_block=1)
    assert cal.family == "macs-only" and cal.fallback
    assert cal.family_cv["per-kind"]["kendall_tau"] < cal.cv["macs_only"]["kendall_tau"]
    assert "fell back to MACs-only" in cal.summary()
    t = load_target(str(write_override(cal, tmp_path / "fb.toml")))
    assert t.latency.family == "macs-only" and t.latency.selection["family"] == "macs-only"
    assert "fallback" in t.latency.selection
    # a macs-only target predicts a + b * MACs, whatever the kinds
    g = cost.from_onnx(str(conv_model(tmp_path / "m.onnx", 3, 8, 8, 2, [True, False])))
    macs = cost.macs_per_exit(g)[-1]
    expected = (t.latency.per_inference_cycles + t.latency.per_exit_cycles) / t.clock_hz + cal.fit.macs_s * macs
    assert cost.predict_latency(g, t).worst_s == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("family", LATENCY_FAMILIES)
def test_every_family_round_trips_through_the_override(tmp_path, family):
    path = synthetic_profile(tmp_path / "prof.json", n_models=15)
    cal = calibrate(load_target("x86-host"), [str(path)], families=[family], runtime="ort")
    assert cal.family == family or cal.fallback
    loaded = load_target(str(write_override(cal, tmp_path / f"{family}.toml")))
    assert loaded.latency == cal.latency
    assert loaded.latency.runtime == "ort" and loaded.latency.interval is not None
    if cal.family == "boosted-trees":
        assert loaded.latency.trees is not None and len(loaded.latency.trees.trees) > 0
    g = cost.from_onnx(str(conv_model(tmp_path / "m.onnx", 3, 16, 12, 3, [True, True, False])))
    target = replace(load_target("x86-host"), latency=cal.latency)
    assert cost.predict_latency(g, loaded).per_exit_s == cost.predict_latency(g, target).per_exit_s


def test_trees_are_data_checked_on_load_and_evaluated(tmp_path):
    def write(left):
        path = tmp_path / f"t{left[0]}.toml"
        path.write_text('extends = "x86-host"\nname = "t"\n\n[latency]\nfamily = "boosted-trees"\n\n'
                        '[latency.trees]\nkinds = ["conv", "act"]\n\n[[latency.trees.tree]]\n'
                        f'feature = [0, 0, 0]\nthreshold = [0.5, 0.0, 0.0]\nleft = {left}\nright = [2, -1, -1]\n'
                        'value = [0.0, 1000.0, 7.0]\n')
        return str(path)
    with pytest.raises(EdgenasError, match="point forward"):
        load_target(write([0, -1, -1]))
    t = load_target(write([1, -1, -1]))
    assert t.latency.trees.cycles((0.0,)) == 1000.0 and t.latency.trees.cycles((1.0,)) == 7.0
    g = cost.from_onnx(str(conv_model(tmp_path / "m.onnx", 3, 8, 8, 1, [False])))
    plain = replace(t, latency=replace(t.latency, family="per-kind-shape", trees=None))
    conv = [i for i, layer in enumerate(g.layers) if layer.kind == "conv"]
    # kind index 0 ("conv") -> +1000 cycles per conv layer; other kinds index -1 (not listed) <= 0.5 -> +1000 too
    gained = [a - b for a, b in zip(cost.predict_latency(g, t).layer_cycles, cost.predict_latency(g, plain).layer_cycles)]
    assert conv and all(gained[i] == pytest.approx(1000.0) for i in conv)


# ------------------------------------------------------------------------------------------------ CSV data
def _models(tmp_path, n=6):
    return [conv_model(tmp_path / f"d{i}.onnx", 3, 8 * (i + 1), 12, i % 3 + 1, [True] * (i % 3 + 1))
            for i in range(n)]


def test_repeated_rows_are_aggregated_with_a_noise_floor_and_outliers_flagged(tmp_path):
    rows = ["model,latency_ms"]
    for i, p in enumerate(_models(tmp_path)):
        base = 0.1 * (i + 1)
        rows += [f"{p.name},{base * f}" for f in (1.0, 1.02, 0.98)]
    rows.append("d0.onnx,0.9")  # a disturbed run of d0: 9x its median
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    cal = calibrate(load_target("x86-host"), [str(tmp_path / "t.csv")], channel_block=1)
    assert cal.n_models == 6 and cal.n_observations == 6   # one aggregated observation per model
    assert cal.repeated_models == 6 and cal.noise_floor == pytest.approx(0.02, abs=0.005)
    assert len(cal.outliers) == 1 and cal.outliers[0].startswith("d0.onnx")
    assert "noise floor: 2.0%" in cal.summary() and "outlier" in cal.summary()


def test_a_threads_column_selects_rows_and_mixed_counts_need_a_choice(tmp_path, capsys):
    rows = ["model,latency_ms,threads"]
    for i, p in enumerate(_models(tmp_path)):
        rows += [f"{p.name},{0.1 * (i + 1)},1", f"{p.name},{0.04 * (i + 1)},4"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(EdgenasError, match="mixes measurements with 1, 4 threads"):
        calibrate(load_target("x86-host"), [str(tmp_path / "t.csv")])
    one = calibrate(load_target("x86-host"), [str(tmp_path / "t.csv")], threads=1, channel_block=1)
    four = calibrate(load_target("x86-host"), [str(tmp_path / "t.csv")], threads=4, channel_block=1)
    assert one.threads == 1 and four.threads == 4
    g = cost.from_onnx(str(tmp_path / "d5.onnx"))
    assert one.fit.predict_total(_total(g)) > 2 * four.fit.predict_total(_total(g))
    assert main(["calibrate", str(tmp_path / "t.csv"), "--target", "x86-host", "--threads", "2",
                 "--out", str(tmp_path / "x.toml")]) == 2
    assert not (tmp_path / "x.toml").exists()
    assert "no rows measured with 2 thread(s)" in capsys.readouterr().err


def _total(g):
    from edgenas.cost.measurements import ModelTotal, graph_rows
    feats, rows = graph_rows(g, 4)
    return ModelTotal("m", 1.0, feats, 1, g.n_exits, cost.macs_per_exit(g)[-1], rows)


# ------------------------------------------------------------------------------------------------ analyze
def test_analyze_prints_the_interval_and_flags_a_budget_near_the_edge(tmp_path, capsys):
    model = conv_model(tmp_path / "m.onnx", 3, 16, 16, 2, [True, True])
    toml = tmp_path / "cal.toml"
    toml.write_text('extends = "x86-host"\nname = "cal"\n\n[latency]\ninterval = [0.9, 1.2]\nruntime = "ort"\n')
    predicted = cost.predict_latency(cost.from_onnx(str(model)), load_target(str(toml))).worst_s
    assert main(["analyze", str(model), "--target", str(toml), "--latency", f"{predicted * 1.1 * 1e3:.6f}ms"]) == 0
    out = capsys.readouterr().out
    assert "90% interval" in out and "near the edge" in out and "-10.0% .. +20.0%" in out
    # x86-host deploys with TVM: a model calibrated on onnxruntime ranks networks for the other engine
    assert "warning: the latency model of 'cal' was calibrated on ort" in out
    main(["analyze", str(model), "--target", str(toml), "--latency", f"{predicted * 2 * 1e3:.6f}ms", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["budgets"]["latency_s"]["near_edge"] is False
    assert doc["budgets"]["latency_s"]["interval"] == pytest.approx([0.9 * predicted, 1.2 * predicted])
    main(["analyze", str(model), "--target", "x86-host"])
    assert "no prediction interval" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ host profiles
def host_profile(path, export_dir, exit_us, engines=("onnxruntime", "tvm"), threads=("1",)):
    """What `edgenas profile --device host --out` writes, reduced to what calibrate reads."""
    run = {"exits": {str(e): {"latency_us": {"median": us}} for e, us in enumerate(exit_us)},
           "timing": {"noise_floor": 0.01}}
    doc = {"format": "edgenas-host-profile/1", "artefact": str(export_dir), "device": "host",
           "versions": {"onnxruntime": "1.32.0", "tvm": "0.27"}}
    for i, engine in enumerate(engines):
        doc[engine] = {"file": "model.onnx",
                       "runs": {t: {**run, "exits": {e: {"latency_us": {"median": r["latency_us"]["median"] * (1 + i)}}
                                                     for e, r in run["exits"].items()}} for t in threads}}
    path.write_text(json.dumps(doc))
    return path


def if_graph_build(tmp_path, exit_net_export):
    """A build folder holding model.onnx, the nested-If graph of the tiny 3-exit net (what compile writes)."""
    import onnx

    from edgenas.export.compose import compose_if_graph
    export_dir, _ = exit_net_export(24)
    stages = [onnx.load(str(export_dir / "stages" / f"stage_{i}.onnx")) for i in range(3)]
    build = tmp_path / "build"
    build.mkdir()
    onnx.save(compose_if_graph(stages, [0.9, 0.9]), str(build / "model.onnx"))
    return build


def test_host_profiles_mix_with_csv_and_name_the_engine(tmp_path, exit_net_export):
    export_dir = if_graph_build(tmp_path, exit_net_export)
    assert cost.from_onnx(str(export_dir / "model.onnx")).n_exits == 3
    prof = host_profile(tmp_path / "host.json", export_dir, [40.0, 70.0, 95.0])
    rows = ["model,latency_ms"] + [f"{p.name},{0.05 * (i + 1)}" for i, p in enumerate(_models(tmp_path, 4))]
    (tmp_path / "e2e.csv").write_text("\n".join(rows) + "\n")
    sources = [str(prof), str(tmp_path / "e2e.csv")]
    with pytest.raises(EdgenasError, match="times both onnxruntime and tvm"):
        calibrate(load_target("x86-host"), sources)
    ort = calibrate(load_target("x86-host"), sources, runtime="tvm", channel_block=1)
    assert ort.runtime == "tvm" and ort.n_models == 7            # 3 exit paths + 4 CSV models
    assert "tvm 0.27" in ort.runtime_version and ort.threads == 1
    # the tvm timings are twice the onnxruntime ones in this profile: the fits differ accordingly
    fast = calibrate(load_target("x86-host"), sources, runtime="ort", channel_block=1)
    from edgenas.cost.measurements import read_host_profile
    obs = read_host_profile(prof, 4, json.loads(prof.read_text()), engine="ort").observations
    assert [o.exits for o in obs] == [1, 2, 3] and [o.seconds for o in obs] == pytest.approx([40e-6, 70e-6, 95e-6])
    macs = [sum(f[1] for f in o.features.values()) for o in obs]   # each exit's path holds more of the network
    assert macs[0] < macs[1] < macs[2] == cost.macs_per_exit(cost.from_onnx(str(export_dir / "model.onnx")))[-1]
    assert ort.latency != fast.latency
    gone = host_profile(tmp_path / "gone.json", tmp_path / "moved", [40.0], engines=("tvm",))
    with pytest.raises(EdgenasError, match="holds no model.onnx"):
        calibrate(load_target("x86-host"), [str(gone), str(tmp_path / "e2e.csv")])
    two = host_profile(tmp_path / "two.json", export_dir, [40.0, 70.0, 95.0], engines=("tvm",), threads=("1", "2"))
    with pytest.raises(EdgenasError, match="pass --threads N"):
        calibrate(load_target("x86-host"), [str(two), str(tmp_path / "e2e.csv")])


def test_report_shows_the_interval_and_marks_a_member_near_the_budget():
    from edgenas.search.report import latency_cell
    record = {"latency_expected_s": 1e-3, "latency_expected_interval_s": [0.9e-3, 1.2e-3]}
    assert latency_cell(record, 1.1e-3) == "1.00 [0.90, 1.20] near budget"
    assert latency_cell(record, 2e-3) == "1.00 [0.90, 1.20]"
    assert latency_cell({"latency_expected_s": 1e-3}, 1.1e-3) == "1.00"
