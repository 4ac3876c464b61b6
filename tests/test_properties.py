"""Property-based tests (hypothesis) of everything a user types or writes into a file that edgenas parses: budget
strings, target TOML values, calibrate CSV rows and target names. The property is the same everywhere: no
traceback, ever. An input either parses to a finite value inside the documented range or raises EdgenasError.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgenas.errors import EdgenasError
from edgenas.targets import (MAX_DURATION_S, MAX_MACS, MAX_SIZE, MIN_DURATION_S, check_target_name,
                             latency_override_toml, load_target, parse_accuracy, parse_duration, parse_macs,
                             parse_size, target_to_toml)

# database=None: no .hypothesis folder in the checkout; the regressions that matter are pinned with @example
SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# number-like text: digits, a fraction, an exponent from tiny to absurd, spaces, any unit the parsers know and some
# they do not; plus arbitrary text and non-string values
_MANTISSA = st.from_regex(r"\A(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30}|0)\Z")
_EXPONENT = st.one_of(st.just(""), st.integers(-10**9, 10**9).map(lambda e: f"e{e}"),
                      st.integers(-400, 400).map(lambda e: f"E{e:+d}"))
_UNIT = st.sampled_from(["", "B", "KB", "KiB", "k", "M", "MB", "MiB", "G", "GiB", "s", "ms", "us", "µs", "ns",
                         "MACs", "%", "T", "x", " KB", "kb"])
NUMBER_TEXT = st.builds(lambda sign, m, e, u: f"{sign}{m}{e}{u}", st.sampled_from(["", "-", "+", " "]), _MANTISSA,
                        _EXPONENT, _UNIT)
ANY_VALUE = st.one_of(NUMBER_TEXT, st.text(max_size=60), st.integers(), st.booleans(),
                      st.floats(allow_nan=True, allow_infinity=True))


def outcome(parse, value):
    """parse(value), or None when it raised EdgenasError (anything else propagates and fails the test)."""
    try:
        return parse(value)
    except EdgenasError as exc:
        assert exc.problem and exc.fix and "\n" not in exc.line()
        return None


@SETTINGS
@given(ANY_VALUE)
@example("1e5000KB")
@example("1e99999999KB")  # issue 15: decimal overflow
@example(2**70)
def test_sizes_parse_into_range_or_fail_with_edgenas_error(value):
    n = outcome(parse_size, value)
    assert n is None or (isinstance(n, int) and 0 <= n <= MAX_SIZE)


@SETTINGS
@given(ANY_VALUE)
@example("1e-400ms")  # issue 15: parsed as 0.0, then a ZeroDivisionError
@example("1e400ms")   # issue 15: inf, printed as Infinity in --json
@example(1e-320)
def test_durations_parse_into_range_or_fail_with_edgenas_error(value):
    s = outcome(parse_duration, value)
    assert s is None or (isinstance(s, float) and math.isfinite(s) and MIN_DURATION_S * (1 - 1e-12) <= s
                         <= MAX_DURATION_S * (1 + 1e-12))


@SETTINGS
@given(ANY_VALUE)
@example("1e30G")
@example("0.4")
def test_mac_counts_parse_into_range_or_fail_with_edgenas_error(value):
    n = outcome(parse_macs, value)
    assert n is None or (isinstance(n, int) and 1 <= n <= MAX_MACS)


@SETTINGS
@given(ANY_VALUE)
def test_accuracies_parse_into_range_or_fail_with_edgenas_error(value):
    a = outcome(parse_accuracy, value)
    assert a is None or (math.isfinite(a) and 0.0 <= a <= 1.0)


# ------------------------------------------------------------------------------------------------ target files
TOML_VALUE = st.one_of(NUMBER_TEXT, st.text(max_size=30), st.integers(-2**63, 2**63 - 1), st.booleans(),
                       st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(0, 9), max_size=3))
# every key a target file gives a number or a size to, as (table path, key)
NUMERIC_KEYS = [((), "clock_hz"), ((), "sram_bytes"), ((), "flash_bytes"), ((), "code_size_bytes"),
                ((), "workspace_bytes"), ((), "cpi"), (("budgets",), "latency"), (("budgets",), "sram"),
                (("budgets",), "flash"), (("budgets",), "macs"), (("budgets",), "min_accuracy"),
                (("latency",), "per_inference_cycles"), (("latency",), "per_exit_cycles"),
                (("latency",), "channel_block"), (("latency", "kinds", "conv"), "cycles_per_mac"),
                (("latency", "kinds", "default"), "fixed_cycles"), ((), "name")]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder for every example (module-scoped: hypothesis runs each test body many times)."""
    return tmp_path_factory.mktemp("properties")


