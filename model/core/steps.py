"""The step contract behind ``flywheel <step>``: one row per step in the table (``scripts/cli.py``), one
function per row, and the typed result that function returns.

A row (``Step``) states everything the command line needs:

    Step("train", "fine-tune an intent model ...", "model.train.steps:train_command",
         args=TrainArgs, sections=("data", "train", "registry"), injected=("work",))

- ``function``: ``"package.module:function"``, imported only when that step runs or shows its help
  (so the delivery steps start without importing torch);
- ``args``: the step's own flags, a dataclass from its package's ``args`` module (which imports
  nothing heavy), or None for a step without flags of its own;
- ``sections``: the config sections the step reads (``config.SECTIONS``), each made from its
  defaults, the ``--config`` YAML overrides and the flags, in that order, and passed as the keyword
  of that name;
- ``injected``: what the CLI works out once and hands down: ``work`` (the work folder),
  ``report_dir`` (where the step's reports go), ``config_file`` (the YAML file, for a step that
  starts other processes with it).

The function's signature says the same, which is checked: a row naming an unknown section or
injected value fails when the table is imported, and a row that disagrees with its function fails
when the step loads (``Step.load``), naming the difference; a test loads every row. For example

    def train_command(args: TrainArgs, *, data: DataConfig, train: TrainConfig, registry: RegistryConfig,
                      work: Path) -> StepResult[Trained]

The function returns a ``StepResult``: its outcome as a typed object (a dataclass), which only the
CLI turns into JSON (``<report dir>/<step>.json``, stdout and the GitHub Actions step outputs), its
markdown (``<step>.md``, ready to be a pull-request body) and its exit code.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from model.core.config import SECTIONS

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2
INJECTED = ("work", "report_dir", "config_file")  # keyword parameters that are not config sections

Outcome = TypeVar("Outcome")


@dataclass(frozen=True)
class StepResult(Generic[Outcome]):
    outcome: Outcome  # a dataclass instance: JSON is made from it where it is written (model.core.reports)
    markdown: str
    exit_code: int = EXIT_OK  # EXIT_REJECTED when a decision says no (gate rejected, check failed)

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.outcome) or isinstance(self.outcome, type):
            raise TypeError(
                f"a step's outcome is a dataclass instance, not {type(self.outcome).__name__}: "
                "JSON is made from it only where it is written"
            )


class WiringError(Exception):
    """A row of the step table that disagrees with itself or with its function: a bug, not bad input."""


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    function: str  # "package.module:function"
    args: type | None = None  # the step's flags dataclass
    sections: tuple[str, ...] = ()  # config sections it reads
    injected: tuple[str, ...] = ()  # of INJECTED

    def __post_init__(self):
        problems = [
            f"unknown config section {s!r} (known: {', '.join(SECTIONS)})" for s in self.sections if s not in SECTIONS
        ]
        problems += [
            f"{i!r} is not injected (known: {', '.join(INJECTED)})" for i in self.injected if i not in INJECTED
        ]
        if self.args is not None and not (isinstance(self.args, type) and dataclasses.is_dataclass(self.args)):
            problems.append(f"args={self.args!r} is not a dataclass")
        if self.function.count(":") != 1:
            problems.append(f"function {self.function!r} is not 'package.module:function'")
        if problems:
            raise WiringError(f"step {self.name!r}: " + "; ".join(problems))

    def load(self) -> Callable[..., StepResult]:
        """The step's function, once its signature is checked against this row."""
        module, _, name = self.function.partition(":")
        function = getattr(importlib.import_module(module), name)
        problems = wiring_problems(self, function)
        if problems:
            raise WiringError(f"step {self.name!r}: {self.function} does not match its row: " + "; ".join(problems))
        return function


def wiring_problems(step: Step, function: Callable) -> list[str]:
    """Where ``function``'s signature differs from what ``step`` declares (none: they agree)."""
    try:
        hints = typing.get_type_hints(function)
    except NameError as exc:
        return [f"its annotations do not resolve ({exc})"]
    params = inspect.signature(function).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    problems = []
    if step.args is None and positional:
        problems.append(f"it takes {positional} but the row declares no args")
    elif step.args is not None and positional != ["args"]:
        problems.append(f"the row declares args={step.args.__name__}: the function takes it as `args`, alone before *")
    elif step.args is not None and hints.get("args") is not step.args:
        problems.append(f"its `args` is {_name(hints.get('args'))}, the row's is {step.args.__name__}")
    declared = {*step.sections, *step.injected}
    if keywords - declared:
        problems.append(f"it reads {sorted(keywords - declared)}, which the row does not declare")
    if declared - keywords:
        problems.append(f"the row declares {sorted(declared - keywords)}, which it does not take")
    wanted = {**{s: SECTIONS[s] for s in step.sections}, **dict.fromkeys(step.injected, Path)}
    problems += [
        f"its `{k}` is {_name(hints.get(k))}, not {t.__name__}"
        for k, t in wanted.items()
        if k in keywords and hints.get(k) is not t
    ]
    returned = hints.get("return")
    outcome = typing.get_args(returned)[0] if typing.get_origin(returned) is StepResult else None
    if not (isinstance(outcome, type) and dataclasses.is_dataclass(outcome)):
        problems.append(f"it returns {_name(returned)}, not StepResult[<a dataclass>]")
    return problems


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or repr(hint)
