"""``flywheel <step>``: the parser, help and dispatch made from the table of steps (``scripts/cli.py``).

Each step's parser is built from its row (``model.core.steps``): ``--config``, ``--work-dir`` and
``--report-dir``, the step's own flags, then every field of each section it reads, one help section
per config section (``model.core.flags``). The YAML overrides are read first and become the
parser's defaults, so ``--help`` shows the values that will apply. The work folder is resolved here,
once, and passed down; the step's typed outcome becomes JSON here, and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.core.config import DEFAULT_CONFIG, SECTIONS, setting, work_dir
from model.core.errors import FlywheelError
from model.core.flags import add_dataclass, new_parser
from model.core.progress import quiet_bars_off_terminal
from model.core.reports import as_json, write_reports
from model.core.settings import read_yaml_config, resolve_locations
from model.core.steps import EXIT_ERROR, EXIT_OK, Step


@dataclass
class CommonArgs:
    config: str = setting(str(DEFAULT_CONFIG), "YAML file of overrides, one mapping per config section")
    work_dir: str | None = setting(
        None, "folder for runs, artifacts, stores and reports (unset: $FLYWHEEL_WORK_DIR, else ./work)"
    )
    report_dir: str | None = setting(None, "where <step>.json and <step>.md go (unset: <work dir>/reports)")


def parser_for(step: Step, overrides: dict[str, dict[str, Any]]) -> argparse.ArgumentParser:
    """The step's parser, its defaults already the values that will apply (YAML over dataclass)."""
    parser = new_parser(f"flywheel {step.name}", step.help)
    add_dataclass(parser, CommonArgs)
    if step.args is not None:
        add_dataclass(parser, step.args)
    for section in step.sections:
        add_dataclass(
            parser, SECTIONS[section], f"config section {section!r} (YAML: {section}:)", overrides.get(section)
        )
    return parser


def _positional(step: Step, argv: list[str]) -> list[str]:
    """A step's positional arguments (``POSITIONAL`` on its flags dataclass) as the flags they stand for."""
    names = list(getattr(step.args, "POSITIONAL", ()))
    out = []
    for arg in argv:
        if names and not arg.startswith("-") and (not out or not out[-1].startswith("--") or "=" in out[-1]):
            out += [f"--{names.pop(0)}", arg]
        else:
            out.append(arg)
    return out


def _config_file(argv: Sequence[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return DEFAULT_CONFIG


def usage(steps: Sequence[Step]) -> str:
    width = max(len(s.name) for s in steps)
    listed = [f"  {s.name.ljust(width)}  {s.help}" for s in steps]
    return "usage: flywheel <step> [flags]   (flywheel <step> --help lists its flags)\n\nsteps:\n" + "\n".join(listed)


def _instance(dataclass: type, namespace: dict):
    return dataclass(**{f.name: namespace[f.name] for f in dataclasses.fields(dataclass) if f.name in namespace})


def run(steps: Sequence[Step], argv: Sequence[str]) -> int:
    """Parse, run one step, write its reports. FlywheelError exits 2 with its message and writes nothing."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(steps), file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_ERROR
    step = next((s for s in steps if s.name == argv[0]), None)
    if step is None:
        print(f"flywheel: unknown step {argv[0]!r}\n\n{usage(steps)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        config_file = _config_file(argv[1:])
        parser = parser_for(step, read_yaml_config(config_file))
        try:
            namespace = vars(parser.parse_args(_positional(step, argv[1:])))
        except SystemExit as exc:  # --help (0), or argparse's own message about a bad flag (2)
            return int(exc.code or 0)
        quiet_bars_off_terminal()  # before the step's libraries are imported: some read their switch then
        function = step.load()
        common = _instance(CommonArgs, namespace)
        work = Path(common.work_dir).resolve() if common.work_dir else work_dir()
        sections = {s: _instance(SECTIONS[s], namespace) for s in step.sections}
        report_dir = Path(common.report_dir) if common.report_dir else work / "reports"
        injected = {"work": work, "report_dir": report_dir, "config_file": config_file.resolve()}
        kwargs = {**resolve_locations(sections, work), **{k: injected[k] for k in step.injected}}
        result = function(_instance(step.args, namespace), **kwargs) if step.args else function(**kwargs)
        data = as_json(result.outcome)
        write_reports(report_dir, step.name, data, result.markdown)
    except FlywheelError as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(data, indent=2, default=str))
    print(result.markdown, file=sys.stderr)
    github_outputs(data)
    return result.exit_code


def github_outputs(result: dict) -> None:
    """In GitHub Actions, expose the result's top-level scalars (decision, version, passed, ...) as step
    outputs, so a workflow branches on them without parsing JSON in shell."""
    target = os.environ.get("GITHUB_OUTPUT")
    if not target:
        return
    lines = [
        f"{k}={str(v).lower() if isinstance(v, bool) else v}"
        for k, v in result.items()
        if isinstance(v, (str, int, float, bool)) and "\n" not in str(v) and k.replace("_", "").isalnum()
    ]
    with open(target, "a") as out:
        out.write("".join(line + "\n" for line in lines))