def _finite_target(t) -> None:
    numbers = [t.clock_hz, t.sram_bytes, t.code_size_bytes, t.workspace_bytes, t.latency.per_inference_cycles,
               t.latency.per_exit_cycles, *(v for c in t.latency.kinds.values() for v in vars(c).values())]
    numbers += [v for v in (t.flash_bytes, t.cpi, *vars(t.budgets).values()) if v is not None]
    assert all(math.isfinite(v) and v >= 0 for v in numbers), numbers
    assert t.clock_hz > 0 and t.sram_bytes > 0


@SETTINGS
@given(st.sampled_from(NUMERIC_KEYS), TOML_VALUE)
@example((("budgets",), "latency"), "1e-400ms")
@example(((), "clock_hz"), 1e300)
@example((("latency", "kinds", "conv"), "cycles_per_mac"), 1e308)
def test_target_values_load_finite_or_fail_with_edgenas_error(work, where, value):
    tables, key = where
    doc: dict = {"extends": "cortex-m7"}
    table = doc
    for name in tables:
        table = table.setdefault(name, {})
    if tables[-1:] == ("conv",):
        table.update({"fixed_cycles": 1.0, "cycles_per_byte": 0.0})
    table[key] = value
    path = work / "board.toml"
    path.write_text(tomli_w.dumps(doc))
    t = outcome(load_target, str(path))
    if t is None:
        return
    _finite_target(t)
    again = work / "again.toml"
    again.write_text(target_to_toml(t))  # what loads writes back, and reads back the same
    assert load_target(str(again)).budgets == t.budgets


@SETTINGS
@given(st.text(max_size=80))
def test_target_names_are_valid_or_refused_and_never_break_the_file(name):
    if outcome(check_target_name, name) is None:
        with pytest.raises(EdgenasError):
            latency_override_toml("cortex-m7", name, load_target("cortex-m7").latency)
        return
    doc = tomllib.loads(latency_override_toml("cortex-m7", name, load_target("cortex-m7").latency))
    assert doc["name"] == name and set(doc) == {"extends", "name", "latency"}


# ------------------------------------------------------------------------------------------------ calibrate CSV rows
@pytest.fixture(scope="module")
def one_model(work):
    from tests.onnx_models import conv_model
    return conv_model(work / "m0.onnx", 1, 4, 8, 1, [True])


LATENCY_CELL = st.one_of(NUMBER_TEXT, st.text(max_size=40).filter(lambda s: "\n" not in s and "\r" not in s),
                         st.floats(allow_nan=True, allow_infinity=True).map(repr))


@SETTINGS
@given(column=st.sampled_from(["latency_s", "latency_ms", "latency_us"]), cells=st.lists(LATENCY_CELL, min_size=1,
                                                                                            max_size=4))
@example(column="latency_ms", cells=["1e308"])
@example(column="latency_us", cells=["1e-400"])
def test_calibrate_csv_rows_read_finite_or_fail_with_edgenas_error(one_model, column, cells):
    import csv
    import io

    from edgenas.cost.calibrate import read_csv
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", column])
    writer.writerows([one_model.name, cell] for cell in cells)
    path = one_model.parent / "rows.csv"
    path.write_text(buf.getvalue())
    meas = outcome(lambda p: read_csv(p, 4), path)
    if meas is None:
        return
    assert meas.observations and all(MIN_DURATION_S <= o.seconds <= MAX_DURATION_S for o in meas.observations)


@SETTINGS
@given(st.text(max_size=200))
def test_any_csv_text_reads_or_fails_with_edgenas_error(work, text):
    from edgenas.cost.calibrate import read_csv
    path = work / "any.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    outcome(lambda p: read_csv(p, 4), path)
