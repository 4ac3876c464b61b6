"""The `device` argument of training and evaluation (edgenas.runtime): "cpu" is today's path bit for bit, an evaluator
may be given another device after unpickling, and every net handed back is on the CPU. The CUDA tests run only where
torch sees a GPU."""
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgenas.data import load_dataset
from edgenas.search.evaluate import CandidateEvaluator, EvaluationConfig
from edgenas.search.finetune import InheritedCheckpoint, MemberFinetuner, MemberJobs
from edgenas.search.flatnas import FlatnasConfig, FlatnasEvaluator
from edgenas.spaces.mbv3 import Mbv3Space
from edgenas.targets import load_target
from edgenas.train.exits import ExitTrainingConfig
from edgenas.train.finetune import FinetuneConfig
from edgenas.train.supernet import SupernetConfig, train_supernet

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")

# small inputs, few steps: these tests check where things run and that results do not move, not accuracy
EVAL = EvaluationConfig(exits=ExitTrainingConfig(epochs=2, support_from_epoch=1, final_head_epochs=1,
                                                 max_train_samples=300), bn_batches=1)
FLAT = FlatnasConfig(draws=1, finetune_epochs=1, batch_size=128, ood_samples=16, ood_severities=(1,))
SUPERNET = SupernetConfig(steps=3, batch_size=32, n_random=1, lr_warmup_steps=1, warmup_fraction=0.34, threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def space():
    return Mbv3Space(resolutions=(8, 12))


@pytest.fixture(scope="module")
def supernet(digits, space):
    torch.manual_seed(0)
    return space.supernet(digits.in_channels, digits.n_classes).eval()


@pytest.fixture(scope="module")
def target():
    return load_target("cortex-m7")


def genome(space):
    """A candidate with intermediate exits, so the exit-head training and threshold paths run."""
    return space.encode(replace(space.smallest(exits=True), resolution=12))


def evaluator(space, supernet, digits, target, flat: bool = False, **kw):
    args = (space, supernet, digits, target, target.budgets, EVAL, 0)
    return FlatnasEvaluator(*args, flatnas=FLAT, **kw) if flat else CandidateEvaluator(*args, **kw)


def on_cpu(net) -> bool:
    return all(t.device.type == "cpu" for t in (*net.parameters(), *net.buffers()))


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("flat", [False, True], ids=["nachos", "flatnas"])
def test_explicit_cpu_device_gives_the_default_record_and_weights(space, supernet, digits, target, flat):
    record, net = evaluator(space, supernet, digits, target, flat)(genome(space))
    record_cpu, net_cpu = evaluator(space, supernet, digits, target, flat, device="cpu")(genome(space))
    assert record_cpu == record
    assert same_weights(net_cpu, net) and on_cpu(net_cpu)
    if flat:
        assert "flatness" in record and "ood_accuracy" in record


def test_device_set_after_unpickling_gives_the_same_record_and_device_copies_are_not_pickled(
        space, supernet, digits, target):
    ev = evaluator(space, supernet, digits, target, flat=True)
    record, _ = ev(genome(space))
    # a cached device copy of the data must stay in its process: this stand-in cannot even be pickled
    ev._data_on["cuda:0"] = lambda: None
    worker = pickle.loads(pickle.dumps(ev))
    assert worker._data_on == {}
    worker.device = "cpu"  # as a worker does with the device it was given
    again, net = worker(genome(space))
    assert again == record and on_cpu(net)


def test_member_jobs_pass_a_device_set_by_a_worker_to_their_evaluator(space, supernet, digits, target):
    ev = evaluator(space, supernet, digits, target)
    jobs = pickle.loads(pickle.dumps(MemberJobs(MemberFinetuner(ev, FinetuneConfig(), None, print),
                                                InheritedCheckpoint(ev, print))))
    jobs.device = "cuda:0"  # what search.executors does on a GPU worker (nothing runs here)
    assert jobs.device == "cuda:0"
    assert all(h.evaluator.device == "cuda:0" for h in jobs.handlers.values())


def test_member_finetuning_hands_back_cpu_weights_and_its_record_carries_the_checkpoint(space, supernet, digits,
                                                                                        target):
    """The checkpoint travels back with the record (a Ray worker on another machine writes nothing itself)."""
    from functools import partial

    from edgenas.search.runfolder import checkpoint_dict
    from edgenas.search.finetune import CHECKPOINT
    ev = evaluator(space, supernet, digits, target, device="cpu")
    record, _ = ev(genome(space))
    finetuner = MemberFinetuner(ev, FinetuneConfig(steps=2, batch_size=32), None,
                                partial(checkpoint_dict, space.name, digits.n_classes, digits.in_channels))
    fine, net = finetuner({**record, "id": 0})
    state = pickle.loads(pickle.dumps(fine))[CHECKPOINT]["state_dict"]
    assert on_cpu(net) and state.keys() == net.state_dict().keys()
    assert all(v.device.type == "cpu" and torch.equal(v, net.state_dict()[k]) for k, v in state.items())


def test_supernet_trained_with_device_cpu_equals_the_default_and_ends_on_the_cpu(space, digits):
    nets = []
    for kw in ({}, {"device": "cpu"}):
        torch.manual_seed(123)  # the initial weights
        net = space.supernet(digits.in_channels, digits.n_classes)
        train_supernet(space, net, digits, SUPERNET, seed=5, **kw)
        assert on_cpu(net) and not net.training
        nets.append(net)
    assert same_weights(*nets)


@needs_cuda
def test_cuda_evaluation_matches_the_cpu_up_to_float_noise_and_hands_back_cpu_nets(space, supernet, digits, target):
    record, _ = evaluator(space, supernet, digits, target, flat=True)(genome(space))
    record_gpu, net = evaluator(space, supernet, digits, target, flat=True, device="cuda:0")(genome(space))
    assert on_cpu(net) and on_cpu(supernet)
    assert record_gpu.keys() == record.keys()
    # the candidate does not depend on the device; trained figures (and with them the exit policy, so the deployed
    # net's cost) may differ: GPU kernels round differently (TF32 convolutions, atomics in some backward passes)
    for k in ("key", "genome", "arch", "n_val", "n_test"):
        assert record_gpu[k] == record[k], k
    assert abs(record_gpu["val_accuracy_no_exit"] - record["val_accuracy_no_exit"]) <= 0.1


@needs_cuda
def test_cuda_supernet_training_ends_on_the_cpu_close_to_the_cpu_run(space, digits):
    nets = []
    for device in ("cpu", "cuda:0"):
        torch.manual_seed(123)
        net = space.supernet(digits.in_channels, digits.n_classes)
        history = train_supernet(space, net, digits, SUPERNET, seed=5, device=device)
        assert on_cpu(net) and not net.training and all(np.isfinite(history))
        nets.append(net)
    a, b = (n.state_dict() for n in nets)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-2, atol=1e-3) for k in a)  # same start, 3 steps


def test_device_specs_resolve_to_canonical_names_or_a_one_line_error():
    from edgenas.errors import EdgenasError
    from edgenas.runtime import resolve_device
    assert resolve_device(None) == resolve_device("CPU") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad, fragment in (("tpu", "unknown --device"), ("cuda:x", "not a GPU index")):
        with pytest.raises(EdgenasError, match=fragment):
            resolve_device(bad)
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda:0"
    else:
        with pytest.raises(EdgenasError, match="--device cuda:0: .*(sees no GPU|without CUDA)"):
            resolve_device("cuda:0")
