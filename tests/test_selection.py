"""Which Pareto member `--best` exports, and the intervals and marks the reports show for it."""
import json
from types import SimpleNamespace

import pytest
import torch

from edgenas.errors import EdgenasError
from edgenas.nn.early_exit import deployed_network
from edgenas.search.report import accuracy_cell, write_pareto_plot, write_report
from edgenas.search.runfolder import best_member, checkpoint_dict, load_candidate
from edgenas.search.pareto import choose_best
from edgenas.fileio import atomic_torch_save
from edgenas.stats import accuracy_interval
from edgenas.targets import load_target

N_VAL = 360


def member(id_, correct, latency_ms, n_exits, **extra):
    acc = correct / N_VAL
    return {"id": id_, "val_accuracy": acc, "val_accuracy_ci": accuracy_interval(acc, N_VAL), "n_val": N_VAL,
            "latency_expected_s": latency_ms / 1e3, "n_exits": n_exits, "feasible": True, **extra}


def test_one_image_behind_the_best_is_a_tie_won_by_the_cheaper_member():
    best, cheaper = member(7, 331, 5.0, 2), member(12, 330, 4.0, 2)
    chosen, reason = choose_best([best, cheaper])
    assert chosen is cheaper
    assert reason == ("#12: cheapest of 2 members within the 95 % interval of the best validation accuracy "
                      "(#7, 91.9 %, lower bound 88.6 %); has 2 exits")


def test_within_the_interval_a_member_with_exits_beats_a_cheaper_one_without():
    best, no_exits, with_exits = member(3, 331, 5.0, 1), member(4, 331, 2.0, 1), member(5, 330, 4.0, 3)
    chosen, reason = choose_best([best, no_exits, with_exits])
    assert chosen is with_exits
    assert reason.startswith("#5: the only member with exits among 3 within the 95 % interval")
    assert reason.endswith("; has 3 exits")


def test_a_clearly_better_member_wins_over_a_cheaper_one():
    best, cheap = member(1, 359, 10.0, 1), member(2, 300, 1.0, 2)   # 99.7 % (lower bound 98.5 %) vs 83.3 %
    chosen, reason = choose_best([cheap, best])
    assert chosen is best
    assert reason == ("#1: no other member within the 95 % interval of the best validation accuracy "
                      "(its own, 99.7 %, lower bound 98.5 %); no early exits")


def test_a_single_member_needs_no_interval_and_an_old_archive_says_what_to_do():
    old = {"id": 0, "val_accuracy": 0.9, "latency_expected_s": 1e-3, "n_exits": 1}
    assert choose_best([old]) == (old, "#0: the only Pareto member")
    with pytest.raises(EdgenasError, match="predates"):
        choose_best([old, {**old, "id": 1}])


def test_best_member_loads_as_its_truncated_checkpoint(tmp_path):
    """A run folder by hand: the chosen member was cut after exit 2, and load_candidate re-applies the cut."""
    from edgenas.spaces import create_space
    space = create_space("mbv3")
    arch = space.smallest(True)
    torch.manual_seed(0)
    full = space.build(arch, space.supernet(1, 10)).eval()
    truncated = member(1, 330, 2.0, 2, arch=arch.to_dict(), active_exits=[True, False, True], thresholds=[0.5],
                       truncated_after_exit=2, description="smallest, cut after exit 2")
    plain = member(0, 331, 3.0, 1, arch=arch.to_dict(), active_exits=[False] * 3, thresholds=[],
                   truncated_after_exit=None, description="smallest, no exits")
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "digits"}))
    (tmp_path / "pareto.json").write_text(json.dumps({"members": [0, 1]}))
    (tmp_path / "archive.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (plain, truncated)))
    for r in (plain, truncated):
        net = deployed_network(full, r["active_exits"], r["thresholds"], r["truncated_after_exit"])
        atomic_torch_save(tmp_path / "checkpoints" / f"candidate_{r['id']}.pt",
                          checkpoint_dict("mbv3", 10, 1, {**r, "weights": "inherited"}, net))
    record, reason = best_member(tmp_path)
    assert record["id"] == 1 and reason.startswith("#1: cheapest of 2 members")
    net, loaded, _ = load_candidate(tmp_path)
    assert loaded["id"] == 1 and net.n_exits == 2 and net.thresholds == [0.5]
    x = torch.rand(4, *full.input_shape)
    with torch.no_grad():
        assert torch.allclose(net.forward_all(x)[0][-1], full.forward_all(x)[0][2])


def test_report_shows_intervals_and_the_best_rule_and_the_plot_is_written(tmp_path):
    target = load_target("cortex-m7")
    r = member(4, 331, 2.0, 2, test_accuracy=0.95, test_accuracy_ci=[0.93, 0.97], test_exit_rates=[0.5, 0.5],
               macs_expected=1e5, macs_worst=2e5, latency_worst_s=3e-3, peak_sram_bytes=2048, flash_bytes=4096,
               description="tiny")
    assert accuracy_cell(r, "test") == "95.0 [93.0, 97.0]"
    assert accuracy_cell({"val_accuracy": 0.9}, "val") == "90.0"
    cfg = SimpleNamespace(method="nachos", dataset="digits", evaluation=SimpleNamespace(dtype="float32"))
    write_report(tmp_path / "report.md", cfg, target, target.budgets, [r], [r], 0.5)
    text = (tmp_path / "report.md").read_text()
    assert "| 4 | 95.0 [93.0, 97.0] | - | - | 91.9 [88.6, 94.5] |" in text  # a float32 run: no int8 figures
    assert "`edgenas export --best` takes #4: the only Pareto member" in text
    write_pareto_plot(tmp_path / "pareto.png", [r], [r], target.budgets, target.name)
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
