"""int8 accuracy of the Pareto members of an int8 search (`--dtype int8`), measured before the report is written.

Each member's deployable checkpoint (the weights `edgenas export` ships: fine-tuned or inherited) is quantised after
training as the export quantises it (train/ptq.py, calibrated on the first 256 train images, like the export) and its
early-exit accuracy measured with its fp32 thresholds and exit rule. Only the members, not every candidate: on
mnist5k, one thread, it took 0.05 s to 6.5 s per network (the largest mbv3 network the most), 40 to 80 % of the
candidate's own evaluation time for all but the smallest networks, which on every candidate would push `make demo`
(already near its time goal) well past it; the 16 or so members of the demo add seconds.

The figures go to int8.jsonl, one line per (member, weights), so a `--resume` measures only what changed (a member
fine-tuned since keeps its inherited line, which is no longer used).
"""
from __future__ import annotations

from edgenas.runtime import JOB_THREADS, torch_threads
from edgenas.search.runfolder import RunFolder, read_checkpoint
from edgenas.stats import accuracy_interval
from edgenas.train.ptq import CALIBRATION_IMAGES, int8_accuracy, quantized_network

INT8 = "int8.jsonl"
INT8_FIELDS = ("val_accuracy_int8", "val_accuracy_int8_ci", "test_accuracy_int8", "test_accuracy_int8_ci",
               "test_exit_rates_int8", "test_exit_agreement_int8", "test_accuracy_fp32_check")


def int8_fields(deployed, data) -> dict:
    """Record fields of the deployed network (on the CPU) quantised to int8 after training: early-exit accuracy on
    validation and test with its fp32 thresholds, the int8 exit rates on test, the share of test images that leave at
    the same exit as in fp32, and the fp32 test accuracy of the same network (a check: the member's test_accuracy)."""
    qnet = quantized_network(deployed, data.train.x[:CALIBRATION_IMAGES])
    val = int8_accuracy(deployed, qnet, data.val.x, data.val.y)
    test = int8_accuracy(deployed, qnet, data.test.x, data.test.y)
    return {"val_accuracy_int8": val.accuracy, "val_accuracy_int8_ci": accuracy_interval(val.accuracy, val.n),
            "test_accuracy_int8": test.accuracy, "test_accuracy_int8_ci": accuracy_interval(test.accuracy, test.n),
            "test_exit_rates_int8": test.exit_rates, "test_exit_agreement_int8": test.exit_agreement,
            "test_accuracy_fp32_check": test.accuracy_fp32}


def score_members_int8(folder: RunFolder, members: list[dict], data, ui) -> list[dict]:
    """The members (as reported, each with its checkpoint written) with the INT8_FIELDS of the weights they ship,
    measured now or read back from int8.jsonl."""
    done = {(r["id"], r.get("weights")): r for r in folder.read_archive(INT8)}
    todo = [m for m in members if (m["id"], m["weights"]) not in done]
    if todo:
        with ui.task(f"int8 post-training quantisation of {len(todo)} Pareto member{'s' * (len(todo) > 1)}",
                     len(todo)) as advance, torch_threads(JOB_THREADS):
            for m in todo:
                net, _ = read_checkpoint(folder.checkpoint_path(m["id"]), m["id"])
                record = {"id": m["id"], "weights": m["weights"], **int8_fields(net, data)}
                folder.append_record(record, INT8)
                done[(m["id"], m["weights"])] = record
                advance(f"#{m['id']} test acc {m['test_accuracy']:.3f} fp32 -> {record['test_accuracy_int8']:.3f} int8")
    return [{**m, **{k: v for k, v in done[(m["id"], m["weights"])].items() if k in INT8_FIELDS}} for m in members]
