"""Validation of a parsed target file (a TOML table after `extends` merging) into a Target: every problem is one
line naming the file and the dotted key, with a fix."""
from __future__ import annotations

import math
from pathlib import Path

from edgenas.errors import EdgenasError
from edgenas.targets.model import (LATENCY_DTYPES, LATENCY_FAMILIES, LATENCY_KINDS, LATENCY_RUNTIMES, LATENCY_SECTIONS,
                                   OPTIONAL_COEFFICIENTS, PROVENANCE_FIELDS, TARGET_KINDS, TREE_DESCRIPTORS, Budgets,
                                   KindCost, LatencyModel, Provenance, RegressionTree, Target, TreeCorrection)
from edgenas.targets.units import (MAX_NUMBER, check_target_name, clip, parse_accuracy, parse_duration, parse_macs,
                                   parse_size)


class _Reader:
    """Typed access to one TOML table; every problem names the file and the dotted key."""

    def __init__(self, table: dict, where: str, prefix: str = ""):
        self.table, self.where, self.prefix = table, where, prefix
        self.seen: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def fail(self, k: str, problem: str, fix: str) -> EdgenasError:
        return EdgenasError(f"{self.where}: key '{self.key(k)}' {problem}", fix)

    def has(self, k: str) -> bool:
        return k in self.table

    def raw(self, k: str, required: bool, example: str):
        self.seen.add(k)
        if k not in self.table:
            if required:
                raise EdgenasError(f"{self.where}: missing required key '{self.key(k)}'", f"add e.g. {example}")
            return None
        return self.table[k]

    def string(self, k: str, required: bool = False, default: str | None = "", choices=None) -> str | None:
        v = self.raw(k, required, f'{k} = "..."')
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.fail(k, f"must be a string, got {_show(v)}", f'write it in quotes, e.g. {k} = "..."')
        if choices and v not in choices:
            raise self.fail(k, f"must be one of {', '.join(choices)}, got '{v}'", f"use one of {', '.join(choices)}")
        return v

    def number(self, k: str, required: bool = False, default: float | None = None, positive: bool = False,
               example: str = "1.0", low: float = 0.0, high: float = MAX_NUMBER) -> float | None:
        v = self.raw(k, required, f"{k} = {example}")
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(k, f"must be a number, got {_show(v)}", f"e.g. {k} = {example}")
        if v < 0 or (positive and v == 0):
            sign = "positive" if positive else "non-negative"
            raise self.fail(k, f"must be {sign}, got {v}", f"e.g. {k} = {example}")
        if (v != 0 and v < low) or v > high:
            raise self.fail(k, f"is out of range ({low:g} to {high:g}), got {v:g}", f"e.g. {k} = {example}")
        return float(v)

    def size(self, k: str, required: bool = False, positive: bool = True) -> int | None:
        v = self.raw(k, required, f'{k} = "320KB"')
        if v is None:
            return None
        try:
            n = parse_size(v)
        except EdgenasError as exc:
            raise self.fail(k, f"is not a size: {exc.problem}", exc.fix) from None
        if positive and n == 0:
            raise self.fail(k, "must be positive, got 0", f'e.g. {k} = "320KB"')
        return n

    def table_of(self, k: str, required: bool = False) -> "_Reader":
        v = self.raw(k, required, f"[{self.key(k)}]")
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise self.fail(k, f"must be a table, got {_show(v)}", f"write it as [{self.key(k)}]")
        return _Reader(v, self.where, f"{self.key(k)}.")

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            k = unknown[0]
            raise self.fail(k, "is not a known setting", f"remove it or fix its spelling; known here: "
                                                          f"{', '.join(sorted(self.seen))}")


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def build_target(raw: dict, where: str) -> Target:
    r = _Reader(raw, where)
    name = r.string("name", default=Path(where).stem) or Path(where).stem
    try:
        check_target_name(name)
    except EdgenasError as exc:
        src = "the file name (no key 'name')" if name == Path(where).stem else "key 'name'"
        raise EdgenasError(f"{clip(where, 200)}: {src}: {exc.problem}", exc.fix + '; set name = "..."') from None
    kind = r.string("kind", required=True, choices=TARGET_KINDS)
    target = Target(
        name=name,
        description=r.string("description"),
        kind=kind,
        cpu=r.string("cpu", required=True),
        clock_hz=r.number("clock_hz", required=True, positive=True, example="216_000_000", low=1e3, high=1e12),
        sram_bytes=r.size("sram_bytes", required=True),
        flash_bytes=r.size("flash_bytes", required=kind == "mcu"),
        tvm_target=_tvm_target(r),
        runtime=r.string("runtime", required=True),
        code_size_bytes=r.size("code_size_bytes", positive=False) or 0,
        workspace_bytes=r.size("workspace_bytes", positive=False) or 0,
        qemu_machine=r.string("qemu_machine", default=None),
        cpi=r.number("cpi", positive=True, low=1e-3, high=1e6),
        budgets=_budgets(r.table_of("budgets")),
        latency=_latency(r.table_of("latency", required=True)),
        provenance=_provenance(r),
        latency_int8=_latency(r.table_of(LATENCY_SECTIONS["int8"]), "int8") if r.has(LATENCY_SECTIONS["int8"])
        else None,
    )
    r.done()
    if target.latency_int8 is not None and target.latency.dtype == "int8":
        raise EdgenasError(f"{where}: [latency] has dtype \"int8\" and [{LATENCY_SECTIONS['int8']}] is given too: "
                           "two int8 latency models", f"keep the int8 model in [{LATENCY_SECTIONS['int8']}] and "
                           "the float32 one in [latency]")
    return target


