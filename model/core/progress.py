"""Progress bars draw on a terminal only.

On a terminal a bar redraws itself in place; in a file or a CI log (GitHub Actions, the demo's
``logs/``) every redraw is one more carriage-return frame, thousands per step. There a long step
prints one line per epoch or stage instead (``tqdm.write`` or ``print``), and no bar at all:

- ours (``bar``) pass ``disable=None``, tqdm's own switch for "draw only on a TTY";
- the libraries' (transformers' "Loading weights", MLflow's artifact transfers, anything else drawn
  with tqdm) are switched off by ``quiet_bars_off_terminal``, which the CLI calls before a step loads:
  it sets, for this process and the servers it starts, the switches the libraries read when they are
  imported or draw. Great Expectations' bars are off in its context (``data_checks.validate``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

OFF_TERMINAL = {
    "TQDM_DISABLE": "1",  # tqdm (>= 4.66): `disable` of every bar that does not set it, read when tqdm is imported
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub and transformers' own wrapper of tqdm
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # mlflow.utils.file_utils.ArtifactProgressBar
}


def quiet_bars_off_terminal(stream=None) -> None:
    """Off a terminal, switch the libraries' bars off (a switch the user set already is left as it is)."""
    if not _is_terminal(stream or sys.stderr):
        for name, value in OFF_TERMINAL.items():
            os.environ.setdefault(name, value)


def bar(iterable: Iterable | None = None, *, hidden: bool = False, **kwargs: Any):
    """A tqdm bar on stderr that draws only on a terminal; ``hidden``: never (e.g. a worker that is not rank 0)."""
    from tqdm.auto import tqdm  # imported when a bar is made: after quiet_bars_off_terminal

    return tqdm(iterable, disable=True if hidden else None, **kwargs)


def say(line: str) -> None:
    """One line on stderr (stdout is the step's JSON), above a bar that is drawing, if one is."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
