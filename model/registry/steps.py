"""The `flywheel register` and `flywheel set-champion` steps (the registry only; moving what serves
users is `flywheel promote --env`, a pull request)."""

from __future__ import annotations

from pathlib import Path

from model.artifact.manifest import read_json, verify
from model.core.config import RegistryConfig
from model.core.errors import FlywheelError
from model.core.steps import StepResult
from model.registry import register
from model.registry.args import RegisterArgs, SetChampionArgs
from model.registry.register import ChampionMoved, Registered


def register_command(args: RegisterArgs, *, registry: RegistryConfig) -> StepResult[Registered]:
    """Register a gated artifact in MLflow as 'challenger'."""
    return StepResult(*register_step(Path(args.model), Path(args.gate), registry))


def set_champion_command(args: SetChampionArgs, *, registry: RegistryConfig) -> StepResult[ChampionMoved]:
    """Move the registry's 'champion' alias to a gate-passed version (no pull request, nothing deployed)."""
    return StepResult(*set_champion_step(args.version, registry))


def register_step(model: Path, gate_file: Path, reg_cfg: RegistryConfig) -> tuple[Registered, str]:
    """Register a gated artifact as the new ``challenger``; refuse one the gate did not pass."""
    digest = verify(model)  # every file as sealed, else FlywheelError naming the file
    try:
        decision = read_json(gate_file.parent, gate_file.name)
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{gate_file}: cannot read gate decision: {exc}") from exc
    if decision.get("challenger_digest") != digest:
        raise FlywheelError(
            f"{gate_file}: gate decision is for artifact {str(decision.get('challenger_digest'))[:12]}, "
            f"not {model} ({digest[:12]})"
        )
    if not decision.get("passed"):
        raise FlywheelError(f"{gate_file}: the gate rejected this model: {'; '.join(decision.get('reasons', []))}")
    result = register.register(reg_cfg, model, read_json(model, "meta.json"), digest)
    verb = "registered as" if result.created else "already registered as"
    md = f"Model `{model}` {verb} **{result.name} v{result.version}** (alias `{result.alias}`).\n"
    return result, md


def set_champion_step(version: int | None, reg_cfg: RegistryConfig) -> tuple[ChampionMoved, str]:
    result = register.promote(reg_cfg, version)
    was = f"v{result.previous_champion}" if result.previous_champion else "none"
    md = f"**{result.name} v{result.champion}** is now `champion` (was: {was}).\n"
    return result, md
