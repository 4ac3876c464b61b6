"""nb201 space: NAS-Bench-201 strings, derived early-exit networks, supernet, registry."""
import itertools

import numpy as np
import pytest
import torch

from edgenas import cost
from edgenas.errors import EdgenasError
from edgenas.spaces import create_space, list_spaces
from edgenas.spaces.nb201 import EDGES, EXAMPLE, OPS, Nb201Arch, Nb201NetConfig, arch_of, build_early_exit_net
from edgenas.spaces.nb201_supernet import Nb201Supernet


def test_example_string_parses_to_edge_order():
    arch = Nb201Arch.parse(EXAMPLE)
    assert EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
    assert arch.ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3",
                        "skip_connect")
    assert arch.to_string() == EXAMPLE


def test_string_round_trip_through_the_built_network():
    """parse -> build -> read the architecture back from the network -> to_string, for random connected cells."""
    rng = np.random.default_rng(0)
    space = create_space("nb201", C=4, N=1, resolution=8)
    for _ in range(25):
        text = space.decode(space.sample(rng)).arch.to_string()
        net = build_early_exit_net(text, n_classes=3, in_channels=1, resolution=8, C=4, N=1)
        assert arch_of(net).to_string() == text


@pytest.mark.parametrize("bad", [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|",                                         # 2 nodes
    "|conv_5x5~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",  # unknown op
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",  # repeat
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~2|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",  # future
    "nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",   # no bar
])
def test_malformed_strings_are_rejected_with_a_fix(bad):
    with pytest.raises(EdgenasError, match="nb201|op"):
        Nb201Arch.parse(bad)


