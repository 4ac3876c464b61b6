"""Search methods, found by name: the registry behind `edgenas search --method` (as spaces and datasets have theirs).

A method is one class in one file, registered with @register_method. It declares
  name     the --method value;
  Options  a frozen dataclass of the options only this method takes, each made by `option(...)`: default None (the
           method's own default), the CLI help and type in its metadata. The CLI builds its flags from these, and an
           option of another method is a one-line error (`method_options`);
  spaces   the search spaces it can search, its default first;
and implements, constructed as `cls(options)`:
  run(problem, folder, executor, ui)   search `problem`, write the run folder `folder` (a RunFolder), return a result;
  run_label()                           the method part of the default run folder name;
  print_result(result, console) / result_json(result)   what `edgenas search` prints on stdout.
`executor` is the ExecutorConfig built from ExecutorOptions, for a method whose Options derive from it (it spreads
candidate evaluations over workers), else None.
Adding a method is one new file that registers a class; `_import_methods` lists the shipped ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from edgenas.errors import EdgenasError

_METHODS: dict[str, type] = {}


def option(help: str, type=str, choices: tuple[str, ...] | None = None, flag: str | None = None, cli: bool = True):
    """A field of a method's Options: default None (the method's default); `flag` when the CLI spelling is not
    --<field-name-with-dashes>; `cli=False` for a library-only option."""
    return field(default=None, metadata={"help": help, "type": type, "choices": choices, "flag": flag, "cli": cli})


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass(frozen=True)
class ExecutorOptions:
    """Where candidate evaluations run (search.executors): the base of the Options of every method that has
    candidates to spread."""
    workers: int | None = option("nachos/flatnas: parallel candidate evaluations (default: one per core, at most 4); the result does "
                                 "not depend on it.", type=int)
    executor: str | None = option("nachos/flatnas: where candidates are evaluated: local worker processes (default) or Ray tasks "
                                  "(pip install 'edgenas[ray]').", choices=("local", "ray"))
    ray_address: str | None = option("nachos/flatnas with --executor ray: the cluster, auto or HOST:PORT (default: start a Ray instance on this "
                                     "machine).")

    def executor_config(self):
        from edgenas.search.executors import ExecutorConfig
        return ExecutorConfig(self.executor or "local", self.workers, self.ray_address)


@dataclass(frozen=True)
class Problem:
    """What is searched for, whatever the method: a network for `target` (a name or .toml path), within its budgets
    or the overrides given here (strings such as "50ms", "256KB"), trained on `dataset`, from `space` (None: the
    method's default)."""
    target: str = "cortex-m7"
    dataset: str = "mnist5k"
    space: str | None = None
    seed: int = 0
    latency: str | None = None
    sram: str | None = None
    flash: str | None = None
    macs: str | None = None
    min_accuracy: float | None = None
    resume: bool = False
    device: str = "cpu"     # "cpu" or "cuda:N", resolved (runtime.resolve_device)

    def budget_overrides(self) -> dict:
        return dict(latency=self.latency, sram=self.sram, flash=self.flash, macs=self.macs,
                    min_accuracy=self.min_accuracy)

    def resolved_target(self):
        """The Target with the budget overrides applied."""
        from edgenas.targets import as_target, target_with_budgets
        return target_with_budgets(as_target(self.target), **self.budget_overrides())


class SearchMethod(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type]
    spaces: ClassVar[tuple[str, ...]]

    def run(self, problem: Problem, folder, executor, ui): ...

    def run_label(self) -> str: ...

    def print_result(self, result, console) -> None: ...

    def result_json(self, result) -> dict: ...


def register_method(cls):
    """Class decorator: make `cls` available as `--method cls.name`."""
    if not (dataclasses.is_dataclass(cls.Options) and cls.spaces):
        raise TypeError(f"search method {cls.__name__} needs an Options dataclass and at least one space")
    _METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method registered at run time (a plugin's, or a test's toy method)."""
    _METHODS.pop(name, None)


def list_methods() -> list[str]:
    """The shipped methods in their usual order, then any registered at run time."""
    _import_methods()
    return sorted(_METHODS, key=lambda n: SHIPPED.index(n) if n in SHIPPED else len(SHIPPED))


def method_class(name: str) -> type[SearchMethod]:
    _import_methods()
    if name not in _METHODS:
        raise EdgenasError(f"unknown search method '{name}'", f"use --method {', '.join(list_methods())}")
    return _METHODS[name]


def check_space(name: str, space: str | None) -> None:
    """Refuse a space spec (`nb201:C=8`: its family counts) that method `name` does not search; None is its default."""
    from edgenas.spaces import space_family
    spaces = method_class(name).spaces
    if space is not None and space_family(space) not in spaces:
        raise EdgenasError(f"--method {name} does not search the space '{space}'", f"use --space {' or '.join(spaces)}")


def method_options(name: str, given: dict):
    """The Options of method `name` from the options `given` (keyword -> value; None = not given). An option that
    belongs to another method is refused, naming the methods it belongs to."""
    cls = method_class(name)
    own = {f.name for f in dataclasses.fields(cls.Options)}
    for key, value in given.items():
        if value is None or key in own:
            continue
        owners = [m for m in list_methods() if key in {f.name for f in dataclasses.fields(_METHODS[m].Options)}]
        if not owners:
            raise TypeError(f"unknown search option {key!r}")
        flag = flag_of(next(f for f in dataclasses.fields(_METHODS[owners[0]].Options) if f.name == key))
        raise EdgenasError(f"{flag} does not apply to --method {name}",
                           f"drop {flag} (it is an option of --method {' and '.join(owners)})")
    return cls.Options(**{k: v for k, v in given.items() if k in own})


def option_fields() -> list[dataclasses.Field]:
    """Every CLI option of every method, once each, in registration order (methods sharing an option declare it
    once, in a shared base such as ExecutorOptions, or identically)."""
    seen: dict[str, dataclasses.Field] = {}
    for cls in (method_class(n) for n in list_methods()):
        for f in dataclasses.fields(cls.Options):
            if f.metadata.get("cli", True) and f.name not in seen:
                seen[f.name] = f
    return list(seen.values())


SHIPPED = ("nachos", "flatnas", "zodarts")


def _import_methods():
    # one file per method (SHIPPED); importing registers it
    from edgenas.search import nachos  # noqa: F401
    from edgenas.search import flatnas  # noqa: F401
    from edgenas.search import zodarts  # noqa: F401
