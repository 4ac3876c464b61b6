"""Targets as TOML/JSON values and TOML text (`targets show`, the override `edgenas calibrate` writes).

Files are written by tomli-w, which escapes every string (a name or note holding a newline or quote stays one
value); only the first comment line is ours, and it holds nothing but a validated target name."""
from __future__ import annotations

from edgenas.fileio import json_finite
from edgenas.targets.model import LATENCY_SECTIONS, OPTIONAL_COEFFICIENTS, PROVENANCE_FIELDS, LatencyModel, Target
from edgenas.targets.units import check_target_name


def _without_none(table: dict) -> dict:
    return {k: v for k, v in table.items() if v is not None}


def latency_to_dict(model: LatencyModel, explicit: bool = False) -> dict:
    """The [latency] (or [latency_int8]) table of a target file (coefficients in cycles). Settings at their default
    are left out, unless `explicit`: an override's table is merged key by key onto its base's, so every setting and
    coefficient it leaves out would be the base's, not the default."""
    table = {"dtype": model.dtype, "per_inference_cycles": model.per_inference_cycles,
             "per_exit_cycles": model.per_exit_cycles}
    if model.channel_block != 1 or explicit:
        table["channel_block"] = model.channel_block
    if model.family != "per-kind" or explicit:
        table["family"] = model.family
    if model.runtime or explicit:
        table["runtime"] = model.runtime
    if model.folds_zero_ops or explicit:
        table["folds_zero_ops"] = model.folds_zero_ops
    if model.interval is not None:
        table["interval"] = list(model.interval)
    kinds = {}
    for kind, c in model.kinds.items():
        entry = {"fixed_cycles": c.fixed_cycles, "cycles_per_mac": c.cycles_per_mac,
                 "cycles_per_byte": c.cycles_per_byte}
        entry.update({k: getattr(c, k) for k in OPTIONAL_COEFFICIENTS if getattr(c, k) or explicit})
        kinds[kind] = entry
    table["kinds"] = kinds
    if model.trees is not None:
        table["trees"] = {"kinds": list(model.trees.kinds),
                          "tree": [{"feature": list(t.feature), "threshold": list(t.threshold), "left": list(t.left),
                                    "right": list(t.right), "value": list(t.value)} for t in model.trees.trees]}
    if model.selection is not None:
        table["selection"] = _present(json_finite(model.selection))
    return table


def _present(value):
    """A table without missing figures (None, which json_finite also makes of NaN/inf): TOML could hold NaN, but a
    missing figure reads better as absent."""
    if isinstance(value, dict):
        return {k: _present(v) for k, v in value.items() if v is not None}
    return value


def _provenance_tables(entries) -> list[dict]:
    return [{f: getattr(p, f) for f in PROVENANCE_FIELDS if getattr(p, f)} for p in entries]


def target_to_dict(t: Target) -> dict:
    """The target as plain TOML/JSON values (what `target_to_toml` writes and `targets show --json` prints)."""
    b = t.budgets
    doc = _without_none({key: getattr(t, key) for key in (
        "name", "description", "kind", "cpu", "clock_hz", "sram_bytes", "flash_bytes", "runtime", "code_size_bytes",
        "workspace_bytes", "qemu_machine", "cpi")})
    doc["tvm_target"] = dict(t.tvm_target)
    doc["budgets"] = _without_none({"latency": b.latency_s,  # a bare number is seconds
                                    "sram": b.sram_bytes, "flash": b.flash_bytes, "macs": b.macs,
                                    "min_accuracy": b.min_accuracy})
    doc["latency"] = latency_to_dict(t.latency)
    if t.latency_int8 is not None:
        doc[LATENCY_SECTIONS["int8"]] = latency_to_dict(t.latency_int8)
    if t.provenance:
        doc["provenance"] = _provenance_tables(t.provenance)
    return doc


def target_to_toml(t: Target) -> str:
    """TOML text that `load_target` reads back into an equal Target (except `source_path`)."""
    import tomli_w

    header = (f"# edgenas target '{check_target_name(t.name)}'. Units: bytes, Hz, seconds; latency coefficients in "
              "cycles.\n\n")
    return header + tomli_w.dumps(target_to_dict(t))


def latency_override_toml(base: str, name: str, latency: LatencyModel, provenance=(), section: str | None = None
                          ) -> str:
    """A target file that `extends` `base` and replaces one of its latency models (what `edgenas calibrate` writes):
    `section` is the table written, by default the one of the model's dtype (LATENCY_SECTIONS: [latency] for
    float32, [latency_int8] for int8); the base's other latency table is inherited untouched.

    Every kind of `latency` is written with every coefficient and setting, so the base's coefficients survive only
    for kinds the model lacks; `provenance` entries are appended to the base's record.
    """
    import tomli_w

    section = section or LATENCY_SECTIONS[latency.dtype]
    doc = {"extends": base, "name": check_target_name(name), section: latency_to_dict(latency, explicit=True)}
    if provenance:
        doc["provenance"] = _provenance_tables(provenance)
    return (f"# {name}: the target it extends, with a calibrated {latency.dtype} latency model [{section}].\n\n"
            + tomli_w.dumps(doc))
