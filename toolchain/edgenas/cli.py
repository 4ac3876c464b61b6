"""edgenas command line: parses, calls one library function in edgenas.api, prints. No logic here.

Every user error (EdgenasError or a click usage error) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import errno
import os
import sys

import click

from edgenas.errors import EdgenasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgenas")
def cli():
    """Hardware-aware NAS for embedded devices: search, export, compile, profile, calibrate."""


class SearchCommand(click.Command):
    """`edgenas search` with the options of every registered search method (search.methods.option_fields) and the
    registered methods and spaces as choices. They are added when the command is used, not when the CLI starts:
    the registries import torch."""

    def get_params(self, ctx):
        if not getattr(self, "registries_read", False):
            self.registries_read = True
            from edgenas.search.methods import flag_of, list_methods, option_fields
            by_name = {p.name: p for p in self.params}
            by_name["method"].type = click.Choice(list_methods())
            at = self.params.index(by_name["device"])
            self.params[at:at] = [
                click.Option([flag_of(f), f.name], default=None, help=f.metadata["help"],
                             type=click.Choice(f.metadata["choices"]) if f.metadata["choices"] else f.metadata["type"])
                for f in option_fields()]
        return super().get_params(ctx)


@cli.command(cls=SearchCommand)
@click.option("--target", default="cortex-m7", show_default=True, help="Target name (see `edgenas targets`) or a .toml file.")
@click.option("--method", default="nachos", show_default=True, help="The search method (each takes its own options below).")
@click.option("--space", default=None, help="Search space: mbv3 or nb201, with integer settings as nb201:C=8,N=2,resolution=16 (default: the method's own: mbv3 for nachos/flatnas, nb201 for zodarts).")
@click.option("--dataset", default="mnist5k", show_default=True, help="mnist5k | digits | cifar10:DIR | imagefolder:DIR | medmnist:FILE.npz")
@click.option("--out", default=None, help="Run folder (default runs/<target>-<method>-<dataset>-s<seed>).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out, reusing every evaluated candidate.")
@click.option("--latency", default=None, help="Expected-latency budget, e.g. 50ms (overrides the target).")
@click.option("--sram", default=None, help="Peak SRAM budget, e.g. 256KB.")
@click.option("--flash", default=None, help="Flash budget, e.g. 1MB.")
@click.option("--macs", default=None, help="Expected-MACs budget, e.g. 2.5M.")
@click.option("--min-accuracy", default=None, type=float, help="Accuracy floor (fraction, on validation).")
@click.option("--device", default="auto", show_default=True,
              help="auto | cpu | cuda | cuda:N: where training and evaluation run (auto: CUDA when torch sees a GPU).")
@click.option("--json", "json_out", is_flag=True,
              help="Print the result as JSON on stdout (the Pareto members with their figures); progress stays on stderr.")
def search(**opts):
    """Search early-exit networks that fit the target's budgets."""
    from edgenas import api
    api.search_cli(**opts)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--candidate", type=int, default=None, help="Archive id of a Pareto member.")
@click.option("--best", is_flag=True, help="The default: among the Pareto members within the 95% interval of the best "
              "validation accuracy, one with exits, then the cheapest (the choice is printed).")
@click.option("--out", default=None, help="Output folder (default RUN/export-<id>).")
def export(run_dir, candidate, best, out):
    """Export a searched network: ONNX with `If` exits, int8 variant, exits.json."""
    from edgenas import api
    if best and candidate is not None:
        raise EdgenasError("--best and --candidate are exclusive", "pass one of them")
    api.export_cli(run_dir, candidate, out)


@cli.command("compile")
@click.argument("model", type=click.Path())
@click.option("--target", default="cortex-m7", show_default=True, help="Target name or .toml file.")
@click.option("--out", default=None, help="Output folder (default: beside the model).")
@click.option("--codegen", type=click.Choice(["llvm", "c"]), default="llvm", show_default=True,
              help="MCU kernels: TVM LLVM objects or TVM C source.")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default=None,
              help="MCU: integer or float inference. Default: int8 where the model carries int8 (an export folder "
                   "with stages_int8/, a QDQ ONNX model, or --calib-data), else float32.")
@click.option("--calib-data", default=None,
              help="MCU int8: quantise a float model with these inputs (an .npy of shape (N, C, H, W) or a dataset "
                   "spec such as digits).")
@click.option("--test-inputs", default=16, show_default=True, type=int,
              help="MCU: test-split inputs embedded in the firmware and checked against onnxruntime.")
@click.option("--tune-trials", default=0, show_default=True, type=int, help="Host/Cortex-A: MetaSchedule trials.")
@click.option("--json", "json_out", is_flag=True, help="Print the full report as JSON.")
@click.option("--keep-failed", is_flag=True,
              help="MCU: keep the project of a firmware that does not fit or does not build (default: remove it).")
def compile_(**opts):
    """Compile an export folder, .onnx file or run folder for a target (firmware or TVM library)."""
    from edgenas import api
    api.compile_cli(**opts)


@cli.command()
@click.argument("artefact", type=click.Path())
@click.option("--target", default="cortex-m7", show_default=True, help="Target name or .toml file.")
@click.option("--device", default="qemu", show_default=True, help="qemu | serial:PORT | host | ssh:USER@HOST")
@click.option("--n-inputs", default=None, type=int, help="MCU: profile only the first N embedded inputs.")
@click.option("--threads", default="1,max", show_default=True, help="host/ssh: thread counts (max = the device's CPUs).")
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(min=1),
              help="host/ssh: fewest timed rounds per input (rounds interleave inputs and engines).")
