"""The pipeline steps the CLI runs, each composed from the single-purpose modules.

Each step returns a JSON-able dict and a markdown summary; the CLI writes both and picks the exit code.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from model import registry
from model.artifact import read_json
from model.calibration import fit_temperature, pick_threshold
from model.config import DataConfig, GateConfig, RegistryConfig, TrainConfig, work_dir
from model.data import assign_splits, dataset_digest, load_examples
from model.errors import FlywheelError
from model.evaluate import evaluate, render_markdown
from model.gate import decide
from model.gate import render_markdown as render_gate
from model.package import write_artifact
from model.predictor import IntentPredictor
from model.train import fit


def load_split(data: Path, cfg: DataConfig) -> pd.DataFrame:
    return assign_splits(load_examples(data, cfg), cfg)


def train_step(
    data: Path, data_cfg: DataConfig, train_cfg: TrainConfig, reg_cfg: RegistryConfig, out: Path | None = None
) -> tuple[dict, str]:
    """Fine-tune, calibrate the fallback, evaluate on the test split, write the artifact, log the run."""
    df = load_split(data, data_cfg)
    digest = dataset_digest(df)
    train, val, test = (df[df["split"] == s] for s in ("train", "val", "test"))
    name = time.strftime("%Y%m%d-%H%M%S-") + digest[:8]
    target = Path(out) if out else work_dir() / "models" / name
    if target.exists():
        raise FlywheelError(f"{target}: already exists; refusing to overwrite an artifact")
    sha = registry.git_sha()
    config = {"data": dataclasses.asdict(data_cfg), "train": dataclasses.asdict(train_cfg)}
    started = time.perf_counter()
    with registry.training_run(reg_cfg, run_name=name) as run_id:
        result = fit(
            train["text"].tolist(), train["intent"].tolist(), train_cfg, val["text"].tolist(), val["intent"].tolist()
        )
        train_seconds = time.perf_counter() - started
        predictor = IntentPredictor(result.model, result.tokenizer, result.labels, 0.0, train_cfg.max_length)
        predictor.temperature, predictor.threshold = calibrate(predictor, val, train_cfg.fallback_precision)
        report = evaluate(predictor, test if len(test) else val, data_cfg.oos_label)
        md = render_markdown(report, "Held-out test split" if len(test) else "Validation split (no test rows)")
        meta = {
            "dataset_digest": digest,
            "git_sha": sha,
            "mlflow_run_id": run_id,
            "config": config,
            "max_length": train_cfg.max_length,
            "temperature": predictor.temperature,
            "train_seconds": train_seconds,
            "history": result.history,
            "metrics": _headline(report),
            "counts": df.groupby("split").size().to_dict(),
        }
        artifact_digest = write_artifact(
            result,
            target,
            threshold=predictor.threshold,
            meta=meta,
            metrics_markdown=md,
            check_texts=(val if len(val) else train)["text"].tolist(),
        )
        registry.log_training(
            config=config,
            dataset=df,
            dataset_source=str(data),
            dataset_digest=digest,
            sha=sha,
            history=result.history,
            metrics={**_headline(report), "train_seconds": train_seconds},
            artifact_digest=artifact_digest,
        )
    summary = {
        "artifact": str(target),
        "artifact_digest": artifact_digest,
        "mlflow_run_id": run_id,
        "dataset_digest": digest,
        "git_sha": sha,
        "device": result.device,
        "train_seconds": round(train_seconds, 1),
        "fallback_threshold": predictor.threshold,
        "metrics": _headline(report),
        "counts": meta["counts"],
    }
    return summary, f"## Training run `{name}`\n\nArtifact: `{target}`\n\n{md}"


def calibrate(predictor: IntentPredictor, val: pd.DataFrame, target_precision: float) -> tuple[float, float]:
    """Fit the temperature on in-scope validation examples, then pick the fallback threshold."""
    probs = predictor.probabilities(val["text"].tolist())
    index = {name: i for i, name in enumerate(predictor.labels)}
    known = val["intent"].map(index).notna().to_numpy()
    temperature = fit_temperature(probs[known], val["intent"][known].map(index).to_numpy(dtype=int))
    predictor.temperature = temperature
    probs = predictor.probabilities(val["text"].tolist())
    best = probs.argmax(axis=1)
    correct = [predictor.labels[j] == y for j, y in zip(best, val["intent"])]
    return temperature, pick_threshold(probs.max(axis=1), correct, target_precision)


def _headline(report: dict) -> dict:
    keys = ("accuracy", "macro_f1", "answered_accuracy", "fallback_rate", "ece", "oos_recall")
    out = {k: report[k] for k in keys if k in report}
    out["latency_p95_ms"] = report["latency"]["single_p95_ms"]
    out["cpu_p95_ms"] = report["latency"]["cpu_p95_ms"]
    return out


def open_model(model: str, reg_cfg: RegistryConfig, runtime: str = "onnx") -> IntentPredictor:
    """A predictor from an artifact folder or an MLflow ``models:/`` URI (runtime: see IntentPredictor.load)."""
    folder = registry.download_artifact(reg_cfg, model) if model.startswith("models:/") else Path(model)
    return IntentPredictor.load(folder, runtime=runtime)


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
        version = registry.alias_version(reg_cfg, registry.CHAMPION)
        champion = f"models:/{reg_cfg.model_name}@{registry.CHAMPION}" if version is not None else ""
    reports = {}
    for role, uri in tqdm([("challenger", challenger), ("champion", champion)], desc="evaluating", leave=False):
        if uri:
            reports[role] = evaluate(open_model(uri, reg_cfg), test, data_cfg.oos_label)
    decision = decide(reports["challenger"], reports.get("champion"), gate_cfg)
    body = render_gate(decision) + "\n" + render_markdown(reports["challenger"], f"Challenger `{challenger}`")
    if "champion" in reports:
        body += "\n" + render_markdown(reports["champion"], f"Champion `{champion}`")
    return {**decision.to_dict(), "challenger": challenger, "champion": champion or None}, body, decision.passed


def register_step(model: Path, gate_file: Path, reg_cfg: RegistryConfig) -> tuple[dict, str]:
    """Register a gated artifact as the new ``challenger``; refuse one the gate did not pass."""
    predictor = IntentPredictor.load(model)  # verifies the manifest
    try:
        decision = read_json(gate_file.parent, gate_file.name)
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{gate_file}: cannot read gate decision: {exc}") from exc
    if decision.get("challenger_digest") != predictor.digest:
        raise FlywheelError(
            f"{gate_file}: gate decision is for artifact {str(decision.get('challenger_digest'))[:12]}, "
            f"not {model} ({predictor.digest[:12]})"
        )
    if not decision.get("passed"):
        raise FlywheelError(f"{gate_file}: the gate rejected this model: {'; '.join(decision.get('reasons', []))}")
    result = registry.register(reg_cfg, model, predictor.meta, predictor.digest)
    verb = "registered as" if result["created"] else "already registered as"
    md = f"Model `{model}` {verb} **{result['name']} v{result['version']}** (alias `{result['alias']}`).\n"
    return result, md


def promote_step(version: int | None, reg_cfg: RegistryConfig) -> tuple[dict, str]:
    result = registry.promote(reg_cfg, version)
    md = (
        f"**{result['name']} v{result['champion']}** is now `champion` "
        f"(was: {('v' + str(result['previous_champion'])) if result['previous_champion'] else 'none'}).\n"
    )
    return result, md
