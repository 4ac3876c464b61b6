"""Bad input to every command: one line on stderr that names the problem (and the fix), exit code 2, nothing left
behind. Adding a case is one row of CASES:

    row("search --latency fast", "latency")
    row("export {tmp}/run", "pareto.json", setup=run_copy(lambda run: (run / "pareto.json").write_text("{")))

argv is the command line after `edgenas` (split like a shell would, after the placeholders are filled in):
    {tmp}    a fresh empty folder for this case (the working directory too), where setup writes its bad input
    {run}    a finished tiny search (read-only: copy it with run_copy to break it)
    {model}  the exported model.onnx of that run's --best member; {export} its folder (read-only)
setup(tmp, ctx) prepares the input; ctx has .run, .export and .model. `fragment` must be in the one error line.
Nothing left behind: the files under {tmp} after the command are exactly those setup made, and {run} and {export}
are untouched. `needs` names the external tools a case needs (skipped locally without them, failing in CI).
"""
from __future__ import annotations

import functools
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from edgenas.cli import main as cli_main


@dataclass(frozen=True)
class Ctx:
    run: Path
    export: Path
    model: Path
    compiled: Callable[[str], Path] | None = None  # target name -> {export} compiled for it (built on first use)


@dataclass(frozen=True)
class Case:
    argv: str
    fragment: str
    setup: Callable[[Path, Ctx], None] | None = None
    needs: tuple[str, ...] = field(default=())


def row(argv: str, fragment: str, setup=None, needs: tuple[str, ...] = (), id: str | None = None):
    return pytest.param(Case(argv, fragment, setup, needs), id=id or argv)


# --------------------------------------------------------------------------------------------- setup helpers
def files(contents: dict[str, str | bytes]):
    """setup: write these files (relative to {tmp}; parents created)."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        for name, content in contents.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def npy(name: str, shape):
    """setup: write a zero array of `shape` to {tmp}/name with numpy.save."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        import numpy as np
        np.save(tmp / name, np.zeros(shape, np.float32))
    return setup


def run_copy(change: Callable[[Path], None] | None = None):
    """setup: copy the tiny run to {tmp}/run, then let `change(run)` break it."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        shutil.copytree(ctx.run, tmp / "run")
        if change is not None:
            change(tmp / "run")
    return setup


def export_copy(change: Callable[[Path], None] | None = None):
    """setup: copy the exported folder to {tmp}/export, then let `change(folder)` break it."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        shutil.copytree(ctx.export, tmp / "export")
        if change is not None:
            change(tmp / "export")
    return setup


def compiled_copy(target: str, change: Callable[[Path], None] | None = None):
    """setup: copy {export} compiled for `target` (firmware for cortex-m7, TVM library for x86-host) to {tmp}/build,
    then let `change(folder)` break it."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        shutil.copytree(ctx.compiled(target), tmp / "build")
        if change is not None:
            change(tmp / "build")
    return setup


def edit_json(name: str, edit: Callable[[dict], object]):
    """change for compiled_copy/run_copy/export_copy: rewrite one JSON file as edit(its content)."""
    def change(folder: Path) -> None:
        path = folder / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return change


def write(name: str, content: str | bytes):
    """change for run_copy/export_copy: overwrite one file."""
    def change(folder: Path) -> None:
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return change


def delete(name: str):
    def change(folder: Path) -> None:
        (folder / name).unlink()
    return change


def as_cli_run(change: Callable[[Path], None] | None = None):
    """change for run_copy: give the run the config.json `search --dataset digits` writes (the tiny run's evaluation
    settings have no options), so that `search --out {tmp}/run --resume --dataset digits` opens it; then `change`."""
    def apply(folder: Path) -> None:
        from edgenas.search.driver import SearchConfig
        versions = json.loads((folder / "config.json").read_text())["versions"]
        (folder / "config.json").write_text(json.dumps({**SearchConfig(dataset="digits").to_dict(), "versions": versions}))
        if change is not None:
            change(folder)
    return apply


def checkpoints(edit: Callable[[dict], object]):
    """change for run_copy: replace every member checkpoint by edit(its content)."""
    def change(folder: Path) -> None:
        import torch
        for path in (folder / "checkpoints").glob("*.pt"):
            torch.save(edit(torch.load(path, weights_only=True)), path)
    return change


def measured(*rows: str, models: int = 5, extra: dict[str, str | bytes] | None = None):
    """setup: `models` small distinct ONNX networks {tmp}/m0.onnx.. and {tmp}/m.csv, the header
    `model,latency_ms` then `rows` (e.g. "m0.onnx,1.5"); `extra` files as for files()."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        from tests.onnx_models import conv_model
        for i in range(models):
            conv_model(tmp / f"m{i}.onnx", 1, 4, 8, i + 1, [True] * (i + 1))
        (tmp / "m.csv").write_text("\n".join(["model,latency_ms", *rows]) + "\n")
        files(extra or {})(tmp, ctx)
    return setup


