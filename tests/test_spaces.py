"""mbv3 space: genome bounds, decode/encode round trip over every gene value, subnet weight inheritance."""
import numpy as np
import pytest
import torch

from edgenas.errors import EdgenasError
from edgenas.spaces import create_space, list_spaces
from edgenas.nn.early_exit import deployed_network, drop_exits
from edgenas.spaces.mbv3 import DEPTHS, EXPANDS, KERNELS, MAX_DEPTH, N_STAGES, RESOLUTIONS, WIDTHS


@pytest.fixture(scope="module")
def space():
    return create_space("mbv3")


def test_registry_lists_mbv3_and_rejects_unknown():
    assert "mbv3" in list_spaces()
    with pytest.raises(EdgenasError, match="unknown search space 'nope'"):
        create_space("nope")


def test_bounds_match_option_lists(space):
    lo, hi = space.bounds
    assert np.all(lo == 0)
    expected = [len(RESOLUTIONS) - 1, len(WIDTHS) - 1]
    for _ in range(N_STAGES):
        expected += [len(DEPTHS) - 1] + [len(KERNELS) - 1] * MAX_DEPTH + [len(EXPANDS) - 1] * MAX_DEPTH
    expected += [1] * (N_STAGES - 1)
    assert hi.tolist() == expected


def test_every_value_of_every_gene_round_trips(space):
    """Walk each gene through its whole range on top of several bases: decode -> encode is the canonical genome."""
    rng = np.random.default_rng(0)
    lo, hi = space.bounds
    bases = [space.sample(rng) for _ in range(20)] + [hi.copy(), lo.copy()]
    seen = set()
    for base in bases:
        for j in range(space.n_var):
            for v in range(lo[j], hi[j] + 1):
                g = base.copy()
                g[j] = v
                arch = space.decode(g)
                canon = space.encode(arch)
                assert space.decode(canon) == arch
                assert np.array_equal(space.canonical(canon), canon)
                seen.add((j, v) if np.array_equal(space.canonical(g), g) else (j, v, "inactive"))
    # every value of every gene is reachable in an active position
    for j in range(space.n_var):
        for v in range(lo[j], hi[j] + 1):
            assert (j, v) in seen, (j, v)


def test_distinct_networks_have_distinct_keys(space):
    rng = np.random.default_rng(1)
    archs = {}
    for _ in range(3000):
        g = space.sample(rng)
        archs.setdefault(space.key(g), space.decode(g))
    assert len(set(archs.values())) == len(archs)


def test_sampling_reaches_every_value(space):
    rng = np.random.default_rng(2)
    samples = np.array([space.sample(rng) for _ in range(4000)])
    lo, hi = space.bounds
    for j in (0, 1, 2, space.n_var - 1):
        assert set(samples[:, j]) == set(range(lo[j], hi[j] + 1))


def test_out_of_bounds_and_wrong_length_rejected(space):
    g = space.sample(np.random.default_rng(3))
    bad = g.copy()
    bad[0] = 99
    with pytest.raises(EdgenasError, match="gene 0"):
        space.decode(bad)
    with pytest.raises(EdgenasError, match="genes"):
        space.decode(g[:-1])


@pytest.mark.parametrize("which", ["smallest", "largest", "random"])
def test_subnet_inherits_supernet_weights(space, which):
    torch.manual_seed(0)
    sup = space.supernet(1, 10).eval()
    # give BN non-trivial statistics so a wrong slice would show
    for m in sup.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    arch = {"smallest": space.smallest(True), "largest": space.largest(True),
            "random": space.decode(space.sample(np.random.default_rng(4)))}[which]
    net = space.build(arch, sup).eval()
    x = torch.rand(3, 1, arch.resolution, arch.resolution)
    with torch.no_grad():
        logits, conf = net.forward_all(x)
        ref = sup(x, arch)
    assert torch.allclose(logits[-1], ref, atol=1e-5)
    assert net.n_exits == 1 + sum(arch.exits)
    assert conf.shape == (3, sum(arch.exits))


def test_drop_exits_keeps_the_backbone_function(space):
    torch.manual_seed(0)
    sup = space.supernet(1, 10).eval()
    net = space.build(space.largest(True), sup).eval()
    x = torch.rand(2, 1, 32, 32)
    slim = drop_exits(net, [False, True, False], [0.5])
    assert slim.n_exits == 2
    with torch.no_grad():
        assert torch.allclose(slim.forward_all(x)[0][-1], net.forward_all(x)[0][-1])
        assert torch.allclose(slim.forward_all(x)[0][0], net.forward_all(x)[0][1])


def test_truncated_network_with_an_exit_head_as_final_head_costs_exports_and_reloads(space):
    """A policy cut after exit 2 of [on, off, on]: its ExitHead becomes the final head (without confidence row)."""
    from edgenas import cost
    from edgenas.export import export_stage_protos
    from edgenas.targets import load_target
    torch.manual_seed(0)
    arch = space.smallest(True)
    net = space.build(arch, space.supernet(1, 10)).eval()
    short = deployed_network(net, [True, False, True], [0.5], truncated_after_exit=2)
    assert short.n_exits == 2 and short.thresholds == [0.5]
    x = torch.rand(3, *net.input_shape)
    with torch.no_grad():
        assert torch.allclose(short.forward_all(x)[0][-1], net.forward_all(x)[0][2])
    target = load_target("cortex-m7")
    got, full = (cost.analyze(cost.from_torch(n), target) for n in (short, net))
    assert got.macs_per_exit[-1] < full.macs_per_exit[2] < full.macs_per_exit[-1] and got.params < full.params
    assert len(export_stage_protos(short)) == 2
    # what load_candidate does with a checkpoint: the same deployment of an empty network takes the state_dict
    reloaded = deployed_network(space.build_empty(arch, 1, 10), [True, False, True], [0.5], truncated_after_exit=2)
    reloaded.load_state_dict(short.state_dict())
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x)[0], short(x)[0])
