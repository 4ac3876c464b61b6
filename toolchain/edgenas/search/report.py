"""Run reports: Pareto plot (PNG), markdown report, and the final table printed by the CLI."""
from __future__ import annotations

from pathlib import Path

from edgenas.cost import limit_inside
from edgenas.search.pareto import choose_best
from edgenas.fileio import atomic_write, atomic_write_text


def _kib(n) -> str:
    return f"{n / 1024:.1f}"


def accuracy_cell(record: dict, split: str, dtype: str = "") -> str:
    """e.g. "97.2 [96.1, 98.0]": the accuracy on `split` in % with its 95 % Clopper-Pearson interval, when recorded.
    dtype "int8": the accuracy after post-training quantisation ("-" when the record has none: a float32 run)."""
    suffix = "_int8" if dtype == "int8" else ""
    if f"{split}_accuracy{suffix}" not in record:
        return "-"
    text = f"{record[f'{split}_accuracy{suffix}'] * 100:.1f}"
    ci = record.get(f"{split}_accuracy{suffix}_ci")  # absent in runs that predate the intervals and in ZO-DARTS+ no-exit runs
    return text if ci is None else f"{text} [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"


def inherited(record: dict) -> dict:
    """The figures of a member with the supernet's weights, which the search ranked by (the record itself when the
    member was not fine-tuned)."""
    return {**record, **record.get("inherited", {})}


def latency_cell(record: dict, latency_budget_s: float | None = None) -> str:
    """e.g. "1.23 [1.10, 1.40] near budget": expected latency in ms with the target model's 90 % prediction interval
    when it has one, marked when the budget lies inside the interval (the fits/does-not-fit verdict may be wrong)."""
    text = f"{record['latency_expected_s'] * 1e3:.2f}"
    interval = record.get("latency_expected_interval_s")  # absent in runs that predate intervals; None: no interval
    if not interval:
        return text
    text += f" [{interval[0] * 1e3:.2f}, {interval[1] * 1e3:.2f}]"
    if limit_inside(interval, latency_budget_s):
        text += " near budget"
    return text


def member_rows(members: list[dict], latency_budget_s: float | None = None) -> list[list[str]]:
    rows = []
    for r in members:
        rows.append([str(r["id"]), accuracy_cell(r, "test"), accuracy_cell(r, "test", "int8"),
                     "-" if "test_exit_agreement_int8" not in r else f"{r['test_exit_agreement_int8'] * 100:.1f}",
                     accuracy_cell(r, "val"),
                     f"{inherited(r)['test_accuracy'] * 100:.1f}" if "inherited" in r else "-",
                     str(r["n_exits"]), " / ".join(f"{v * 100:.0f}" for v in r["test_exit_rates"]),
                     f"{r['macs_expected'] / 1e6:.3f}", f"{r['macs_worst'] / 1e6:.3f}",
                     latency_cell(r, latency_budget_s), f"{r['latency_worst_s'] * 1e3:.2f}",
                     _kib(r["peak_sram_bytes"]), _kib(r["flash_bytes"]), r["description"]])
    return rows


HEADER = ["id", "fp32 test acc % [95% CI]", "int8 test acc % [95% CI]", "int8 same exit %", "val acc % [95% CI]", "inherited test acc %", "exits", "test exit rates %", "E[MACs] M", "worst MACs M",
          "E[lat] ms [90% PI]", "worst lat ms", "SRAM KiB", "flash KiB", "architecture"]


