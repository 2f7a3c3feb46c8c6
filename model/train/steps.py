"""The `flywheel train` step: fine-tune, calibrate the fallback, evaluate on the test split, write the
artifact and log the MLflow run."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from model.artifact.predictor import IntentPredictor
from model.core.config import DataConfig, RegistryConfig, TrainConfig
from model.core.errors import FlywheelError
from model.core.steps import StepResult
from model.data.entities import load_spans
from model.data.examples import dataset_digest, load_split
from model.evaluate.evaluation import evaluate, render_markdown
from model.evaluate.report import EvaluationReport
from model.registry import tracking
from model.train import checkpoint, distributed
from model.train.args import TrainArgs
from model.train.calibration import fit_temperature, pick_threshold, scope_threshold
from model.train.fit import FitResult, fit
from model.train.package import write_artifact


@dataclass(frozen=True)
class Trained:
    """What a training run made: the artifact, its lineage, how it ran and its headline test metrics."""

    artifact: str  # the artifact folder
    artifact_digest: str
    mlflow_run_id: str
    dataset_digest: str
    git_sha: str | None
    device: str
    precision: str  # fp32, bf16 or fp16
    workers: int  # processes under torchrun (1 alone)
    resumed_from_step: int | None  # the checkpoint's step when the run resumed one
    train_seconds: float
    fallback_threshold: float
    metrics: dict[str, float]  # accuracy, macro_f1, ... (``_headline``)
    counts: dict[str, int]  # examples per split


def train_command(
    args: TrainArgs, *, data: DataConfig, train: TrainConfig, registry: RegistryConfig, work: Path
) -> StepResult[Trained]:
    """Fine-tune an intent model and write a verified artifact."""
    with local_data(args.data, registry, work) as dataset:
        out = Path(args.out) if args.out else None
        outcome = train_step(dataset, data, train, registry, work, out, mlflow_run=args.mlflow_run_id)
    if outcome is None:  # a worker under torchrun: rank 0 has written and reports everything
        raise SystemExit(0)
    return StepResult(*outcome)


@contextmanager
def local_data(data: str, reg_cfg: RegistryConfig, work: Path) -> Iterator[Path]:
    """``data`` as a local path: a path as it is, an artifact URI downloaded for as long as training runs
    (under torchrun every worker downloads its own copy)."""
    if not tracking.URI.match(data):
        yield Path(data)
        return
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="data-") as folder:
        yield tracking.download(reg_cfg, data, Path(folder))


def train_step(
    data: Path,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    reg_cfg: RegistryConfig,
    work: Path,
    out: Path | None = None,
    *,
    mlflow_run: str | None = None,
) -> tuple[Trained, str] | None:
    """Fine-tune, calibrate the fallback, evaluate on the test split, write the artifact, log the run.

    As one of N processes under torchrun (``model.train.distributed``) every rank trains its share of
    each batch; rank 0 alone evaluates, writes the artifact and the MLflow run and returns the
    summary; the other ranks wait until it has, then return None. ``mlflow_run``: an existing run to
    train in (it must exist), which also receives the artifact folder."""
    world = distributed.join(train_cfg.device)
    try:
        return _train(
            world,
            data,
            data_cfg=data_cfg,
            train_cfg=train_cfg,
            reg_cfg=reg_cfg,
            work=work,
            out=out,
            mlflow_run=mlflow_run,
        )
    finally:
        distributed.leave(world)


def _train(
    world: distributed.World,
    data: Path,
    *,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    reg_cfg: RegistryConfig,
    work: Path,
    out: Path | None,
    mlflow_run: str | None,
) -> tuple[Trained, str] | None:
    df = load_split(data, data_cfg)
    digest = dataset_digest(df)
    train, val, test = (df[df["split"] == s] for s in ("train", "val", "test"))
    config = {"data": dataclasses.asdict(data_cfg), "train": dataclasses.asdict(train_cfg)}
    checkpoints, run, name = _run(work, digest, config)
    target = Path(out) if out else work / "models" / name
    if target.exists():
        raise FlywheelError(f"{target}: already exists; refusing to overwrite an artifact")
    train_model = functools.partial(
        fit, train["text"].tolist(), train["intent"].tolist(), train_cfg, val["text"].tolist(), val["intent"].tolist(),
        entities=training_spans(train), world=world, checkpoints=checkpoints,
    )  # fmt: skip
    if not world.is_main:
        train_model()
        world.barrier()  # until rank 0 has written the artifact and the MLflow run
        return None
    sha = tracking.git_sha()
    started = time.perf_counter()
    with tracking.training_run(reg_cfg, name, mlflow_run or run.get("mlflow_run_id"), bool(mlflow_run)) as run_id:
        result = train_model(run={"name": name, "mlflow_run_id": run_id})
        train_seconds = time.perf_counter() - started
        predictor, report, md = _calibrated_and_evaluated(result, val, test, data_cfg, train_cfg)
        meta = {
            "dataset_digest": digest,
            "git_sha": sha,
            "mlflow_run_id": run_id,
            "config": config,
            "max_length": train_cfg.max_length,
            "temperature": predictor.temperature,
            "scope_threshold": predictor.scope_threshold,
            "train_seconds": train_seconds,
            "workers": world.size,
            "precision": result.precision,
            "resumed_from_step": result.resumed_from_step,
            "history": result.history,
            "metrics": _headline(report),
            "counts": df.groupby("split").size().to_dict(),
            **({"entity_metrics": report.entities.to_dict()} if report.entities is not None else {}),
        }
        artifact_digest = write_artifact(
            result,
            target,
            threshold=predictor.threshold,
            meta=meta,
            metrics_markdown=md,
            check_texts=(val if len(val) else train)["text"].tolist(),
        )
        tracking.log_training(
            config=config,
            dataset=df,
            dataset_source=str(data),
            dataset_digest=digest,
            sha=sha,
            history=result.history,
            metrics={**_headline(report), "train_seconds": train_seconds},
            artifact_digest=artifact_digest,
            upload=target if mlflow_run else None,  # the job's disk is gone once it ends
        )
    checkpoint.remove(checkpoints)  # the artifact holds the result: a rerun trains afresh
    world.barrier()
    from_meta = ("mlflow_run_id", "dataset_digest", "git_sha", "precision", "workers", "resumed_from_step", "metrics")
    summary = Trained(
        artifact=str(target), artifact_digest=artifact_digest, device=result.device,
        train_seconds=round(train_seconds, 1), fallback_threshold=predictor.threshold, counts=meta["counts"],
        **{key: meta[key] for key in from_meta},
    )  # fmt: skip
    return summary, f"## Training run `{name}`\n\nArtifact: `{target}`\n\n{md}"


def _run(work: Path, digest: str, config: dict) -> tuple[Path | None, dict, str]:
    """The run's checkpoint folder (None: no checkpoints), the run a checkpoint there was written by
    (``{}`` if none: a resumed run keeps its MLflow run and its name) and the run's name."""
    checkpoints = work / "checkpoints" / run_key(digest, config) if config["train"]["checkpoint_every"] else None
    resumed = checkpoint.latest(checkpoints)
    run = checkpoint.read_progress(resumed).run if resumed else {}
    return checkpoints, run, run.get("name") or time.strftime("%Y%m%d-%H%M%S-") + digest[:8]