def test_connectivity_and_useful_edges():
    assert not Nb201Arch.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|").is_connected()
    # node 1 is fed but feeds nothing: its edge is useless; the output is 3<-0 only
    arch = Nb201Arch.parse("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    assert arch.useful_edges() == ((3, 0),)
    # node 2 feeds the output but nothing reaches it
    arch = Nb201Arch.parse("|none~0|+|none~0|nor_conv_1x1~1|+|none~0|none~1|skip_connect~2|")
    assert not arch.is_connected()
    with pytest.raises(EdgenasError, match="no path from its input to its output"):
        build_early_exit_net(arch, 3, 1, 8, C=4, N=1)


def test_useless_edges_are_not_built():
    lean = build_early_exit_net("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", 3, 1, 8, C=4, N=1)
    skip = build_early_exit_net("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", 3, 1, 8, C=4, N=1)
    assert sum(p.numel() for p in lean.parameters()) == sum(p.numel() for p in skip.parameters())


@pytest.mark.parametrize("C,N,res,in_ch", [(4, 1, 8, 1), (8, 2, 16, 3), (4, 1, 28, 1)])
def test_derived_net_forward_shapes(C, N, res, in_ch):
    n_classes = 5
    net = build_early_exit_net(EXAMPLE, n_classes, in_ch, res, C=C, N=N).eval()
    x = torch.rand(6, in_ch, res, res)
    logits, conf = net.forward_all(x)
    assert [tuple(lg.shape) for lg in logits] == [(6, n_classes)] * 3
    assert conf.shape == (6, 2)
    feats = net.features(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(C, res, res), (2 * C, res // 2, res // 2),
                                                    (4 * C, res // 4, res // 4)]
    out, exit_idx = net(x)
    assert out.shape == (6, n_classes) and torch.all(exit_idx == 2)  # default thresholds never exit early
    # heads: intermediate ones output n_classes + 1 columns (confidence last)
    assert net.heads[0](feats[0]).shape == (6, n_classes + 1)
    assert net.input_shape == (in_ch, res, res)


def test_derived_net_is_eval_mode_friendly_and_costable():
    net = build_early_exit_net(EXAMPLE, 4, 1, 16, C=4, N=1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.track_running_stats and m.affine for m in bns)
    net.train()
    net.forward_all(torch.rand(8, 1, 16, 16))  # updates running statistics
    net.eval()
    x = torch.rand(1, 1, 16, 16)
    single = net.forward_all(x)[0][-1]
    batch = net.forward_all(torch.cat([x, torch.rand(3, 1, 16, 16)]))[0][-1][:1]
    assert torch.allclose(single, batch, atol=1e-5)  # eval output of a sample does not depend on its batch
    graph = cost.from_torch(net)
    macs = cost.macs_per_exit(graph)
    assert graph.n_exits == 3 and macs[0] < macs[1] < macs[2]


def test_resolution_must_survive_two_reductions():
    with pytest.raises(EdgenasError, match="multiple of 4"):
        build_early_exit_net(EXAMPLE, 3, 1, 18)


def test_supernet_edges_with_zero_probability_get_no_weight_gradient():
    """Op outputs are weighted by their probabilities: a 'none' edge (all other ops at 0) trains nothing."""
    torch.manual_seed(0)
    sn = Nb201Supernet(1, 3, C=4, N=1)
    probs = torch.zeros(len(EDGES), len(OPS))
    probs[torch.arange(len(EDGES)), torch.tensor([3, 1, 4, 1, 2, 0])] = 1.0
    x = torch.rand(5, 1, 8, 8)
    out = sn(x, probs)
    assert out.shape == (5, 3)
    # zero probability on every op of an edge makes the output independent of that edge's weights
    loss = out.sum()
    loss.backward()
    none_edge = sn.stages[0][0].edges[5]
    assert all(p.grad is None or torch.all(p.grad == 0) for p in none_edge.parameters())
    used_edge = sn.stages[0][0].edges[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in used_edge.parameters())


def test_registry_and_genome():
    assert "nb201" in list_spaces()
    space = create_space("nb201", C=4, N=1, resolution=8)
    lo, hi = space.bounds
    assert space.n_var == 8 and lo.tolist() == [0] * 8 and hi.tolist() == [4] * 6 + [1] * 2
    for g in itertools.islice(itertools.product(range(5), repeat=6), 0, 15625, 97):
        genome = [*g, g[0] % 2, g[1] % 2]
        assert space.encode(space.decode(genome)).tolist() == genome
    rng = np.random.default_rng(3)
    assert all(space.decode(space.sample(rng)).arch.is_connected() for _ in range(50))
    with pytest.raises(EdgenasError, match="6 op indices"):
        space.decode([0, 1, 2])


def test_net_config_rebuilds_the_same_network_from_its_record():
    cfg = Nb201NetConfig(Nb201Arch.parse(EXAMPLE), C=4, N=2, resolution=12)
    space = create_space("nb201")
    net_a = space.build_empty(space.arch_from_dict(cfg.to_dict()), in_channels=1, n_classes=3)
    net_b = cfg.build(1, 3)
    assert net_a.state_dict().keys() == net_b.state_dict().keys()
    assert net_a.input_shape == (1, 12, 12)
    with pytest.raises(EdgenasError, match="incomplete"):
        Nb201NetConfig.from_dict({"arch": EXAMPLE, "C": 4})


def test_derived_net_exports_to_onnx_with_if_exits(tmp_path):
    """The derived network goes through the project's export path: ORT agrees with PyTorch on logits and exits."""
    from edgenas.export import export_model
    torch.manual_seed(0)
    net = build_early_exit_net(EXAMPLE, 4, 1, 8, C=4, N=1, thresholds=[0.5, 0.6])
    net.train()
    net.forward_all(torch.rand(16, 1, 8, 8))
    net.eval()
    x = np.random.default_rng(0).random((24, 1, 8, 8), dtype=np.float32)
    y = np.arange(24) % 4
    report = export_model(net, tmp_path / "export", x, y, x[:16], cost.macs_per_exit(cost.from_torch(net)))
    assert report.n_exits == 3 and report.fp32_exit_agreement == 1.0 and report.fp32_max_abs_diff < 1e-4
    assert (tmp_path / "export" / "model.onnx").is_file()