def png(width: int = 8, height: int = 8, seed: int = 0) -> bytes:
    """A real grey PNG, or (width x height over PIL's limit) just the header of a decompression bomb."""
    import io
    import struct
    import zlib
    if width * height > 10**8:  # the header declares the size; PIL refuses it before decoding any pixel
        chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                    + struct.pack(">I", zlib.crc32(kind + data)))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    import numpy as np
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def onnx_file(name: str, kind: str, opset: int = 18):
    """setup: write {tmp}/<name>, a small ONNX model of `kind` (tests/onnx_models.small_model)."""
    def setup(tmp: Path, ctx: Ctx) -> None:
        import onnx

        from tests.onnx_models import small_model
        onnx.save(small_model(kind, opset), str(tmp / name))
    return setup


MCU_TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm")
BOARD = 'name = "board"\nclock_hz = 216e6\nsram_bytes = "320KB"\nflash_bytes = "1MB"\n'

CASES = [
    # search: budgets, targets, data, run folders
    row("search --out {tmp}/r --target no-such-board", "unknown target"),
    row("search --out {tmp}/r --latency fast", "latency"),
    row("search --out {tmp}/r --sram 32XB", "32XB"),
    row("search --out {tmp}/r --sram 1KB", "impossible budgets"),
    row("search --out {tmp}/r --pop-size 0", "--pop-size"),
    row("search --out {tmp}/r --generations 0", "--generations"),
    row("search --out {tmp}/r --supernet-steps 0", "--supernet-steps"),
    row("search --out {tmp}/r --finetune-steps -1", "--finetune-steps"),
    row("search --out {tmp}/r --method zodarts --finetune-steps 10", "--finetune-steps"),
    row("search --out {tmp}/r --method zodarts --C 0", "setting C must be at least 1"),
    row("search --out {tmp}/r --method zodarts --resolution 10", "multiple of 4"),
    row("search --out {tmp}/r --method zodarts --latency 0.05ms", "no zodarts macro fits cortex-m7"),
    row("search --out {tmp}/r --N 2", "--N"),
    row("search --out {tmp}/r --finetune-members first", "--finetune-members"),
    row("search --out {tmp}/r --min-accuracy 1.5", "--min-accuracy"),
    row("search --out {tmp}/r --workers 0", "--workers"),
    row("search --out {tmp}/r --device tpu", "--device"),
    row("search --out {tmp}/r --device cuda:x", "not a GPU index"),
    row("search --out {tmp}/r --ray-address auto", "--executor ray"),
    row("search --out {tmp}/r --method zodarts --workers 2", "--workers"),
    row("search --out {tmp}/r --method zodarts --executor ray", "--executor"),
    row("search --out {tmp}/r --method nas", "--method"),
    row("search --out {tmp}/r --dataset cifar10:{tmp}/no/such/dir", "no/such/dir"),
    row("search --out {tmp}/r --dataset nosuchset", "nosuchset"),
    row("search --out {tmp}/r --target {tmp}/board.toml", "board.toml",
        setup=files({"board.toml": "name = 'board'\nclock_hz = [unclosed\n"}), id="search malformed target toml"),
    row("search --out {tmp}/run", "--resume", setup=run_copy(), id="search into an existing run without --resume"),
    row("search --out {tmp}/run --resume --seed 3", "seed", setup=run_copy(), id="search --resume with other settings"),
    row("search --out {tmp}/junk", "not an edgenas run", setup=files({"junk/notes.txt": "mine"}),
        id="search into a foreign folder"),
    # export: run folders that are missing, corrupt or inconsistent
    row("export {tmp}/no-run --out {tmp}/e", "not found"),
    row("export {run} --candidate 9999 --out {tmp}/e", "9999"),
    row("export {run} --best --candidate 1 --out {tmp}/e", "exclusive"),
    row("export {tmp}/run --out {tmp}/e", "pareto.json", setup=run_copy(write("pareto.json", "{not json")),
        id="export with a corrupt pareto.json"),
    row("export {tmp}/run --out {tmp}/e", "config.json", setup=run_copy(write("config.json", "[]")),
        id="export with a config.json that is not an object"),
    # compile
    row("compile {tmp}/nothing.onnx --out {tmp}/fw", "does not exist"),
    row("compile {tmp}/bad.onnx --out {tmp}/fw", "bad.onnx", setup=files({"bad.onnx": b"\x00not a protobuf"})),
    row("compile {model} --target no-such-board --out {tmp}/fw", "unknown target"),
    row("compile {model} --test-inputs -1 --out {tmp}/fw", "--test-inputs"),
    row("compile {model} --calib-data {tmp}/missing.npy --out {tmp}/fw", "cannot read --calib-data"),
    row("compile {model} --calib-data {tmp}/c.npy --out {tmp}/fw", "calibration data of shape [2, 5]",
        setup=npy("c.npy", (2, 5))),
    row("compile {model} --calib-data no-such-dataset --out {tmp}/fw", "unknown dataset"),
    # profile
    row("profile {tmp} --device usb", "usb"),
    row("profile {tmp}/nothing --device qemu", "nothing"),
    # analyze
    row("analyze {tmp}/nothing.onnx", "not found"),
    row("analyze {tmp}/bad.onnx", "bad.onnx", setup=files({"bad.onnx": b"garbage"})),
    row("analyze {model} --target no-such-board", "unknown target"),
    # targets
    row("targets show no-such-board", "unknown target"),
    # calibrate
    row("calibrate --target cortex-m7 {tmp}/nothing.csv", "nothing.csv"),
    row("calibrate --target cortex-m7 {tmp}/empty.csv", "empty.csv", setup=files({"empty.csv": ""})),
    # ---- issue 15, profile: untrusted firmware and host folders (rows below this line)
    row("profile {tmp}/build", "reference.json is not valid JSON", needs=MCU_TOOLS,
        setup=compiled_copy("cortex-m7", write("reference.json", "{not json")), id="profile a corrupt reference.json"),
    row("profile {tmp}/build", "'exits' is not a", needs=MCU_TOOLS, id="profile a reference.json with too few exits",
        setup=compiled_copy("cortex-m7", edit_json("reference.json", lambda ref: {**ref, "exits": ref["exits"][:1]}))),
    row("profile {tmp}/build", "'logits' is missing", needs=MCU_TOOLS, id="profile a reference.json without logits",
        setup=compiled_copy("cortex-m7", edit_json("reference.json", lambda ref: {"exits": ref["exits"]}))),
    row("profile {tmp}/build", "holds a JSON list", needs=MCU_TOOLS, id="profile a firmware.json that is not an object",
        setup=compiled_copy("cortex-m7", write("firmware.json", "[]"))),
    row("profile {tmp}/build", "not a file name in the folder", needs=MCU_TOOLS,
        setup=compiled_copy("cortex-m7", edit_json("firmware.json", lambda fw: {**fw, "elf": "/bin/true"})),
        id="profile a firmware.json whose ELF is outside the folder"),
    row("profile {tmp}/build", "semihosting build", needs=MCU_TOOLS, id="profile a semihosting firmware",
        setup=compiled_copy("cortex-m7", edit_json("firmware.json", lambda fw: {k: v for k, v in fw.items()
                                                                               if k != "report_channel"}))),
    row("profile {tmp}/firmware.elf", "is a file, not a compiled folder", needs=("qemu-system-arm",),
        setup=files({"firmware.elf": b"\x7fELF"}), id="profile a file, not a folder"),
    row("profile {tmp}/build --out {tmp}/build/firmware.json/p.json", "cannot write --out", needs=MCU_TOOLS,
        setup=compiled_copy("cortex-m7"), id="profile --out below a file"),
    row("profile {tmp}/build --out {tmp}/build", "is a folder", needs=MCU_TOOLS, setup=compiled_copy("cortex-m7"),
        id="profile --out naming a folder"),
    row("profile {tmp}/build --target x86-host --device host", "does not match the SHA-256", needs=("gcc",),
        setup=compiled_copy("x86-host", write("model.so", b"\x7fELF not the library compile wrote")),
        id="profile host with a model.so that compile did not write"),
    row("profile {tmp}/build --target x86-host --device host", "records no SHA-256", needs=("gcc",),
        setup=compiled_copy("x86-host", edit_json("build.json", lambda b: {**b, "sha256": {}})),
        id="profile host with a build.json without hashes"),
    row("profile {tmp}/build --target x86-host --device host", "holds a JSON list", needs=("gcc",),
        setup=compiled_copy("x86-host", write("reference.json", "[]")),
        id="profile host with a corrupt reference.json"),
    row("profile {tmp}/build --target x86-host --device host", "'inputs' is not a", needs=("gcc",),
        setup=compiled_copy("x86-host", edit_json("reference.json", lambda ref: {**ref, "inputs": [[0.5]]})),
        id="profile host with reference inputs of the wrong shape"),
    row("profile {tmp}/model.so --target x86-host --device host", "is a file, not a compiled folder",
        setup=files({"model.so": b"\x7fELF"}), id="profile host given a file, not a folder"),
    # ---- issue 15, run folders: resume, locks, corrupt archives, disk full (rows below this line)
    row("export {tmp}/run --out {tmp}/e", "line 1 is not a JSON object", setup=run_copy(write("archive.jsonl", "[1]\n{}\n")),
        id="export with an archive line that is not an object"),
    row("export {tmp}/run --out {tmp}/e", "line 1 lacks arch", setup=run_copy(write("archive.jsonl", '{"id": 0}\n')),
        id="export with archive records that lack keys"),
    row("export {tmp}/run --out {tmp}/e", "archive not found", setup=run_copy(delete("archive.jsonl")),
        id="export with archive.jsonl deleted"),
    row("export {tmp}/run --out {tmp}/e", "not a JSON object", setup=run_copy(write("pareto.json", "[3]")),
        id="export with a pareto.json that is not an object"),
    row("export {tmp}/run --out {tmp}/e", "member ids", setup=run_copy(write("pareto.json", '{"members": "all"}')),
        id="export with a pareto.json without member ids"),
    row("export {tmp}/run --out {tmp}/e", "lacks dataset", setup=run_copy(write("config.json", '{"target": "cortex-m7"}')),
        id="export with a config.json that lacks the dataset"),
    row("export {tmp}/run --out {tmp}/e", "does not match its architecture",
        setup=run_copy(checkpoints(lambda ckpt: {**ckpt, "state_dict": {}})),
        id="export with checkpoints whose weights are not their architecture's"),
    row("export {tmp}/run --out {tmp}/e", "not an edgenas candidate checkpoint",
        setup=run_copy(checkpoints(lambda ckpt: ckpt["state_dict"])), id="export with checkpoints in another format"),
    row("export {tmp}/run --out {tmp}/e", "holds candidate",
        setup=run_copy(checkpoints(lambda ckpt: {**ckpt, "id": ckpt["id"] + 1000})),
        id="export with checkpoints of other candidates"),
    row("export {run} --out {tmp}/file/new/e", "which is a file", setup=files({"file": "mine"}),
        id="export --out below a file"),
    row("search --out {tmp}/file --dataset digits", "is a file", setup=files({"file": "mine"}),
        id="search --out naming a file"),
    row("search --out {tmp}/run --resume --dataset digits", "supernet.pt",
        setup=run_copy(as_cli_run(write("supernet.pt", b"not a state_dict"))), id="search --resume with a corrupt supernet.pt"),
    row("search --out {tmp}/run --resume --dataset digits", "line 1 is not valid JSON",
        setup=run_copy(as_cli_run(write("archive.jsonl", '{"id": 0,\n{"id": 1}\n'))),
        id="search --resume with a corrupt archive line"),
    row("search --out {tmp}/run --resume --dataset digits", "line 1 lacks key",
        setup=run_copy(as_cli_run(write("archive.jsonl", '{"id": 0}\n'))), id="search --resume with archive records that lack keys"),
    # ---- issue 15, targets, budgets, calibrate, datasets (rows below this line)
    row("search --out {tmp}/r --latency 1e-400ms", "1e-400ms"),
    row("search --out {tmp}/r --sram 1e5000KB", "1e5000KB"),
    row("search --out {tmp}/r --sram 1e99999999KB", "1e99999999KB"),
    row("search --out {tmp}/r --flash 0.1B", "0.1B"),
    row("search --out {tmp}/r --macs 1e30G", "1e30G"),
    row("analyze {model} --latency 1e400ms --json", "1e400ms"),
    row("search --out {tmp}/r --target {tmp}/board.toml", "1e-400ms",
        setup=files({"board.toml": 'extends = "cortex-m7"\n[budgets]\nlatency = "1e-400ms"\n'}),
        id="target file with an underflowing latency budget"),
    row("targets show {tmp}/board.toml", "clock_hz",
        setup=files({"board.toml": 'extends = "cortex-m7"\nclock_hz = 1e300\n'}), id="target file with an absurd clock"),
    row("targets show {tmp}/board.toml", "cycles_per_mac",
        setup=files({"board.toml": 'extends = "cortex-m7"\n[latency.kinds.conv]\nfixed_cycles = 1.0\n'
                                   'cycles_per_mac = 1e300\ncycles_per_byte = 0.0\n'}),
        id="target file with an absurd latency coefficient"),
    row("targets show {tmp}/x/a.toml", "cycle", setup=files({"x/a.toml": 'extends = "../x/a.toml"\n'}),
        id="target extends itself through ../"),
    row("targets show {tmp}/a.toml", "a.toml -> b.toml -> a.toml",
        setup=files({"a.toml": 'extends = "b.toml"\n', "b.toml": 'extends = "./a.toml"\n'}),
        id="targets extend each other"),
    row("targets show {tmp}/board.toml", "not a valid name",
        setup=files({"board.toml": 'extends = "cortex-m7"\nname = "../../etc/board"\n'}),
        id="target name with slashes"),
    row("targets --json show cortex-m7", "targets --json"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "1 distinct model", setup=measured("m0.onnx,1.5"),
        id="calibrate on one row"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "2 distinct models",
        setup=measured("m0.onnx,1.5", "m1.onnx,2.5"), id="calibrate on two rows"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "1 distinct model (6 measured)",
        setup=measured(*["m0.onnx,1.5"] * 6), id="calibrate on six copies of one model"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "m.csv:4: latency_ms '1e308' ms is out of range",
        setup=measured("# bench 3", "m0.onnx,1.5", "m1.onnx,1e308", "m2.onnx,2", "m3.onnx,3", "m4.onnx,4"),
        id="calibrate with a 1e308 ms row"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "m.csv:2: latency_ms must be a positive",
        setup=measured("m0.onnx,nan", "m1.onnx,2", "m2.onnx,2", "m3.onnx,3", "m4.onnx,4"), id="calibrate with a nan row"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "m.csv:3: latency_ms must be a positive",
        setup=measured("m0.onnx,1", "m1.onnx,inf", "m2.onnx,2", "m3.onnx,3", "m4.onnx,4"), id="calibrate with an inf row"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "m.csv:2: latency_ms must be a positive",
        setup=measured("m0.onnx,-1", "m1.onnx,2", "m2.onnx,2", "m3.onnx,3", "m4.onnx,4"),
        id="calibrate with a negative row"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml --name 'x\nsram_bytes = \"1KB\"'", "--name",
        setup=measured(*[f"m{i}.onnx,{i + 1}" for i in range(5)]), id="calibrate --name with a newline"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out '{tmp}/my board.toml'", "--name",
        setup=measured(*[f"m{i}.onnx,{i + 1}" for i in range(5)]), id="calibrate --out whose stem is no target name"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/notes.txt/o.toml", "notes.txt is not a folder",
        setup=measured(*[f"m{i}.onnx,{i + 1}" for i in range(5)], extra={"notes.txt": "mine"}),
        id="calibrate --out under a file"),
    row("calibrate --target cortex-m7 {tmp}/m.csv --out {tmp}/o.toml", "o.toml: the file is read-only",
        setup=lambda tmp, ctx: (measured(*[f"m{i}.onnx,{i + 1}" for i in range(5)], extra={"o.toml": "mine"})(tmp, ctx),
                                (tmp / "o.toml").chmod(0o444)), id="calibrate --out onto a read-only file"),
    row("search --out {tmp}/r --dataset imagefolder:{tmp}/imgs", "at least 2",
        setup=files({f"imgs/cat/{i}.png": png(seed=i) for i in range(5)}), id="imagefolder with one class"),
    row("search --out {tmp}/r --dataset imagefolder:{tmp}/imgs", "bomb.png",
        setup=files({**{f"imgs/{c}/{i}.png": png(seed=i) for c in "ab" for i in range(5)},
                     "imgs/b/bomb.png": png(100_000, 100_000)}), id="imagefolder with a decompression bomb"),
    # ---- issue 15, compile and analyze (rows below this line)
    row("compile {tmp}/lstm.onnx --out {tmp}/new/a/b/fw", "LSTM", setup=onnx_file("lstm.onnx", "lstm"),
        needs=MCU_TOOLS[:1], id="compile an LSTM for an MCU"),
    row("compile {tmp}/lstm.onnx --target x86-host --out {tmp}/new/a/b/fw", "LSTM",
        setup=onnx_file("lstm.onnx", "lstm"), id="compile an LSTM for x86-host"),
    row("compile {tmp}/new.onnx --out {tmp}/fw", "opset 99", setup=onnx_file("new.onnx", "relu", opset=99),
        needs=MCU_TOOLS[:1], id="compile an opset newer than supported for an MCU"),
    row("compile {tmp}/new.onnx --target x86-host --out {tmp}/fw", "opset 99",
        setup=onnx_file("new.onnx", "relu", opset=99), id="compile an opset newer than supported for x86-host"),
    row("compile {tmp}/nms.onnx --target x86-host --out {tmp}/fw", "NonMaxSuppression",
        setup=onnx_file("nms.onnx", "nms"), id="compile NonMaxSuppression for x86-host"),
    row("compile {tmp}/nms.onnx --out {tmp}/fw", "NonMaxSuppression", setup=onnx_file("nms.onnx", "nms"),
        needs=MCU_TOOLS[:1], id="compile NonMaxSuppression for an MCU"),
    row("compile {tmp}/zero.onnx --out {tmp}/fw", "zero-sized", setup=onnx_file("zero.onnx", "zero"),
        needs=MCU_TOOLS[:1], id="compile a zero-sized input for an MCU"),
    row("compile {tmp}/zero.onnx --target x86-host --out {tmp}/fw", "zero-sized", setup=onnx_file("zero.onnx", "zero"),
        id="compile a zero-sized input for x86-host"),
    row("compile {tmp}/big.onnx --out {tmp}/new/a/b/fw", "does not fit target cortex-m7: flash",
        setup=onnx_file("big.onnx", "matmul1100"), needs=MCU_TOOLS[:1], id="compile a model over 4 MiB"),
    row("compile {tmp}/mid.onnx --out {tmp}/new/a/b/fw", "does not fit target cortex-m7: flash",
        setup=onnx_file("mid.onnx", "matmul384"), needs=MCU_TOOLS[:1],
        id="compile an over-budget model without --keep-failed"),
    row("compile {tmp}/m.onnx --out {tmp}/file.txt/fw", "is a file", setup=lambda tmp, ctx: (
        onnx_file("m.onnx", "relu")(tmp, ctx), (tmp / "file.txt").write_text("mine")), needs=MCU_TOOLS[:1],
        id="compile --out under a file"),
    row("compile {tmp}/m.onnx --target x86-host --out {tmp}/file.txt/fw", "is a file", setup=lambda tmp, ctx: (
        onnx_file("m.onnx", "relu")(tmp, ctx), (tmp / "file.txt").write_text("mine")),
        id="compile --out under a file for x86-host"),
    row("compile {tmp}/m.onnx --out /proc/edgenas-fw", "cannot write the output folder",
        setup=onnx_file("m.onnx", "relu"), needs=MCU_TOOLS[:1], id="compile --out in an unwritable folder"),
    row("compile {model} --target x86-host --keep-failed --out {tmp}/fw", "--keep-failed",
        id="compile --keep-failed for a host target"),
    row("compile {tmp}/two.onnx --out {tmp}/fw", "2 inputs (a, b)", setup=onnx_file("two.onnx", "two"),
        needs=MCU_TOOLS[:1], id="compile a model with two inputs for an MCU"),
    row("compile {tmp}/two.onnx --target x86-host --out {tmp}/fw", "2 inputs (a, b)",
        setup=onnx_file("two.onnx", "two"), id="compile a model with two inputs for x86-host"),
    row("compile {tmp}/b5.onnx --target x86-host --out {tmp}/fw", "batch size 5", setup=onnx_file("b5.onnx", "batch5"),
        id="compile a model of batch 5"),
    row("analyze {tmp}/two.onnx", "2 inputs (a, b)", setup=onnx_file("two.onnx", "two"),
        id="analyze a model with two inputs"),
    row("analyze {tmp}/lstm.onnx", "--allow-unknown", setup=onnx_file("lstm.onnx", "lstm"), id="analyze an LSTM"),
    row("analyze {tmp}/nms.onnx", "NonMaxSuppression", setup=onnx_file("nms.onnx", "nms"),
        id="analyze NonMaxSuppression"),
    row("analyze {tmp}/zero.onnx", "zero-sized", setup=onnx_file("zero.onnx", "zero"), id="analyze a zero-sized input"),
    row("analyze {tmp}/new.onnx", "opset 99", setup=onnx_file("new.onnx", "relu", opset=99),
        id="analyze an opset newer than supported"),
    # ---- issue 15, output in pipes and --json (rows below this line)
]


