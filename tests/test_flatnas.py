"""FlatNAS end to end with tiny settings: flatness and OOD fields in the archive, the params cap on every member."""
import json
import shutil
from dataclasses import replace

import pytest

from edgenas import api
from edgenas.search.flatnas import FlatnasConfig, FlatnasMethod
from tests.tiny_settings import TINY

PARAMS_CAP = 40_000
# the first test builds flat_run (and tiny_run if no other test has): the longest setup of the suite
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def flat_run(tiny_run, tmp_path_factory):
    cfg = replace(TINY, method="flatnas", finetune_members="all",
                  flatnas=FlatnasConfig(draws=3, finetune_epochs=1, ood_samples=30, ood_severities=(1, 5),
                                        max_params=PARAMS_CAP))
    out = tmp_path_factory.mktemp("flatnas") / "run"
    out.mkdir()
    # TINY's supernet settings and seed: the supernet this search would train is tiny_run's (trained once)
    shutil.copy(tiny_run[0] / "supernet.pt", out / "supernet.pt")
    (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "versions": {}}))
    return out, api.search(config=cfg, out=out, method="flatnas", resume=True)


@pytest.mark.e2e
def test_flatnas_archive_has_flatness_and_corruption_accuracy(flat_run):
    out, result = flat_run
    records = [json.loads(line) for line in (out / "archive.jsonl").read_text().splitlines()]
    for r in records:
        assert r["flatness"] >= 0.0
        assert 0.0 <= r["ood_accuracy"] <= 1.0
        assert len(r["ood_per_corruption"]) == 15
    assert json.loads((out / "pareto.json").read_text())["method"] == "flatnas"
    assert "corruption" in (out / "report.md").read_text()


@pytest.mark.e2e
def test_flatnas_members_are_finetuned_with_sam_and_re_measured(flat_run):
    out, result = flat_run
    tuned = [json.loads(line) for line in (out / "finetuned.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in tuned) == sorted(m["id"] for m in result.pareto)
    for r in tuned:  # SAM, as the search fine-tunes FlatNAS candidates; flatness and OOD of the shipped weights
        assert r["weights"] == "finetuned" and r["finetune"]["optimizer"] == "sam"
        assert r["flatness"] >= 0.0 and len(r["ood_per_corruption"]) == 15
    archive = {r["id"]: r for r in map(json.loads, (out / "archive.jsonl").read_text().splitlines())}
    for m in result.pareto:  # the search's figures stay beside them
        assert m["inherited"]["flatness"] == archive[m["id"]]["flatness"]
        assert m["inherited"]["ood_accuracy"] == archive[m["id"]]["ood_accuracy"]


@pytest.mark.e2e
def test_flatnas_params_cap_holds_for_every_member(flat_run):
    _, result = flat_run
    assert result.pareto, "the tiny FlatNAS run found no member within the cap"
    for m in result.pareto:
        assert m["params"] <= PARAMS_CAP and m["feasible"]


def test_alpha_norm_is_recomputed_over_the_archive():
    method = FlatnasMethod(config=FlatnasConfig(alpha=0.5))
    records = [{"val_accuracy": 0.9, "flatness": 0.02, "params": 10, "flash_bytes": 40},
               {"val_accuracy": 0.7, "flatness": 0.06, "params": 20, "flash_bytes": 80}]
    method.refresh(records)
    assert method.alpha_norm == pytest.approx(0.2 / 0.04)
    f1, f2 = method.objectives(records[0])
    assert f1 == pytest.approx(0.5 * 0.1 + 0.5 * 5.0 * 0.02) and f2 == 10
