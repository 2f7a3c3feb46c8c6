"""The steps that read a trained model, through the CLI: evaluate names a tampered artifact's file, the gate
rejects (exit 1, a markdown body), drift compares against a model's predictions; on conftest's tiny model."""

from __future__ import annotations

import json
import shutil

from model.data.conversations import write_snapshot
from scripts.cli import main
from tests.helpers.snapshots import make_snapshot


def test_corrupted_artifact_is_named_by_evaluate(tmp_path, tiny_artifact, capsys):
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


def test_cli_drift_with_model_baseline(tmp_path, sample_df, tiny_artifact, tiny_bert):
    current = write_snapshot(make_snapshot(sample_df, n=40), tmp_path / "current.parquet")
    flags = ["--reference", tiny_artifact["data"], "--current", str(current), "--model", tiny_artifact["artifact"]]
    assert main(["drift", *flags, "--encoder", str(tiny_bert), "--report-dir", str(tmp_path / "reports")]) == 0
    result = json.loads((tmp_path / "reports" / "drift.json").read_text())
    assert {s["name"] for s in result["signals"]} == {"text", "predicted_intent", "confidence", "fallback_rate"}
    assert set(result["skipped"]) == {"thumbs_down_rate", "escalation_rate"}
