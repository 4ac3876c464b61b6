"""Targets: shipped files load, user files and `extends` work, bad input fails with one clear line."""
from dataclasses import replace
from pathlib import Path

import pytest

from edgenas.errors import EdgenasError
from edgenas.targets import (Budgets, KindCost, Provenance, Target, latency_override_toml, list_targets, load_target,
                             parse_duration, parse_macs, parse_size, target_to_toml, target_with_budgets)

SHIPPED = ("cortex-m4", "cortex-m7", "rpi4", "stm32h743", "x86-host")

MINIMAL = """
name = "tiny-board"
kind = "mcu"
cpu = "cortex-m0plus"
clock_hz = 48_000_000
sram_bytes = "32KB"
flash_bytes = "256KB"
runtime = "tvm-static-c"

[tvm_target]
kind = "llvm"
mtriple = "thumbv6m-none-eabi"

[latency]
dtype = "float32"
per_inference_cycles = 100
per_exit_cycles = 10

[latency.kinds.default]
fixed_cycles = 50
cycles_per_mac = 20.0
cycles_per_byte = 1.0
"""


def write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_every_shipped_target_loads_with_budgets_and_provenance():
    assert set(SHIPPED) <= set(list_targets())
    for name in list_targets():
        t = load_target(name)
        assert isinstance(t, Target) and t.name == name
        assert t.clock_hz > 0 and t.sram_bytes > 0
        assert "default" in t.latency.kinds and t.latency.dtype == "float32"
        assert t.provenance and all(p.source for p in t.provenance)
        assert t.tvm_target["kind"] == "llvm"
        assert t.budgets.latency_s is not None and t.budgets.sram_bytes == t.sram_bytes
        if t.kind == "mcu":
            assert t.budgets.flash_bytes == t.flash_bytes and t.qemu_machine and t.cpi


def test_shipped_numbers_match_the_datasheets():
    m7 = load_target("cortex-m7")
    assert (m7.clock_hz, m7.sram_bytes, m7.flash_bytes) == (216e6, 320 * 1024, 1024**2)
    assert m7.qemu_machine == "mps2-an500" and m7.budgets.latency_s == pytest.approx(0.1)
    assert m7.tvm_target == {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m7",
                             "mfloat-abi": "hard"}
    h7 = load_target("stm32h743")
    assert (h7.clock_hz, h7.sram_bytes, h7.flash_bytes) == (480e6, 512 * 1024, 2 * 1024**2)
    assert h7.latency == m7.latency  # same core: inherited cycle seeds
    m4 = load_target("cortex-m4")
    assert m4.qemu_machine == "mps2-an386" and m4.tvm_target["mcpu"] == "cortex-m4"
    assert m4.latency.for_kind("conv").cycles_per_mac > m7.latency.for_kind("conv").cycles_per_mac
    assert load_target("rpi4").flash_bytes is None and load_target("x86-host").tvm_target == {"kind": "llvm"}


def test_kind_lookup_falls_back_to_default():
    t = load_target("rpi4")  # per-kind seeds (cortex-m7's fp32 model is macs-only: its default entry alone)
    assert t.latency.for_kind("dwconv") is t.latency.kinds["dwconv"]
    assert t.latency.for_kind("a-kind-without-entry") is t.latency.kinds["default"]


def test_user_file_by_path(tmp_path):
    t = load_target(str(write(tmp_path, MINIMAL)))
    assert t.name == "tiny-board" and t.sram_bytes == 32 * 1024 and t.clock_hz == 48e6
    assert t.budgets == Budgets() and t.provenance == () and t.code_size_bytes == 0
    assert t.source_path == str(tmp_path / "board.toml")


