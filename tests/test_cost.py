"""Cost model: MACs, params, peak SRAM, latency and budgets on small nets whose numbers are worked out by hand,
and agreement with torch's FlopCounterMode and between the torch and ONNX front ends."""
import io
import warnings

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgenas import cost
from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import EarlyExitNet
from edgenas.targets import load_target, target_with_budgets

F32 = 4


# ------------------------------------------------------------------------------------------------ small nets
class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """expand 1x1 + BN + hardswish, depthwise 3x3 + BN + ReLU, squeeze-excite, project 1x1 + BN, + skip."""

    def __init__(self, c: int, e: int):
        super().__init__()
        h = c * e
        self.expand, self.bn1, self.act1 = nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.Hardswish()
        self.dw, self.bn2, self.act2 = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU()
        self.se = SqueezeExcite(h)
        self.project, self.bn3 = nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        h = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        return self.bn3(self.project(self.se(h))) + x


class TwoBranchConcat(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)


def mobile_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), InvertedResidual(8, 3),
                        TwoBranchConcat(8), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    with torch.no_grad():  # non-trivial BN statistics, so exporters cannot drop BN as an identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return net.eval()


def early_exit_net() -> EarlyExitNet:
    """seg0: conv 1->4 on 8x8; head0: ReLU, flatten, linear 256->3; seg1: conv 4->4; head1: flatten, linear 256->2."""
    segments = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1)), nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))]
    heads = [nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)), nn.Sequential(nn.Flatten(), nn.Linear(256, 2))]
    return EarlyExitNet(segments, heads, n_classes=2, input_shape=(1, 8, 8)).eval()


def torch_macs(module, x) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


def onnx_model(module, x, dynamo: bool) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False).model_proto
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=18)
    return onnx.load_from_string(buf.getvalue())


# ------------------------------------------------------------------------------------------------ MACs, params
def test_conv_macs_and_params_by_hand():
    # conv 3x3, 8 -> 16 channels, 16x16 output: 16*16 positions * 16 filters * (8*3*3) MACs; weights 16*8*9 + bias 16
    g = cost.from_torch(nn.Conv2d(8, 16, 3, padding=1), input_shape=(8, 16, 16))
    (layer,) = g.layers
    assert (layer.kind, layer.macs, layer.params) == ("conv", 16 * 16 * 16 * 8 * 9, 16 * 8 * 9 + 16)
    assert layer.out_shape == (16, 16, 16) and layer.in_shapes == ((8, 16, 16),)


def test_batchnorm_folds_into_the_conv_before_it():
    g = cost.from_torch(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
                        input_shape=(8, 16, 16))
    assert [layer.kind for layer in g.layers] == ["conv", "act"]
    assert g.layers[0].params == 16 * 8 * 9 + 16  # the folded BN becomes the conv's bias
    assert g.layers[1].inputs == (g.layers[0].output,)


def test_depthwise_grouped_and_linear_by_hand():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 3, padding=1, groups=2),
                        nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    g = cost.from_torch(net, input_shape=(8, 4, 4))
    assert [layer.kind for layer in g.layers] == ["dwconv", "conv", "reshape", "linear"]
    assert [layer.macs for layer in g.layers] == [16 * 8 * 9, 16 * 16 * 4 * 9, 0, 256 * 10]
    assert [layer.params for layer in g.layers] == [8 * 9 + 8, 16 * 4 * 9 + 16, 0, 2560 + 10]


@pytest.mark.parametrize("make, shape", [
    (mobile_net, (3, 32, 32)),
    (lambda: InvertedResidual(8, 4).eval(), (8, 8, 8)),
    (lambda: TwoBranchConcat(6).eval(), (6, 10, 10)),
])
def test_macs_agree_with_flop_counter(make, shape):
    net = make()
    g = cost.from_torch(net, input_shape=shape)
    assert cost.macs_per_exit(g) == [torch_macs(net, torch.zeros(1, *shape))]