@click.option("--ci", default=0.02, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="host/ssh: time until every input's median is known to +-CI (relative, 95% interval).")
@click.option("--max-seconds", default=60.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="host/ssh: time budget of all timed rounds; inputs short of --ci are then reported.")
@click.option("--runtime", default="both", show_default=True, type=click.Choice(["ort", "tvm", "both"]),
              help="host/ssh: the engine(s) to measure (the one the target deploys with).")
@click.option("--out", default=None, help="Also write the profile JSON to this file.")
def profile(**opts):
    """Run a compiled artefact on a device or emulator and report latency per exit and per segment."""
    from edgenas import api
    api.profile_cli(**opts)


@cli.group(invoke_without_command=True)
@click.option("--json", "json_out", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def targets(ctx, json_out):
    """List the shipped targets (`edgenas targets show NAME` prints one)."""
    if ctx.invoked_subcommand is None:
        from edgenas import api
        api.targets_cli(json_out=json_out)
    elif json_out:
        raise EdgenasError(f"`targets --json` lists targets; it does not apply to `targets {ctx.invoked_subcommand}`",
                           f"write `edgenas targets {ctx.invoked_subcommand} ... --json`")


@targets.command("show")
@click.argument("name")
@click.option("--json", "json_out", is_flag=True, help="Print the target as JSON instead of TOML.")
def targets_show(name, json_out):
    """Print a target's TOML (a shipped name or a file)."""
    from edgenas import api
    api.target_show_cli(name, json_out=json_out)


@cli.command()
@click.argument("profiles", nargs=-1, required=True)
@click.option("--target", required=True, help="Base target name or .toml file whose latency model is refitted.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Override TOML to write (default ./<target>-calibrated.toml).")
@click.option("--device", default="", help="Device measured on (provenance; profiles may say it themselves).")
@click.option("--runtime", default="", type=click.Choice(["", "ort", "tvm"]),
              help="Engine measured: ort (onnxruntime) or tvm (default: the one the profiles name).")
@click.option("--runtime-version", default="", help="Runtime as free text, e.g. 'onnxruntime 1.32 CPU' (provenance).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Thread count calibrated: selects the rows of a CSV `threads` column (else provenance).")
@click.option("--family", "families", multiple=True,
              type=click.Choice(["macs-only", "per-kind", "per-kind-shape", "boosted-trees"]),
              help="Model family to consider (repeatable; default: all, chosen by cross-validation).")
@click.option("--objective", default="both", show_default=True, type=click.Choice(["both", "ranking", "budgets"]),
              help="What the family choice optimises: Kendall tau (ranking), share within +-10% (budgets), or both.")
@click.option("--name", default=None, help="Name of the calibrated target (default: the --out file's stem).")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="Arithmetic measured: float32 fits [latency], int8 fits [latency_int8] (the other is kept).")
@click.option("--json", "json_out", is_flag=True, help="Print the fit and its held-out error as JSON.")
def calibrate(**opts):
    """Fit a target's latency model from PROFILES and write a target override with its held-out error.

    PROFILES: edgenas-profile/1 JSON (per layer), MODEL.onnx=ORT_PROFILE.json (onnxruntime's profile of MODEL), or a
    CSV with columns `model` and `latency_ms` (or latency_s / latency_us), optionally `threads`, of end-to-end
    measurements (a model on several rows: repeats, aggregated by their median). Every model family is
    cross-validated and the best is written, never one worse than MACs-only.
    """
    from edgenas import api
    api.calibrate_cli(**opts)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", default="cortex-m7", show_default=True, help="Target name or .toml file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--dtype", type=click.Choice(["float32", "int8"]), default="float32", show_default=True)
@click.option("--latency", default=None, help="Latency budget, e.g. 50ms (overrides the target).")
@click.option("--sram", default=None, help="Peak SRAM budget, e.g. 256KB.")
@click.option("--flash", default=None, help="Flash budget, e.g. 1MB.")
@click.option("--macs", default=None, help="MACs budget, e.g. 2.5M.")
@click.option("--allow-unknown", is_flag=True,
              help="Report a model with operators the cost model does not know (listed; verdict marked incomplete).")
def analyze(**opts):
    """Per-layer MACs, params, activations, peak SRAM, flash and predicted latency of an ONNX model; budget check.

    Exit code 1 when the model exceeds a budget of the target.
    """
    from edgenas import api
    if not api.analyze_cli(**opts):
        raise click.exceptions.Exit(1)


# what to do about an operating-system error while reading or writing a user's path, by errno
OS_ERROR_FIXES = {errno.ENOSPC: "free space on that disk, or choose --out on another one",
                  errno.EDQUOT: "free space within your quota, or choose --out on another disk",
                  errno.EROFS: "choose a writable --out", errno.EACCES: "check its permissions, or choose another path",
                  errno.EPERM: "check its permissions, or choose another path",
                  errno.ENAMETOOLONG: "choose a shorter path", errno.ENOTDIR: "a part of the path is a file, not a folder"}


def os_error_line(exc: OSError) -> str:
    """One line naming the path and the system's words for an OSError (disk full, read-only, no permission...)."""
    where = f"{exc.filename}: " if exc.filename is not None else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"error: {where}{what} ({OS_ERROR_FIXES.get(exc.errno, 'check the path and the disk')})"


def main(argv=None) -> int:
    try:
        rc = cli.main(args=argv, prog_name="edgenas", standalone_mode=False)
    except EdgenasError as exc:
        click.echo(exc.line(), err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # the reader went away (`| head`): stop quietly, as a SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
            return 141
        click.echo(os_error_line(exc), err=True)
        return 2
    return rc if isinstance(rc, int) else 0  # click returns the code of a ctx.exit(N) when not standalone


if __name__ == "__main__":
    sys.exit(main())
