"""Cost-model front ends on architectures outside the search spaces (issue 14): torchvision families and MLPs get
known kinds and exact MACs, shapes that need constant folding (ShuffleNetV2's channel split) are found, grouped
convolutions carry their groups, conv/pool layers carry kernel and stride in both front ends, and elementwise ops a
runtime that folds constants does not compute (x + 0, x * 1, x * 0 and the branch feeding it) are layers marked
`folded`: MACs, params and SRAM count them, only a latency model of a folding runtime skips them."""
import dataclasses
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper, shape_inference
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgenas import cost
from edgenas.cost.onnx_graph import missing_shapes, static_shapes
from edgenas.targets import load_target

FAMILIES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet0_5", "squeezenet1_1", "resnet18",
            "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5")
SIDE = 32


def export(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=18)
    return onnx.load_from_string(buf.getvalue())


def family(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=10).eval()


def torch_macs(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------------------ foreign families
@pytest.mark.parametrize("name", FAMILIES)
def test_foreign_family_gets_known_kinds_and_exact_macs(name):
    net, x = family(name), torch.randn(1, 3, SIDE, SIDE)
    g = cost.from_onnx(export(net, x))
    kinds = {layer.kind for layer in g.layers}
    assert "other" not in kinds and not g.unknown_ops
    assert cost.macs_per_exit(g)[-1] == torch_macs(net, x)
    # deployed params: BatchNorm folded into the conv before it (a bias per output channel)
    bn = sum(p.numel() for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    no_bias = sum(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is None)
    assert cost.total_params(g) == sum(p.numel() for p in net.parameters()) - bn + no_bias
    report = cost.analyze(g, load_target("x86-host"))
    assert report.latency_worst_s > 0 and report.peak_sram_bytes > 0


def test_shufflenet_shapes_come_from_constant_folding_and_names_stay_the_nodes():
    model = export(family("shufflenet_v2_x0_5"), torch.randn(1, 3, SIDE, SIDE))
    plain = shape_inference.infer_shapes(model, data_prop=True)
    assert missing_shapes(plain.graph, static_shapes(plain.graph))  # the Slices need the folded shape subgraph
    g = cost.from_onnx(model)
    nodes = {n.op_type: n.name for n in model.graph.node}
    by_name = {layer.name: layer for layer in g.layers}
    assert {n.name for n in model.graph.node} >= set(by_name)  # onnxruntime profiles map kernel names to layers
    split = by_name[nodes["Slice"]]
    assert split.kind == "concat" and split.out_shape[0] * 2 == split.in_shapes[0][0]  # a copy of half the channels
    shuffle = by_name[nodes["Transpose"]]
    assert shuffle.kind == "concat" and shuffle.out_shape == shuffle.in_shapes[0][:2][::-1] + shuffle.in_shapes[0][2:]
    assert by_name[nodes["Reshape"]].kind == "reshape"
    assert by_name[nodes["ReduceMean"]].kind == "gap"
    assert {(layer.kernel, layer.stride) for layer in g.layers if layer.kind == "pool"} == {(3, 2)}


def test_regnet_grouped_convs_carry_groups_macs_and_params():
    g = cost.from_onnx(export(family("regnet_x_400mf"), torch.randn(1, 3, SIDE, SIDE)))
    grouped = [layer for layer in g.layers if layer.groups > 1]
    assert len(grouped) == 22  # one 3 x 3 grouped conv per block
    for layer in grouped:
        c_in, (c_out, h, w) = layer.in_shapes[0][0], layer.out_shape
        assert layer.kind == "conv" and layer.kernel == 3 and c_in % layer.groups == 0
        assert layer.macs == c_out * h * w * (c_in // layer.groups) * 3 * 3
        assert layer.params == c_out * (c_in // layer.groups) * 3 * 3 + c_out
    assert {layer.stride for layer in grouped} == {1, 2}


# ------------------------------------------------------------------------------------------------ MLPs
def autoencoder() -> nn.Sequential:
    sizes = (640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("shape", [(1, 640), (1, 1, 640)])  # Gemm; MatMul + Add for a 3-d input
def test_fully_connected_autoencoder_is_linear_and_act_layers(shape):
    net = autoencoder()
    x = torch.randn(*shape)
    g = cost.from_onnx(export(net, x))
    assert [layer.kind for layer in g.layers] == ["linear" if isinstance(m, nn.Linear) else "act" for m in net]
    assert cost.macs_per_exit(g)[-1] == torch_macs(net, x) == sum(m.in_features * m.out_features for m in net
                                                                   if isinstance(m, nn.Linear))
    assert cost.total_params(g) == sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------------- kernel, stride, groups
def small_conv_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 5, padding=2, groups=8),                   # depthwise
                         nn.Conv2d(8, 16, (1, 3), stride=(1, 2), padding=(0, 1), groups=2),
                         nn.MaxPool2d(3, 2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


def test_kernel_stride_groups_from_both_front_ends():
    net = small_conv_net()
    expected = [("conv", 3, 2, 1), ("act", 1, 1, 1), ("dwconv", 5, 1, 8), ("conv", 3, 2, 2), ("pool", 3, 2, 1),
                ("pool", 2, 2, 1), ("gap", 1, 1, 1), ("reshape", 1, 1, 1), ("linear", 1, 1, 1)]
    for g in (cost.from_torch(net, input_shape=(3, 32, 32)), cost.from_onnx(export(net, torch.randn(1, 3, 32, 32)))):
        assert [(layer.kind, layer.kernel, layer.stride, layer.groups) for layer in g.layers] == expected


@pytest.mark.parametrize("end", ["smallest", "largest"])
def test_mbv3_space_nets_get_the_same_windows_from_both_front_ends(end):
    from edgenas.spaces import create_space

    space = create_space("mbv3")
    net = space.build_empty(getattr(space, end)(), 3, 10).eval()

    class FinalExit(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_all(x)[0][-1]

    def windows(g):
        return sorted((layer.kind, layer.kernel, layer.stride, layer.groups) for layer in g.layers
                      if layer.kind in ("conv", "dwconv", "pool"))

    g_torch = cost.from_torch(net)
    g_onnx = cost.from_onnx(export(FinalExit(), torch.zeros(1, *net.input_shape)))
    assert windows(g_torch) == windows(g_onnx)
    assert min(layer.kernel for layer in g_torch.layers if layer.kind == "dwconv") >= 3
    assert {layer.stride for layer in g_torch.layers if layer.kind in ("conv", "dwconv")} == {1, 2}
    assert all(layer.groups == layer.in_shapes[0][0] for layer in g_torch.layers if layer.kind == "dwconv")


# ------------------------------------------------------------------------------------------------ folded ops
def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def folding_model(extra_nodes, extra_inits, out: str) -> onnx.ModelProto:
    """x -> conv1 -> relu1 -> r1, then `extra_nodes` ending in tensor `out` -> relu_out -> y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), *extra_nodes,
             helper.make_node("Relu", [out], ["y"], name="relu_out")]
    inits = [_const("w1", rng.standard_normal((8, 8, 3, 3))), _const("w2", rng.standard_normal((8, 8, 1, 1))),
             *extra_inits]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def dead_branch_nodes(zero: str, zeros: str, one: str) -> list:
    """A NAS-Bench-201 'none' edge (conv2 -> relu2 -> * `zero`) added to the live branch r1, then + `zeros`,
    `one` *, / `one`, - `zeros`; with 0, 0, 1 every one of them is an identity or a product with zero."""
    return [helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Mul", ["r2", zero], ["z"], name="mul_zero"),
            helper.make_node("Add", ["z", "r1"], ["a1"], name="add_zero_branch"),
            helper.make_node("Add", ["a1", zeros], ["a2"], name="add_zeros"),
            helper.make_node("Mul", [one, "a2"], ["a3"], name="mul_one"),
            helper.make_node("Div", ["a3", one], ["a4"], name="div_one"),
            helper.make_node("Sub", ["a4", zeros], ["a5"], name="sub_zeros")]


def test_zero_branch_and_identity_elementwise_ops_are_marked_folded():
    folding = [helper.make_node("Constant", [], ["zero"], name="zero", value_float=0.0),
               *dead_branch_nodes("zero", "zeros", "one")]
    g = cost.from_onnx(folding_model(folding, [_const("zeros", np.zeros((1, 8, 1, 1))), _const("one", 1.0)], "a5"))
    # the same graph with constants that change values: what the front end emits without any folding
    computing = [helper.make_node("Constant", [], ["half"], name="half", value_float=0.5),
                 *dead_branch_nodes("half", "halves", "two")]
    unfolded = cost.from_onnx(folding_model(computing, [_const("halves", np.full((1, 8, 1, 1), 0.5)),
                                                        _const("two", 2.0)], "a5"))
    assert [layer.name for layer in g.layers] == ["conv1", "relu1", "conv2", "relu2", "mul_zero", "add_zero_branch",
                                                  "add_zeros", "mul_one", "div_one", "sub_zeros", "relu_out"]
    assert {layer.name for layer in g.layers if layer.folded} == \
        {"conv2", "relu2", "mul_zero", "add_zero_branch", "add_zeros", "mul_one", "div_one", "sub_zeros"}
    assert not any(layer.folded for layer in unfolded.layers)
    # marked, otherwise the layers an unfolded graph has: same kinds, inputs, shapes, MACs, params
    assert [dataclasses.replace(layer, folded=False) for layer in g.layers] == list(unfolded.layers)
    assert g.layers[5].kind == "add" and g.layers[5].inputs == ("z", "r1")
    conv_macs = 16 * 16 * 8 * 8 * 9
    assert cost.macs_per_exit(g) == [conv_macs + 16 * 16 * 8 * 8]  # the dead 1 x 1 conv2 is computed by TVM and ORT
    assert cost.total_params(g) == cost.total_params(unfolded)
    assert cost.peak_sram_bytes(g) == cost.peak_sram_bytes(unfolded)
    # only the latency model of a runtime that folds constants skips them
    t = load_target("x86-host")
    folds = dataclasses.replace(t, latency=dataclasses.replace(t.latency, folds_zero_ops=True))
    assert cost.predict_latency(g, t).per_exit_s == cost.predict_latency(unfolded, t).per_exit_s
    assert cost.predict_latency(g, folds).per_exit_s[0] < cost.predict_latency(g, t).per_exit_s[0]
    assert cost.predict_latency(unfolded, folds).per_exit_s == cost.predict_latency(unfolded, t).per_exit_s


def test_ops_that_change_values_are_not_marked():
    nodes = [helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
             helper.make_node("Mul", ["c2", "zero"], ["z"], name="mul_zero"),  # conv2 is also read by add_conv2
             helper.make_node("Add", ["r1", "z"], ["a1"], name="add_zero_branch"),
             helper.make_node("Add", ["a1", "c2"], ["a2"], name="add_conv2"),       # x + y of two activations
             helper.make_node("Mul", ["a2", "two"], ["m2"], name="mul_two"),
             helper.make_node("Add", ["m2", "half"], ["a3"], name="add_half"),
             helper.make_node("Sub", ["zeros", "a3"], ["a4"], name="negate"),      # 0 - x is not x
             helper.make_node("Mul", ["a4", "a4"], ["sq"], name="square"),
             helper.make_node("GlobalAveragePool", ["sq"], ["pooled"], name="gap"),
             helper.make_node("Add", ["pooled", "plane_zeros"], ["a5"], name="broadcast")]  # 1 x 1 -> 16 x 16
    inits = [_const("zero", 0.0), _const("two", 2.0), _const("half", 0.5), _const("zeros", np.zeros((1, 8, 1, 1))),
             _const("plane_zeros", np.zeros((1, 8, 16, 16)))]
    g = cost.from_onnx(folding_model(nodes, inits, "a5"))
    assert [layer.name for layer in g.layers] == ["conv1", "relu1", "conv2", "mul_zero", "add_zero_branch",
                                                  "add_conv2", "mul_two", "add_half", "negate", "square", "gap",
                                                  "broadcast", "relu_out"]
    assert {layer.name for layer in g.layers if layer.folded} == {"mul_zero", "add_zero_branch"}


def test_what_is_computed_from_a_zero_only_is_folded_and_stays_a_zero_through_relu():
    nodes = [helper.make_node("Mul", ["r1", "zero"], ["z"], name="mul_zero"),
             helper.make_node("Relu", ["z"], ["rz"], name="relu_zero"),          # relu(0) = 0
             helper.make_node("Add", ["rz", "r1"], ["a1"], name="add_zero"),    # still x + 0
             helper.make_node("Sigmoid", ["z"], ["s"], name="sigmoid_zero"),    # 0.5: a constant, not a zero
             helper.make_node("Add", ["a1", "s"], ["a2"], name="add_half")]     # x + 0.5 is computed
    g = cost.from_onnx(folding_model(nodes, [_const("zero", 0.0)], "a2"))
    assert [(layer.name, layer.folded) for layer in g.layers] == \
        [("conv1", False), ("relu1", False), ("mul_zero", True), ("relu_zero", True), ("add_zero", True),
         ("sigmoid_zero", True), ("add_half", False), ("relu_out", False)]


def test_matmul_with_a_zero_bias_keeps_the_bias_folded_into_the_linear_layer():
    # bias folding is a fusion every runtime does, whatever the bias's value: not a folded layer
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "bias"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "zero_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_const("w", np.ones((16, 4))), _const("bias", np.zeros(4))])
    g = cost.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert [(layer.name, layer.kind, layer.params, layer.folded) for layer in g.layers] == \
        [("matmul", "linear", 16 * 4 + 4, False)]


class ZeroOp(nn.Module):
    """NAS-Bench-201's 'none' edge as its supernet writes it."""

    def forward(self, x):
        return x.mul(0.)


def relu_conv_bn(c: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c))


class ZeroEdgeCell(nn.Module):
    """A NAS-Bench-201 cell with 'none' edges: node 2 only feeds the none edge 2 -> 3, so edge 1 -> 2 is dead too."""

    def __init__(self, c: int):
        super().__init__()
        self.e10, self.e20, self.e21 = relu_conv_bn(c, 3), ZeroOp(), relu_conv_bn(c, 1)
        self.e30, self.e31, self.e32 = ZeroOp(), nn.AvgPool2d(3, 1, 1, count_include_pad=False), ZeroOp()

    def forward(self, x):
        n1 = self.e10(x)
        n2 = self.e20(x) + self.e21(n1)
        return self.e30(x) + self.e31(n1) + self.e32(n2)


def test_nb201_cell_with_zero_edges_marks_exactly_the_dead_edges():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ZeroEdgeCell(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    g = cost.from_onnx(export(net, x))
    dead_edges = ("/1/e20/", "/1/e21/", "/1/e30/", "/1/e32/")  # the exporter may merge e30's x * 0 into e20's
    # every sum in the cell adds a zero branch to a live one; the none edges and edge 1 -> 2 only feed zeros
    expected = {layer.name for layer in g.layers if layer.name.startswith(dead_edges) or layer.kind == "add"}
    assert {layer.name for layer in g.layers if layer.kind == "add"} and \
        {layer.name for layer in g.layers if layer.name.startswith("/1/e21/")}
    assert {layer.name for layer in g.layers if layer.folded} == expected
    assert {layer.kind for layer in g.layers if not layer.folded} == {"conv", "act", "pool", "gap", "reshape",
                                                                       "linear"}
    assert cost.macs_per_exit(g) == [torch_macs(net, x)]  # the dead 1 x 1 conv is counted: the runtime runs it
