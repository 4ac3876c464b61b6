"""Firmware project for a Cortex-M target: files, Makefile, build with arm-none-eabi-gcc, size report.

A project folder holds everything needed to rebuild without edgenas: the generated C (model.c, weights.c,
test_io.c, headers), the TVM kernels (kernels.o for the target CPU, or kernels.c), the fixed C files from
`mcu_files/` (startup, runtime stubs, harness, UART retarget), the TVM/dlpack headers the kernels and driver
include, linker scripts and a Makefile. `build_firmware` runs the same compiler commands as the Makefile itself
(argument lists, no `make` needed) and writes `firmware.elf` + `firmware.map` (QEMU build: APB timer, QEMU's
memory map) or `firmware-board.elf` + `firmware-board.map` (real board: DWT cycle counter, the target's memory).
Both report over the UART and link newlib without semihosting (nosys.specs): a firmware image reaches nothing on
the host, and QEMU runs it with semihosting disabled (`edgenas.profile.qemu`).

Size figures come from the linker's output: `arm-none-eabi-size -A` for section totals and the map file for the
split into weights, kernels, driver, activation arena, kernel workspace, harness, C library.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Mapping, Sequence

from edgenas.errors import EdgenasError

GCC = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"
QEMU = "qemu-system-arm"
DEBIAN_PACKAGES = {GCC: "gcc-arm-none-eabi", SIZE: "binutils-arm-none-eabi", QEMU: "qemu-system-arm"}
# -mfpu per core; None: no FPU (soft float). The LLVM kernels must use the same float ABI (tvm_target mfloat-abi).
CPU_FPU = {"cortex-m4": "fpv4-sp-d16", "cortex-m7": "fpv5-d16", "cortex-m33": "fpv5-sp-d16",
           "cortex-m0": None, "cortex-m0plus": None, "cortex-m3": None}
# QEMU's MPS2 boards (an385/an386/an500/an505...): 4 MiB SSRAM for code at 0, 4 MiB for data at 0x20000000.
QEMU_MEMORY = {"flash_origin": "0x00000000", "flash_length": "4M", "ram_origin": "0x20000000", "ram_length": "4M"}
# Real board: flash and SRAM where STM32 parts put them; check against your part's reference manual.
BOARD_ORIGINS = {"flash_origin": "0x08000000", "ram_origin": "0x20000000"}
HEAP_BYTES = 4096  # newlib stdio buffers for the harness's printf
STACK_BYTES = 16384  # main stack reserve (kernels keep register tiles and small TIR buffers on it)
TVM_HEADERS = {"tvm_ffi": ("dlpack/dlpack.h", "tvm/ffi/c_api.h", "tvm/ffi/extra/c_env_api.h"),
               "tvm": ("tvm/runtime/base.h", "tvm/runtime/c_backend_api.h")}
FIXED_SOURCES = ("startup.c", "tvm_stubs.c", "harness.c", "uart_retarget.c")
FIXED_HEADERS = ("harness_report.h",)  # included by harness.c and hosted_main.c
GENERATED_SOURCES = ("model.c", "weights.c", "test_io.c")
VARIANTS = {"qemu": ("firmware", ()), "board": ("firmware-board", ("-DEDGENAS_BOARD",))}


# ------------------------------------------------------------------------------------------------ tools
def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EdgenasError(f"{name} not found", f"install the Debian package {DEBIAN_PACKAGES[name]}, "
                                                f"or run `make setup` as root")
    return path


def require_newlib(gcc: str, cpu_flags: Sequence[str]) -> None:
    """arm-none-eabi-gcc without newlib cannot link: gcc prints a bare name for a library it cannot find."""
    for lib in ("libc.a", "libnosys.a"):
        out = subprocess.run([gcc, *cpu_flags, f"-print-file-name={lib}"], capture_output=True, text=True)
        if out.returncode != 0 or not Path(out.stdout.strip()).is_absolute():
            raise EdgenasError(f"newlib for arm-none-eabi not found ({lib})",
                               "install the Debian package libnewlib-arm-none-eabi, or run `make setup` as root")


def cpu_flags(target) -> list[str]:
    if target.cpu not in CPU_FPU:
        raise EdgenasError(f"target {target.name}: no firmware build for cpu '{target.cpu}'",
                           f"use one of {', '.join(CPU_FPU)}")
    fpu = CPU_FPU[target.cpu]
    abi = str(target.tvm_target.get("mfloat-abi", "hard" if fpu else "soft"))
    if fpu is None or abi == "soft":
        return [f"-mcpu={target.cpu}", "-mthumb", "-mfloat-abi=soft"]
    return [f"-mcpu={target.cpu}", "-mthumb", f"-mfpu={fpu}", f"-mfloat-abi={abi}"]


C_FLAGS = ("-O2", "-ffunction-sections", "-fdata-sections", "-DEDGENAS_PROFILE", "-I.", "-Iinclude")


def link_flags(stem: str) -> list[str]:
    # nosys, not rdimon: semihosting would give the firmware the host's files (uart_retarget.c does stdout and exit)
    return ["-nostartfiles", "--specs=nosys.specs", "-T", f"{stem}.ld", "-Wl,--gc-sections", f"-Wl,-Map={stem}.map",
            "-lm", "-lc", "-lnosys"]


def qemu_command(elf: Path, machine: str, icount_shift: int = 0) -> list[str]:
    """QEMU running a firmware image with nothing of the host: no semihosting, network, monitor or display; the
    UART on stdout; the firmware's reset request ends QEMU (-no-reboot). `make run` and edgenas.profile use it."""
    return [QEMU, "-M", machine, "-nodefaults", "-nic", "none", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-semihosting-config", "enable=off", "-no-reboot",
            "-icount", f"shift={icount_shift}", "-kernel", str(elf)]


