"""Budget strings ("320KB", "50ms", "2.5M", "90%") -> numbers, the accepted ranges, target names, and budgets
overridden from the command line."""
from __future__ import annotations

import math
import re
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from edgenas.errors import EdgenasError
from edgenas.targets.model import Budgets, Target

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
        raise EdgenasError(f"bad size '{clip(s)}'", _SIZE_FIX)
    number, scale = parts[0], _SIZE_UNITS[parts[1]]
    if number != 0 and not _in_range(number, Decimal(1) / scale, Decimal(MAX_SIZE) / scale):
        raise EdgenasError(f"size '{clip(s)}' is out of range (1 byte to 1TiB)", _SIZE_FIX)
    return int((number * scale).to_integral_value())


def parse_duration(s: str | float) -> float:
    """'50ms', '0.5s', '200us', '1.2 ms' -> seconds, from 1 ns to one hour. A bare number is only accepted as a
    float (seconds)."""
    if isinstance(s, (int, float)) and not isinstance(s, bool) and MIN_DURATION_S <= s <= MAX_DURATION_S:
        return float(s)
    parts = _split(str(s), r"(s|ms|us|µs|ns)") if not isinstance(s, bool) else None
    if parts is None or parts[0] <= 0:
        raise EdgenasError(f"bad duration '{clip(s)}'", _DURATION_FIX)
    scale = _DURATION_UNITS[parts[1]]
    if not _in_range(parts[0], Decimal(str(MIN_DURATION_S)) / scale, Decimal(str(MAX_DURATION_S)) / scale):
        raise EdgenasError(f"duration '{clip(s)}' is out of range (1ns to 1h)", _DURATION_FIX)
    return float(parts[0] * scale)


def parse_macs(s: str | int) -> int:
    """'2.5M', '300k', '1.2G', '123456' -> multiply-accumulates (decimal prefixes; a trailing 'MACs' is allowed),
    from 1 to MAX_MACS."""
    if isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_MACS:
        return s
    parts = _split(str(s), r"([kKmMgG]?)(?:\s*MACs?)?") if not isinstance(s, bool) else None
    if parts is None or parts[0] <= 0:
        raise EdgenasError(f"bad MAC count '{clip(s)}'", _MACS_FIX)
    scale = _MACS_UNITS[parts[1]]
    if not _in_range(parts[0], Decimal(1) / scale, Decimal(MAX_MACS) / scale):
        raise EdgenasError(f"MAC count '{clip(s)}' is out of range (1 to 1e15)", _MACS_FIX)
    return int((parts[0] * scale).to_integral_value())


def parse_accuracy(s: str | float) -> float:
    """'0.9', 0.9 or '90%' -> a fraction in [0, 1]."""
    text = str(s).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if isinstance(s, bool) or not 0.0 <= value <= 1.0:
        raise EdgenasError(f"bad accuracy '{clip(s)}'",
                           "use a fraction in [0, 1] such as 0.9, or a percentage such as 90%")
    return value


def clip(value, limit: int = 40) -> str:
    """The value as typed, cut short: an error line must stay one readable line whatever was pasted."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_target_name(name: str, what: str = "target name") -> str:
    """A target name becomes a file name (`<name>-calibrated.toml`) and a run-folder name: letters, digits, '.', '_'
    and '-' only, so it can neither leave its folder nor break the TOML and tables it is written into."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        raise EdgenasError(f"{what} '{clip(name)}' is not a valid name",
                           "use 1 to 64 letters, digits, '.', '_' or '-', e.g. my-board")
    return name


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
