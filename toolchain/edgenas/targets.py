"""Targets are data: one TOML file per device, validated once into frozen dataclasses.

A target names the CPU and its LLVM target dict for TVM, the clock, SRAM and flash, the runtime allowances, the
default budgets, the latency model (coefficients per operator kind) and the provenance of those coefficients.

`load_target` takes a shipped name (`edgenas targets` lists them) or a path to a user file. A user file may start
with `extends = "cortex-m7"` (a shipped name, or a path relative to the file) and override only what differs:
tables merge key by key, other values replace, and `[[provenance]]` entries are appended to the base's, so a
calibrated target keeps the record of where the base numbers came from.

Units in budget strings follow MCU datasheets: KB = K = KiB = 1024 bytes and MB = M = MiB = 1024**2 bytes
("320KB" of SRAM on an STM32F746 is 327,680 bytes). MAC counts use decimal prefixes (k = 1e3, M = 1e6, G = 1e9).
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

from edgenas.errors import EdgenasError

TARGET_KINDS = ("mcu", "cortex-a", "host")
LATENCY_DTYPES = ("float32", "int8")
# Operator kinds of the cost model (edgenas.cost.Layer.kind) plus the fallback entry "default".
OPERATOR_KINDS = ("conv", "dwconv", "linear", "pool", "gap", "add", "mul", "act", "reshape", "concat", "other")
# Finer kinds the latency model may cost separately (edgenas.cost.analysis.latency_kinds), each with the kind whose
# coefficients it falls back to: pointwise vs k x k convs, convs whose input has fewer channels than the model's
# `channel_block` (the stem; on onnxruntime's NCHWc path they read plain NCHW input), depthwise convs by kernel size
# (<= 3, <= 5, larger), and activations / residual adds fused into the conv kernel before them.
KIND_FALLBACK = {"conv1x1": "conv", "conv_narrow": "conv", "dwconv3": "dwconv", "dwconv5": "dwconv",
                 "dwconv7": "dwconv", "act_fused": "act", "add_fused": "add"}
LATENCY_KINDS = (*OPERATOR_KINDS, *KIND_FALLBACK)


# --------------------------------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class KindCost:
    """Latency coefficients of one operator kind (all non-negative):

        cycles = fixed + per_mac * MACs + per_byte * (in + out + weight bytes)
                 + per_input_byte * in + per_output_byte * out + per_weight_byte * weight bytes

    Bytes are at the deployed dtype. Seed targets use one shared `cycles_per_byte`; `edgenas calibrate` fits the
    three separate byte coefficients (and writes cycles_per_byte = 0). Keys absent from a file are 0.
    """
    fixed_cycles: float
    cycles_per_mac: float
    cycles_per_byte: float  # bytes moved: input + output activations + weights at the deployed dtype
    cycles_per_input_byte: float = 0.0
    cycles_per_output_byte: float = 0.0
    cycles_per_weight_byte: float = 0.0


@dataclass(frozen=True)
class LatencyModel:
    kinds: Mapping[str, KindCost]  # always holds "default"; read through `for_kind`
    per_inference_cycles: float    # driver entry/exit, input copy
    per_exit_cycles: float         # evaluating one exit decision (sigmoid, survival product, compare)
    dtype: str                     # "float32" or "int8": the arithmetic the coefficients were measured for
    channel_block: int = 1         # the runtime pads channels to a multiple of this (onnxruntime NCHWc: 8 or 16)

    def for_kind(self, kind: str) -> KindCost:
        """The one place coefficients are looked up: the kind's own entry, else the kind it refines
        (KIND_FALLBACK, e.g. conv1x1 -> conv), else "default"."""
        while kind is not None:
            if kind in self.kinds:
                return self.kinds[kind]
            kind = KIND_FALLBACK.get(kind)
        return self.kinds["default"]


@dataclass(frozen=True)
class Provenance:
    source: str = ""
    measured_on: str = ""
    runtime: str = ""
    date: str = ""
    notes: str = ""


@dataclass(frozen=True)
class Budgets:
    latency_s: float | None = None
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    macs: int | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str                        # "mcu", "cortex-a" or "host"
    cpu: str
    clock_hz: float
    sram_bytes: int                  # on-chip SRAM (MCU) or the RAM granted to the model (Cortex-A, host)
    flash_bytes: int | None          # None: no flash limit (Cortex-A, host)
    tvm_target: Mapping[str, Any]    # LLVM target dict for tvm.target.Target
    runtime: str
    code_size_bytes: int             # flash allowance for runtime + driver code
    workspace_bytes: int             # RAM allowance for stack + runtime state
    qemu_machine: str | None
    cpi: float | None                # cycles per emulated instruction: instruction counts -> an *estimated* latency
    budgets: Budgets
    latency: LatencyModel
    provenance: tuple[Provenance, ...] = ()
    source_path: str = ""


# --------------------------------------------------------------------------------------------------- unit strings
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
               "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_DURATION_UNITS = {"s": Decimal(1), "ms": Decimal("1e-3"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"),
                   "ns": Decimal("1e-9")}
_MACS_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_NUMBER = r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*"
# Accepted ranges. Past them a value is a typo (1e400ms, 1e5000KB), not a device: refusing it keeps every budget a
# finite positive number that divides and serialises (JSON has no Infinity), whatever the exponent typed.
MAX_SIZE = 1024**4                                  # 1 TiB: above any SRAM, flash or RAM a model is granted
MIN_DURATION_S, MAX_DURATION_S = 1e-9, 3600.0       # 1 ns (the finest unit) to one hour per inference
MAX_MACS = 10**15                                   # 1e15 MACs per inference: far beyond any edge model
# Plain numbers in a target file (cycle coefficients, ...): at most 1e15, so that summing them over every layer of
# a network stays finite. clock_hz and cpi have tighter ranges of their own.
MAX_NUMBER = 1e15
TARGET_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SIZE_FIX = "use e.g. 320KB, 1MiB, 512B or a byte count; KB = KiB = 1024 bytes"
_DURATION_FIX = "use e.g. 50ms, 0.5s or 200us (a unit is required)"
_MACS_FIX = "use e.g. 2.5M, 300k, 1.2G or a plain count"


def _split(text: str, pattern: str) -> tuple[Decimal, str] | None:
    m = re.fullmatch(_NUMBER + pattern + r"\s*", text)
    if not m:
        return None
    try:
        return Decimal(m.group(1)), m.group(2).lower()
    except InvalidOperation:
        return None


def _in_range(value: Decimal, low: Decimal, high: Decimal) -> bool:
    # Decimal comparisons are exact at any exponent; multiplying first would overflow the context on 1e99999999KB
    return low <= value <= high


def parse_size(s: str | int) -> int:
    """'320KB', '320 KiB', '1MiB', '1MB', '512B', '2048' -> bytes (KB = KiB = 1024, MB = MiB = 1024**2).

    0 is a size (callers that need a positive one check); anything else must be at least 1 byte and at most
    MAX_SIZE."""
    if isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SIZE:
        return s
    parts = _split(str(s), r"([kKmMgG]?(?:i?[bB])?|[bB])") if not isinstance(s, bool) else None
    if parts is None or parts[1] not in _SIZE_UNITS:
        raise EdgenasError(f"bad size '{_clip(s)}'", _SIZE_FIX)
    number, scale = parts[0], _SIZE_UNITS[parts[1]]
    if number != 0 and not _in_range(number, Decimal(1) / scale, Decimal(MAX_SIZE) / scale):
        raise EdgenasError(f"size '{_clip(s)}' is out of range (1 byte to 1TiB)", _SIZE_FIX)
    return int((number * scale).to_integral_value())


def parse_duration(s: str | float) -> float:
    """'50ms', '0.5s', '200us', '1.2 ms' -> seconds, from 1 ns to one hour. A bare number is only accepted as a
    float (seconds)."""
    if isinstance(s, (int, float)) and not isinstance(s, bool) and MIN_DURATION_S <= s <= MAX_DURATION_S:
        return float(s)
    parts = _split(str(s), r"(s|ms|us|µs|ns)") if not isinstance(s, bool) else None
    if parts is None or parts[0] <= 0:
        raise EdgenasError(f"bad duration '{_clip(s)}'", _DURATION_FIX)
    scale = _DURATION_UNITS[parts[1]]
    if not _in_range(parts[0], Decimal(str(MIN_DURATION_S)) / scale, Decimal(str(MAX_DURATION_S)) / scale):
        raise EdgenasError(f"duration '{_clip(s)}' is out of range (1ns to 1h)", _DURATION_FIX)
    return float(parts[0] * scale)


def parse_macs(s: str | int) -> int:
    """'2.5M', '300k', '1.2G', '123456' -> multiply-accumulates (decimal prefixes; a trailing 'MACs' is allowed),
    from 1 to MAX_MACS."""
    if isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_MACS:
        return s
    parts = _split(str(s), r"([kKmMgG]?)(?:\s*MACs?)?") if not isinstance(s, bool) else None
    if parts is None or parts[0] <= 0:
        raise EdgenasError(f"bad MAC count '{_clip(s)}'", _MACS_FIX)
    scale = _MACS_UNITS[parts[1]]
    if not _in_range(parts[0], Decimal(1) / scale, Decimal(MAX_MACS) / scale):
        raise EdgenasError(f"MAC count '{_clip(s)}' is out of range (1 to 1e15)", _MACS_FIX)
    return int((parts[0] * scale).to_integral_value())


def parse_accuracy(s: str | float) -> float:
    """'0.9', 0.9 or '90%' -> a fraction in [0, 1]."""
    text = str(s).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if isinstance(s, bool) or not 0.0 <= value <= 1.0:
        raise EdgenasError(f"bad accuracy '{_clip(s)}'",
                           "use a fraction in [0, 1] such as 0.9, or a percentage such as 90%")
    return value


def _clip(value, limit: int = 40) -> str:
    """The value as typed, cut short: an error line must stay one readable line whatever was pasted."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------------- loading
