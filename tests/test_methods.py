"""The search-method registry (search.methods): a new method is one registered class; options of another method are
refused; NACHOS searches the nb201 space through the same space interface as mbv3."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import deployed_network
from edgenas.search import methods
from edgenas.search.methods import option, register_method
from edgenas.search.runfolder import ARCHIVE, CONFIG, PARETO, checkpoint_dict, load_candidate
from edgenas.spaces import create_space
from tests.tiny_settings import TINY


@dataclasses.dataclass(frozen=True)
class RandomOptions:
    draws: int | None = option("random: how many architectures to draw.", type=int)


class RandomMethod:
    """Random search, as small as a method gets: draw architectures, keep the one with the fewest parameters (no
    training: its weights are the untrained ones), write it as the run's one member."""
    name = "random-toy"
    Options = RandomOptions
    spaces = ("mbv3", "nb201")

    def __init__(self, options=None):
        self.options = options or RandomOptions()

    def run_label(self):
        return self.name

    def run(self, problem, folder, executor, ui):
        from edgenas.data import load_dataset
        space = create_space(problem.space or self.spaces[0])
        data = load_dataset(problem.dataset)
        rng = np.random.default_rng(problem.seed)
        archs = [space.decode(space.sample(rng)) for _ in range(self.options.draws or 4)]
        nets = [space.build_empty(a, data.in_channels, data.n_classes) for a in archs]
        best = min(range(len(nets)), key=lambda i: sum(p.numel() for p in nets[i].parameters()))
        record = {"id": 0, "key": archs[best].describe(), "arch": archs[best].to_dict(),
                  "description": archs[best].describe(), "active_exits": [False] * (nets[best].n_exits - 1),
                  "thresholds": [], "truncated_after_exit": None, "val_accuracy": 0.0, "latency_expected_s": 0.0,
                  "n_exits": 1, "weights": "untrained"}
        folder.path.mkdir(parents=True)
        folder.write_json(CONFIG, {"method": self.name, "dataset": problem.dataset, "target": problem.target})
        folder.rewrite_archive([record])
        folder.write_json(PARETO, {"members": [0]})
        deployed = deployed_network(nets[best], record["active_exits"], [])  # the backbone and its final exit
        folder.write_checkpoint(0, checkpoint_dict(space.name, data.n_classes, data.in_channels, record, deployed))
        return record

    def result_json(self, result):
        return result

    def print_result(self, result, console):
        console.print(result["description"], markup=False)


@pytest.fixture
def random_method():
    register_method(RandomMethod)
    yield RandomMethod
    methods.unregister_method(RandomMethod.name)


@pytest.mark.parametrize("space", ["mbv3", "nb201"])
def test_a_toy_method_is_one_registered_class_and_writes_a_deployable_run(random_method, tmp_path, space):
    out = tmp_path / "run"
    record = api.search(method="random-toy", dataset="digits", space=space, out=out, draws=3)
    assert json.loads((out / ARCHIVE).read_text())["id"] == 0
    net, loaded, config = load_candidate(out)          # what `edgenas export` reads
    assert loaded["description"] == record["description"] and config["method"] == "random-toy"
    assert net(torch.zeros(1, *net.input_shape))[0].shape == (1, 10)
    assert "random-toy" in methods.list_methods()


def test_an_option_of_another_method_is_refused(random_method):
    with pytest.raises(EdgenasError, match=r"--pop-size does not apply to --method random-toy.*nachos and flatnas"):
        api.search(method="random-toy", dataset="digits", pop_size=4)
    with pytest.raises(EdgenasError, match=r"--draws does not apply to --method nachos.*random-toy"):
        api.search(method="nachos", dataset="digits", draws=2)
    with pytest.raises(EdgenasError, match="does not search the space 'mbv3'"):
        api.search(method="zodarts", dataset="digits", space="mbv3")
    with pytest.raises(EdgenasError, match="fix the sizes with --C, --N and --resolution"):
        api.search(method="zodarts", dataset="digits", space="nb201:C=4")


@pytest.mark.parametrize("spec, message", [("nb201:C=4,N", "'N' in 'nb201:C=4,N' is not key=integer"),
                                           ("nb201:depth=2", "has a setting nb201 does not take"),
                                           ("resnet", "--method nachos does not search the space 'resnet'")])
def test_a_bad_space_spec_is_one_line_exit_2(spec, message, tmp_path, capsys):
    assert cli_main(["search", "--dataset", "digits", "--space", spec, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "nachos", "--epochs", "3"], "--epochs does not apply to --method nachos"),
    (["--method", "nachos", "--zo-variant", "darts1"], "--zo-variant does not apply to --method nachos"),
    (["--method", "zodarts", "--pop-size", "4"], "--pop-size does not apply to --method zodarts"),
    (["--method", "zodarts", "--generations", "2"], "--generations does not apply to --method zodarts"),
    (["--method", "zodarts", "--workers", "2"], "--workers does not apply to --method zodarts"),
    (["--method", "flatnas", "--C", "8"], "--C does not apply to --method flatnas"),
])
def test_cli_refuses_options_foreign_to_the_method(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["search", "--dataset", "digits", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()


def test_nb201_networks_cut_from_the_supernet_compute_its_single_path():
    """Nb201Space.build copies the supernet's weights: in training mode (batch statistics, as the supernet's BN) the
    built network's final logits are the supernet's on the same discrete network."""
    space = create_space("nb201", C=4, N=1, resolution=8)
    supernet = space.supernet(1, 3).train()
    rng = np.random.default_rng(0)
    x = torch.rand(6, 1, 8, 8)
    for _ in range(6):
        arch = space.decode(space.sample(rng))
        net = space.build(arch, supernet, head_seed=1).train()
        assert net.n_exits == 1 + sum(arch.exits)
        with torch.no_grad():
            torch.testing.assert_close(net.forward_all(x)[0][-1], supernet(x, arch), rtol=1e-5, atol=1e-5)
    assert space.largest(exits=True).exits == (True, True) and not any(space.smallest().exits)


@pytest.mark.e2e
def test_nachos_searches_the_nb201_space(tmp_path):
    # fine-tuning off: the members' inherited weights are enough to check the nb201 path (test_search fine-tunes)
    cfg = dataclasses.replace(TINY, space="nb201:C=4,N=1,resolution=8", pop_size=4, n_gen=1,
                              finetune=dataclasses.replace(TINY.finetune, steps=0))
    result = api.search(config=cfg, out=tmp_path / "run", seed=0, workers=1)
    assert result.pareto and all(m["description"].endswith(tuple(f"C4 N1 r8 exits={e}" for e in ("00", "01", "10", "11")))
                                 for m in result.pareto)
    net, record, _ = load_candidate(result.run_dir)
    assert record["arch"]["exits"] == [bool(b) for b in record["genome"][-2:]]
    assert net.n_exits == 1 + sum(record["active_exits"])
