"""Searching in int8 (`--dtype`): the default per target kind, int8 budgets, post-training quantisation in torch
(train/ptq.py), the int8 columns of report.md, and resume refusing a dtype change."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import EarlyExitNet, ExitHead
from edgenas.search.evaluate import EvaluationConfig, deployment_dtype, resolve_dtype
from edgenas.search.methods import Problem
from edgenas.search.nachos import NachosMethod
from edgenas.search.nsga2 import Nsga2Options
from edgenas.targets import load_target
from edgenas.train.ptq import (ActivationQuantizer, activation_qparams, fake_quantize, int8_accuracy,
                               quantized_network)
from tests.tiny_settings import TINY


# ----------------------------------------------------------------------------------------------- default dtype
@pytest.mark.parametrize("target, dtype", [("cortex-m7", "int8"), ("cortex-m4", "int8"), ("stm32h743", "int8"),
                                           ("x86-host", "float32"), ("rpi4", "float32")])
def test_default_dtype_follows_the_target_kind(target, dtype):
    t = load_target(target)
    assert deployment_dtype(t) == dtype == ("int8" if t.kind == "mcu" else "float32")
    assert resolve_dtype(None, t) == dtype
    assert resolve_dtype("float32", t) == "float32"  # an explicit choice wins


def test_dtype_option_reaches_the_evaluation_config():
    problem = Problem(target="cortex-m7", dataset="digits")
    assert NachosMethod(Nsga2Options()).search_config(problem).evaluation.dtype is None  # resolved by run_search
    assert NachosMethod(Nsga2Options(dtype="float32")).search_config(problem).evaluation.dtype == "float32"
    with pytest.raises(EdgenasError, match="unknown dtype"):
        resolve_dtype("int4", load_target("cortex-m7"))


def test_search_help_states_the_dtype_default(capsys):
    assert cli_main(["search", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--dtype [float32|int8]" in help_text and "default: int8 on MCU targets" in help_text


# ------------------------------------------------------------------------------------------- PTQ in torch
def test_activation_parameters_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp
    for lo, hi in ((-1.3, 2.7), (0.0, 6.0), (0.4, 0.9), (-3.0, -0.5)):
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.int8(-128), np.int8(127))
        assert activation_qparams(float(np.float32(lo)), float(np.float32(hi))) == (float(scale), int(zp))
    # round half to even and saturation, as QuantizeLinear
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0])
    assert fake_quantize(x, 1.0, 0).tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]


def tiny_exit_net(n_classes: int = 4) -> EarlyExitNet:
    torch.manual_seed(0)
    seg0 = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    seg1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
    final = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_classes))
    return EarlyExitNet([seg0, seg1], [ExitHead(8, 8, n_classes, 8), final], n_classes, (1, 8, 8), [0.9])


@pytest.fixture(scope="module")
def trained_exit_net(toy_data):
    """A two-exit net trained a few steps on the toy prototypes (both exits learn; the confidence is trained too)."""
    net = tiny_exit_net()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    x, y = toy_data.train.x, toy_data.train.y
    for _ in range(60):
        logits, conf = net.forward_all(x)
        loss = sum(nn.functional.cross_entropy(lg, y) for lg in logits)
        right = (logits[0].argmax(1) == y).float()
        loss = loss + nn.functional.binary_cross_entropy(conf[:, 0], right)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_ptq_accuracy_is_close_to_fp32(trained_exit_net, toy_data):
    net = trained_exit_net
    qnet = quantized_network(net, toy_data.train.x)
    result = int8_accuracy(net, qnet, toy_data.test.x, toy_data.test.y)
    assert result.accuracy_fp32 > 0.8  # the net learnt something, or the comparison says nothing
    assert abs(result.accuracy - result.accuracy_fp32) <= 0.05
    assert result.exit_agreement >= 0.9 and abs(sum(result.exit_rates) - 1) < 1e-9
    # the quantised copy is not the fp32 net: its outputs move, by about a quantisation step
    with torch.no_grad():
        logits32, _ = net.forward_all(toy_data.test.x)
        logits8, _ = qnet.forward_all(toy_data.test.x)
    assert not torch.equal(logits32[-1], logits8[-1])
    assert torch.allclose(logits32[-1], logits8[-1], atol=0.5)


def test_quantised_weights_take_at_most_255_levels_per_channel(trained_exit_net, toy_data):
    net = trained_exit_net
    qnet = quantized_network(net, toy_data.train.x)
    confidence_layer = net.heads[0].fc
    layers = [m for m in qnet.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5  # 2 backbone convs (BN folded), the exit conv, the confidence layer, the final linear
    quantised = 0
    for layer in layers:
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        if layer.weight.shape == confidence_layer.weight.shape and torch.equal(layer.weight, confidence_layer.weight):
            continue  # the confidence path stays float, as in the export
        quantised += 1
        for row in w:
            scale = row.abs().max() / 127
            levels = row / scale
            assert len(torch.unique(row)) <= 255
            assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    assert quantised == 4
    # BatchNorm is folded before quantising, and activations are quantised after calibration
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qnet.modules())
    quantizers = [m for m in qnet.modules() if isinstance(m, ActivationQuantizer)]
    assert quantizers and all(not q.calibrating and q.scale > 0 for q in quantizers)


# ------------------------------------------------------------------------------------------- int8 search run
def records(run):
    return [json.loads(line) for line in (run / "archive.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_tiny_run_on_an_mcu_counts_int8_bytes(tiny_run):
    out, result = tiny_run
    assert json.loads((out / "config.json").read_text())["evaluation"]["dtype"] == "int8"
    for r in records(out):
        assert r["dtype"] == "int8" and r["latency_model_dtype"] == "int8"  # cortex-m7 has [latency_int8]
        assert r["flash_bytes"] == r["flash_bytes_int8"] < r["flash_bytes_fp32"]
        assert r["peak_sram_bytes"] == r["peak_sram_bytes_int8"]
        # weights count 1 byte each in int8 and 4 in fp32, less the int8 kernels' bias, scale and tap padding per channel
        assert r["flash_bytes_fp32"] - r["flash_bytes"] >= r["params"]


@pytest.mark.e2e
def test_int8_pareto_members_are_scored_and_reported(tiny_run):
    out, result = tiny_run
    lines = (out / "int8.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(m["id"] for m in result.pareto)
    for m in result.pareto:
        lo, hi = m["test_accuracy_int8_ci"]
        assert lo <= m["test_accuracy_int8"] <= hi
        assert abs(m["test_accuracy_fp32_check"] - m["test_accuracy"]) < 1e-9  # the same network as the member's
        assert 0 <= m["test_exit_agreement_int8"] <= 1
    report = (out / "report.md").read_text()
    assert "| fp32 test acc % [95% CI] | int8 test acc % [95% CI] |" in report
    assert "- dtype: int8: the SRAM and flash budgets count int8 bytes" in report
    assert "int8 latency not calibrated for this target" not in report  # cortex-m7 ships an int8 model
    assert "latency model: per-kind" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(result.pareto)
    assert all(row.split(" | ")[2] != "-" for row in rows)
    from edgenas.search.report import members_json
    assert all("test_accuracy_int8" in m for m in members_json(result.pareto))


@pytest.mark.e2e
def test_resume_with_another_dtype_is_refused(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    with pytest.raises(EdgenasError, match="--resume with --dtype float32.*searched in int8") as err:
        api.search(config=TINY, out=out, seed=0, resume=True, dtype="float32")
    assert "--dtype int8" in err.value.fix
    assert cli_main(["search", "--dataset", "digits", "--out", str(out), "--resume", "--dtype", "float32"]) == 2
    config = replace(TINY, evaluation=replace(TINY.evaluation, dtype="float32"))
    with pytest.raises(EdgenasError, match="searched in int8"):
        api.search(config=config, out=out, seed=0, resume=True)


def test_evaluation_config_default_is_the_target_dtype():
    assert EvaluationConfig().dtype is None


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x


def test_ptq_matches_the_onnxruntime_quantisation_the_export_runs(tmp_path):
    """The torch emulation against the export's own quantiser (export.quantize.quantize_stage) on a stage with the ops
    of our spaces (conv + BN + ReLU, a residual add, HardSwish, average pooling, global pooling, linear): the int8
    outputs agree up to rounding ties (float accumulation order differs), never by more than one output step."""
    import onnxruntime as ort

    from edgenas.export.quantize import ArrayCalibrationReader, quantize_stage
    from edgenas.train.ptq import freeze_quantized, quantize_module
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), ResidualBlock(8),
                           nn.Conv2d(8, 16, 1), nn.Hardswish(), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that make folding matter
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.3, 0.3)
    module.eval()
    x = torch.rand(48, 1, 16, 16)
    calibration = x[:32]
    torch.onnx.export(module, (x[:1],), dynamo=True, opset_version=18, input_names=["x"],
                      output_names=["y"]).save(str(tmp_path / "stage.onnx"))
    quantize_stage(tmp_path / "stage.onnx", ArrayCalibrationReader("x", calibration.numpy()), tmp_path / "int8.onnx")
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"x": x[k:k + 1].numpy()})[0] for k in range(len(x))])

    emulated = quantize_module(module)
    with torch.no_grad():
        emulated(calibration)
        freeze_quantized(emulated)
        ours = emulated(x).numpy()
        fp32 = module(x).numpy()
    output_step = emulated.get_submodule(list(emulated.graph.nodes)[-2].target).scale
    assert np.abs(fp32 - reference).max() > 0.1 * output_step  # int8 differs from fp32, so agreeing means something
    assert np.abs(ours - reference).max() <= output_step * 1.001
    assert np.isclose(ours, reference, atol=1e-6).mean() >= 0.95


def test_latency_note_says_when_int8_latency_falls_back_to_the_fp32_model():
    from edgenas.search.evaluate import latency_dtype_note
    t = replace(load_target("cortex-m7"), latency_int8=None)  # a target calibrated in fp32 only
    assert t.latency.dtype == "float32"
    assert "int8 latency not calibrated for this target" in latency_dtype_note("int8", t)
    assert latency_dtype_note("float32", t) is None
    with_int8_model = replace(t, latency_int8=replace(t.latency, dtype="int8"))
    assert latency_dtype_note("int8", with_int8_model) is None
    assert latency_dtype_note("int8", load_target("cortex-m7")) is None  # shipped with an int8 model


@pytest.mark.parametrize("space_name", ["mbv3", "nb201"])
def test_every_space_quantises(space_name):
    """torch.fx traces the segments and heads of both spaces (residual adds, cell sums, pooling, truncated heads)."""
    from edgenas.nn.early_exit import deployed_network
    from edgenas.spaces import create_space
    space = create_space(space_name)
    torch.manual_seed(0)
    x = torch.rand(24, 1, 16, 16)
    for arch in (space.largest(exits=True), space.smallest(exits=True)):
        net = space.build_empty(arch, 1, 10).eval()
        for active, cut in (([True] * (net.n_exits - 1), None), ([True] + [False] * (net.n_exits - 2), 0)):
            deployed = deployed_network(net, active, [0.5] * (sum(active[:cut]) if cut is not None else sum(active)),
                                        cut)
            qnet = quantized_network(deployed, x)
            result = int8_accuracy(deployed, qnet, x, torch.zeros(24, dtype=torch.long))
            assert result.n == 24 and 0 <= result.exit_agreement <= 1
            assert any(isinstance(m, ActivationQuantizer) for m in qnet.modules())