def _shipped_dir():
    from importlib.resources import files
    return files("edgenas.target_files")


def list_targets() -> list[str]:
    """Names of the shipped targets."""
    return sorted(p.name[: -len(".toml")] for p in _shipped_dir().iterdir() if p.name.endswith(".toml"))


def _resolve(name_or_path: str, relative_to: Path | None = None) -> tuple[str, str]:
    """(TOML text, path shown in messages) for a shipped name or a file path."""
    text = str(name_or_path)
    looks_like_path = text.endswith(".toml") or "/" in text or "\\" in text
    if not looks_like_path:
        if text in list_targets():
            res = _shipped_dir() / f"{text}.toml"
            return res.read_text(encoding="utf-8"), str(res)
        raise EdgenasError(f"unknown target '{text}'",
                           f"use one of {', '.join(list_targets())}, or a path to a .toml file")
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    try:
        found = path.is_file()
    except OSError:  # e.g. a name too long for the file system
        found = False
    if not found:
        raise EdgenasError(f"target file {_clip(path, 200)} not found", "check the path, or use a shipped target name "
                           f"({', '.join(list_targets())})")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgenasError(f"cannot read target file {path}: {exc}", "pass a readable UTF-8 TOML file") from None


def _parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise EdgenasError(f"{where}: malformed TOML: {msg}", "fix the syntax at that line and column") from None


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if key == "provenance" and isinstance(value, list) and isinstance(base.get(key), list):
            out[key] = [*base[key], *value]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