def write_report(path: Path, cfg, target, budgets, records: list[dict], members: list[dict], hv: float) -> None:
    def fmt(v, unit):
        return "-" if v is None else f"{v}{unit}"
    lines = [f"# edgenas search: {cfg.method} on {cfg.dataset} for {target.name}", "",
             f"- target: {target.description} ({target.clock_hz / 1e6:.0f} MHz)",
             f"- budgets: latency {fmt(budgets.latency_s and round(budgets.latency_s * 1e3, 3), ' ms')}, "
             f"SRAM {fmt(budgets.sram_bytes and _kib(budgets.sram_bytes), ' KiB')}, "
             f"flash {fmt(budgets.flash_bytes and _kib(budgets.flash_bytes), ' KiB')}, "
             f"min accuracy {fmt(budgets.min_accuracy, '')}",
             dtype_note(cfg, target),
             f"- evaluated candidates: {len(records)} ({sum(r['feasible'] for r in records)} within budgets)",
             f"- Pareto members: {len(members)}; hypervolume (error x latency/budget): {hv:.4f}",
             "- latency is the target cost model's prediction (see the target's provenance), not a measurement;",
             latency_model_note(target, cfg.evaluation.dtype),
             "  expected values use validation exit rates and count every head evaluated before the exit taken;",
             "  accuracy is on the held-out test split, never used for selection; brackets are 95 % Clopper-Pearson",
             "  intervals: members whose intervals overlap are not told apart by this test split"
             + (f" ({members[0]['n_test']} images, one image = {100 / members[0]['n_test']:.2f} pt)."
                if members and "n_test" in members[0] else "."),
             weights_note(members),
             best_note(members),
             "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in member_rows(members, budgets.latency_s)]
    lines += ood_table(members)
    atomic_write_text(path, "\n".join(lines) + "\n")


def dtype_note(cfg, target) -> str:
    """Which dtype the budgets count, how int8 accuracy was measured, and whether the latency model is of that dtype."""
    from edgenas.search.evaluate import latency_dtype_note
    dtype = cfg.evaluation.dtype or "float32"
    lines = [f"- dtype: {dtype}: the SRAM and flash budgets count {dtype} bytes (weights and activations)"]
    if dtype == "int8":
        lines.append("  \"int8 test acc\" is the early-exit accuracy after post-training quantisation as "
                     "`edgenas export` quantises (QDQ int8, MinMax on 256 train images, confidence path float), with "
                     "the fp32 thresholds; \"int8 same exit\" the share of test images leaving at the same exit as in "
                     "fp32; the search ranks by fp32 validation accuracy")
    else:
        lines.append("  int8 accuracy not measured (--dtype int8 measures it)")
    note = latency_dtype_note(dtype, target)
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines)


def latency_model_note(target, dtype: str | None = None) -> str:
    """What the report says of the latency model that predicted `dtype` (None: [latency]): its family and
    calibration, or that it is not calibrated."""
    from edgenas.cost import latency_model_for
    from edgenas.targets import engine_mismatch

    model = latency_model_for(target, dtype)
    selection = model.selection or {}
    warning = engine_mismatch(target)
    warning = f" WARNING: {warning};" if warning else ""
    if model.interval is None:
        return ("  the latency model has no prediction interval (not calibrated by `edgenas calibrate`): treat a "
                f"member near the latency budget with care;{warning}")
    cv = selection.get("cv", {}).get(model.family, {})
    base = selection.get("macs_only", {})
    figures = (f", held-out Kendall tau {cv['kendall_tau']:.3f} vs MACs-only {base['kendall_tau']:.3f}"
               if "kendall_tau" in cv and "kendall_tau" in base else "")
    return (f"  latency model: {model.family}{figures}; brackets after E[lat] are its 90 % prediction interval "
            f"({100 * (model.interval[0] - 1):+.0f} % .. {100 * (model.interval[1] - 1):+.0f} %), 'near budget' "
            f"where the budget lies inside it;{warning}")


def best_or_refusal(members: list[dict]) -> tuple[dict | None, str]:
    """(member, reason) that `export --best` takes, or (None, why it refuses): a report is still written."""
    from edgenas.errors import EdgenasError
    if not members:
        return None, "no member to export"
    try:
        return choose_best(members)
    except EdgenasError as exc:  # e.g. no member meets the budgets with its fine-tuned thresholds
        return None, f"refuses: {exc.problem}"


def best_note(members: list[dict]) -> str:
    best, reason = best_or_refusal(members)
    return f"- `edgenas export --best` takes {reason}" if best is not None else f"- `edgenas export --best` {reason}"


def weights_note(members: list[dict]) -> str:
    tuned = [m for m in members if m.get("weights") == "finetuned"]
    if not tuned:
        return ("- weights: inherited from the supernet (not fine-tuned): the figures are those the search ranked by "
                "and those that export ships")
    recipe = tuned[0]["finetune"]
    ids = ", ".join("#" + str(m["id"]) for m in tuned)
    which = "every figure" if len(tuned) == len(members) else (
        f"for the {len(tuned)} fine-tuned members ({ids}; `edgenas search --resume` "
        f"fine-tunes the other {len(members) - len(tuned)}, which still show their inherited figures), every figure")
    return (f"- weights: {which} but \"inherited test acc\" is that of the fine-tuned weights `edgenas export` ships "
            f"({recipe['steps']} steps, {recipe['optimizer']}, thresholds re-chosen on validation); the search ranked by "
            "the inherited (supernet) weights, whose test accuracy is in \"inherited test acc\" and in archive.jsonl")


