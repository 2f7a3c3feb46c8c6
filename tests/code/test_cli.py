"""Code tests for the ``flywheel`` CLI: help, exit codes, reports, and nothing written on bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from model.core.command_line import parser_for
from model.core.config import DEFAULT_CONFIG, PROJECT_ROOT, SECTIONS, DataConfig, RegistryConfig, setting
from model.core.reports import as_json
from model.core.settings import read_yaml_config
from model.core.steps import Step, StepResult, WiringError, wiring_problems
from model.registry.args import RegisterArgs
from model.registry.register import Registered
from scripts.cli import STEPS, main
from tests.helpers.cli import step_parsers

BY_NAME = {s.name: s for s in STEPS}


@pytest.mark.parametrize("step", sorted(BY_NAME))
def test_every_step_has_help(step, capsys):
    assert main([step, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--config" in out and "--work-dir" in out and BY_NAME[step].help in out


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_row_matches_its_function(step):
    """What a row declares (flags dataclass, config sections, injected values) is what its function takes,
    and the function returns a typed outcome: checked on the function's real signature and annotations."""
    function = step.load()  # raises WiringError naming any difference
    assert wiring_problems(step, function) == []
    assert function.__doc__, f"{step.name}: the function says what the step does"


def test_each_step_is_named_once():
    assert len(BY_NAME) == len(STEPS)


@dataclass
class _Flags:
    model: str = setting("", "an artifact")


@dataclass(frozen=True)
class _Done:
    version: int


def _register_like(args: RegisterArgs, *, registry: RegistryConfig) -> StepResult[Registered]:
    """A step function as the table's register row declares it."""


def _untyped(args: RegisterArgs, *, registry: RegistryConfig) -> StepResult:
    """Returns a StepResult without saying of what."""


@pytest.mark.parametrize(
    ("row", "function", "problem"),
    [
        (dict(args=RegisterArgs, sections=("registry",)), _register_like, None),
        (dict(args=RegisterArgs, sections=("registry", "data")), _register_like, "the row declares ['data']"),
        (dict(args=RegisterArgs), _register_like, "it reads ['registry'], which the row does not declare"),
        (dict(args=_Flags, sections=("registry",)), _register_like, "its `args` is RegisterArgs, the row's is _Flags"),
        (dict(sections=("registry",)), _register_like, "it takes ['args'] but the row declares no args"),
        (dict(args=RegisterArgs, sections=("registry",), injected=("work",)), _register_like, "declares ['work']"),
        (dict(args=RegisterArgs, sections=("registry",)), _untyped, "not StepResult[<a dataclass>]"),
    ],
)
def test_a_row_that_disagrees_with_its_function_is_named(row, function, problem):
    step = Step("x", "a step", "tests.code.test_cli:_", **row)
    problems = wiring_problems(step, function)
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems


def test_a_miswired_row_fails_when_the_step_loads_not_when_it_runs():
    """The real register function under a row that declares the wrong section: refused at load, naming both."""
    row = Step("register", "x", "model.registry.steps:register_command", RegisterArgs, sections=("data",))
    with pytest.raises(WiringError, match=r"step 'register': model.registry.steps:register_command does not match"):
        row.load()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (dict(sections=("trian",)), "unknown config section 'trian'"),
        (dict(injected=("workdir",)), "'workdir' is not injected"),
        (dict(args=DataConfig()), "is not a dataclass"),
    ],
)
def test_a_row_naming_what_does_not_exist_fails_when_the_table_is_built(row, message):
    with pytest.raises(WiringError, match=message):
        Step("x", "a step", "model.registry.steps:register_command", **row)


def test_a_step_outcome_is_typed_and_becomes_json_only_when_written():
    with pytest.raises(TypeError, match="not dict"):
        StepResult({"version": 1}, "")
    nested = {"path": PROJECT_ROOT, "done": (_Done(3),), "decision": Registered("m", 2, True, "challenger", "u")}
    assert as_json(nested) == {
        "path": str(PROJECT_ROOT),
        "done": [{"version": 3}],
        "decision": {"name": "m", "version": 2, "created": True, "alias": "challenger", "model_uri": "u"},
    }


def test_help_shows_the_hyphenated_spelling_of_each_flag_first():
    for name, parser in step_parsers().items():
        for action in parser._actions:
            first = action.option_strings[0] if action.option_strings else "--"
            assert "_" not in first, f"flywheel {name}: {action.option_strings}"
    assert main(["train", "--help"]) == 0


def test_help_says_which_flags_are_required(capsys):
    assert main(["promote", "--help"]) == 0
    options = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    env = options.split("--env {staging,production}", 1)[1].split(" --", 1)[0]
    assert env.strip() == "environment whose canary takes 100 percent, by pull request (required)"
    assert "(default: .)" in options.split("--repo REPO", 1)[1].split(" --", 1)[0]


def test_the_delivery_steps_and_every_help_start_without_torch_or_mlflow():
    """The table names every flags dataclass without importing any step's code: `flywheel <step> --help`
    and the parsers the wiring tests check load neither PyTorch nor MLflow."""
    code = (
        "import contextlib, io, sys\n"
        "from scripts.cli import STEPS, main\n"
        "from tests.helpers.cli import step_parsers\n"
        "step_parsers()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert all(main([s.name, '--help']) == 0 for s in STEPS)\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_top_level_help_lists_every_step(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in BY_NAME)
    assert main(["no-such-step"]) == 2 and "unknown step 'no-such-step'" in capsys.readouterr().err


def test_the_readme_command_table_has_one_row_per_step():
    rows = re.findall(r"^\| `flywheel ([a-z-]+)", (PROJECT_ROOT / "README.md").read_text(), re.MULTILINE)
    assert sorted(rows) == sorted(BY_NAME)


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
    return vars(parser_for(BY_NAME[argv[0]], read_yaml_config(config)).parse_args(argv[1:]))


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
