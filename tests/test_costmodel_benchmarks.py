"""The generators of the latency-model benchmarks (benchmarks/foreign_models.py, benchmarks/costmodel_synthetic.py):
random-block networks the ONNX front end analyses completely, MLPerf Tiny rebuilds of the published size, and a
synthetic device that is non-additive and as noisy as its docstring says. The benchmarks themselves are not run here
(they take minutes); benchmarks/ is not a package, so its scripts are loaded from their files."""
import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgenas import cost

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


foreign_models = load_benchmark("foreign_models")
synthetic = load_benchmark("costmodel_synthetic")
DEVICES = {d.name: d for d in synthetic.DEVICES}


def export(module: nn.Module, input_shape, path: Path) -> Path:
    torch.manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warnings
        torch.onnx.export(module.eval(), (torch.zeros(1, *input_shape),), str(path), dynamo=False, opset_version=18,
                          input_names=["x"], output_names=["logits"])
    return path


def device_latency(device, path: Path) -> float:
    return device.latency_s(cost.from_onnx(path), synthetic.OnnxInfo(path))


# ---------------------------------------------------------------------------------------------- generators
def test_random_block_plans_cover_every_block_and_stay_in_range():
    rng = np.random.default_rng(0)
    plans = [foreign_models.random_block_plan(rng, max_resolution=48, max_width=64, max_macs=5e6,
                                              dead_branch_rate=0.1) for _ in range(150)]
    blocks = {b["type"] for p in plans for b in p.get("blocks", [])}
    assert blocks == {*foreign_models.BLOCKS, "dead_branch"}
    assert any("mlp" in p for p in plans)
    for p in plans:
        assert p["macs"] <= 5e6
        assert json.loads(json.dumps(p)) == p  # a plan is data
        if "mlp" not in p:
            c, h, w = p["input"]
            assert c in (1, 3) and 8 <= min(h, w) and max(h, w) <= 48
    no_dead = foreign_models.random_block_specs(30, seed=0, dead_branch_rate=0.0)
    assert all("dead_branch" not in s.plan for s in no_dead)


def test_random_block_networks_are_analysed_completely(tmp_path):
    specs = foreign_models.random_block_specs(8, seed=3, max_resolution=24, max_width=32, max_macs=2e6,
                                              dead_branch_rate=0.15)
    records = foreign_models.export_all(specs, tmp_path)
    kinds = set()
    for spec, record in zip(specs, records):
        g = cost.from_onnx(record["path"])
        plan = json.loads(spec.plan)
        assert g.unknown_ops == (), spec.plan
        # Slice/Transpose of the channel shuffle are copies (kind "concat"), nothing falls through to "other"
        assert "other" not in {layer.kind for layer in g.layers}, spec.plan
        if not any(b["type"] == "dead_branch" for b in plan.get("blocks", [])):
            assert cost.macs_per_exit(g)[-1] == plan["macs"], spec.plan  # the plan's MAC count is the model's
        kinds |= {layer.kind for layer in g.layers}
    assert {"conv", "dwconv", "linear", "act", "gap"} <= kinds


@pytest.mark.parametrize("name, published_mmacs", [("resnet8", 12.5), ("ds_cnn_s", 2.7),
                                                   ("mobilenet_v1_025_vww", 7.5), ("fc_autoencoder", 0.264)])
def test_mlperf_tiny_rebuilds_have_the_published_size(tmp_path, name, published_mmacs):
    spec = next(s for s in foreign_models.mlperf_tiny_specs() if s.plan == name)
    g = cost.from_onnx(foreign_models.export_onnx(spec, tmp_path / f"{name}.onnx")["path"])
    assert g.unknown_ops == ()
    assert cost.macs_per_exit(g)[-1] / 1e6 == pytest.approx(published_mmacs, rel=0.03)