@pytest.fixture(scope="module")
def ctx(tiny_run, tiny_export, tmp_path_factory) -> Ctx:
    return Ctx(run=tiny_run[0], export=tiny_export, model=tiny_export / "model.onnx",
               compiled=functools.cache(lambda target: compile_tiny(tiny_export, target, tmp_path_factory)))


def compile_tiny(export: Path, target: str, tmp_path_factory) -> Path:
    """{export} compiled for `target` (firmware without the board build, or a TVM host library). Read-only.
    The test inputs are image-like (uniform in [0, 1]), as `edgenas compile` takes them from the dataset."""
    import numpy as np

    from edgenas.compile import compile_mcu
    from edgenas.compile.host import compile_host
    from edgenas.compile.mcu import load_model_source
    from edgenas.targets import load_target
    shape = load_model_source(export, "float32").input_shape
    x = np.random.default_rng(0).uniform(0.0, 1.0, (4, *shape[1:])).astype(np.float32)
    out = tmp_path_factory.mktemp("compiled") / target
    if load_target(target).kind == "mcu":
        compile_mcu(export, load_target(target), out, build_board=False, test_inputs=x)
    else:
        compile_host(export, target, out, test_inputs=x)
    return out


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case: Case, ctx: Ctx, tmp_path, capsys, monkeypatch,
                                                         require_tools):
    if case.needs:
        require_tools(case.needs, " ".join(case.needs))
    tmp = tmp_path / "case"
    tmp.mkdir()
    if case.setup is not None:
        case.setup(tmp, ctx)
    monkeypatch.chdir(tmp)
    before = {name: snapshot(path) for name, path in (("tmp", tmp), ("run", ctx.run), ("export", ctx.export))}
    argv = shlex.split(case.argv.format(tmp=tmp, run=ctx.run, model=ctx.model, export=ctx.export))
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert case.fragment in err[0], err[0]
    after = {name: snapshot(path) for name, path in (("tmp", tmp), ("run", ctx.run), ("export", ctx.export))}
    assert after == before, "left behind or changed: " + json.dumps(
        {k: sorted(set(after[k]) ^ set(before[k]) or [n for n in after[k] if after[k][n] != before[k].get(n)])
         for k in after if after[k] != before[k]})


def test_the_table_covers_every_command():
    commands = {c.values[0].argv.split()[0] for c in CASES}
    assert commands >= {"search", "export", "compile", "profile", "analyze", "targets", "calibrate"}
