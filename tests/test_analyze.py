"""`edgenas analyze MODEL.onnx`: an exported early-exit If model and a plain ONNX model, JSON output, budget check,
one-line errors."""
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgenas import api, cost
from edgenas.cli import main
from edgenas.export import compose_if_graph, export_stage_protos
from edgenas.nn.early_exit import EarlyExitNet
from edgenas.targets import load_target

from tests.onnx_models import conv_model

N_CLASSES = 10


def tiny_early_exit_net():
    torch.manual_seed(0)

    def seg(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def head(c_in, n_out):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_out))

    net = EarlyExitNet([seg(1, 8, 1), seg(8, 16, 2), seg(16, 16, 2)],
                       [head(8, N_CLASSES + 1), head(16, N_CLASSES + 1), head(16, N_CLASSES)],
                       N_CLASSES, (1, 16, 16), [0.5, 0.5])
    for m in net.modules():  # non-trivial BN statistics, so that the exporter keeps the folded biases
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def if_model(tmp_path_factory):
    net = tiny_early_exit_net()
    model = compose_if_graph(export_stage_protos(net), net.thresholds)
    path = tmp_path_factory.mktemp("analyze") / "model.onnx"
    onnx.save(model, str(path))
    return net, path


def test_exported_if_model_splits_into_exits_and_matches_torch(if_model):
    net, path = if_model
    g = cost.from_onnx(str(path))  # the else-branches read the backbone tensor and the survival product
    g_torch = cost.from_torch(net)
    assert g.n_exits == 3
    assert cost.macs_per_exit(g) == cost.macs_per_exit(g_torch)
    assert cost.total_params(g) == cost.total_params(g_torch)
    # segment i is the backbone only; the exit decision (1 - c, survival product, compare) sits in head i
    seg = [sorted({layer.kind for layer in g.layers if layer.part == "segment" and layer.index == i}) for i in range(3)]
    assert seg[0] == seg[1] == ["act", "conv"]
    assert any(layer.name == "ee_surv_1" and layer.part == "head" and layer.index == 1 for layer in g.layers)


def test_cli_analyze_json_on_the_if_model(if_model, capsys):
    net, path = if_model
    assert main(["analyze", str(path), "--target", "cortex-m7", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_exits"] == 3 and doc["fits"] is True and doc["target"] == "cortex-m7"
    g = cost.from_onnx(str(path))
    t = load_target("cortex-m7")
    assert doc["totals"]["macs_per_exit"] == cost.macs_per_exit(g)
    assert doc["totals"]["latency_per_exit_s"] == pytest.approx(list(cost.predict_latency(g, t).per_exit_s))
    assert sum(r["macs"] for r in doc["layers"]) == doc["totals"]["macs_worst"]
    assert max(r["live_sram_bytes"] for r in doc["layers"]) <= doc["totals"]["activation_sram_bytes"]
    # activations + the runtime's RAM (kernel scratch, driver state) + stack/heap workspace
    kernel_code, runtime_ram = cost.analysis.runtime_allowances(g, t, 4)
    assert runtime_ram > 0 and kernel_code > 0
    assert doc["totals"]["peak_sram_bytes"] == cost.peak_sram_bytes(g) + runtime_ram + t.workspace_bytes
    assert doc["totals"]["flash_bytes"] == 4 * cost.total_params(g) + kernel_code + t.code_size_bytes
    assert set(doc["budgets"]) == {"latency_s", "sram_bytes", "flash_bytes", "macs"}


def test_cli_analyze_plain_model_tables_and_json(tmp_path, capsys):
    path = conv_model(tmp_path / "plain.onnx", 3, 8, 16, 2, [True, True])
    assert main(["analyze", str(path), "--target", "x86-host"]) == 0
    text = capsys.readouterr().out
    assert "conv0" in text and "fits the target's budgets" in text
    assert main(["analyze", str(path), "--target", "x86-host", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_exits"] == 1 and [r["name"] for r in doc["layers"]][:2] == ["conv0", "relu0"]
    conv0 = doc["layers"][0]
    assert conv0["macs"] == 8 * 16 * 16 * 3 * 9 and conv0["params"] == 8 * 3 * 9 + 8
    assert conv0["input_bytes"] == 4 * 3 * 16 * 16 and conv0["output_bytes"] == 4 * 8 * 16 * 16


def test_budget_check_fails_on_a_too_small_target(tmp_path, capsys):
    path = conv_model(tmp_path / "plain.onnx", 3, 16, 32, 3, [True, True, True])
    small = tmp_path / "small.toml"
    small.write_text('extends = "cortex-m7"\nname = "small"\n[budgets]\nsram = "8KB"\nflash = "70KB"\n')
    assert main(["analyze", str(path), "--target", str(small), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["fits"] is False
    assert doc["budgets"]["sram_bytes"]["ok"] is False and doc["budgets"]["sram_bytes"]["limit"] == 8 * 1024
    assert doc["budgets"]["latency_s"]["ok"] is True
    assert main(["analyze", str(path), "--target", str(small)]) == 1
    assert "OVER sram_bytes" in capsys.readouterr().out
    # a budget flag overrides the target's
    assert api.analyze(str(path), target=str(small), sram="1MB", flash="1MB")["fits"] is True


@pytest.mark.parametrize("content, message", [(b"not a protobuf", "cannot read"), (None, "not found")])
def test_bad_model_files_give_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["analyze", str(path), "--target", "cortex-m7", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_unknown_target_is_a_one_line_error(tmp_path, capsys):
    path = conv_model(tmp_path / "plain.onnx", 1, 4, 8, 1, [True])
    assert main(["analyze", str(path), "--target", "cortex-m77"]) == 2
    assert "unknown target 'cortex-m77'" in capsys.readouterr().err


def test_random_input_runs_match_shapes_in_the_report(if_model):
    import onnxruntime as ort
    _, path = if_model
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, exit_index = sess.run(None, {"x": np.zeros((1, 1, 16, 16), np.float32)})
    doc = api.analyze(str(path), target="cortex-m7")
    assert doc["layers"][-1]["out_shape"] == [logits.shape[-1]] and doc["input_shape"] == [1, 16, 16]


def _lstm_model(path):
    from tests.onnx_models import small_model
    onnx.save(small_model("lstm"), str(path))
    return path


def test_unknown_operator_is_an_error_unless_allowed_then_the_verdict_is_incomplete(tmp_path, capsys):
    """An LSTM's weights and MACs are not in the cost model: a report that says "params 0, fits" would be wrong."""
    path = _lstm_model(tmp_path / "lstm.onnx")
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LSTM" in err[0] and "--allow-unknown" in err[0], err
    assert main(["analyze", str(path), "--allow-unknown"]) == 0
    out = capsys.readouterr().out
    assert "unknown operators (MACs and weights not counted): LSTM" in out and "(incomplete: 1 unknown" in out
    assert main(["analyze", str(path), "--allow-unknown", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] is False and doc["unknown_ops"] == ["LSTM (LSTM_y)"]
    assert [r["kind"] for r in doc["layers"]] == ["other"]


def test_known_operators_give_a_complete_report(tmp_path):
    conv_model(tmp_path / "conv.onnx", 3, 8, 16, 2, [True, False])
    result = api.analyze(tmp_path / "conv.onnx")
    assert result["complete"] is True and result["unknown_ops"] == []