def test_extends_merges_tables_and_appends_provenance(tmp_path):
    p = write(tmp_path, """
extends = "rpi4"
[latency.kinds.conv]
cycles_per_mac = 2.5
[budgets]
latency = "40ms"
[[provenance]]
source = "edgenas calibrate on my board"
""", "my-pi.toml")
    base, t = load_target("rpi4"), load_target(str(p))
    assert t.name == "my-pi"  # an override is its own target
    assert t.latency.kinds["conv"].cycles_per_mac == 2.5
    assert t.latency.kinds["conv"].fixed_cycles == base.latency.kinds["conv"].fixed_cycles
    assert t.latency.kinds["dwconv"] == base.latency.kinds["dwconv"]
    assert t.budgets.latency_s == pytest.approx(0.04) and t.budgets.sram_bytes == base.budgets.sram_bytes
    assert t.provenance[:-1] == base.provenance and t.provenance[-1].source == "edgenas calibrate on my board"


def test_extends_a_relative_path_and_cycles_fail(tmp_path):
    write(tmp_path, MINIMAL, "base.toml")
    t = load_target(str(write(tmp_path, 'extends = "base.toml"\nname = "child"\nclock_hz = 64e6\n', "child.toml")))
    assert t.name == "child" and t.clock_hz == 64e6 and t.cpu == "cortex-m0plus"
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(EdgenasError, match="cycle") as exc:
        load_target(str(tmp_path / "a.toml"))
    one_line_error(exc)
    bad = write(tmp_path, 'extends = "cortex-m77"\n', "typo.toml")
    with pytest.raises(EdgenasError, match=f"{bad}: key 'extends': unknown target 'cortex-m77'"):
        load_target(str(bad))


