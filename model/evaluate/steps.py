"""The `flywheel evaluate` and `flywheel gate` steps: one model on a labelled set; challenger against
champion on the same frozen test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from model.core.config import DataConfig, GateConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.core.progress import bar
from model.core.steps import EXIT_OK, EXIT_REJECTED, StepResult
from model.data.examples import load_split
from model.evaluate.args import EvaluateArgs, GateArgs
from model.evaluate.evaluation import evaluate, render_markdown
from model.evaluate.gate import decide
from model.evaluate.gate import render_markdown as render_gate
from model.registry import versions
from model.registry.versions import open_model


@dataclass(frozen=True)
class Evaluated:
    """``flywheel evaluate``'s outcome: the evaluation report (``model.evaluate.evaluation``), written as it is."""

    report: dict

    def to_dict(self) -> dict:
        return self.report


@dataclass(frozen=True)
class Gated:
    """The gate's decision (``model.evaluate.gate``) on a challenger, and the two models it compared."""

    passed: bool
    checks: list[dict]  # name, passed, detail
    challenger_digest: str
    champion_digest: str | None
    summary: dict
    reasons: list[str]  # the failed checks' details
    challenger: str
    champion: str | None  # None: no champion yet, the floors applied


def evaluate_command(args: EvaluateArgs, *, data: DataConfig, registry: RegistryConfig) -> StepResult[Evaluated]:
    """Measure a model on a labelled test set."""
    report, md = evaluate_step(args.model, Path(args.data), args.split, data, registry)
    return StepResult(Evaluated(report), md)


def gate_command(args: GateArgs, *, data: DataConfig, gate: GateConfig, registry: RegistryConfig) -> StepResult[Gated]:
    """Decide whether a challenger may replace the champion: exit 1 when it may not."""
    result, md, passed = gate_step(args.challenger, args.champion, Path(args.data), args.split, data, gate, registry)
    return StepResult(Gated(**result), md, EXIT_OK if passed else EXIT_REJECTED)


def evaluation_set(data: Path, data_cfg: DataConfig, split: str) -> pd.DataFrame:
    df = load_split(data, data_cfg)
    if split != "all":
        df = df[df["split"] == split]
    if df.empty:
        raise FlywheelError(f"{data}: no examples in split '{split}'")
    return df


def evaluate_step(
    model: str, data: Path, split: str, data_cfg: DataConfig, reg_cfg: RegistryConfig
) -> tuple[dict, str]:
    report = evaluate(open_model(model, reg_cfg), evaluation_set(data, data_cfg, split), data_cfg.oos_label)
    return report, render_markdown(report, f"Evaluation of `{model}` on `{data}` ({split})")


def gate_step(
    challenger: str,
    champion: str,
    data: Path,
    split: str,
    data_cfg: DataConfig,
    gate_cfg: GateConfig,
    reg_cfg: RegistryConfig,
) -> tuple[dict, str, bool]:
    """Evaluate both models on the same frozen test set, in the same process, then decide."""
    test = evaluation_set(data, data_cfg, split)
    if champion == "auto":
        version = versions.alias_version(reg_cfg, versions.CHAMPION)
        champion = f"models:/{reg_cfg.model_name}@{versions.CHAMPION}" if version is not None else ""
    reports = {}
    for role, uri in bar([("challenger", challenger), ("champion", champion)], desc="evaluating", leave=False):
        if uri:
            reports[role] = evaluate(open_model(uri, reg_cfg), test, data_cfg.oos_label)
    decision = decide(reports["challenger"], reports.get("champion"), gate_cfg)
    body = render_gate(decision) + "\n" + render_markdown(reports["challenger"], f"Challenger `{challenger}`")
    if "champion" in reports:
        body += "\n" + render_markdown(reports["champion"], f"Champion `{champion}`")
    return {**decision.to_dict(), "challenger": challenger, "champion": champion or None}, body, decision.passed