def _tvm_target(r: _Reader) -> dict:
    t = r.table_of("tvm_target", required=True)
    t.string("kind", required=True)
    for k, v in t.table.items():
        ok = isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and all(isinstance(e, str) for e in v))
        if not ok:
            raise t.fail(k, f"must be a string, number, boolean or list of strings, got {_show(v)}",
                         'e.g. mcpu = "cortex-m7"')
    return dict(t.table)


def _budgets(b: _Reader) -> Budgets:
    parsers = {"latency": parse_duration, "sram": parse_size, "flash": parse_size, "macs": parse_macs,
               "min_accuracy": parse_accuracy}
    values = {}
    for k, parse in parsers.items():
        v = b.raw(k, False, "")
        if v is None:
            values[k] = None
            continue
        if isinstance(v, float) and k in ("sram", "flash", "macs"):
            raise b.fail(k, f"must be a whole number or a string, got {v}", 'e.g. sram = "320KB"')
        try:
            values[k] = parse(v)
        except EdgenasError as exc:
            raise b.fail(k, f"is invalid: {exc.problem}", exc.fix) from None
        if k in ("sram", "flash") and values[k] == 0:
            raise b.fail(k, "must be positive, got 0", 'e.g. sram = "320KB"')
    b.done()
    return Budgets(latency_s=values["latency"], sram_bytes=values["sram"], flash_bytes=values["flash"],
                   macs=values["macs"], min_accuracy=values["min_accuracy"])


def _latency(lat: _Reader, dtype: str | None = None) -> LatencyModel:
    """A latency table: [latency] (dtype required), or the [latency_int8] table of `dtype` "int8" (its `dtype` key
    optional, and "int8" when given)."""
    section = lat.prefix.rstrip(".")
    kinds_r = lat.table_of("kinds", required=True)
    kinds = {}
    for kind in kinds_r.table:
        if kind not in (*LATENCY_KINDS, "default"):
            raise kinds_r.fail(kind, "is not an operator kind", f"use one of default, {', '.join(LATENCY_KINDS)}")
        c = kinds_r.table_of(kind)
        kinds[kind] = KindCost(fixed_cycles=c.number("fixed_cycles", required=True, example="200"),
                               cycles_per_mac=c.number("cycles_per_mac", required=True, example="4.0"),
                               cycles_per_byte=c.number("cycles_per_byte", required=True, example="0.5"),
                               **{k: c.number(k, default=0.0, example="0.1") for k in OPTIONAL_COEFFICIENTS})
        c.done()
    kinds_r.done()
    if "default" not in kinds:
        raise EdgenasError(f"{lat.where}: missing required key '{kinds_r.key('default')}'",
                           f"add a [{section}.kinds.default] table: it costs every kind without its own entry")
    family = lat.string("family", default="per-kind", choices=LATENCY_FAMILIES)
    trees = _trees(lat) if lat.has("trees") else None
    if family == "boosted-trees" and trees is None:
        raise EdgenasError(f"{lat.where}: latency family 'boosted-trees' needs a [{section}.trees] table",
                           "write the file with `edgenas calibrate`, or choose family = \"per-kind-shape\"")
    if family != "boosted-trees":
        # an override of a boosted-trees target (tables merge key by key) may inherit trees it does not use
        trees = None
    model = LatencyModel(kinds=kinds,
                         per_inference_cycles=lat.number("per_inference_cycles", required=True, example="2000"),
                         per_exit_cycles=lat.number("per_exit_cycles", required=True, example="300"),
                         dtype=lat.string("dtype", required=dtype is None, default=dtype,
                                          choices=LATENCY_DTYPES if dtype is None else (dtype,)),
                         channel_block=_channel_block(lat), family=family,
                         runtime=_runtime(lat), trees=trees,
                         interval=_interval(lat), selection=_selection(lat),
                         folds_zero_ops=_flag(lat, "folds_zero_ops"))
    lat.done()
    return model


def _runtime(lat: _Reader) -> str:
    """The engine the model was calibrated on; "" (written by calibrate overrides) means unknown."""
    if lat.table.get("runtime") == "":
        lat.seen.add("runtime")
        return ""
    return lat.string("runtime", default="", choices=LATENCY_RUNTIMES)


