"""Code tests for the ``flywheel`` CLI: help, exit codes, reports, and nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.cli import STEPS, main


@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_step_has_help(step, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([step, "--help"])
    assert exit_.value.code == 0
    assert "--config" in capsys.readouterr().out


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


def test_unknown_config_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown keys in 'train': epochz" in capsys.readouterr().err


def test_flags_override_yaml(tmp_path):
    from model.core.config import TrainConfig
    from scripts.cli import parse

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 7\n  seed: 3\n")
    _, objs = parse(["train", "--config", str(cfg), "--seed", "11"])
    assert objs[TrainConfig].epochs == 7 and objs[TrainConfig].seed == 11


def test_corrupted_artifact_is_named_by_evaluate(tmp_path, tiny_artifact, capsys):
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact["artifact"], copy)
    (copy / "labels.json").write_text('{"labels": ["hacked"]}\n')
    assert main(["evaluate", "--model", str(copy), "--data", tiny_artifact["data"]]) == 2
    assert f"{copy / 'labels.json'}: sha256 does not match" in capsys.readouterr().err


def test_gate_rejection_exits_1_with_a_markdown_body(tmp_path, tiny_artifact, capsys):
    reports = tmp_path / "reports"
    code = main(
        [
            "gate",
            "--challenger",
            tiny_artifact["artifact"],
            "--data",
            tiny_artifact["data"],
            "--min_accuracy",
            "0.999",
            "--report_dir",
            str(reports),
        ]
    )
    assert code == 1
    decision = json.loads((reports / "gate.json").read_text())
    assert decision["passed"] is False and any(r.startswith("accuracy floor") for r in decision["reasons"])
    assert "REJECTED" in (reports / "gate.md").read_text()
    assert json.loads(capsys.readouterr().out)["passed"] is False
