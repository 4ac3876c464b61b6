"""NACHOS search end to end on digits with tiny settings: run folder, budgets, resume after a kill, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgenas import api
from edgenas.cli import main as cli_main
from edgenas.search.evaluate import EvaluationConfig, predict_exits
from edgenas.search.driver import SearchConfig, load_candidate
from edgenas.train.exits import ExitTrainingConfig
from edgenas.train.supernet import SupernetConfig

TINY = SearchConfig(dataset="digits", pop_size=4, n_gen=2,
                    supernet=SupernetConfig(steps=12, batch_size=128, n_random=1, lr_warmup_steps=2),
                    evaluation=EvaluationConfig(exits=ExitTrainingConfig(epochs=4, support_from_epoch=2), bn_batches=2))
VOLATILE = ("eval_seconds",)


def stable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def read_archive(run: Path):
    return [json.loads(line) for line in (run / "archive.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    result = api.search(config=TINY, out=out, seed=0)
    return out, result


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
def test_search_killed_then_resumed_gives_the_uninterrupted_archive(tiny_run, tmp_path):
    out_a, _ = tiny_run
    out_b = tmp_path / "killed"
    script = ("import sys, torch; torch.set_num_threads(1); from edgenas import api; from tests.test_search import TINY; "
              f"api.search(config=TINY, out=sys.argv[1], seed=0, resume=True)")
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
        api.search(config=TINY, out=tmp_path / "run", seed=0, min_accuracy=1.0)
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
