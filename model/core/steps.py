"""The step contract behind ``flywheel <step>``: one table row per step, one function per row.

A row (``Step``) names the step, says in a line what it does, and points at its function as
``"package.module:function"``, imported only when that step runs or shows its help (so the
delivery steps start without importing torch). The function's signature declares the rest:

    def train_command(args: TrainArgs, *, data: DataConfig, train: TrainConfig, registry: RegistryConfig,
                      work: Path) -> StepResult

- ``args``: the step's own flags, a dataclass (omitted by steps without flags of their own);
- a keyword named after a config section (``data``, ``train``, ...; see ``config.SECTIONS``): that
  section, from its defaults, the ``--config`` YAML overrides and the flags, in that order;
- ``work``: the work folder (``--work-dir``); ``report_dir``: where the step's reports go;
  ``config_file``: the YAML file itself, for a step that starts other processes with it.

Flags, ``--help`` (showing the values that will apply) and dispatch all come from that. The function
returns a ``StepResult``: its data (written as ``<report dir>/<step>.json`` and printed), its
markdown (``<step>.md``, ready to be a pull-request body) and its exit code.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass

from model.core.config import SECTIONS

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2
INJECTED = ("work", "report_dir", "config_file")  # keyword parameters that are not config sections


@dataclass(frozen=True)
class StepResult:
    data: dict
    markdown: str
    exit_code: int = EXIT_OK  # EXIT_REJECTED when a decision says no (gate rejected, check failed)


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    function: str  # "package.module:function"

    def load(self) -> Callable[..., StepResult]:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Signature:
    """What a step function asks for: its flags dataclass, the config sections it reads, what is injected."""

    args: type | None
    sections: tuple[str, ...]
    injected: tuple[str, ...]

    @classmethod
    def of(cls, function: Callable) -> Signature:
        hints = typing.get_type_hints(function)
        params = inspect.signature(function).parameters
        unknown = set(params) - {"args", *INJECTED, *SECTIONS}
        if unknown:
            raise TypeError(f"{function.__qualname__}: parameters {sorted(unknown)} are neither sections nor injected")
        return cls(
            args=hints.get("args"),
            sections=tuple(p for p in params if p in SECTIONS),
            injected=tuple(p for p in params if p in INJECTED),
        )