# ------------------------------------------------------------------------------------------------ project files
def linker_script(target, variant: str, stack_bytes: int) -> str:
    if variant == "qemu":
        memory = dict(QEMU_MEMORY)
        note = (f"QEMU {target.qemu_machine} memory map (4 MiB code + 4 MiB data); the target's budgets "
                f"({target.flash_bytes} B flash, {target.sram_bytes} B SRAM) are checked by the size report")
    else:
        memory = dict(BOARD_ORIGINS, flash_length=str(target.flash_bytes), ram_length=str(target.sram_bytes))
        note = f"{target.description}; origins are STM32 defaults, check them for your part"
    text = (files("edgenas.compile") / "mcu_files" / "firmware.ld.in").read_text()
    return Template(text).substitute(target=target.name, variant=variant, memory_note=note,
                                     stack_bytes=stack_bytes, heap_bytes=HEAP_BYTES, **memory)


def makefile(target, codegen: str) -> str:
    kernel_obj = "kernels.o" if codegen == "llvm" else "build/kernels.o"
    cflags = " ".join([*cpu_flags(target), *C_FLAGS])
    srcs = " ".join([*FIXED_SOURCES, *GENERATED_SOURCES] + (["kernels.c"] if codegen == "c" else []))
    return f"""# Generated by edgenas for target '{target.name}' (kernels: {codegen}). `make` = QEMU build, `make board`.
CC = arm-none-eabi-gcc
CFLAGS = {cflags}
SRCS = {srcs}
OBJS = $(patsubst %.c,build/%.o,$(SRCS))
KERNELS = {kernel_obj}

all: firmware.elf
board: firmware-board.elf

build/%.o: %.c | build
\t$(CC) $(CFLAGS) -c $< -o $@
build/board/%.o: %.c | build/board
\t$(CC) $(CFLAGS) -DEDGENAS_BOARD -c $< -o $@
build build/board:
\tmkdir -p $@

firmware.elf: $(OBJS) {'' if codegen == 'c' else '$(KERNELS) '}firmware.ld
\t$(CC) $(CFLAGS) $(filter %.o,$^) {' '.join(link_flags('firmware'))} -o $@

firmware-board.elf: $(patsubst %.c,build/board/%.o,$(SRCS)) {'' if codegen == 'c' else '$(KERNELS) '}firmware-board.ld
\t$(CC) $(CFLAGS) -DEDGENAS_BOARD $(filter %.o,$^) {' '.join(link_flags('firmware-board'))} -o $@

run: firmware.elf
\t{' '.join(qemu_command('firmware.elf', target.qemu_machine or 'mps2-an500'))}

clean:
\trm -rf build firmware.elf firmware.map firmware-board.elf firmware-board.map

.PHONY: all board run clean
"""


