"""NACHOS search end to end on digits with tiny settings: run folder, budgets, resume after a kill, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.search.evaluate import predict_exits
from edgenas.search.runfolder import best_member, load_candidate
from edgenas.search.pareto import choose_best
from tests.tiny_settings import TINY, VOLATILE, stable


def read_archive(run: Path):
    return [json.loads(line) for line in (run / "archive.jsonl").read_text().splitlines()]


# tiny_run (conftest.py, one per session): a fresh TINY run, which fine-tunes the member `export --best` takes
# (finetune_members "best", the default)


@pytest.fixture(scope="module")
def tiny_run_resumed(tiny_run, tmp_path_factory):
    """tiny_run continued with --resume (one worker): every member fine-tuned."""
    out = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(tiny_run[0], out)
    return out, api.search(config=TINY, out=out, seed=0, resume=True, workers=1)


@pytest.mark.e2e
def test_tiny_search_writes_a_complete_run_folder(tiny_run):
    out, result = tiny_run
    for name in ("config.json", "archive.jsonl", "pareto.json", "pareto.png", "report.md", "supernet.pt"):
        assert (out / name).is_file(), name
    records = read_archive(out)
    assert len(records) == result.evaluations >= TINY.pop_size
    assert [r["id"] for r in records] == list(range(len(records)))
    from edgenas.spaces import create_space
    space = create_space("mbv3")  # the sandwich rule's largest and smallest subnets anchor the first population
    anchors = [space.largest(exits=True).to_dict(), space.smallest(exits=True).to_dict()]
    assert [records[0]["arch"], records[1]["arch"]] == json.loads(json.dumps(anchors))  # as stored: lists
    # exit_slots="policy": every candidate has a head at every slot; the threshold search decides what is deployed
    assert all(r["exits_in_genome"] == 3 for r in records)
    assert any(r["n_exits"] < 4 for r in records)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["pop_size"] == TINY.pop_size and "torch" in config["versions"]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["members"] == [m["id"] for m in result.pareto]
    for r in records:
        assert r["macs_expected"] <= r["macs_worst"] + 1e-6
        assert abs(sum(r["val_exit_rates"]) - 1) < 1e-9 and abs(sum(r["test_exit_rates"]) - 1) < 1e-9
        assert len(r["macs_per_exit"]) == r["n_exits"] == len(r["thresholds"]) + 1
        assert r["macs_per_exit"] == sorted(r["macs_per_exit"])
        lo, hi = r["val_accuracy_ci"]
        assert lo <= r["val_accuracy"] <= hi and r["n_val"] > 0 and r["n_test"] > 0
        # the guard: a deployed exit policy certifies its loss; the final exit alone loses nothing
        assert r["exit_loss_upper_bound"] <= TINY.evaluation.max_accuracy_drop + 1e-12
        assert any(r["active_exits"]) or r["exit_loss_upper_bound"] == 0.0
    for m in result.pareto:
        assert m["feasible"] and not m["violations"]
        assert (out / "checkpoints" / f"candidate_{m['id']}.pt").is_file()
    assert "| id |" in (out / "report.md").read_text()


@pytest.mark.e2e
def test_pareto_member_checkpoint_reproduces_its_test_accuracy(tiny_run):
    out, result = tiny_run
    from edgenas.data import load_dataset
    data = load_dataset("digits")
    for m in result.pareto:
        net, record, _ = load_candidate(out, m["id"])
        pred, taken = predict_exits(net, data.test.x)
        assert float((pred == data.test.y.numpy()).mean()) == pytest.approx(record["test_accuracy"], abs=1e-9)
        rates = np.bincount(taken, minlength=net.n_exits) / len(taken)
        assert rates.tolist() == pytest.approx(record["test_exit_rates"], abs=1e-9)


@pytest.mark.e2e
@pytest.mark.timeout(1200)  # waits up to 600 s for the killed search to start, then resumes it
def test_search_killed_then_resumed_gives_the_uninterrupted_archive(tiny_run, tmp_path):
    out_a, _ = tiny_run
    out_b = tmp_path / "killed"
    out_b.mkdir()
    for name in ("config.json", "supernet.pt"):  # tiny_run's settings and supernet: the kill falls among candidates
        shutil.copy(out_a / name, out_b / name)
    script = ("import sys, torch; torch.set_num_threads(1); from edgenas import api; "
              "from tests.tiny_settings import TINY; api.search(config=TINY, out=sys.argv[1], seed=0, resume=True)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(out_b)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    archive = out_b / "archive.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if archive.is_file() and len(archive.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the search finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(read_archive(out_b))
    assert 2 <= n_before < len(read_archive(out_a))
    result = api.search(config=TINY, out=out_b, seed=0, resume=True)
    assert result.new_evaluations == len(read_archive(out_a)) - n_before
    assert stable(read_archive(out_b)) == stable(read_archive(out_a))


def run_cli(args, capsys):
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize("args, message", [
    (["--target", "no-such-board"], "unknown target"),
    (["--latency", "fast"], "latency"),
    (["--sram", "32XB"], "32XB"),
    (["--sram", "1KB"], "impossible budgets"),
    (["--dataset", "cifar10:/no/such/dir"], "/no/such/dir"),
    (["--pop-size", "0"], "--pop-size"),
    (["--finetune-steps", "-1"], "--finetune-steps"),
    (["--method", "zodarts", "--finetune-steps", "10"], "--finetune-steps"),
    (["--finetune-members", "first"], "--finetune-members"),
])
def test_bad_search_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = run_cli(["search", "--out", str(out), *args], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not out.exists()


def test_malformed_target_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "board.toml"
    bad.write_text("name = 'board'\nclock_hz = [unclosed\n")
    code, err = run_cli(["search", "--target", str(bad), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err) == 1 and "board.toml" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_existing_run_needs_resume_and_matching_settings(tiny_run, capsys):
    out, _ = tiny_run
    code, err = run_cli(["search", "--out", str(out)], capsys)
    assert code == 2 and "--resume" in err[0]
    code, err = run_cli(["search", "--out", str(out), "--resume", "--seed", "3"], capsys)
    assert code == 2 and "differ" in err[0] and "seed" in err[0]


@pytest.mark.e2e
def test_unmeetable_accuracy_floor_reports_closest_candidates(tmp_path):
    from edgenas.errors import EdgenasError
    with pytest.raises(EdgenasError) as info:
        # one generation of two: every candidate misses the floor, so two are enough to report the closest
        api.search(config=replace(TINY, pop_size=2, n_gen=1), out=tmp_path / "run", seed=0, min_accuracy=1.0)
    assert info.value.exit_code != 0
    assert "no candidate meets the budgets" in info.value.problem and "accuracy by" in info.value.problem
    assert (tmp_path / "run" / "archive.jsonl").is_file()  # the evaluations are kept


@pytest.mark.e2e
@pytest.mark.toolchain
def test_cli_export_compile_profile_pipeline_agrees_with_onnxruntime(tiny_run, tmp_path, capsys, require_tools):
    """The README's pipeline on a searched member: export -> Cortex-M7 firmware -> QEMU, checked against ORT."""
    require_tools(("arm-none-eabi-gcc", "qemu-system-arm"), "gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm")
    out, result = tiny_run
    export_dir, fw_dir, prof = tmp_path / "export", tmp_path / "fw", tmp_path / "profile.json"
    assert cli_main(["export", str(out), "--best", "--out", str(export_dir)]) == 0
    exits = json.loads((export_dir / "exits.json").read_text())
    assert exits["meta"]["dataset"] == "digits" and (export_dir / "model.onnx").is_file()
    # the fine-tuned weights ship, and exits.json says so (export checks them against onnxruntime as it writes)
    assert exits["meta"]["weights"] == "finetuned" and exits["meta"]["finetune"]["steps"] == TINY.finetune.steps
    assert exits["fp32"]["exit_agreement_vs_torch"] == 1.0
    assert capsys.readouterr().out.startswith("--best: #")  # why this member, in one line
    assert cli_main(["compile", str(export_dir / "model.onnx"), "--target", "cortex-m7", "--out", str(fw_dir),
                     "--test-inputs", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] and report["n_test_inputs"] == 6 and report["target"] == "cortex-m7"
    assert cli_main(["profile", str(fw_dir), "--target", "cortex-m7", "--device", "qemu", "--out", str(prof)]) == 0
    profile = json.loads(prof.read_text())
    assert profile["check"]["passed"] and profile["check"]["exit_agreement"] == 1.0
    assert profile["n_inputs"] == 6 and profile["unit"] == "instructions"


def test_compile_and_profile_bad_input_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "nothing"
    code, err = run_cli(["compile", str(missing), "--out", str(tmp_path / "fw")], capsys)
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "fw").exists()
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"\x00not a protobuf at all")
    code, err = run_cli(["compile", str(corrupt), "--out", str(tmp_path / "fw")], capsys)
    assert code == 2 and len(err) == 1 and "bad.onnx" in err[0]
    assert not (tmp_path / "fw").exists()
    code, err = run_cli(["profile", str(tmp_path), "--device", "usb"], capsys)
    assert code == 2 and len(err) == 1