# Longest `extends` chain followed: real ones are a board over a shipped core (2 or 3 files); a longer one is a
# mistake, and the cap bounds the work whatever the files say.
MAX_EXTENDS_DEPTH = 16


def _load_raw(name_or_path: str, relative_to: Path | None = None, chain: tuple[str, ...] = ()) -> tuple[dict, str]:
    text, where = _resolve(name_or_path, relative_to)
    # cycles are found by resolved path: `../x/a.toml` names the same file as `a.toml` however many `..` it has
    identity = str(Path(where).resolve())
    resolved_chain = [str(Path(w).resolve()) for w in chain]
    if identity in resolved_chain:
        names = [Path(w).name for w in chain[resolved_chain.index(identity):]]
        raise EdgenasError(f"{_clip(where, 200)}: 'extends' forms a cycle ({' -> '.join([*names, Path(where).name])})",
                           "make one of the files stand alone")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise EdgenasError(f"{_clip(where, 200)}: 'extends' chain is longer than {MAX_EXTENDS_DEPTH} files",
                           "extend a shipped target or a file that stands alone")
    raw = _parse_toml(text, where)
    if "extends" not in raw:
        return raw, where
    parent = raw.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise EdgenasError(f"{where}: key 'extends' must be a target name or a path",
                           "e.g. extends = \"cortex-m7\"")
    parent_dir = Path(where).parent if Path(where).is_file() else None
    try:
        _resolve(parent, parent_dir)
    except EdgenasError as exc:
        raise EdgenasError(f"{where}: key 'extends': {exc.problem}", exc.fix) from None
    base, _ = _load_raw(parent, parent_dir, (*chain, where))
    merged = _merge(base, raw)
    if "name" not in raw:
        merged["name"] = Path(where).stem  # an override is a new target: it must not pose as its base
    return merged, where