def ood_table(members: list[dict]) -> list[str]:
    """Per-corruption accuracy (mean over severities) of each member, when the method measured it (FlatNAS)."""
    measured = [m for m in members if "ood_per_corruption" in m]
    if not measured:
        return []
    names = sorted(measured[0]["ood_per_corruption"])
    lines = ["", f"## Accuracy under corruption (% on {measured[0]['ood_samples']} test images, mean over severities)", "",
             "| corruption | " + " | ".join(f"#{m['id']}" for m in measured) + " |", "|---|" + "---|" * len(measured)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{m['ood_per_corruption'][name] * 100:.1f}" for m in measured) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{m['ood_accuracy'] * 100:.1f}**" for m in measured) + " |")
    lines.append("| flatness R (val) | " + " | ".join(f"{m['flatness'] * 100:.2f}" for m in measured) + " |")
    return lines


def write_pareto_plot(path: Path, records: list[dict], members: list[dict], budgets, target_name: str) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for feasible, style in ((False, dict(c="#bbbbbb", marker="x", label="over budget")),
                            (True, dict(c="#4c72b0", marker="o", alpha=0.5, label="within budgets"))):
        pts = [(r["latency_expected_s"] * 1e3, (1 - r["val_accuracy"]) * 100) for r in records if r["feasible"] == feasible]
        if pts:
            ax.scatter(*zip(*pts), s=14, **style)
    best = None
    if members:
        pts = [(inherited(r)["latency_expected_s"] * 1e3, (1 - inherited(r)["val_accuracy"]) * 100) for r in members]
        ax.plot(*zip(*pts), "-o", c="#dd4444", ms=5, label="Pareto set (inherited weights)")
        tuned = [r for r in members if r.get("weights") == "finetuned"]
        if tuned:
            ax.scatter([r["latency_expected_s"] * 1e3 for r in tuned], [(1 - r["val_accuracy"]) * 100 for r in tuned],
                       s=22, marker="^", c="#2a9d4b", zorder=4, label="Pareto members fine-tuned")
        best = best_or_refusal(members)[0]
    if best is not None:
        ax.scatter([best["latency_expected_s"] * 1e3], [(1 - best["val_accuracy"]) * 100], s=140, marker="*",
                   c="#f2b705", edgecolors="k", linewidths=0.6, zorder=5, label="exported by --best")
    if budgets.latency_s:
        ax.axvline(budgets.latency_s * 1e3, ls="--", c="k", lw=0.8, label="latency budget")
    ax.set_xscale("log")  # candidates span orders of magnitude in latency; a linear axis crushes the cheap ones
    ax.set_xlabel(f"expected latency on {target_name} (ms, predicted, log scale)")
    ax.set_ylabel("validation error (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def print_members(members: list[dict], console=None) -> None:
    from edgenas.ui import print_table
    print_table(HEADER, member_rows(members), console, title="Pareto set (within budgets)")


# what `edgenas search --json` gives of each member: the table's figures in their recorded units (fractions, seconds,
# bytes), the 95 % intervals, and what identifies the member and its weights
MEMBER_JSON_FIELDS = ("id", "description", "weights", "dtype", "test_accuracy", "test_accuracy_ci",
                      "test_accuracy_int8", "test_accuracy_int8_ci", "test_exit_agreement_int8", "val_accuracy",
                      "val_accuracy_ci", "val_accuracy_int8", "n_exits", "test_exit_rates", "macs_expected", "macs_worst",
                      "latency_expected_s", "latency_worst_s", "peak_sram_bytes", "flash_bytes")


def members_json(members: list[dict]) -> list[dict]:
    """The Pareto members for `edgenas search --json`: MEMBER_JSON_FIELDS that the record has, and `inherited` (the
    figures with the supernet's weights, which the search ranked by) and `finetune` (the recipe) when the member was
    fine-tuned."""
    out = []
    for r in members:
        member = {k: r[k] for k in MEMBER_JSON_FIELDS if k in r}
        member.update({k: r[k] for k in ("inherited", "finetune") if k in r})
        out.append(member)
    return out
