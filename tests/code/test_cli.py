"""Code tests for the ``flywheel`` CLI: help, exit codes, reports, and nothing written on bad input."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from model.core.command_line import parser_for
from model.core.config import DEFAULT_CONFIG, SECTIONS, DataConfig, TrainConfig
from model.core.settings import read_yaml_config
from model.core.steps import Signature
from scripts.cli import STEPS, main

BY_NAME = {s.name: s for s in STEPS}


@pytest.mark.parametrize("step", sorted(BY_NAME))
def test_every_step_has_help(step, capsys):
    assert main([step, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--config" in out and "--work-dir" in out and BY_NAME[step].help in out


def wiring_mistakes(function) -> list[str]:
    """Where ``function`` would not take what the dispatcher (model/core/command_line.py) passes it: each
    section parameter gets that section's dataclass, ``args`` the step's flags dataclass (whose
    ``POSITIONAL`` names are among its fields), ``work``, ``report_dir`` and ``config_file`` a Path."""
    try:
        signature = Signature.of(function)
    except TypeError as exc:  # a parameter that is neither a section nor injected
        return [str(exc)]
    hints = typing.get_type_hints(function)
    expected = {s: SECTIONS[s] for s in signature.sections} | {name: Path for name in signature.injected}
    mistakes = [f"{n}: {hints.get(n)} where the CLI passes {t}" for n, t in expected.items() if hints.get(n) is not t]
    if "args" not in inspect.signature(function).parameters:
        return mistakes
    if not dataclasses.is_dataclass(signature.args):
        return [*mistakes, f"args: {signature.args} is not a dataclass of flags"]
    fields = {f.name for f in dataclasses.fields(signature.args)}
    return mistakes + [
        f"POSITIONAL {n!r} is no field" for n in getattr(signature.args, "POSITIONAL", ()) if n not in fields
    ]


@dataclasses.dataclass
class Flags:
    POSITIONAL = ("record",)
    record: str = ""


@dataclasses.dataclass
class MisnamedPositional:
    POSITIONAL = ("recrod",)
    record: str = ""


def swapped_sections(args: Flags, *, data: TrainConfig, train: DataConfig) -> None: ...
def work_as_text(args: Flags, *, work: str) -> None: ...
def flags_as_a_dict(args: dict) -> None: ...
def misspelt_section(args: Flags, *, trian: TrainConfig) -> None: ...
def positional_not_a_field(args: MisnamedPositional) -> None: ...


@pytest.mark.parametrize(
    ("function", "mistake"),
    [
        (swapped_sections, f"data: {TrainConfig} where the CLI passes {DataConfig}"),
        (swapped_sections, f"train: {DataConfig} where the CLI passes {TrainConfig}"),
        (work_as_text, f"work: {str} where the CLI passes {Path}"),
        (flags_as_a_dict, "is not a dataclass of flags"),
        (misspelt_section, "parameters ['trian'] are neither sections nor injected"),
        (positional_not_a_field, "POSITIONAL 'recrod' is no field"),
    ],
)
def test_a_wiring_mistake_is_found(function, mistake):
    assert any(mistake in m for m in wiring_mistakes(function)), wiring_mistakes(function)


def test_each_step_is_declared_once_and_takes_what_the_cli_passes():
    """The table names each step once; each function says what it does and takes what dispatch passes it."""
    assert len(BY_NAME) == len(STEPS)
    assert all(step.load().__doc__ for step in STEPS), "each step's function says what the step does"
    assert {step.name: wiring_mistakes(step.load()) for step in STEPS} == {step.name: [] for step in STEPS}


def test_top_level_help_lists_every_step(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in BY_NAME)
    assert main(["no-such-step"]) == 2 and "unknown step 'no-such-step'" in capsys.readouterr().err


def test_installed_entry_point_runs():
    done = subprocess.run([str(Path(sys.executable).with_name("flywheel")), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout and "gate" in done.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "file is empty"),
        ("text,label\nhi,a\n", "missing column(s) intent"),
        ("text,intent\n" + "hi,a\n" * 3, "fewer than"),
    ],
)
def test_bad_training_data_exits_2_and_writes_nothing(tmp_path, isolated_work_dir, capsys, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "artifact")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and str(data) in err
    assert not (tmp_path / "artifact").exists()
    assert not (isolated_work_dir / "reports").exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train:\n  epochz: 3\n", "unknown key 'train.epochz'"),
        ("nowhere:\n  x: 1\n", "unknown section 'nowhere'"),
        ("train:\n  device: tpu\n", "train.device = 'tpu': expected one of auto, cpu, cuda"),
        ("train:\n  epochs: four\n", "train.epochs = 'four': expected a whole number"),
        ("train:\n  freeze_embeddings: 1\n", "train.freeze_embeddings = 1: expected true or false"),
        ("train: [1, 2]\n", "section 'train' must be a mapping"),
    ],
)
def test_bad_config_file_exits_2_naming_file_key_and_allowed_values(tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err


def test_bad_flag_choice_exits_2_with_the_allowed_values(capsys):
    assert main(["train", "--device", "tpu"]) == 2
    assert "invalid choice: 'tpu' (choose from 'auto', 'cpu', 'cuda')" in capsys.readouterr().err
    assert main(["train", "--epochs", "four"]) == 2
    assert "argument --epochs: invalid int value: 'four'" in capsys.readouterr().err


def _parsed(argv: list[str], config: Path) -> dict:
    step = BY_NAME[argv[0]]
    return vars(parser_for(step, Signature.of(step.load()), read_yaml_config(config)).parse_args(argv[1:]))


def test_flags_override_yaml_which_overrides_the_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 7\n  seed: 3\n")
    parsed = _parsed(["train", "--config", str(cfg), "--seed", "11"], cfg)
    assert (parsed["epochs"], parsed["seed"], parsed["batch_size"]) == (7, 11, 32)


def test_help_shows_the_value_that_will_apply(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 7\n")
    assert main(["train", "--config", str(cfg), "--help"]) == 0
    options = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    assert "(default: 7)" in options.split("--epochs EPOCHS", 1)[1].split(" --", 1)[0]


def test_default_yaml_holds_overrides_only():
    """A default lives once, in its dataclass: the YAML may not repeat one (it would silently pin it)."""
    overrides = read_yaml_config(DEFAULT_CONFIG)  # unknown sections, keys and types are refused here
    for section, values in overrides.items():
        defaults = SECTIONS[section]()
        repeated = [k for k, v in values.items() if getattr(defaults, k) == v]
        assert not repeated, f"{DEFAULT_CONFIG}: {section} repeats its defaults for {repeated}"
