"""Export: stage files, the nested-If ONNX graph, the static graph, int8 QDQ, exits.json, checks and profiling.

One tiny early-exit net (3 conv-BN-ReLU segments on 1x16x16 digits) is trained for a few seconds and exported once
per module; thresholds are set from its confidences so that every exit is taken by real test inputs.
"""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.export import compose_if_graph, export_model, export_stage_protos, export_static
from edgenas.export.checks import (count_ops, load_onnx, ort_session, profile_ort_nodes, run_early_exit,
                                   run_static, stages_in_profile, torch_early_exit)
from edgenas.export.exits_json import FORMAT, read_exits_json
from edgenas.export.stages import export_stages
from edgenas.nn.early_exit import EarlyExitNet

N_CLASSES = 10


def conv_bn_relu(c_in, c_out, stride):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def exit_head(c_in, n_out):
    return nn.Sequential(nn.Conv2d(c_in, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(64, n_out))


def final_head(c_in, n_out):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_out))


def digits16():
    """sklearn digits upsampled to 16x16, scaled to [0, 1]; a fixed 70/30 train/test split."""
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).numpy()
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(0.7 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def build_net(thresholds=(0.5, 0.5)):
    torch.manual_seed(0)
    segs = [conv_bn_relu(1, 8, 1), conv_bn_relu(8, 16, 2), conv_bn_relu(16, 16, 2)]
    heads = [exit_head(8, N_CLASSES + 1), exit_head(16, N_CLASSES + 1), final_head(16, N_CLASSES)]
    return EarlyExitNet(segs, heads, N_CLASSES, (1, 16, 16), thresholds)


def train_briefly(net, x, y, epochs=6):
    """Cross-entropy on every exit, and the confidence logit learns whether its exit is right."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt)).split(64):
            logits, _ = net.forward_all(xt[idx])
            loss = sum(F.cross_entropy(lg, yt[idx]) for lg in logits)
            outs = [net.heads[i](h) for i, h in enumerate(net.features(xt[idx])[:-1])]
            for o in outs:
                right = (o[:, :N_CLASSES].argmax(1) == yt[idx]).float()
                loss = loss + F.binary_cross_entropy_with_logits(o[:, N_CLASSES], right)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def spread_thresholds(net, x):
    """Thresholds between adjacent sample values (no ties) so that about a third of x leaves at each exit."""
    with torch.no_grad():
        _, conf = net.forward_all(torch.from_numpy(x))
    leave = (1.0 - torch.cumprod(1.0 - conf, dim=1)).numpy()
    v0 = np.sort(leave[:, 0])
    k0 = int(len(v0) * 2 / 3)
    thr0 = float((v0[k0 - 1] + v0[k0]) / 2)
    rest = np.sort(leave[leave[:, 0] < thr0, 1])
    k1 = len(rest) // 2
    thr1 = float((rest[k1 - 1] + rest[k1]) / 2)
    return [thr0, thr1]


@pytest.fixture(scope="module")
def data():
    return digits16()


@pytest.fixture(scope="module")
def net(data):
    torch.set_num_threads(1)
    xtr, ytr, xte, _ = data
    n = train_briefly(build_net(), xtr, ytr)
    n.thresholds = spread_thresholds(n, xte)
    return n


def test_export_stages_writes_named_batch1_stage_files_and_exits_json(net, data, tmp_path):
    paths = export_stages(net, tmp_path, macs_per_exit=[100, 200, 300])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [f"stages/stage_{i}.onnx" for i in range(3)]
    doc = read_exits_json(tmp_path)
    assert doc["format"] == FORMAT and doc["n_exits"] == 3 and doc["input_shape"] == [1, 1, 16, 16]
    assert doc["thresholds"] == pytest.approx(net.thresholds)
    assert [e["macs"] for e in doc["exits"]] == [100, 200, 300] and doc["exits"][2]["threshold"] is None
    x = data[2][:8]
    h = x
    with torch.no_grad():
        feats = net.features(torch.from_numpy(x))
        all_logits, conf = net.forward_all(torch.from_numpy(x))
    for i, (path, stage) in enumerate(zip(paths, doc["stages"])):
        model = load_onnx(path)
        assert model.opset_import[0].version == 18
        assert [t.name for t in model.graph.input] == [stage["input"]] == [("x" if i == 0 else "h_in")]
        assert [t.name for t in model.graph.output] == stage["outputs"]
        sess = ort_session(path)
        assert sess.get_inputs()[0].shape == stage["input_shape"]
        outs = [sess.run(None, {stage["input"]: h[k: k + 1]}) for k in range(len(x))]
        if i < 2:
            h_out = np.concatenate([o[0] for o in outs])
            assert list(h_out.shape[1:]) == stage["h_shape"][1:]
            np.testing.assert_allclose(h_out, feats[i].numpy(), atol=1e-4)
            np.testing.assert_allclose(np.concatenate([o[1] for o in outs]), all_logits[i].numpy(), atol=1e-4)
            conf_out = np.concatenate([o[2] for o in outs])
            assert outs[0][2].shape == (1,)
            np.testing.assert_allclose(conf_out, conf[:, i].numpy(), atol=1e-5)
            h = h_out
        else:
            assert stage["h_shape"] is None
            np.testing.assert_allclose(np.concatenate([o[0] for o in outs]), all_logits[2].numpy(), atol=1e-4)


MACS = [1200, 5400, 9100]
INT8_MAX_DROP = 0.05   # accuracy points (as a fraction) int8 may lose against fp32 on this tiny model


@pytest.fixture(scope="module")
def exported(net, data, tmp_path_factory):
    xtr, _, xte, yte = data
    out = tmp_path_factory.mktemp("export") / "cand3"
    report = export_model(net, out, xte, yte, xtr[:200], MACS, {"candidate": 3, "run": "runs/tiny"})
    return report, xte, yte


def test_if_graph_reproduces_pytorch_on_every_exit(net, exported):
    report, xte, _ = exported
    for path in (report.model, report.static_model, report.int8_model):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    model = onnx.load(str(report.model))
    assert model.opset_import[0].version >= 18
    assert count_ops(model)["If"] == 2
    # the top level holds stage 0 and one If; stages 1 and 2 exist only inside its branches
    assert {n.name.split("_")[0] for n in model.graph.node} == {"s0", "ee", "exit"}
    ort_logits, ort_exits = run_early_exit(ort_session(report.model), xte)
    ref_logits, ref_exits = torch_early_exit(net, xte)
    assert set(ort_exits.tolist()) == {0, 1, 2}
    assert (ort_exits == ref_exits).all()
    assert np.abs(ort_logits - ref_logits).max() <= 1e-4
    assert report.fp32_exit_agreement == 1.0 and report.fp32_max_abs_diff <= 1e-4
    assert [e.exit_rate for e in report.exits] == pytest.approx([float((ref_exits == i).mean()) for i in range(3)])
    props = {p.key: p.value for p in model.metadata_props}
    assert model.producer_name == "edgenas" and props["edgenas.candidate"] == "3"
    assert json.loads(props["edgenas.thresholds"]) == pytest.approx(net.thresholds)


def test_static_graph_gives_every_exit_and_confidence(net, exported, tmp_path):
    report, xte, _ = exported
    out = run_static(ort_session(report.static_model), xte[:16])
    with torch.no_grad():
        logits, conf = net.forward_all(torch.from_numpy(xte[:16]))
    assert sorted(out) == ["conf_0", "conf_1", "logits_0", "logits_1", "logits_2"]
    for i in range(3):
        np.testing.assert_allclose(out[f"logits_{i}"], logits[i].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.stack([out["conf_0"], out["conf_1"]], 1), conf.numpy(), atol=1e-5)
    path = export_static(net, tmp_path / "static.onnx")
    assert count_ops(load_onnx(path))["If"] == 0


def test_profile_shows_only_the_stages_up_to_the_taken_exit(exported):
    report, xte, _ = exported
    _, exits = run_early_exit(ort_session(report.model), xte)
    for k in range(3):
        sample = xte[exits == k][:1]
        runs = profile_ort_nodes(report.model, sample, threads=1)
        assert any(r.op == "If" for r in runs)
        assert stages_in_profile(runs) == set(range(k + 1)), (k, [r.name for r in runs])


def test_int8_model_keeps_exits_and_stays_close_to_fp32(exported):
    report, xte, yte = exported
    model = onnx.load(str(report.int8_model))
    ops = count_ops(model)
    assert ops["If"] == 2 and ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    # quantised stage 1 lives inside the else-branch of the first exit
    else_branch = next(a.g for a in model.graph.node[-1].attribute if a.name == "else_branch")
    assert any(n.op_type == "QuantizeLinear" and n.name.startswith("s1_") for n in else_branch.node)
    # the confidence path stays float: no DequantizeLinear feeds the Sigmoid or the confidence linear layer
    for i in (0, 1):
        stage = load_onnx(report.out_dir / f"stages_int8/stage_{i}.onnx")
        producer = {o: n for n in stage.graph.node for o in n.output}
        sigmoid = next(n for n in stage.graph.node if n.op_type == "Sigmoid")
        assert producer[sigmoid.input[0]].op_type != "DequantizeLinear"
    logits, exits = run_early_exit(ort_session(report.int8_model), xte)
    acc = float((logits.argmax(1) == yte).mean())
    assert acc == pytest.approx(report.int8_accuracy)
    assert report.fp32_accuracy - acc <= INT8_MAX_DROP
    assert 0.8 <= report.int8_exit_agreement <= 1.0


def test_exits_json_records_thresholds_macs_rates_and_int8(net, exported):
    report, xte, yte = exported
    doc = read_exits_json(report.out_dir)
    assert doc["thresholds"] == pytest.approx(net.thresholds)
    assert [e["macs"] for e in doc["exits"]] == MACS
    assert sum(e["exit_rate"] for e in doc["exits"]) == pytest.approx(1.0)
    assert all(e["exit_rate"] > 0 for e in doc["exits"])
    assert doc["expected_macs"] == pytest.approx(sum(e["exit_rate"] * m for e, m in zip(doc["exits"], MACS)))
    assert doc["fp32"]["accuracy"] == pytest.approx(report.fp32_accuracy)
    assert doc["int8"]["accuracy_drop"] == pytest.approx(report.int8_accuracy_drop)
    assert doc["int8"]["exit_agreement"] == pytest.approx(report.int8_exit_agreement)
    assert doc["stages"][1]["int8_file"] == "stages_int8/stage_1.onnx" and doc["meta"]["candidate"] == 3
    for name in ("model.onnx", "model.static.onnx", "model.int8.onnx", "stages/stage_0.onnx", "exits.json"):
        assert report.sizes[name] == (report.out_dir / name).stat().st_size > 0


def test_single_stage_net_has_no_if_and_exit_zero(tmp_path):
    torch.manual_seed(1)
    net = EarlyExitNet([conv_bn_relu(1, 4, 1)], [final_head(4, N_CLASSES)], N_CLASSES, (1, 16, 16)).eval()
    model = compose_if_graph(export_stage_protos(net), [])
    assert count_ops(model)["If"] == 0
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    logits, exits = run_early_exit(ort_session(tmp_path / "m.onnx"), x)
    assert exits.tolist() == [0, 0, 0]
    np.testing.assert_allclose(logits, net(torch.from_numpy(x))[0].detach().numpy(), atol=1e-4)


class ShiftedNet(EarlyExitNet):
    """Eager forward that disagrees with its own modules: the export check must catch it."""

    def forward(self, x):
        logits, exits = super().forward(x)
        return logits + 1e-2, exits


def test_failed_check_raises_and_keeps_the_earlier_export(net, data, exported, tmp_path):
    report, xte, yte = exported
    shutil.copytree(report.out_dir, tmp_path / "exp")
    before = (tmp_path / "exp" / "exits.json").read_text()
    bad = ShiftedNet(list(net.segments), list(net.heads), N_CLASSES, (1, 16, 16), net.thresholds).eval()
    with pytest.raises(EdgenasError, match="does not reproduce PyTorch"):
        export_model(bad, tmp_path / "exp", xte[:20], yte[:20], data[0][:20], MACS, {})
    assert (tmp_path / "exp" / "exits.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp folder left behind


def test_bad_inputs_raise_edgenas_error(net, data, exported, tmp_path):
    report, xte, yte = exported
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    for call in (lambda: load_onnx(corrupt), lambda: ort_session(corrupt),
                 lambda: profile_ort_nodes(corrupt, xte[:1]), lambda: load_onnx(tmp_path / "missing.onnx")):
        with pytest.raises(EdgenasError):
            call()
    with pytest.raises(EdgenasError, match="does not fit"):
        run_early_exit(ort_session(report.model), np.zeros((2, 1, 8, 8), np.float32))
    stages = [load_onnx(report.out_dir / f"stages/stage_{i}.onnx") for i in range(3)]
    with pytest.raises(EdgenasError, match="expects input shape"):
        compose_if_graph([stages[0], stages[1], stages[1], stages[2]], [0.5, 0.5, 0.5])
    with pytest.raises(EdgenasError, match="thresholds"):
        compose_if_graph(stages, [0.5])
    out = tmp_path / "out"
    with pytest.raises(EdgenasError, match="check_x has shape"):
        export_model(net, out, xte[:, :, :8], yte, xte[:4], MACS, {})
    with pytest.raises(EdgenasError, match="macs_per_exit"):
        export_model(net, out, xte[:4], yte[:4], xte[:4], MACS[:2], {})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(EdgenasError, match="holds no earlier export"):
        export_model(net, tmp_path / "notes", xte[:4], yte[:4], xte[:4], MACS, {})
    assert not out.exists() and (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_a_nan_logit_difference_fails_the_output_check():
    """The one agreement rule (edgenas.agreement) of every output check: NaN is not "within tolerance"."""
    from edgenas.agreement import agreement
    logits, exits = np.zeros((3, 2)), np.zeros(3, dtype=int)
    broken = logits.copy()
    broken[1, 0] = np.nan
    assert agreement(logits, exits, logits, exits).passed
    assert not agreement(logits, exits, broken, exits).passed