def run_key(dataset_digest: str, config: dict) -> str:
    """The checkpoint folder's name: the same data and settings (a rerun of the same command) find the
    same folder; how often checkpoints are written does not change what is trained."""
    train = {k: v for k, v in config["train"].items() if k != "checkpoint_every"}
    text = json.dumps({"dataset": dataset_digest, "data": config["data"], "train": train}, sort_keys=True)
    return "train-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _calibrated_and_evaluated(
    result: FitResult, val: pd.DataFrame, test: pd.DataFrame, data_cfg: DataConfig, train_cfg: TrainConfig
) -> tuple[IntentPredictor, EvaluationReport, str]:
    """The trained model as a predictor with its fallback calibrated on validation, and its report on the
    test split (validation when there is none), as data and markdown."""
    model, tokenizer, labels = result.model, result.tokenizer, result.labels
    predictor = IntentPredictor(
        model, tokenizer, labels, threshold=0.0, max_length=train_cfg.max_length, tags=result.tags
    )
    calibrate(predictor, val, train_cfg)
    report = evaluate(predictor, test if len(test) else val, data_cfg.oos_label)
    md = render_markdown(report, "Held-out test split" if len(test) else "Validation split (no test rows)")
    return predictor, report, md


def training_spans(train: pd.DataFrame) -> list[list[dict]] | None:
    """Each training text's entity spans, or None when the data has none (an intent-only model)."""
    if "entities" not in train.columns:
        return None
    spans = [load_spans(cell) for cell in train["entities"]]
    return spans if any(spans) else None


def calibrate(predictor: IntentPredictor, val: pd.DataFrame, cfg: TrainConfig) -> None:
    """Fit the temperature, the fallback threshold and the scope threshold on the in-scope validation
    examples (``model.train.calibration``), into ``predictor``."""
    index = {name: i for i, name in enumerate(predictor.labels)}
    known = val[val["intent"].isin(index)]
    probs, _, _, top = predictor._run(known["text"].tolist())
    targets = known["intent"].map(index).to_numpy(dtype=int)
    predictor.temperature = fit_temperature(probs, targets)
    probs = predictor.probabilities(known["text"].tolist())
    correct = probs.argmax(axis=1) == targets
    predictor.threshold = pick_threshold(probs.max(axis=1), correct, cfg.fallback_precision)
    predictor.scope_threshold = scope_threshold(top, correct, cfg.handoff_in_scope_cost)


def _headline(report: EvaluationReport) -> dict[str, float]:
    """The figures the summary, the artifact's meta and the MLflow run carry (their names are MLflow metric keys)."""
    out = {k: getattr(report, k) for k in ("accuracy", "macro_f1", "answered_accuracy", "fallback_rate", "ece")}
    if report.out_of_scope is not None:
        out["oos_recall"] = report.out_of_scope.recall
    if report.entities is not None:  # span-level micro-F1 over every entity type (exact match)
        out["entity_f1"] = report.entities.micro.f1
    out["latency_p95_ms"] = report.latency.single_p95_ms
    out["cpu_p95_ms"] = report.latency.cpu_p95_ms
    return out