def load_target(name_or_path: str) -> Target:
    """A shipped target by name (`cortex-m7`) or a user file (`./my-board.toml`), validated."""
    raw, where = _load_raw(str(name_or_path))
    target = _build_target(raw, where)
    return replace(target, source_path=where)


# --------------------------------------------------------------------------------------------------- validation
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


def check_target_name(name: str, what: str = "target name") -> str:
    """A target name becomes a file name (`<name>-calibrated.toml`) and a run-folder name: letters, digits, '.', '_'
    and '-' only, so it can neither leave its folder nor break the TOML and tables it is written into."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        raise EdgenasError(f"{what} '{_clip(name)}' is not a valid name",
                           "use 1 to 64 letters, digits, '.', '_' or '-', e.g. my-board")
    return name


def _build_target(raw: dict, where: str) -> Target:
    r = _Reader(raw, where)
    name = r.string("name", default=Path(where).stem) or Path(where).stem
    try:
        check_target_name(name)
    except EdgenasError as exc:
        src = "the file name (no key 'name')" if name == Path(where).stem else "key 'name'"
        raise EdgenasError(f"{_clip(where, 200)}: {src}: {exc.problem}", exc.fix + '; set name = "..."') from None
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
    )
    r.done()
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


_SPLIT_BYTE_KEYS = ("cycles_per_input_byte", "cycles_per_output_byte", "cycles_per_weight_byte")


def _latency(lat: _Reader) -> LatencyModel:
    kinds_r = lat.table_of("kinds", required=True)
    kinds = {}
    for kind in kinds_r.table:
        if kind not in (*LATENCY_KINDS, "default"):
            raise kinds_r.fail(kind, "is not an operator kind", f"use one of default, {', '.join(LATENCY_KINDS)}")
        c = kinds_r.table_of(kind)
        kinds[kind] = KindCost(fixed_cycles=c.number("fixed_cycles", required=True, example="200"),
                               cycles_per_mac=c.number("cycles_per_mac", required=True, example="4.0"),
                               cycles_per_byte=c.number("cycles_per_byte", required=True, example="0.5"),
                               **{k: c.number(k, default=0.0, example="0.1") for k in _SPLIT_BYTE_KEYS})
        c.done()
    kinds_r.done()
    if "default" not in kinds:
        raise EdgenasError(f"{lat.where}: missing required key '{kinds_r.key('default')}'",
                           "add a [latency.kinds.default] table: it costs every kind without its own entry")
    model = LatencyModel(kinds=kinds,
                         per_inference_cycles=lat.number("per_inference_cycles", required=True, example="2000"),
                         per_exit_cycles=lat.number("per_exit_cycles", required=True, example="300"),
                         dtype=lat.string("dtype", required=True, choices=LATENCY_DTYPES),
                         channel_block=_channel_block(lat))
    lat.done()
    return model


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
        out.append(Provenance(**{f: p.string(f) for f in ("source", "measured_on", "runtime", "date", "notes")}))
        p.done()
    return tuple(out)


# --------------------------------------------------------------------------------------------------- overrides
def target_with_budgets(t: Target, latency=None, sram=None, flash=None, macs=None, min_accuracy=None) -> Target:
    """The target with budgets overridden (command-line flags); strings are parsed, None keeps the target's value."""
    b = t.budgets
    new = Budgets(
        latency_s=_flag(b.latency_s, latency, parse_duration, "--latency"),
        sram_bytes=_flag(b.sram_bytes, sram, _positive_size, "--sram"),
        flash_bytes=_flag(b.flash_bytes, flash, _positive_size, "--flash"),
        macs=_flag(b.macs, macs, parse_macs, "--macs"),
        min_accuracy=_flag(b.min_accuracy, min_accuracy, parse_accuracy, "--min-accuracy"),
    )
    return replace(t, budgets=new)


