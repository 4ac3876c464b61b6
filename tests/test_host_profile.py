"""Profiling TVM host builds: onnxruntime and TVM per exit / node / kernel, on this machine (`--device host`) and
through the ssh device's transport, here the local transport that runs the same runner.py in a subprocess."""
import json
import shutil
import statistics
import subprocess
import sys

import pytest

from edgenas.cli import main
from edgenas.compile.host import compile_host
from edgenas.errors import EdgenasError
from edgenas.profile.host import profile_device, profile_host, summary
from edgenas.profile.ssh import LocalTransport, SshTransport, parse_device, profile_ssh

N_TEST = 12


@pytest.fixture(scope="module")
def build(exit_net_export, tmp_path_factory):
    export_dir, x_test = exit_net_export(N_TEST)
    out = tmp_path_factory.mktemp("build") / "tvm-x86-host"
    compile_host(export_dir, "x86-host", out, test_inputs=x_test)
    return out


@pytest.fixture(scope="module")
def host_profile(build):
    return profile_host(build, "x86-host", threads=(1, 2), repeats=3, max_seconds=6)


def shape_of(doc):
    """The JSON structure: keys of dicts (recursively), lists by their first element, leaves by type."""
    if isinstance(doc, dict):
        return {k: shape_of(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [shape_of(doc[0])] if doc else []
    if doc is None:  # nullable numbers, e.g. the stage of a node outside every stage (which node comes first varies)
        return "number"
    return "number" if isinstance(doc, (int, float)) and not isinstance(doc, bool) else type(doc).__name__


def test_host_profile_has_exits_nodes_and_kernels(host_profile):
    doc = host_profile
    assert doc["device"] == "host" and doc["target"] == "x86-host" and doc["threads"] == [1, 2]
    for engine in ("onnxruntime", "tvm"):
        assert set(doc[engine]["runs"]) == {"1", "2"}
        for run in doc[engine]["runs"].values():
            exits = run["exits"]
            assert set(exits) == {"0", "1", "2"}
            assert all(r["latency_us"]["median"] > 0 for r in exits.values())
    ort1 = doc["onnxruntime"]["runs"]["1"]
    assert {n["stage"] for n in ort1["nodes"]} >= {0, 1, 2}         # nodes inside the If branches are seen
    assert set(ort1["exits"]["0"]["node_us_by_stage"]) <= {"0", "exit_logic"}  # stage 1/2 never ran for exit 0
    assert {"0", "1", "2"} <= set(ort1["exits"]["2"]["node_us_by_stage"])
    tvm1 = doc["tvm"]["runs"]["1"]
    assert tvm1["kernels"] and all(k["mean_us"] > 0 for k in tvm1["kernels"])
    calls = [tvm1["exits"][e]["kernel_calls"] for e in ("0", "1", "2")]
    assert calls[0] < calls[1] < calls[2]
    for name, c in doc["check"].items():
        assert c["exit_agreement"] == 1.0 and c["max_abs_diff"] <= 1e-4, name


def test_host_profile_records_the_timing_protocol_and_its_outcome(host_profile):
    """Every input's latency is the protocol's estimate with its interval; the profile says whether the CI target
    was met and its noise floor, and the summary says so too."""
    doc = host_profile
    t = doc["timing"]
    assert t["rel_ci"] == 0.02 and t["confidence"] == 0.95 and t["min_rounds"] == 3 and t["max_seconds"] == 6
    assert isinstance(t["converged"], bool) and t["unit"] == "us"
    items = [r for e in ("onnxruntime", "tvm") for run in doc[e]["runs"].values() for r in run["per_input"]]
    assert len(items) == 2 * 2 * N_TEST
    assert t["items_not_converged"] == sum(not r["timing"]["converged"] for r in items)
    assert t["converged"] == (t["items_not_converged"] == 0)
    for r in items:
        tr = r["timing"]
        assert r["latency_us"] == tr["estimate"] == (tr["p10"] if tr["one_sided"] else tr["median"]) > 0
        assert tr["unit"] == "us" and tr["n"] >= 1 and tr["batch"] >= 1
        if tr["ci_low"] is not None:
            assert tr["ci_low"] <= tr["median"] <= tr["ci_high"]
            assert tr["converged"] == (tr["ci_rel_halfwidth"] <= 0.02)
    floors = [tr["timing"]["ci_rel_halfwidth"] for tr in items if tr["timing"]["ci_rel_halfwidth"] is not None]
    assert t["noise_floor"] == pytest.approx(statistics.median(floors))
    # one thread: both engines interleaved in one set of rounds; two threads: one engine at a time
    assert doc["onnxruntime"]["runs"]["1"]["timing"]["interleaved_with"] == ["onnxruntime", "tvm"]
    assert doc["tvm"]["runs"]["2"]["timing"]["interleaved_with"] == ["tvm"]
    text = summary(doc)
    assert "CI target +-2 %" in text and "noise floor" in text
    assert ("NOT met" in text) == (not t["converged"])


def test_runtime_ort_measures_only_onnxruntime(build):
    doc = profile_host(build, "x86-host", threads=(1,), repeats=2, max_seconds=2, runtime="ort", rel_ci=0.1)
    assert doc["engines"] == ["onnxruntime"] and "tvm" not in doc
    assert set(doc["check"]) == {"onnxruntime_vs_reference"}
    assert doc["onnxruntime"]["runs"]["1"]["timing"]["interleaved_with"] == ["onnxruntime"]
    assert doc["timing"]["rel_ci"] == 0.1


def test_ssh_profile_through_the_local_transport_has_the_same_structure(build, host_profile):
    doc = profile_ssh(build, "x86-host", LocalTransport(), threads=(1, 2), repeats=2, max_seconds=4)
    assert doc["device"] == "local"
    a, b = shape_of(doc), shape_of(host_profile)
    a.pop("device"), b.pop("device")
    assert a == b
    assert doc["check"] == {k: doc["check"][k] for k in host_profile["check"]}
    assert all(c["exit_agreement"] == 1.0 for c in doc["check"].values())


def test_ssh_transport_uses_argument_lists_and_quotes_remote_arguments(monkeypatch, build):
    seen = []

    def fake_run(cmd, **kwargs):
        assert isinstance(cmd, list) and not kwargs.get("shell")
        seen.append(cmd)
        if "mktemp" in cmd[-1]:  # the board is down
            return subprocess.CompletedProcess(cmd, 255, stdout="", stderr="ssh: connect to host board: refused")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")
    t = parse_device("ssh:pi@board:2222")
    assert isinstance(t, SshTransport) and t.destination == "pi@board" and t.port == 2222
    with pytest.raises(EdgenasError, match="cannot reach pi@board") as err:
        profile_ssh(build, "x86-host", t)
    assert "\n" not in str(err.value)
    cmd = seen[0]
    assert cmd[0] == "ssh" and "pi@board" in cmd and cmd[cmd.index("-p") + 1] == "2222"
    assert cmd[-1] == "mktemp -d /tmp/edgenas-profile.XXXXXX"
    t.run(["python3", "/tmp/a b/runner.py", "x; rm -rf ~"])
    assert seen[-1][-1] == "python3 '/tmp/a b/runner.py' 'x; rm -rf ~'"
    with pytest.raises(EdgenasError, match="bad ssh destination"):
        parse_device("ssh:-oProxyCommand=evil")


def test_profile_errors_are_one_line(build, tmp_path, capsys):
    with pytest.raises(EdgenasError, match="does not exist"):
        profile_host(tmp_path / "missing", "x86-host")
    with pytest.raises(EdgenasError, match="built for target x86-host"):
        profile_device(build, "rpi4", "host")
    fake = tmp_path / "arm-build"
    shutil.copytree(build, fake)
    doc = json.loads((fake / "build.json").read_text())
    (fake / "build.json").write_text(json.dumps(dict(doc, library_arch="aarch64")))
    with pytest.raises(EdgenasError, match="ssh:USER@HOST"):
        profile_host(fake, "x86-host")
    with pytest.raises(EdgenasError, match="bad thread count"):
        profile_ssh(build, "x86-host", LocalTransport(), threads=("1", "two"))
    with pytest.raises(EdgenasError, match="CI target"):
        profile_host(build, "x86-host", rel_ci=0.0)
    with pytest.raises(EdgenasError, match="unknown runtime"):
        profile_ssh(build, "x86-host", LocalTransport(), runtime="onnx")
    with pytest.raises(EdgenasError, match="max_seconds"):
        profile_device(build, "x86-host", "host", max_seconds=-1)
    assert main(["profile", str(tmp_path / "missing"), "--target", "x86-host", "--device", "host"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_cli_profile_host_writes_json(build, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", str(build), "--target", "x86-host", "--device", "host", "--out", str(out),
                 "--threads", "1", "--runtime", "tvm", "--ci", "0.05", "--max-seconds", "2", "--repeats", "4"]) == 0
    doc = json.loads(out.read_text())
    assert doc["device"] == "host" and set(doc["tvm"]["runs"]) == {"1"} and "onnxruntime" not in doc
    assert doc["timing"]["rel_ci"] == 0.05 and doc["timing"]["min_rounds"] == 4
    captured = capsys.readouterr()
    assert json.loads(captured.out) == doc
    assert "CI target +-5 %" in captured.err and "noise floor" in captured.err
    assert main(["profile", str(build), "--target", "x86-host", "--device", "host", "--runtime", "onnx"]) == 2


CONSTRUCTOR_LIBRARY = r"""
#include <stdio.h>
__attribute__((constructor)) static void on_load(void) {  /* runs when the library is loaded */
  FILE *f = fopen(MARKER, "w");
  if (f) { fputs("constructor ran\n", f); fclose(f); }
}
"""


def test_profile_loads_no_library_that_compile_did_not_write(build, tmp_path, capsys, require_tools):
    """model.so is code: a library swapped into a build folder is refused (one line, exit 2) before it is loaded,
    so its constructor never runs."""
    require_tools(("gcc",), "gcc")
    marker = tmp_path / "constructor-ran.txt"
    (tmp_path / "evil.c").write_text(CONSTRUCTOR_LIBRARY)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(tmp_path / "evil.c"), "-o",
                    str(tmp_path / "evil.so")], check=True, capture_output=True)
    forged = tmp_path / "forged"
    shutil.copytree(build, forged)
    shutil.copyfile(tmp_path / "evil.so", forged / "model.so")
    out = tmp_path / "p.json"
    assert main(["profile", str(forged), "--target", "x86-host", "--device", "host", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "SHA-256" in err[0] and "model.so" in err[0], err
    assert not marker.exists() and not out.exists()
    with pytest.raises(EdgenasError, match="SHA-256"):
        profile_ssh(forged, "x86-host", LocalTransport(), threads=(1,), repeats=1)
    assert not marker.exists()
    # loading that library does run its constructor: the check above can fail
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(forged / 'model.so')!r})"], check=True)
    assert marker.read_text() == "constructor ran\n"


@pytest.mark.parametrize("change,match", [
    (lambda doc: doc.pop("sha256"), "sha256"),
    (lambda doc: doc["sha256"].pop("model.so"), "records no SHA-256"),
    (lambda doc: doc["sha256"].update({"model.onnx": "0" * 64}), "model.onnx does not match"),
    (lambda doc: doc.update(library="/usr/lib/other.so"), "names library"),
    (lambda doc: doc.update(input_shape=[1, "x"]), "input_shape"),
])
def test_profile_refuses_a_build_report_it_cannot_trust(build, tmp_path, change, match):
    folder = tmp_path / "build"
    shutil.copytree(build, folder)
    doc = json.loads((folder / "build.json").read_text())
    change(doc)
    (folder / "build.json").write_text(json.dumps(doc))
    with pytest.raises(EdgenasError, match=match) as err:
        profile_host(folder, "x86-host", threads=(1,), repeats=1)
    assert "\n" not in str(err.value)


def test_compile_records_the_sha256_of_what_profile_loads(build):
    import hashlib
    doc = json.loads((build / "build.json").read_text())
    for name in ("model.so", "model.onnx"):
        assert doc["sha256"][name] == hashlib.sha256((build / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("device", ["host", "qemu"])
def test_unwritable_out_fails_before_the_run(monkeypatch, tmp_path, capsys, device):
    import edgenas.profile.host
    import edgenas.profile.qemu

    def must_not_run(*args, **kwargs):
        raise AssertionError("the profile ran although its --out cannot be written")
    monkeypatch.setattr(edgenas.profile.host, "profile_device", must_not_run)
    monkeypatch.setattr(edgenas.profile.qemu, "profile_qemu", must_not_run)
    (tmp_path / "file").write_text("mine")
    target = "x86-host" if device == "host" else "cortex-m7"
    argv = ["profile", str(tmp_path), "--target", target, "--device", device,
            "--out", str(tmp_path / "file" / "p.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write --out" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