@pytest.mark.parametrize("text, expected", [
    ("clock_hz = [", "malformed TOML"),
    (MINIMAL.replace('cpu = "cortex-m0plus"\n', ""), "missing required key 'cpu'"),
    (MINIMAL.replace("clock_hz = 48_000_000", 'clock_hz = "fast"'), "key 'clock_hz' must be a number"),
    (MINIMAL.replace("clock_hz = 48_000_000", "clock_hz = 0"), "key 'clock_hz' must be positive"),
    (MINIMAL.replace("clock_hz = 48_000_000", "clock_hz = -5"), "key 'clock_hz' must be positive"),
    (MINIMAL.replace('sram_bytes = "32KB"', 'sram_bytes = "32XB"'), "key 'sram_bytes' is not a size: bad size '32XB'"),
    (MINIMAL.replace('kind = "mcu"', 'kind = "fpga"'), "key 'kind' must be one of"),
    (MINIMAL.replace("cycles_per_mac = 20.0", 'cycles_per_mac = "x"'),
     "key 'latency.kinds.default.cycles_per_mac' must be a number"),
    (MINIMAL.replace("[latency.kinds.default]", "[latency.kinds.conv]"),
     "missing required key 'latency.kinds.default'"),
    (MINIMAL.replace("[latency.kinds.default]", "[latency.kinds.convolution]"),
     "key 'latency.kinds.convolution' is not an operator kind"),
    (MINIMAL + '\n[budgets]\nsram = "32XB"\n', "key 'budgets.sram' is invalid: bad size '32XB'"),
    (MINIMAL + '\n[budgets]\nlatency = "fast"\n', "key 'budgets.latency' is invalid: bad duration 'fast'"),
    (MINIMAL + '\n[budgets]\nmin_accuracy = 1.5\n', "key 'budgets.min_accuracy' is invalid"),
    (MINIMAL.replace('runtime = "tvm-static-c"', 'runtime = "tvm-static-c"\nclok_hz = 1'),
     "key 'clok_hz' is not a known setting"),
])
def test_bad_files_fail_with_one_line_naming_file_and_key(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(EdgenasError) as exc:
        load_target(str(p))
    msg = one_line_error(exc)
    assert expected in msg and str(p) in msg


def test_malformed_toml_reports_line_and_column(tmp_path):
    with pytest.raises(EdgenasError, match=r"line 2, column") as exc:
        load_target(str(write(tmp_path, 'name = "x"\nclock_hz = = 3\n')))
    one_line_error(exc)


def test_unknown_name_lists_known_targets_and_missing_file_fails():
    with pytest.raises(EdgenasError) as exc:
        load_target("cortex-m99")
    msg = one_line_error(exc)
    assert "unknown target 'cortex-m99'" in msg and all(n in exc.value.fix for n in SHIPPED)
    with pytest.raises(EdgenasError, match="not found"):
        load_target("./no-such-board.toml")


@pytest.mark.parametrize("text, value", [
    ("320KB", 327680), ("320 KiB", 327680), ("320K", 327680), ("1MiB", 1048576), ("1MB", 1048576),
    ("512B", 512), ("2048", 2048), ("1.5KB", 1536), ("2GiB", 2 * 1024**3), (4096, 4096),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text, value", [
    ("50ms", 0.05), ("0.5s", 0.5), ("200us", 200e-6), ("1.2 ms", 1.2e-3), ("200µs", 200e-6), (0.25, 0.25),
])
def test_parse_duration(text, value):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("text, value", [
    ("2.5M", 2_500_000), ("300k", 300_000), ("1.2G", 1_200_000_000), ("123456", 123456), ("12.5 MMACs", 12_500_000),
])
def test_parse_macs(text, value):
    assert parse_macs(text) == value


@pytest.mark.parametrize("parse, text, message", [
    (parse_size, "32XB", "bad size '32XB'"), (parse_size, "-1KB", "bad size"), (parse_size, "", "bad size"),
    (parse_size, "KB", "bad size"),
    (parse_duration, "50", "bad duration '50'"), (parse_duration, "5 minutes", "bad duration"),
    (parse_duration, "0ms", "bad duration"),
    (parse_macs, "2.5T", "bad MAC count"), (parse_macs, "lots", "bad MAC count"), (parse_macs, "0", "bad MAC count"),
    # issue 15: out of range (underflow, overflow, absurd) is refused, naming the value, never a traceback
    (parse_duration, "1e-400ms", "duration '1e-400ms' is out of range"), (parse_duration, "1e400ms", "out of range"),
    (parse_duration, "0.1ns", "out of range"), (parse_duration, "2h", "bad duration"),
    (parse_duration, 1e-300, "bad duration"), (parse_duration, float("inf"), "bad duration"),
    (parse_size, "1e5000KB", "size '1e5000KB' is out of range"), (parse_size, "1e99999999KB", "out of range"),
    (parse_size, "0.4B", "out of range"), (parse_size, 2**41, "out of range"), (parse_size, "inf", "bad size"),
    (parse_macs, "1e30G", "out of range"), (parse_macs, "0.4", "out of range"), (parse_macs, 10**16, "out of range"),
])
def test_bad_unit_strings(parse, text, message):
    with pytest.raises(EdgenasError, match=message) as exc:
        parse(text)
    assert exc.value.fix  # every error says how to write it


def test_target_to_toml_round_trips_every_shipped_target(tmp_path):
    for name in list_targets():
        t = load_target(name)
        p = write(tmp_path, target_to_toml(t), f"{name}-copy.toml")
        assert replace(load_target(str(p)), source_path="") == replace(t, source_path="")


def test_budget_overrides_parse_strings_and_keep_the_rest():
    t = load_target("cortex-m7")
    o = target_with_budgets(t, latency="20ms", sram="256KB", macs="5M", min_accuracy=0.9)
    assert o.budgets == Budgets(latency_s=0.02, sram_bytes=262144, flash_bytes=t.budgets.flash_bytes,
                                macs=5_000_000, min_accuracy=0.9)
    assert o.latency == t.latency and t.budgets.latency_s == pytest.approx(0.1)  # the original is unchanged
    assert target_with_budgets(t) == t
    with pytest.raises(EdgenasError, match="--sram: bad size '32XB'") as exc:
        target_with_budgets(t, sram="32XB")
    assert "320KB" in exc.value.fix
    with pytest.raises(EdgenasError, match="--latency: bad duration"):
        target_with_budgets(t, latency="50")
    with pytest.raises(EdgenasError, match="--min-accuracy: bad accuracy"):
        target_with_budgets(t, min_accuracy=1.2)


def test_latency_override_file_extends_its_base(tmp_path):
    base = load_target("cortex-m7")
    kinds = {**base.latency.kinds, "conv": KindCost(fixed_cycles=120.0, cycles_per_mac=2.25, cycles_per_byte=0.0)}
    model = replace(base.latency, kinds=kinds, per_exit_cycles=150.0)
    note = Provenance(source="edgenas calibrate", measured_on="32F746G-DISCO", date="2026-11-24")
    p = write(tmp_path, latency_override_toml("cortex-m7", "my-disco", model, [note]), "my-disco.toml")
    t = load_target(str(p))
    assert t.name == "my-disco" and t.latency == model
    assert replace(t, name=base.name, latency=base.latency, provenance=base.provenance, source_path="") == \
        replace(base, source_path="")
    assert t.provenance == (*base.provenance, note)


def test_refined_kinds_fall_back_and_channel_block_round_trips(tmp_path):
    from edgenas.targets import KIND_FALLBACK
    t = load_target("x86-host")
    assert t.latency.channel_block == 1
    assert t.latency.for_kind("conv1x1") is t.latency.kinds["conv"]
    assert t.latency.for_kind("dwconv5") is t.latency.kinds["dwconv"]
    assert t.latency.for_kind("act_fused") is t.latency.kinds["act"]
    assert set(KIND_FALLBACK.values()) <= {"conv", "dwconv", "act", "add", "concat"}
    text = ('extends = "x86-host"\nname = "blocked"\n[latency]\nchannel_block = 16\n'
            '[latency.kinds.conv1x1]\nfixed_cycles = 1.0\ncycles_per_mac = 2.0\ncycles_per_byte = 0.0\n')
    p = tmp_path / "blocked.toml"
    p.write_text(text)
    b = load_target(str(p))
    assert b.latency.channel_block == 16 and b.latency.for_kind("conv1x1").cycles_per_mac == 2.0
    assert b.latency.for_kind("conv").cycles_per_mac == t.latency.kinds["conv"].cycles_per_mac
    again = tmp_path / "again.toml"
    again.write_text(latency_override_toml("x86-host", "again", b.latency))
    assert load_target(str(again)).latency == b.latency
    p.write_text(text.replace("channel_block = 16", "channel_block = 0"))
    with pytest.raises(EdgenasError, match="channel_block"):
        load_target(str(p))
    p.write_text(text.replace("conv1x1", "conv2x2"))
    with pytest.raises(EdgenasError, match="not an operator kind"):
        load_target(str(p))


# ------------------------------------------------------------------------------------------------ issue 15
def test_budget_limits_are_accepted_and_one_past_them_refused():
    from edgenas.targets import MAX_DURATION_S, MAX_MACS, MAX_SIZE
    assert parse_duration("1ns") == pytest.approx(1e-9) and parse_duration("3600s") == MAX_DURATION_S
    assert parse_size("1024GiB") == MAX_SIZE == parse_size("1024GB") and parse_size("1B") == 1 and parse_size("0") == 0
    assert parse_macs("1e15") == MAX_MACS and parse_macs("1") == 1
    for parse, text in ((parse_duration, "3601s"), (parse_size, "1025GB"), (parse_macs, "1000001G")):
        with pytest.raises(EdgenasError, match="out of range"):
            parse(text)


@pytest.mark.parametrize("toml, message", [
    ("clock_hz = 1e300", "key 'clock_hz' is out of range"),
    ("clock_hz = 0.5", "key 'clock_hz' is out of range"),
    ("cpi = 1e9", "key 'cpi' is out of range"),
    ("[latency]\nper_exit_cycles = 1e300", "key 'latency.per_exit_cycles' is out of range"),
    ("[budgets]\nlatency = \"1e-400ms\"", "key 'budgets.latency' is invalid: duration '1e-400ms' is out of range"),
    ("[budgets]\nlatency = 0.0", "key 'budgets.latency' is invalid: bad duration"),
    ("[budgets]\nsram = \"1e99999999KB\"", "key 'budgets.sram' is invalid: size '1e99999999KB' is out of range"),
    ("sram_bytes = \"1e5000KB\"", "key 'sram_bytes' is not a size"),
    ("[budgets]\nmacs = 9223372036854775807", "key 'budgets.macs' is invalid"),
    ('name = "my board"', "key 'name': target name 'my board' is not a valid name"),
    ('name = "a\\nsram_bytes = 1"', "is not a valid name"),
])
def test_out_of_range_target_values_are_one_line_errors(tmp_path, toml, message):
    p = write(tmp_path, 'extends = "cortex-m7"\n' + toml + "\n")
    with pytest.raises(EdgenasError) as exc:
        load_target(str(p))
    assert message in one_line_error(exc)


def test_a_file_name_that_is_no_target_name_needs_a_name_key(tmp_path):
    p = write(tmp_path, 'extends = "cortex-m7"\n', "my board.toml")
    with pytest.raises(EdgenasError, match="the file name") as exc:
        load_target(str(p))
    assert 'name = "..."' in exc.value.fix
    p.write_text('extends = "cortex-m7"\nname = "my-board"\n')
    assert load_target(str(p)).name == "my-board"


def test_extends_cycles_are_found_by_resolved_path_and_chains_are_capped(tmp_path):
    from edgenas.targets import MAX_EXTENDS_DEPTH
    (tmp_path / "x").mkdir()
    p = write(tmp_path, 'extends = "../x/a.toml"\n', "x/a.toml")  # the same file under a longer name each time
    with pytest.raises(EdgenasError) as exc:
        load_target(str(p))
    assert "'extends' forms a cycle (a.toml -> a.toml)" in one_line_error(exc)
    write(tmp_path, 'extends = "cortex-m7"\nname = "f0"\n', "f0.toml")
    for i in range(1, MAX_EXTENDS_DEPTH + 1):
        write(tmp_path, f'extends = "f{i - 1}.toml"\nname = "f{i}"\n', f"f{i}.toml")
    assert load_target(str(tmp_path / f"f{MAX_EXTENDS_DEPTH - 2}.toml")).name == f"f{MAX_EXTENDS_DEPTH - 2}"
    with pytest.raises(EdgenasError, match=f"longer than {MAX_EXTENDS_DEPTH} files"):
        load_target(str(tmp_path / f"f{MAX_EXTENDS_DEPTH}.toml"))


def test_written_toml_escapes_every_string(tmp_path):
    base = load_target("cortex-m7")
    hostile = 'line one\n[budgets]\nsram = "1KB"\n"quoted" \\ backslash \x01'
    note = Provenance(source=hostile, notes=hostile)
    p = write(tmp_path, latency_override_toml("cortex-m7", "safe", base.latency, [note]), "safe.toml")
    t = load_target(str(p))
    assert t.provenance[-1] == note and t.budgets == base.budgets
    again = write(tmp_path, target_to_toml(replace(t, description=hostile)), "again.toml")
    assert load_target(str(again)).description == hostile
    with pytest.raises(EdgenasError, match="not a valid name"):
        latency_override_toml("cortex-m7", 'x"\nsram_bytes = "1KB', base.latency)


def test_targets_list_and_show_print_json(capsys):
    import json

    from edgenas.cli import main
    assert main(["targets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == list(SHIPPED)
    m7 = next(t for t in listed if t["name"] == "cortex-m7")
    assert m7["sram_bytes"] == 327680 and m7["latency_budget_s"] == pytest.approx(0.1)
    assert main(["targets", "show", "stm32h743", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "stm32h743" and shown["budgets"]["sram"] == load_target("stm32h743").budgets.sram_bytes
    assert shown["latency"]["kinds"]["default"]["cycles_per_mac"] > 0
