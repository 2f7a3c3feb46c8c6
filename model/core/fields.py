"""How a configuration field is declared: with the one-line reason for its default (its ``--help``).

Apart from ``model/core/config.py`` so that the config sections split across modules
(``model/core/prepare_config.py``) share it without importing each other.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

PACKAGED_ENCODER = "packaged:all-MiniLM-L6-v2"


def required(what: str) -> Any:
    """A flag with no default: the step refuses to run without it (argparse exits 2 naming it)."""
    return field(metadata={"help": what})


def setting(default: Any, why: str) -> Any:
    """A dataclass field whose help text is the one-line reason for its default."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": why})
    return field(default=default, metadata={"help": why})