def copy_fixed_files(project: Path, names=FIXED_SOURCES) -> None:
    """The fixed C sources `names` and headers (from mcu_files/) and the TVM runtime headers the kernels include."""
    for name in (*names, *FIXED_HEADERS):
        (project / name).write_text((files("edgenas.compile") / "mcu_files" / name).read_text())
    import tvm
    import tvm_ffi

    roots = {"tvm": Path(tvm.__file__).parent / "include", "tvm_ffi": Path(tvm_ffi.__file__).parent / "include"}
    for pkg, headers in TVM_HEADERS.items():
        for rel in headers:
            dst = project / "include" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(roots[pkg] / rel, dst)


# ------------------------------------------------------------------------------------------------ build
def _run(cmd: list[str], cwd: Path, what: str) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if "error" in ln.lower()] or \
            (out.stderr + out.stdout).splitlines()
        detail = " | ".join(ln.strip() for ln in lines[:3])[:400]
        raise EdgenasError(f"{what} failed: {detail}", f"see the full command output with `make` in {cwd}")


def build_firmware(project: Path, target, codegen: str, variant: str = "qemu") -> Path:
    """Compile every C file and link `firmware.elf` (QEMU) or `firmware-board.elf`; returns the ELF path."""
    gcc = require_tool(GCC)
    flags = cpu_flags(target)
    require_newlib(gcc, flags)
    project = Path(project)
    stem, defines = VARIANTS[variant]
    objdir = project / "build" / ("board" if variant == "board" else "")
    objdir.mkdir(parents=True, exist_ok=True)
    sources = [*FIXED_SOURCES, *GENERATED_SOURCES, *(["kernels.c"] if codegen == "c" else [])]
    objects = []
    for src in sources:
        obj = objdir / src.replace(".c", ".o")
        _run([gcc, *flags, *C_FLAGS, *defines, "-c", src, "-o", str(obj.relative_to(project))], project,
             f"compiling {src}")
        objects.append(str(obj.relative_to(project)))
    if codegen == "llvm":
        objects.append("kernels.o")
    _run([gcc, *flags, *defines, *objects, *link_flags(stem), "-o", f"{stem}.elf"], project,
         f"linking {stem}.elf")
    return project / f"{stem}.elf"


# ------------------------------------------------------------------------------------------------ sizes
FLASH_SECTIONS = (".isr_vector", ".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".preinit_array", ".init_array",
                  ".fini_array")
RAM_SECTIONS = (".data", ".bss", ".heap", ".stack")


def section_sizes(elf: Path) -> dict[str, int]:
    """Allocated section sizes from `arm-none-eabi-size -A`."""
    out = subprocess.run([require_tool(SIZE), "-A", str(elf)], capture_output=True, text=True, check=True)
    sizes = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


_OUT_SECTION = re.compile(r"^(\.[\w.]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+")
_IN_SECTION = re.compile(r"^ (\*?\(?[.\w*$]+[\w.$]*|COMMON)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)")
_IN_NAME_ONLY = re.compile(r"^ ([.\w$]+)$")
_IN_REST = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)")
PARTS = {"weights.o": "weights", "kernels.o": "kernels", "model.o": "driver", "test_io.o": "test_data",
         "harness.o": "harness", "startup.o": "harness", "uart_retarget.o": "harness", "tvm_stubs.o": "runtime_stubs"}