def _flag(current, value, parse, flag: str):
    if value is None:
        return current
    try:
        return parse(value)
    except EdgenasError as exc:
        raise EdgenasError(f"{flag}: {exc.problem}", exc.fix) from None


def _positive_size(value) -> int:
    n = parse_size(value)
    if n == 0:
        raise EdgenasError(f"size must be positive, got '{value}'", "use e.g. 320KB or 1MiB")
    return n


# --------------------------------------------------------------------------------------------------- writing
# Files are written by tomli-w, which escapes every string (a name or note holding a newline or quote stays one
# value); only the first comment line is ours, and it holds nothing but a validated target name.
def _without_none(table: dict) -> dict:
    return {k: v for k, v in table.items() if v is not None}


def latency_to_dict(model: LatencyModel) -> dict:
    """The [latency] table of a target file (coefficients in cycles)."""
    table = {"dtype": model.dtype, "per_inference_cycles": model.per_inference_cycles,
             "per_exit_cycles": model.per_exit_cycles}
    if model.channel_block != 1:
        table["channel_block"] = model.channel_block
    kinds = {}
    for kind, c in model.kinds.items():
        entry = {"fixed_cycles": c.fixed_cycles, "cycles_per_mac": c.cycles_per_mac,
                 "cycles_per_byte": c.cycles_per_byte}
        entry.update({k: getattr(c, k) for k in _SPLIT_BYTE_KEYS if getattr(c, k)})
        kinds[kind] = entry
    table["kinds"] = kinds
    return table


def _provenance_tables(entries) -> list[dict]:
    fields = ("source", "measured_on", "runtime", "date", "notes")
    return [{f: getattr(p, f) for f in fields if getattr(p, f)} for p in entries]


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
    if t.provenance:
        doc["provenance"] = _provenance_tables(t.provenance)
    return doc


def target_to_toml(t: Target) -> str:
    """TOML text that `load_target` reads back into an equal Target (except `source_path`)."""
    import tomli_w

    header = (f"# edgenas target '{check_target_name(t.name)}'. Units: bytes, Hz, seconds; latency coefficients in "
              "cycles.\n\n")
    return header + tomli_w.dumps(target_to_dict(t))


def latency_override_toml(base: str, name: str, latency: LatencyModel, provenance=()) -> str:
    """A target file that `extends` `base` and replaces its latency model (what `edgenas calibrate` writes).

    Every kind of `latency` is written, so the base's coefficients survive only for kinds the model lacks;
    `provenance` entries are appended to the base's record.
    """
    import tomli_w

    doc = {"extends": base, "name": check_target_name(name), "latency": latency_to_dict(latency)}
    if provenance:
        doc["provenance"] = _provenance_tables(provenance)
    return f"# {name}: the target it extends, with a calibrated latency model.\n\n" + tomli_w.dumps(doc)