class FunctionalNet(nn.Module):
    """Weights used through F.conv2d / F.linear, with the conv weight sliced (as a supernet does)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.fc_w, self.fc_b = nn.Parameter(torch.randn(10, 6)), nn.Parameter(torch.randn(10))

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.w[:6], None, 1, 1))
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1), self.fc_w, self.fc_b)


def test_functional_layers_with_sliced_weights():
    net = FunctionalNet().eval()
    g = cost.from_torch(net, input_shape=(3, 8, 8))
    assert [layer.kind for layer in g.layers] == ["conv", "act", "gap", "reshape", "linear"]
    assert (g.layers[0].macs, g.layers[0].params) == (6 * 64 * 27, 6 * 27)
    assert (g.layers[-1].macs, g.layers[-1].params) == (60, 70)
    assert cost.macs_per_exit(g) == [torch_macs(net, torch.zeros(1, 3, 8, 8))]


def test_layer_names_follow_module_paths():
    g = cost.from_torch(early_exit_net())
    assert [layer.name for layer in g.layers] == ["seg0/0", "head0/0", "head0/1", "head0/2", "seg1/0", "head1/0",
                                                  "head1/1"]
    names = [layer.name for layer in cost.from_torch(InvertedResidual(8, 3).eval(), input_shape=(8, 8, 8)).layers]
    assert names[:3] == ["seg0/expand", "seg0/act1", "seg0/dw"] and len(set(names)) == len(names)


def test_kinds_of_a_mobile_block():
    g = cost.from_torch(InvertedResidual(8, 3).eval(), input_shape=(8, 8, 8))
    assert [layer.kind for layer in g.layers] == ["conv", "act", "dwconv", "act", "gap", "conv", "act", "conv", "act",
                                                  "mul", "conv", "add"]
    assert g.layers[-1].inputs[1] == "input"  # the skip reads the block input


def test_params_are_deployed_params():
    net = mobile_net()
    g = cost.from_torch(net, input_shape=(3, 32, 32))
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    torch_params = sum(p.numel() for p in net.parameters())
    # BN's scale and shift (2C) disappear; convs without a bias gain one (C); the first conv already had one
    bias_free = sum(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is None)
    assert cost.total_params(g) == torch_params - sum(2 * b.num_features for b in bn) + bias_free


def test_early_exit_net_wiring_and_macs_per_exit_count_earlier_heads():
    net = early_exit_net()
    g = cost.from_torch(net)
    assert g.n_exits == 2 and g.input_shape == (1, 8, 8)
    assert [(layer.part, layer.index, layer.kind) for layer in g.layers] == [
        ("segment", 0, "conv"), ("head", 0, "act"), ("head", 0, "reshape"), ("head", 0, "linear"),
        ("segment", 1, "conv"), ("head", 1, "reshape"), ("head", 1, "linear")]
    assert g.layers[4].inputs == (g.segment_outputs[0],) and g.layers[1].inputs == (g.segment_outputs[0],)
    assert g.exit_outputs == (g.layers[3].output, g.layers[6].output)
    seg0, head0, seg1, head1 = 4 * 64 * 9, 256 * 3, 4 * 64 * 4 * 9, 256 * 2  # 4 output maps of 8x8
    assert cost.macs_per_exit(g) == [seg0 + head0, seg0 + head0 + seg1 + head1]
    assert cost.expected_macs(g, [0.25, 0.75]) == pytest.approx(0.25 * 3072 + 0.75 * 12800)
    full = torch_macs(lambda x: net.forward_all(x), torch.zeros(1, 1, 8, 8))
    assert cost.macs_per_exit(g)[-1] == full


def test_expected_macs_validates_rates():
    g = cost.from_torch(early_exit_net())
    for bad in ([1.0], [0.5, 0.6], [-0.5, 1.5]):
        with pytest.raises(EdgenasError, match="exit rates"):
            cost.expected_macs(g, bad)


def test_mbv3_space_nets_agree_with_flop_counter():
    from edgenas.spaces import create_space
    space = create_space("mbv3")
    net = space.build_empty(space.largest(exits=True), 3, 10).eval()
    g = cost.from_torch(net)
    assert g.n_exits == net.n_exits > 1
    assert cost.macs_per_exit(g)[-1] == torch_macs(lambda x: net.forward_all(x), torch.zeros(1, *net.input_shape))


def test_unsupported_module_raises_a_clear_error():
    for module, shape in ((nn.Sequential(nn.Conv2d(2, 2, 1), nn.Upsample(scale_factor=2)), (2, 4, 4)),
                          (nn.Sequential(nn.Flatten(), nn.LSTM(4, 4)), (2, 2))):
        with pytest.raises(EdgenasError, match=f"cannot cost module seg0/.* of type {type(module[1]).__name__}") as exc:
            cost.from_torch(module, input_shape=shape)
        assert "\n" not in str(exc.value)


def test_shape_mismatch_names_the_part():
    with pytest.raises(EdgenasError, match=r"cannot run seg0 \(Sequential\) on an input of shape \(3, 8, 8\)"):
        cost.from_torch(nn.Sequential(nn.Conv2d(4, 4, 3)), input_shape=(3, 8, 8))


def test_tracing_leaves_batchnorm_statistics_and_mode_alone():
    net = mobile_net().train()
    before = [b.running_mean.clone() for b in net.modules() if isinstance(b, nn.BatchNorm2d)]
    cost.from_torch(net, input_shape=(3, 32, 32))
    after = [b.running_mean for b in net.modules() if isinstance(b, nn.BatchNorm2d)]
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, after))


# ------------------------------------------------------------------------------------------------ peak SRAM
def test_peak_sram_of_a_plain_chain():
    # input 8x16x16 (2048) -> conv 16x16x16 (4096) -> ReLU in place -> maxpool 16x8x8 (1024)
    g = cost.from_torch(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                        input_shape=(8, 16, 16))
    assert cost.sram_timeline(g) == [F32 * (2048 + 4096), F32 * 4096, F32 * (4096 + 1024)]
    assert cost.peak_sram_bytes(g) == F32 * 6144
    assert cost.peak_sram_bytes(g, bytes_per_element=1) == 6144


class ResidualBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x))) + x


def test_peak_sram_keeps_the_skip_live_across_the_block():
    # x, a = conv1(x), relu in place on a, b = conv2(a) while x waits for the add, c = b + x: 1024 elements each
    g = cost.from_torch(ResidualBlock(), input_shape=(16, 8, 8))
    n = 16 * 8 * 8 * F32
    assert cost.sram_timeline(g) == [2 * n, 2 * n, 3 * n, 3 * n]
    assert cost.peak_sram_bytes(g) == 3 * n


def test_peak_sram_keeps_the_segment_output_live_while_its_head_runs():
    g = cost.from_torch(early_exit_net())
    # seg0 conv: input 64 + h0 256. head0 ReLU cannot run in place (seg1 still needs h0): h0 + r 256;
    # flatten aliases r; linear: h0 + r + 3. seg1 conv: h0 + h1 256. head1: flatten aliases h1; linear: h1 + 2.
    assert cost.sram_timeline(g) == [F32 * v for v in (320, 512, 512, 515, 512, 256, 258)]
    assert cost.peak_sram_bytes(g) == F32 * 515


def test_flash_counts_weights_and_code():
    g = cost.from_torch(early_exit_net())
    params = (4 * 9 + 4) + (256 * 3 + 3) + (4 * 4 * 9 + 4) + (256 * 2 + 2)
    assert cost.total_params(g) == params
    assert cost.flash_bytes(g) == 4 * params
    # int8: plus the integer kernels' int32 bias and float32 scale per output channel, rows padded to 4 bytes
    extra = 4 * (7 + 3) + 3 * 7 + 4 * 7 + 2 * 7  # the first conv's rows are 9 weights: 3 bytes of padding
    assert cost.analysis.int8_constant_bytes(g) == extra
    assert cost.flash_bytes(g, 1, code_size_bytes=1000) == params + extra + 1000


# ------------------------------------------------------------------------------------------------ latency, report
def test_latency_follows_the_per_layer_formula_and_counts_earlier_heads():
    t = load_target("rpi4")  # a per-kind model with one shared cycles_per_byte (cortex-m7's fp32 model is macs-only)
    g = cost.from_torch(early_exit_net())
    pred = cost.predict_latency(g, t)
    conv = g.layers[0]  # conv 1->4: reads 64 floats, writes 256, holds 40 params
    c = t.latency.kinds["conv"]
    assert pred.layer_cycles[0] == pytest.approx(c.fixed_cycles + c.cycles_per_mac * conv.macs +
                                                 c.cycles_per_byte * 4 * (64 + 256 + 40))
    head0 = sum(pred.layer_cycles[1:4])
    lm = t.latency
    assert pred.per_exit_s[0] == pytest.approx((pred.layer_cycles[0] + head0 + lm.per_inference_cycles +
                                                lm.per_exit_cycles) / t.clock_hz)
    assert pred.per_exit_s[1] == pytest.approx((sum(pred.layer_cycles) + lm.per_inference_cycles +
                                                2 * lm.per_exit_cycles) / t.clock_hz)
    assert cost.expected_latency_s(pred, [1.0, 0.0]) == pytest.approx(pred.per_exit_s[0])
    assert pred.layer_cycles[2] == 0.0  # flatten: the shipped targets cost reshape at nothing
    rows = cost.layer_table(g, t)
    assert [r["name"] for r in rows] == [layer.name for layer in g.layers]
    assert rows[0]["bytes_moved"] == 4 * (64 + 256 + 40) and rows[0]["cycles"] == pred.layer_cycles[0]
    assert sum(r["latency_s"] for r in rows) == pytest.approx(sum(pred.layer_s))


def test_analyze_and_violations():
    t = target_with_budgets(load_target("cortex-m7"), sram="2KB", flash="1MB", macs="10k", latency="1s")
    g = cost.from_torch(early_exit_net())
    report = cost.analyze(g, t)
    assert report.macs_per_exit == (3072, 12800) and report.params == cost.total_params(g)
    assert report.activation_sram_bytes == F32 * 515
    from edgenas.cost.analysis import int8_constant_bytes, runtime_allowances
    code, ram = runtime_allowances(g, t, F32)  # tvm-static-c: kernel code, kernel scratch + driver state
    code8, ram8 = runtime_allowances(g, t, 1)
    assert code > 0 and ram > 0 and code8 == code and ram8 < ram
    assert report.peak_sram_bytes == F32 * 515 + ram + t.workspace_bytes
    assert report.peak_sram_bytes_int8 == 515 + ram8 + t.workspace_bytes
    assert report.flash_bytes_int8 == report.params + int8_constant_bytes(g) + code8 + t.code_size_bytes
    v = cost.violations(report, t.budgets)
    assert set(v) == {"sram_bytes", "macs"}
    value, limit, excess = v["macs"]
    assert (value, limit) == (12800, 10000) and excess == pytest.approx(0.28)
    # with most inputs leaving at the first exit, the expected MACs fit
    assert "macs" not in cost.violations(report, t.budgets, exit_rates=[0.9, 0.1])
    assert cost.analyze(g, t, dtype="int8").flash_bytes == report.flash_bytes_int8
    d = report.to_dict()
    assert d["macs_per_exit"] == [3072, 12800] and d["macs_worst"] == 12800
    assert d["latency_worst_s"] == report.latency_per_exit_s[-1]


# ------------------------------------------------------------------------------------------------ ONNX front end
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_front_end_agrees_with_torch(dynamo):
    net = mobile_net()
    x = torch.randn(1, 3, 32, 32)
    g_torch = cost.from_torch(net, input_shape=(3, 32, 32))
    g_onnx = cost.from_onnx(onnx_model(net, x, dynamo))
    assert g_onnx.n_exits == 1 and g_onnx.input_shape == (3, 32, 32)
    assert cost.macs_per_exit(g_onnx) == cost.macs_per_exit(g_torch)
    assert cost.total_params(g_onnx) == cost.total_params(g_torch)
    def kinds(g):
        return sorted(layer.kind for layer in g.layers if layer.kind in ("conv", "dwconv", "linear", "gap"))

    assert kinds(g_onnx) == kinds(g_torch)


def test_onnx_peak_sram_matches_torch_on_a_residual_block():
    block = ResidualBlock().eval()
    g = cost.from_onnx(onnx_model(block, torch.randn(1, 16, 8, 8), dynamo=False))
    assert cost.peak_sram_bytes(g) == cost.peak_sram_bytes(cost.from_torch(block, input_shape=(16, 8, 8)))


class ConfidenceExit(nn.Module):
    """early_exit_net with its first exit as a real branch (torch.cond), exported as an ONNX `If`."""

    def __init__(self, net: EarlyExitNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        h = self.net.segments[0](x)
        y0 = self.net.heads[0](h)

        def leave(y0, h):
            return y0[:, :2] * 1.0  # a new dense tensor: cond branches may not alias inputs or return strided views

        def go_on(y0, h):
            return self.net.heads[1](self.net.segments[1](h))

        return torch.cond(torch.sigmoid(y0[0, -1]) > 0.5, leave, go_on, (y0, h))


def test_onnx_if_exits_split_into_segments_and_heads():
    net = early_exit_net()
    g = cost.from_onnx(onnx_model(ConfidenceExit(net).eval(), torch.randn(1, 1, 8, 8), dynamo=True))
    g_torch = cost.from_torch(net)
    assert g.n_exits == 2
    assert cost.macs_per_exit(g) == cost.macs_per_exit(g_torch) == [3072, 12800]
    assert cost.total_params(g) == cost.total_params(g_torch)
    by_part = {(p, i): [layer.kind for layer in g.layers if (layer.part, layer.index) == (p, i) and
                        layer.kind in ("conv", "linear")] for p in ("segment", "head") for i in (0, 1)}
    assert by_part[("segment", 0)] == ["conv"] and by_part[("head", 0)] == ["linear"]
    assert by_part[("segment", 1)] == ["conv", "linear"]  # a plain final level has no separable head
    # the segment output stays live while exit 0's head and decision run, as in the torch graph
    assert cost.peak_sram_bytes(g) == cost.peak_sram_bytes(g_torch)


def _nested_if_model() -> onnx.ModelProto:
    """Three exits as nested Ifs, written with onnx.helper: conv 1->4 (8x8) | GAP, Gemm 4->3 | conv 4->4 |
    GAP, Gemm 4->3 | conv 4->8 | GAP, Gemm 8->3. Exit i is taken when max(logits_i) > 0."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = []

    def weight(name, *shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    def conv(i, src, c_in, c_out):
        return helper.make_node("Conv", [src, weight(f"w{i}", c_out, c_in, 3, 3), weight(f"b{i}", c_out)], [f"h{i}"],
                                pads=[1, 1, 1, 1], name=f"conv{i}")

    def head(i, src, c, n):
        return [helper.make_node("GlobalAveragePool", [src], [f"g{i}"], name=f"gap{i}"),
                helper.make_node("Flatten", [f"g{i}"], [f"f{i}"], name=f"flat{i}"),
                helper.make_node("Gemm", [f"f{i}", weight(f"fw{i}", n, c), weight(f"fb{i}", n)], [f"y{i}"], transB=1,
                                 name=f"fc{i}")]

    def decide(i):
        return [helper.make_node("ReduceMax", [f"y{i}"], [f"m{i}"], keepdims=0, name=f"max{i}"),
                helper.make_node("Greater", [f"m{i}", "zero"], [f"c{i}"], name=f"gt{i}")]

    def out(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3])

    def exit_(i):
        return helper.make_graph([helper.make_node("Identity", [f"y{i}"], [f"o{i}"])], f"exit{i}", [], [out(f"o{i}")])

    last = helper.make_graph([conv(2, "h1", 4, 8), *head(2, "h2", 8, 3)], "seg2", [], [out("y2")])
    level1 = helper.make_graph([conv(1, "h0", 4, 4), *head(1, "h1", 4, 3), *decide(1),
                                helper.make_node("If", ["c1"], ["r1"], then_branch=exit_(1), else_branch=last)],
                               "seg1", [], [out("r1")])
    main = helper.make_graph([conv(0, "x", 1, 4), *head(0, "h0", 4, 3), *decide(0),
                              helper.make_node("If", ["c0"], ["r0"], then_branch=exit_(0), else_branch=level1)],
                             "ee", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                             [out("r0")], initializer=[*inits, numpy_helper.from_array(np.float32(0), "zero")])
    model = helper.make_model(main, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def test_onnx_nested_if_gives_one_exit_per_level():
    g = cost.from_onnx(_nested_if_model())
    assert g.n_exits == 3 and g.segment_outputs == ("h0", "h1", "y2") and g.exit_outputs == ("y0", "y1", "y2")
    conv0, conv1, conv2 = 4 * 64 * 9, 4 * 64 * 4 * 9, 8 * 64 * 4 * 9
    head01, head2 = 4 * 3, 8 * 3
    assert cost.macs_per_exit(g) == [conv0 + head01, conv0 + conv1 + 2 * head01,
                                     conv0 + conv1 + conv2 + 2 * head01 + head2]
    parts = [(layer.name, layer.part, layer.index) for layer in g.layers if layer.kind in ("conv", "linear")]
    assert parts == [("conv0", "segment", 0), ("fc0", "head", 0), ("conv1", "segment", 1), ("fc1", "head", 1),
                     ("conv2", "segment", 2), ("fc2", "segment", 2)]
    assert cost.total_params(g) == (4 * 9 + 4) + (4 * 36 + 4) + (8 * 36 + 8) + 2 * (12 + 3) + (24 + 3)


def test_onnx_without_static_shapes_is_refused():
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(EdgenasError, match="no static shape"):
        cost.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_onnx_file_path_and_bad_files(tmp_path):
    block = ResidualBlock().eval()
    path = tmp_path / "block.onnx"
    onnx.save(onnx_model(block, torch.randn(1, 16, 8, 8), dynamo=False), str(path))
    assert cost.macs_per_exit(cost.from_onnx(str(path))) == cost.macs_per_exit(cost.from_torch(block, (16, 8, 8)))
    with pytest.raises(EdgenasError, match="not found"):
        cost.from_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(EdgenasError, match="cannot read .*junk.onnx as ONNX"):
        cost.from_onnx(tmp_path / "junk.onnx")


def test_latency_kinds_refine_convs_and_mark_fused_layers():
    from edgenas.cost.analysis import fused_layers, latency_kinds
    g = cost.from_torch(InvertedResidual(8, 3).eval(), input_shape=(8, 8, 8))
    kinds = latency_kinds(g)
    by = dict(zip((layer.name for layer in g.layers), kinds))
    assert by["seg0/expand"] == "conv1x1" and by["seg0/dw"] == "dwconv3"
    assert by["seg0/act1"] == "act_fused"  # Conv+activation: one kernel on onnxruntime and TVM
    assert kinds[-1] == "add_fused"        # the residual add after the project conv
    assert fused_layers(g) == {n for n, k in by.items() if k.endswith("_fused")}
    # with a channel block of 16 an 8-channel input is thin: onnxruntime convolves it on a separate path
    assert latency_kinds(g, 16)[0] == "conv_narrow"


def test_channel_block_pads_macs_and_activation_bytes():
    from edgenas.cost.analysis import layer_features
    g = cost.from_torch(InvertedResidual(8, 3).eval(), input_shape=(8, 8, 8))
    expand = g.layers[0]                  # 1x1 conv 8 -> c_out on 8 x 8
    c_out = expand.out_shape[0]
    pad = -(-c_out // 16) * 16
    calls, macs, b_in, b_out, b_w, *shape = layer_features(expand, 4, 16)
    assert (calls, b_w) == (1, expand.params * 4)
    assert macs == 16 * pad * 64 and b_in == 16 * 64 * 4 and b_out == pad * 64 * 4
    # shape terms: output channels, rows; 8 input channels is not a thin reduction, stride 1, an 8 x 8 plane
    assert shape == [c_out, c_out * 8, 0, 0, 0]
    assert layer_features(expand, 4) == layer_features(expand, 4, 1) == \
        (1, expand.macs, 8 * 64 * 4, c_out * 64 * 4, expand.params * 4, c_out, c_out * 8, 0, 0, 0)


def test_predict_latency_uses_refined_kinds_and_falls_back():
    from dataclasses import replace

    from edgenas.targets import KindCost
    t = load_target("x86-host")
    g = cost.from_torch(InvertedResidual(8, 3).eval(), input_shape=(8, 8, 8))
    base = cost.predict_latency(g, t).worst_s  # no refined entries: conv1x1 -> conv, act_fused -> act, ...
    free = KindCost(0.0, 0.0, 0.0)
    t2 = replace(t, latency=replace(t.latency, kinds={**t.latency.kinds, "act_fused": free}))
    n_fused = sum(k == "act_fused" for k in __import__("edgenas.cost.analysis", fromlist=["x"]).latency_kinds(g))
    act = t.latency.kinds["act"]
    assert n_fused >= 1 and cost.predict_latency(g, t2).worst_s < base - n_fused * act.fixed_cycles / t.clock_hz * 0.99