def map_contributions(map_file: Path) -> list[tuple[str, str, str, int]]:
    """(output section, input section, object file, size) for every input section the map places."""
    rows, out_sec, pending = [], None, None
    text = Path(map_file).read_text(errors="replace")
    start = text.find("Linker script and memory map")
    for line in text[start:].splitlines():
        m = _OUT_SECTION.match(line)
        if m:
            out_sec, pending = m.group(1), None
            continue
        if line.startswith(".") and not line.startswith(" "):
            out_sec, pending = line.split()[0], None
            continue
        m = _IN_SECTION.match(line)
        if m and out_sec:
            rows.append((out_sec, m.group(1), m.group(4), int(m.group(3), 16)))
            pending = None
            continue
        m = _IN_NAME_ONLY.match(line)
        if m:
            pending = m.group(1)
            continue
        m = _IN_REST.match(line)
        if m and pending and out_sec:
            rows.append((out_sec, pending, m.group(3), int(m.group(2), 16)))
        pending = None
    return rows


def _part_of(obj: str) -> str:
    name = Path(obj.split("(")[0]).name
    if name in PARTS:
        return PARTS[name]
    return "libc" if name.endswith(".a") or "(" in obj else "other"


@dataclass(frozen=True)
class SizeReport:
    """Bytes on the device. flash = code + read-only data + the .data load image; ram = .data + .bss + heap
    reserve + stack reserve. `flash_parts`/`ram_parts` split them by origin (from the linker map)."""
    flash_bytes: int
    ram_bytes: int
    sections: Mapping[str, int]
    flash_parts: Mapping[str, int]
    ram_parts: Mapping[str, int]
    arena_bytes: int            # activations (static arena, planned)
    workspace_pool_bytes: int   # kernel scratch pool (TVMBackendAllocWorkspace)
    flash_budget: int | None
    ram_budget: int
    model_flash_bytes: int      # weights + kernels + driver: what the model itself costs (harness excluded)
    model_ram_bytes: int        # arena + workspace pool + stack reserve

    def to_dict(self) -> dict:
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in asdict(self).items()}

    def excess(self) -> dict[str, int]:
        """Budgets exceeded: name -> bytes over."""
        out = {}
        if self.flash_budget is not None and self.flash_bytes > self.flash_budget:
            out["flash"] = self.flash_bytes - self.flash_budget
        if self.ram_bytes > self.ram_budget:
            out["RAM"] = self.ram_bytes - self.ram_budget
        return out


def size_report(elf: Path, map_file: Path, target, arena_bytes: int, workspace_pool_bytes: int,
                stack_bytes: int) -> SizeReport:
    sections = section_sizes(elf)
    flash = sum(sections.get(s, 0) for s in (*FLASH_SECTIONS, ".data"))
    ram = sum(sections.get(s, 0) for s in RAM_SECTIONS)
    flash_parts: dict[str, int] = {}
    ram_parts: dict[str, int] = {}
    for out_sec, _in_sec, obj, size in map_contributions(map_file):
        part = _part_of(obj)
        if out_sec in FLASH_SECTIONS or out_sec == ".data":
            flash_parts[part] = flash_parts.get(part, 0) + size
        if out_sec in (".data", ".bss"):
            ram_parts[part] = ram_parts.get(part, 0) + size
    for sec in (".heap", ".stack"):
        ram_parts[sec[1:]] = sections.get(sec, 0)
    model_flash = sum(flash_parts.get(p, 0) for p in ("weights", "kernels", "driver", "runtime_stubs"))
    return SizeReport(flash_bytes=flash, ram_bytes=ram, sections=sections, flash_parts=flash_parts,
                      ram_parts=ram_parts, arena_bytes=arena_bytes, workspace_pool_bytes=workspace_pool_bytes,
                      flash_budget=target.budgets.flash_bytes or target.flash_bytes,
                      ram_budget=target.budgets.sram_bytes or target.sram_bytes,
                      model_flash_bytes=model_flash, model_ram_bytes=arena_bytes + workspace_pool_bytes + stack_bytes)