def _flag(r: _Reader, key: str) -> bool:
    v = r.raw(key, False, f"{key} = true")
    if v is None:
        return False
    if not isinstance(v, bool):
        raise r.fail(key, f"must be true or false, got {_show(v)}", f"e.g. {key} = true")
    return v


def _interval(lat: _Reader) -> tuple[float, float] | None:
    v = lat.raw("interval", False, "[0.9, 1.1]")
    if v is None:
        return None
    ok = isinstance(v, list) and len(v) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v)
    if not ok or v[0] > 1.0 or v[1] < 1.0:
        raise lat.fail("interval", f"must be [low, high] ratios around 1 (low <= 1 <= high), got {_show(v)}",
                       "e.g. interval = [0.92, 1.09] (a 90 % prediction interval), or remove it")
    return float(v[0]), float(v[1])


def _selection(lat: _Reader) -> dict | None:
    """The record of `calibrate`'s model choice: strings and numbers, nested tables of them (shown, not used)."""
    v = lat.raw("selection", False, f"[{lat.key('selection')}]")
    if v is None:
        return None

    def check(value, key):
        if isinstance(value, dict):
            return {k: check(x, f"{key}.{k}") for k, x in value.items()}
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise EdgenasError(f"{lat.where}: key '{key}' must be a string or a finite number, got {_show(value)}",
                               f"write the file with `edgenas calibrate`, or remove [{lat.key('selection')}]")
        return value
    if not isinstance(v, dict):
        raise lat.fail("selection", f"must be a table, got {_show(v)}", f"write it as [{lat.key('selection')}]")
    return check(v, lat.key("selection"))


def _trees(lat: _Reader) -> TreeCorrection:
    t = lat.table_of("trees")
    kinds = t.raw("kinds", True, 'kinds = ["conv", "dwconv3"]')
    if not isinstance(kinds, list) or not all(isinstance(k, str) and k in (*LATENCY_KINDS, "default") for k in kinds):
        raise t.fail("kinds", f"must be a list of latency kinds, got {_show(kinds)}",
                     f"use kinds from {', '.join(LATENCY_KINDS)}")
    raw_trees = t.raw("tree", True, f"[[{t.key('tree')}]]")
    if not isinstance(raw_trees, list) or not all(isinstance(e, dict) for e in raw_trees):
        raise t.fail("tree", "must be a list of tables", f"write each tree as [[{t.key('tree')}]]")
    trees = []
    for i, raw in enumerate(raw_trees):
        r = _Reader(raw, t.where, f"{t.key('tree')}[{i}].")
        arrays = {}
        for key in ("feature", "threshold", "left", "right", "value"):
            v = r.raw(key, True, f"{key} = [...]")
            ints = key in ("feature", "left", "right")
            good = isinstance(v, list) and v and all(
                (isinstance(x, int) if ints else isinstance(x, (int, float)) and math.isfinite(x))
                and not isinstance(x, bool) for x in v)
            if not good:
                raise r.fail(key, f"must be a non-empty list of {'integers' if ints else 'finite numbers'}",
                             "write the file with `edgenas calibrate`")
            arrays[key] = tuple(int(x) if ints else float(x) for x in v)
        r.done()
        n = len(arrays["feature"])
        if any(len(a) != n for a in arrays.values()):
            raise r.fail("feature", "feature, threshold, left, right and value must have the same length",
                         "write the file with `edgenas calibrate`")
        # every split names a descriptor and points forward to a node of this tree: evaluation ends at a leaf
        for node in range(n):
            left, right = arrays["left"][node], arrays["right"][node]
            if left == -1:
                continue
            if not (0 <= arrays["feature"][node] < len(TREE_DESCRIPTORS) and node < left < n and node < right < n):
                raise r.fail("left", f"node {node} does not point forward to nodes of this tree",
                             "write the file with `edgenas calibrate`")
        trees.append(RegressionTree(**arrays))
    t.done()
    return TreeCorrection(kinds=tuple(kinds), trees=tuple(trees))


def _channel_block(lat: _Reader) -> int:
    v = lat.raw("channel_block", False, "16")
    if v is None:
        return 1
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 256:
        raise lat.fail("channel_block", f"must be an integer from 1 to 256, got {v!r}",
                       "e.g. channel_block = 16 (onnxruntime NCHWc on AVX-512), 1 for no channel padding")
    return v


def _provenance(r: _Reader) -> tuple[Provenance, ...]:
    entries = r.raw("provenance", False, "")
    if entries is None:
        return ()
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise r.fail("provenance", "must be a list of tables", "write each entry as [[provenance]]")
    out = []
    for i, e in enumerate(entries):
        p = _Reader(e, r.where, f"provenance[{i}].")
        out.append(Provenance(**{f: p.string(f) for f in PROVENANCE_FIELDS}))
        p.done()
    return tuple(out)
