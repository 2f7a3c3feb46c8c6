"""Command-line flags from dataclasses, on the standard library's ``argparse``.

Each field of a flags or config dataclass (``model.core.fields``: ``setting`` or ``required``) is one
option, spelt with hyphens first (``--batch-size``) and also accepted with underscores
(``--batch_size``); its help is the field's one-line reason, followed by the value that will apply.
Types map as the YAML reader checks them (``model.core.settings``): ``int``, ``float``, ``str``;
``X | None`` as ``X``, unset by default; a ``Literal`` as its choices; ``list[X]`` as one or more
values; ``bool`` as ``--flag`` (true), ``--flag false``, and for a default of true ``--no-flag``.
Abbreviated flags are refused: a prefix that argparse would take silently hides a typo.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

TRUE, FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


def to_bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's spellings, then its value once: ``--batch-size, --batch_size BATCH_SIZE``; after its
    help, the value that will apply, or "(required)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required:
            return f"{action.help or ''} (required)"
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False
    )


def add_dataclass(
    parser: argparse.ArgumentParser, dataclass: type, title: str | None = None, defaults: dict[str, Any] | None = None
) -> None:
    """One option per field of ``dataclass``, in a help section titled ``title`` (else among the options).

    ``defaults``: values that replace the fields' own defaults (a YAML file's overrides), so that
    ``--help`` shows the value that will apply."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(dataclass)
    for field in dataclasses.fields(dataclass):
        if field.init:
            _add_field(group, field, hints[field.name], (defaults or {}).get(field.name, dataclasses.MISSING))


def option_strings(name: str) -> list[str]:
    """``--batch-size`` first (what ``--help`` shows and the docs use), then ``--batch_size``."""
    return list(dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"]))


def _add_field(group, field: dataclasses.Field, hint: Any, default: Any) -> None:
    kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help")}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    elif field.default is not dataclasses.MISSING:
        kwargs["default"] = field.default
    elif field.default_factory is not dataclasses.MISSING:
        kwargs["default"] = field.default_factory()
    else:
        kwargs["required"] = True
    hint = _without_none(hint)
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        kwargs.update(choices=choices, type=_choice_of(choices))
    elif hint is bool:
        kwargs.update(type=to_bool, nargs="?", const=True, metavar="BOOL")
    elif origin is list:
        kwargs.update(type=typing.get_args(hint)[0], nargs="+")
    elif hint in (int, float, str):
        kwargs["type"] = hint
    else:
        raise TypeError(f"{field.name}: no command-line form for the type {hint!r}")
    group.add_argument(*option_strings(field.name), **kwargs)
    if hint is bool and field.default is True:  # the field's own default: the flag stays when a YAML file says false
        no = option_strings(f"no_{field.name}")
        group.add_argument(
            *no, dest=field.name, action="store_false", default=argparse.SUPPRESS, help=f"sets --{no[0][5:]} false"
        )


def _without_none(hint: Any) -> Any:
    """``X | None`` as ``X``; anything else as it is (a union of two real types has no single flag form)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"no command-line form for the union {hint!r}")
        return rest[0]
    return hint


def _choice_of(choices: tuple) -> typing.Callable[[str], Any]:
    """The choice a string names (``"3"`` is the choice ``3``); other strings pass, for argparse to refuse."""
    by_text = {str(c): c for c in choices}
    return lambda text: by_text.get(text, text)
