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
from model.evaluate.gate import GateDecision, decide
from model.evaluate.gate import render_markdown as render_gate
from model.evaluate.report import EvaluationReport
from model.registry import versions
from model.registry.versions import open_model


@dataclass(frozen=True)
class GateResult:
    """The gate step's outcome: the decision, what was compared, and the pull-request body."""

    decision: GateDecision
    challenger: str  # artifact folder or models:/ URI, as given
    champion: str | None  # None: no champion yet (absolute floors)
    markdown: str

    @property
    def passed(self) -> bool:
        return self.decision.passed

    def to_dict(self) -> dict:
        """gate.json: the decision's fields, then what was compared."""
        return {**self.decision.to_dict(), "challenger": self.challenger, "champion": self.champion}


def evaluate_command(args: EvaluateArgs, *, data: DataConfig, registry: RegistryConfig) -> StepResult[EvaluationReport]:
    """Measure a model on a labelled test set."""
    report, md = evaluate_step(args.model, Path(args.data), args.split, data, registry)
    return StepResult(report, md)


def gate_command(
    args: GateArgs, *, data: DataConfig, gate: GateConfig, registry: RegistryConfig
) -> StepResult[GateResult]:
    """Decide whether a challenger may replace the champion: exit 1 when it may not."""
    gated = gate_step(
        args.challenger, args.champion, Path(args.data), args.split, data_cfg=data, gate_cfg=gate, reg_cfg=registry
    )
    return StepResult(gated, gated.markdown, EXIT_OK if gated.passed else EXIT_REJECTED)


def evaluation_set(data: Path, data_cfg: DataConfig, split: str) -> pd.DataFrame:
    df = load_split(data, data_cfg)
    if split != "all":
        df = df[df["split"] == split]
    if df.empty:
        raise FlywheelError(f"{data}: no examples in split '{split}'")
    return df


def evaluate_step(
    model: str, data: Path, split: str, data_cfg: DataConfig, reg_cfg: RegistryConfig
) -> tuple[EvaluationReport, str]:
    report = evaluate(open_model(model, reg_cfg), evaluation_set(data, data_cfg, split), data_cfg.oos_label)
    return report, render_markdown(report, f"Evaluation of `{model}` on `{data}` ({split})")


def gate_step(
    challenger: str,
    champion: str,
    data: Path,
    split: str = "test",
    *,
    data_cfg: DataConfig,
    gate_cfg: GateConfig,
    reg_cfg: RegistryConfig,
) -> GateResult:
    """Evaluate both models on the same frozen test set, in the same process, then decide."""
    test = evaluation_set(data, data_cfg, split)
    if champion == "auto":
        version = versions.alias_version(reg_cfg, versions.CHAMPION)
        champion = f"models:/{reg_cfg.model_name}@{versions.CHAMPION}" if version is not None else ""
    challenger_report, champion_report = (
        evaluate(open_model(uri, reg_cfg), test, data_cfg.oos_label) if uri else None
        for uri in bar([challenger, champion], desc="evaluating", leave=False)
    )
    decision = decide(challenger_report, champion_report, gate_cfg)
    body = render_gate(decision) + "\n" + render_markdown(challenger_report, f"Challenger `{challenger}`")
    if champion_report is not None:
        body += "\n" + render_markdown(champion_report, f"Champion `{champion}`")
    return GateResult(decision, challenger, champion or None, body)