def test_foreign_families_are_not_random_blocks():
    foreign = foreign_models.foreign_specs()
    assert {s.family for s in foreign} == {*foreign_models.TORCHVISION_FAMILIES, foreign_models.MLPERF_FAMILY}
    assert len(foreign) == 3 * len(foreign_models.TORCHVISION_FAMILIES) + len(foreign_models.MLPERF_TINY)
    assert foreign_models.RANDOM_FAMILY not in {s.family for s in foreign}


# ---------------------------------------------------------------------------------------------- synthetic device
def conv_bn(c_in, c_out, k=3):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out))


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")

    class DeadBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv_bn(16, 16), conv_bn(16, 16)

        def forward(self, x):
            y = self.a(x)
            return y + self.b(y) * 0.0

    class Concat(nn.Module):
        def __init__(self, from_input: bool):
            super().__init__()
            self.a, self.b, self.from_input = conv_bn(16, 16), conv_bn(16, 16), from_input

        def forward(self, x):
            return torch.cat((x if self.from_input else self.a(x), self.b(x)), 1)

    shape = (16, 16, 16)
    return {
        "conv": export(conv_bn(16, 16), shape, folder / "conv.onnx"),
        "conv_relu": export(nn.Sequential(conv_bn(16, 16), nn.ReLU()), shape, folder / "conv_relu.onnx"),
        "relu_conv": export(nn.Sequential(nn.ReLU(), conv_bn(16, 16)), shape, folder / "relu_conv.onnx"),
        "dead_branch": export(DeadBranch(), shape, folder / "dead_branch.onnx"),
        "concat_kernels": export(Concat(False), shape, folder / "concat_kernels.onnx"),
        "concat_input": export(Concat(True), shape, folder / "concat_input.onnx"),
        **{f"cout{c}": export(conv_bn(16, c), (16, 32, 32), folder / f"cout{c}.onnx") for c in (8, 9, 16)},
    }


@pytest.mark.parametrize("device", list(DEVICES))
def test_an_activation_after_a_conv_is_fused_but_not_before_it(small_models, device):
    d = DEVICES[device]
    assert len(cost.from_onnx(small_models["conv_relu"]).layers) == 2
    assert device_latency(d, small_models["conv_relu"]) == pytest.approx(device_latency(d, small_models["conv"]))
    assert device_latency(d, small_models["relu_conv"]) > device_latency(d, small_models["conv"]) + 0.9 * d.call_s


@pytest.mark.parametrize("device", list(DEVICES))
def test_a_zero_branch_and_an_in_place_concat_are_free(small_models, device):
    d = DEVICES[device]
    assert device_latency(d, small_models["dead_branch"]) == pytest.approx(device_latency(d, small_models["conv"]))
    costs = {}
    for name in ("concat_kernels", "concat_input"):
        g = cost.from_onnx(small_models[name])
        per_layer = d.layer_costs(g, synthetic.OnnxInfo(small_models[name]))
        costs[name] = next(c for layer, c in zip(g.layers, per_layer) if layer.kind == "concat")
    assert costs["concat_kernels"] == 0.0   # both inputs written by kernels straight into the concat's buffer
    assert costs["concat_input"] >= d.call_s  # the input has to be copied


def test_channels_are_padded_to_the_vector_width(small_models):
    d = DEVICES["simd_cpu"]  # 8-wide vectors: 9 output channels compute as 16
    t8, t9, t16 = (device_latency(d, small_models[f"cout{c}"]) for c in (8, 9, 16))
    assert t9 > 1.6 * t8
    assert t9 == pytest.approx(t16, rel=0.1)


@pytest.mark.parametrize("device", list(DEVICES))
def test_measurement_noise_is_lognormal_at_the_stated_level(device):
    d = DEVICES[device]
    assert 0.05 <= d.noise <= 0.15
    rng = np.random.default_rng(0)
    logs = np.log([d.measure_s(2e-3, rng) / 2e-3 for _ in range(4000)])
    assert np.std(logs) == pytest.approx(d.noise, rel=0.05)
    assert abs(np.median(logs)) < 3 * d.noise / math.sqrt(len(logs))  # median-preserving