@pytest.mark.e2e
def test_export_of_a_missing_or_corrupt_run_or_bad_candidate_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    out, result = tiny_run
    dest = tmp_path / "export"
    code, err = run_cli(["export", str(tmp_path / "no-run"), "--out", str(dest)], capsys)
    assert code == 2 and len(err) == 1 and "not found" in err[0]
    code, err = run_cli(["export", str(out), "--candidate", "9999", "--out", str(dest)], capsys)
    assert code == 2 and len(err) == 1 and "9999" in err[0]
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    member = result.pareto[0]["id"]
    (broken / "checkpoints" / f"candidate_{member}.pt").write_bytes(b"not a checkpoint")
    code, err = run_cli(["export", str(broken), "--candidate", str(member), "--out", str(dest)], capsys)
    assert code == 2 and len(err) == 1 and "corrupt" in err[0]
    (broken / "pareto.json").write_text("{not json")
    code, err = run_cli(["export", str(broken), "--out", str(dest)], capsys)
    assert code == 2 and len(err) == 1 and "pareto.json" in err[0]
    assert not dest.exists()


# ------------------------------------------------------------------------------------------ fine-tuned members
@pytest.mark.e2e
def test_a_new_run_finetunes_the_member_best_exports_and_resume_the_rest(tiny_run, tiny_run_resumed):
    out, result = tiny_run
    inherited_view = [{**m, **m.get("inherited", {}), "weights": "inherited"} for m in result.pareto]
    first = choose_best(inherited_view)[0]  # what --best took on the search's figures
    assert [r["id"] for r in read_archive_lines(out / "finetuned.jsonl")] == [first["id"]]
    assert best_member(out)[0]["id"] == first["id"] and best_member(out)[0]["weights"] == "finetuned"
    for m in result.pareto:  # every member is exportable: the others with their inherited weights
        _, record, _ = load_candidate(out, m["id"])
        assert record["weights"] == ("finetuned" if m["id"] == first["id"] else "inherited")
    if len(result.pareto) > 1:
        assert "--resume" in (out / "report.md").read_text()
    resumed_out, resumed = tiny_run_resumed
    assert resumed.new_evaluations == 0 and all(m["weights"] == "finetuned" for m in resumed.pareto)
    a = torch.load(out / "checkpoints" / f"candidate_{first['id']}.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed_out / "checkpoints" / f"candidate_{first['id']}.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the member fine-tuned first is not trained again


@pytest.mark.e2e
def test_finetuning_keeps_architecture_and_exit_placement_and_changes_the_weights(tiny_run_resumed):
    from edgenas import cost
    from edgenas.nn.early_exit import deployed_network
    from edgenas.spaces import create_space
    out, result = tiny_run_resumed
    space = create_space("mbv3")
    archive = {r["id"]: r for r in read_archive(out)}
    supernet = space.supernet(1, 10)
    supernet.load_state_dict(torch.load(out / "supernet.pt", weights_only=True))
    assert json.loads((out / "pareto.json").read_text())["weights"] == "finetuned"
    assert sorted(r["id"] for r in read_archive_lines(out / "finetuned.jsonl")) == sorted(m["id"] for m in result.pareto)
    for m in result.pareto:
        a = archive[m["id"]]
        net, record, _ = load_candidate(out, m["id"])
        assert record["weights"] == "finetuned" and record["inherited"]["test_accuracy"] == a["test_accuracy"]
        assert record["active_exits"] == a["active_exits"] and record["truncated_after_exit"] == a["truncated_after_exit"]
        assert record["n_exits"] == a["n_exits"] == net.n_exits and len(record["thresholds"]) == net.n_exits - 1
        # the same network as the archived member's deployed one: parameter names and shapes, MACs, SRAM, flash
        arch = space.arch_from_dict(a["arch"])
        inherited = deployed_network(space.build(arch, supernet), a["active_exits"], a["thresholds"],
                                     a["truncated_after_exit"])
        shapes = lambda n: {k: tuple(v.shape) for k, v in n.state_dict().items()}  # noqa: E731
        assert shapes(net) == shapes(inherited)
        assert record["macs_per_exit"] == a["macs_per_exit"] and record["flash_bytes"] == a["flash_bytes"]
        assert record["peak_sram_bytes"] == a["peak_sram_bytes"]
        assert cost.macs_per_exit(cost.from_torch(net)) == a["macs_per_exit"]
        # ... with other weights: the backbone trained
        changed = [k for k, v in net.state_dict().items() if "segments" in k and v.is_floating_point()
                   and not torch.equal(v, inherited.state_dict()[k])]
        assert changed


def read_archive_lines(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.e2e
def test_resume_finetunes_the_missing_members_to_the_same_weights(tiny_run_resumed, tmp_path):
    """A run stopped after fine-tuning one member: --resume (here with two workers instead of one) fine-tunes the
    others to exactly the weights and figures of the uninterrupted run. (How many members a tiny run has depends on
    the CPU's floating point: with one, the run is stopped before it fine-tuned any.)"""
    out, result = tiny_run_resumed
    assert len(result.pareto) >= 1
    copy = tmp_path / "stopped"
    shutil.copytree(out, copy)
    lines = (copy / "finetuned.jsonl").read_text().splitlines(keepends=True)
    kept_lines = lines[:1] if len(result.pareto) >= 2 else []
    kept = {json.loads(line)["id"] for line in kept_lines}
    (copy / "finetuned.jsonl").write_text("".join(kept_lines))
    for m in result.pareto:
        if m["id"] not in kept:
            (copy / "checkpoints" / f"candidate_{m['id']}.pt").unlink()
    (copy / "pareto.json").unlink()
    resumed = api.search(config=TINY, out=copy, seed=0, resume=True, workers=2)
    assert resumed.new_evaluations == 0
    by_id = lambda rows: {r["id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}  # noqa: E731
    assert by_id(read_archive_lines(copy / "finetuned.jsonl")) == by_id(read_archive_lines(out / "finetuned.jsonl"))
    for m in result.pareto:
        a = torch.load(out / "checkpoints" / f"candidate_{m['id']}.pt", weights_only=True)["state_dict"]
        b = torch.load(copy / "checkpoints" / f"candidate_{m['id']}.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_finetune_steps_zero_ships_the_inherited_weights(tiny_run, tmp_path):
    from dataclasses import replace
    out, _ = tiny_run
    copy = tmp_path / "inherited"
    copy.mkdir()
    shutil.copy(out / "supernet.pt", copy / "supernet.pt")  # the search would train the same supernet
    cfg = replace(TINY, finetune=replace(TINY.finetune, steps=0))
    (copy / "config.json").write_text(json.dumps({**cfg.to_dict(), "versions": {}}))
    result = api.search(config=cfg, out=copy, seed=0, resume=True)
    assert not (copy / "finetuned.jsonl").exists()
    assert json.loads((copy / "pareto.json").read_text())["weights"] == "inherited"
    archive = {r["id"]: r for r in read_archive(copy)}
    for m in result.pareto:
        net, record, _ = load_candidate(copy, m["id"])
        assert record["weights"] == "inherited" and "inherited" not in record
        assert record["test_accuracy"] == archive[m["id"]]["test_accuracy"]
    assert "inherited (supernet) weights" not in (copy / "report.md").read_text()
