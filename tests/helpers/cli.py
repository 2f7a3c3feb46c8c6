"""The CLI as the tests check commands written elsewhere against it: every step's parser, and what the
real parser would refuse in one `flywheel ...` call (workflows, manifests, the Makefile, docs, TrainJobs)."""

from __future__ import annotations

import contextlib
import io
import re

# A value filled in at run time: GitHub expression, shell variable, Kubernetes $(VAR) expansion.
VARIABLE = re.compile(r"\$\{\{.*\}\}|^\$[({]?[A-Za-z_][A-Za-z0-9_]*[)}]?$")


def step_parsers() -> dict:
    """Every step's parser with the default config's overrides, for checking commands written elsewhere
    (workflows, the Makefile, manifests) against the flags that exist; imports no step's code."""
    from model.core.command_line import parser_for
    from model.core.config import DEFAULT_CONFIG
    from model.core.settings import read_yaml_config
    from scripts.cli import STEPS

    overrides = read_yaml_config(DEFAULT_CONFIG)
    return {s.name: parser_for(s, overrides) for s in STEPS}


def problems(argv: list[str]) -> list[str]:
    """What the real parser would refuse in ``flywheel <argv>``; variable values replaced by typed stand-ins."""
    steps = step_parsers()
    if not argv or argv[0] not in steps:
        return [f"unknown step {argv[0] if argv else '(none)'!r} (steps: {', '.join(steps)})"]
    options = steps[argv[0]]._option_string_actions
    from scripts.cli import STEPS

    step = next(s for s in STEPS if s.name == argv[0])
    positional = list(getattr(step.args, "POSITIONAL", ()))  # e.g. flywheel report LOOP_JSON
    found, concrete, i = [], [argv[0]], 1
    while i < len(argv):
        token = argv[i]
        flag, has_value, value = token.partition("=")
        if token in ("--help", "-h"):  # valid on every step; parsing it would print the help and exit
            i += 1
            continue
        if not flag.startswith("--") and positional:
            concrete += [f"--{positional.pop(0)}", token]
            i += 1
            continue
        if not flag.startswith("--"):
            found.append(f"{token!r} is not a flag (only a step that declares POSITIONAL takes one)")
            i += 1
            continue
        if flag not in options:  # exact names only: argparse would also take a prefix, which hides typos
            found.append(f"unknown flag {flag} for `flywheel {argv[0]}`")
            i += 1
            continue
        action = options[flag]
        if not has_value and action.nargs != 0:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if action.nargs == "?" and (following is None or following.startswith("--")):
                value = None  # a bare boolean flag
            else:
                value, i = following, i + 1
        if value is not None and VARIABLE.search(value):
            value = str(action.choices[0]) if action.choices else {int: "1", float: "1.5"}.get(action.type, "stand-in")
        concrete += [flag] if value is None else [flag, value]
        i += 1
    if not found:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                steps[argv[0]].parse_args(concrete[1:])
        except SystemExit:
            found.append(f"the parser refuses it: {err.getvalue().strip().splitlines()[-1]}")
    return found
