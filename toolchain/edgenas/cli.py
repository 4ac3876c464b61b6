"""edgenas command line: parses, calls one library function in edgenas.api, prints. No logic here.

Every user error (EdgenasError or a click usage error) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import sys

import click

from edgenas.errors import EdgenasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgenas")
def cli():
    """Hardware-aware NAS for embedded devices: search, export, compile, profile, calibrate."""


@cli.command()
@click.option("--target", default="cortex-m7", show_default=True, help="Target name (see `edgenas targets`) or a .toml file.")
@click.option("--method", type=click.Choice(["nachos", "flatnas", "zodarts"]), default="nachos", show_default=True)
@click.option("--dataset", default="digits", show_default=True, help="digits | mnist5k | cifar10:DIR | imagefolder:DIR | medmnist:FILE.npz")
@click.option("--out", default=None, help="Run folder (default runs/<target>-<method>-<dataset>-s<seed>).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out, reusing every evaluated candidate.")
@click.option("--latency", default=None, help="Expected-latency budget, e.g. 50ms (overrides the target).")
@click.option("--sram", default=None, help="Peak SRAM budget, e.g. 256KB.")
@click.option("--flash", default=None, help="Flash budget, e.g. 1MB.")
@click.option("--macs", default=None, help="Expected-MACs budget, e.g. 2.5M.")
@click.option("--min-accuracy", default=None, type=float, help="Accuracy floor (fraction, on validation).")
@click.option("--pop-size", default=None, type=int, help="NSGA-II population size.")
@click.option("--generations", default=None, type=int, help="NSGA-II generations.")
@click.option("--supernet-epochs", default=None, type=int, help="Supernet training epochs.")
@click.option("--epochs", default=None, type=int, help="zodarts: search epochs.")
def search(**opts):
    """Search early-exit networks that fit the target's budgets."""
    from edgenas import api
    api.search_cli(**opts)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--candidate", type=int, default=None, help="Archive id of a Pareto member.")
@click.option("--best", is_flag=True, help="The most accurate Pareto member (the default).")
@click.option("--out", default=None, help="Output folder (default RUN/export-<id>).")
def export(run_dir, candidate, best, out):
    """Export a searched network: ONNX with `If` exits, int8 variant, exits.json."""
    from edgenas import api
    if best and candidate is not None:
        raise EdgenasError("--best and --candidate are exclusive", "pass one of them")
    api.export_cli(run_dir, candidate, out)


@cli.group(invoke_without_command=True)
@click.pass_context
def targets(ctx):
    """List the shipped targets (`edgenas targets show NAME` prints one)."""
    if ctx.invoked_subcommand is None:
        from edgenas import api
        api.targets_cli()


@targets.command("show")
@click.argument("name")
def targets_show(name):
    """Print a target's TOML (a shipped name or a file)."""
    from edgenas import api
    api.target_show_cli(name)


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="edgenas", standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
