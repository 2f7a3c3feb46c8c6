"""Drift between the training data and a window of recent logs, measured with Evidently 0.7.

Each side is compared as a random sample of at most ``sample_size`` rows (``sample_rows``, seeded):
every test below is a two-sample test, valid on random samples of the two distributions, and its
power depends on the sample's size, not the window's, while embedding a month of texts would take
hours on a CPU. ``scripts/bench_drift.py`` measures false alarms and detection at that size.

Signals (each an Evidently metric in one report, so the HTML shows all of them):

- ``text``: drift of sentence embeddings (the packaged MiniLM, mean pooling; ``data_checks.embeddings``)
  by Evidently's domain-classifier method (``ModelDriftMethod``, what its ``EmbeddingsDrift`` metric
  runs): a classifier learns to tell reference from current embeddings; its ROC AUC on held-out
  rows is the score. It is called directly rather than through ``EmbeddingsDrift`` because that
  metric also draws a t-SNE picture, about 80 s on two CPU cores whatever the data size.
- ``predicted_intent``: chi-square test of homogeneity (two samples) on the predicted intents,
  registered with Evidently as ``chi2_homogeneity``. Evidently's own ``chisquare`` treats the
  reference frequencies as exact (a goodness-of-fit test), which flagged 6 of 20 random splits of
  Banking77; intents with fewer than 5 pooled examples are merged so the approximation holds.
- ``confidence``: Kolmogorov-Smirnov test on the model's confidence.
- ``fallback_rate``, ``thumbs_down_rate``, ``escalation_rate``: two-proportion z-tests, counted only
  when the change is also at least ``min_rate_change`` (a significant 0.1-point change on a huge
  window is not worth a retrain).

``decide`` is a pure function of the signals: drift if any signal crossed its threshold. The
p-value thresholds split ``alpha`` over the signals that ran (Bonferroni) and the AUC threshold is
the one-sided ``1 - alpha/k`` quantile of the AUC under "no drift" (Mann-Whitney normal
approximation for the held-out sizes), so the whole verdict has a false-alarm rate of at most
``alpha``. ``scripts/bench_drift.py`` measures that rate and the detection rate on Banking77.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, norm

from data_checks.args import DriftArgs
from data_checks.embeddings import Embedder
from model.core.config import DataConfig, DriftConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.core.steps import StepResult
from model.data.conversations import read_snapshot, snapshot_info
from model.data.examples import load_examples

SAMPLE_SEED = 0  # the rows each side is sampled to: the same window gives the same verdict
RATES = {"fallback_rate": "fallback", "thumbs_down_rate": "thumbs_down", "escalation_rate": "escalated"}
PREDICTION_COLUMNS = ("predicted_intent", "confidence", "fallback")


@dataclass
class Signal:
    name: str
    method: str
    score: float  # p-value, or ROC AUC for text
    threshold: float
    drifted: bool
    reference: float | None = None  # for rates: the two rates being compared
    current: float | None = None

    def __post_init__(self):
        # numpy scalars from the tests would reach the JSON report as strings ("True")
        self.score, self.threshold, self.drifted = float(self.score), float(self.threshold), bool(self.drifted)

    def describe(self) -> str:
        if self.name == "text":
            return f"text embeddings: domain classifier ROC AUC {self.score:.3f} > {self.threshold:.3f}"
        if self.reference is not None:
            return (
                f"{self.name.replace('_', ' ')}: {self.reference:.1%} -> {self.current:.1%} "
                f"(p={self.score:.2g} < {self.threshold:.2g})"
            )
        return f"{self.name.replace('_', ' ')}: {self.method} p={self.score:.2g} < {self.threshold:.2g}"


@dataclass
class DriftDecision:
    drift: bool
    reasons: list[str]
    signals: list[Signal]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "drift": self.drift,
            "reasons": self.reasons,
            "signals": [asdict(s) for s in self.signals],
            "skipped": self.skipped,
        }


def auc_threshold(n_reference: int, n_current: int, alpha: float) -> float:
    """ROC AUC a random classifier exceeds with probability ``alpha`` on these held-out sizes."""
    n1, n2 = max(n_reference, 1), max(n_current, 1)
    sigma = math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))
    return 0.5 + norm.ppf(1 - alpha) * sigma


def decide(scores: dict[str, dict], cfg: DriftConfig) -> DriftDecision:
    """The verdict from raw scores (pure): ``scores[name] = {"method", "score", ...}``.

    ``text`` carries ``n_reference``/``n_current`` (held-out sizes); rates carry ``reference`` and
    ``current``; a signal whose inputs were missing is passed as ``{"skipped": "why"}``.
    """
    ran = {k: v for k, v in scores.items() if "skipped" not in v}
    skipped = {k: v["skipped"] for k, v in scores.items() if "skipped" in v}
    per_test = cfg.alpha / max(len(ran), 1)
    signals = []
    for name, s in ran.items():
        if name == "text":
            threshold = auc_threshold(s["n_reference"], s["n_current"], per_test)
            signals.append(Signal(name, s["method"], s["score"], threshold, s["score"] > threshold))
        elif name in RATES:
            material = abs(s["current"] - s["reference"]) >= cfg.min_rate_change
            signals.append(
                Signal(
                    name,
                    s["method"],
                    s["score"],
                    per_test,
                    s["score"] < per_test and material,
                    s["reference"],
                    s["current"],
                )
            )
        else:
            signals.append(Signal(name, s["method"], s["score"], per_test, s["score"] < per_test))
    reasons = [s.describe() for s in signals if s.drifted]
    return DriftDecision(bool(reasons), reasons, signals, skipped)


# ---- the Evidently report ------------------------------------------------------------------------

HOMOGENEITY_TEST = "chi2_homogeneity"


def _chi2_homogeneity(reference_data: pd.Series, current_data: pd.Series, feature_type, threshold: float):
    """Two-sample chi-square test that both samples come from one categorical distribution."""
    ref, cur = reference_data.value_counts(), current_data.value_counts()
    table = pd.concat([ref, cur], axis=1).fillna(0)
    rare = table.sum(axis=1) < 5
    if rare.any():
        table = pd.concat([table[~rare], table[rare].sum().to_frame("(rare)").T])
    if len(table) < 2:
        return 1.0, False
    p_value = float(chi2_contingency(table.to_numpy().T)[1])
    return p_value, p_value < threshold


def _register_homogeneity_test() -> None:
    # Evidently takes seconds to import (and drift_step is imported by the loop): loaded when a check runs.
    from evidently.legacy.calculations.stattests.registry import StatTest, _registered_stat_tests, register_stattest
    from evidently.legacy.core import ColumnType

    if HOMOGENEITY_TEST not in _registered_stat_tests:
        register_stattest(
            StatTest(
                name=HOMOGENEITY_TEST,
                display_name="chi-square homogeneity p_value",
                allowed_feature_types=[ColumnType.Categorical],
            ),
            default_impl=_chi2_homogeneity,
        )


def measure(reference: pd.DataFrame, current: pd.DataFrame, ref_emb: np.ndarray, cur_emb: np.ndarray, cfg: DriftConfig):
    """Run one Evidently report over every signal the inputs allow; return (snapshot, raw scores)."""
    # Evidently takes seconds to import: loaded when a check runs, not with the verdict (``decide``).
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import RowCount, ValueDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    if len(current) == 0 or len(cur_emb) == 0:
        raise FlywheelError("current window is empty: no logged events to compare")
    if len(reference) == 0 or len(ref_emb) == 0:
        raise FlywheelError("reference is empty: nothing to compare with")
    auc, _, _ = ModelDriftMethod(threshold=0.5)(pd.DataFrame(cur_emb), pd.DataFrame(ref_emb))
    # The domain classifier is scored on a random half of the rows (Evidently's split).
    scores: dict[str, dict] = {
        "text": {
            "method": "domain classifier ROC AUC",
            "score": float(auc),
            "n_reference": len(ref_emb) // 2,
            "n_current": len(cur_emb) // 2,
        }
    }
    ref, cur = reference.reset_index(drop=True).copy(), current.reset_index(drop=True).copy()
    metrics = [RowCount()]
    has_predictions = all(c in ref.columns and c in cur.columns for c in PREDICTION_COLUMNS)
    if has_predictions:
        _register_homogeneity_test()
        metrics += [
            ValueDrift(column="predicted_intent", method=HOMOGENEITY_TEST),
            ValueDrift(column="confidence", method="ks"),
        ]
    else:
        for name in ("predicted_intent", "confidence", "fallback_rate"):
            scores[name] = {"skipped": "reference has no predictions (pass --model or --reference-events)"}
    rate_cols = {}
    for name, col in RATES.items():
        if name == "fallback_rate" and not has_predictions:
            continue
        if col == "thumbs_down":
            for df in (ref, cur):
                if "thumbs" in df.columns:
                    df["thumbs_down"] = (df["thumbs"] == "down").astype(int)
        if col in ref.columns and col in cur.columns:
            ref[col], cur[col] = ref[col].astype(int), cur[col].astype(int)
            rate_cols[name] = col
            metrics.append(ValueDrift(column=col, method="z"))
        else:
            scores[name] = {"skipped": "reference has no feedback (pass --reference-events)"}
    categorical = ["predicted_intent"] * has_predictions + list(rate_cols.values())
    numerical = ["confidence"] * has_predictions
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    snapshot = Report(metrics).run(
        current_data=Dataset.from_pandas(cur[numerical + categorical], data_definition=definition),
        reference_data=Dataset.from_pandas(ref[numerical + categorical], data_definition=definition),
    )
    values = _metric_values(snapshot)
    if has_predictions:
        scores["predicted_intent"] = {"method": "chi-square homogeneity", "score": values["predicted_intent"]}
        scores["confidence"] = {"method": "Kolmogorov-Smirnov", "score": values["confidence"]}
    for name, col in rate_cols.items():
        scores[name] = {
            "method": "two-proportion z-test",
            "score": values[col],
            "reference": float(ref[col].mean()),
            "current": float(cur[col].mean()),
        }
    return snapshot, scores


def _metric_values(snapshot) -> dict[str, float]:
    """ValueDrift scores by column, from the snapshot's dict."""
    values = {}
    for m in snapshot.dict()["metrics"]:
        key, value = m.get("config", {}).get("column"), m["value"]
        if key is None:
            continue
        values[key] = float(value if not isinstance(value, dict) else next(iter(value.values())))
    return values


@dataclass(frozen=True)
class DriftReport:
    """The verdict on one window of logs against the training data, and what was compared."""

    decision: DriftDecision
    reference: str
    current: str
    window: dict[str, str]  # the logs' window (start, end): what `flywheel request-retrain` asks to retrain on
    current_digest: str
    events: int
    reference_rows: int
    compared: dict[
        str, int
    ]  # rows of each side compared: reference and current (a random sample past drift.sample_size)
    evidently_html: str

    def to_dict(self) -> dict:
        """The verdict's fields at the top (``drift``: the workflow's step output), then the inputs."""
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "decision"}
        return {**self.decision.to_dict(), **rest}


def drift_command(
    args: DriftArgs, *, data: DataConfig, drift: DriftConfig, registry: RegistryConfig, work: Path, report_dir: Path
) -> StepResult[DriftReport]:
    """Compare recent logs with the training data (Evidently): one verdict with reasons."""
    reference_events = Path(args.reference_events) if args.reference_events else None
    return StepResult(
        *drift_step(
            Path(args.reference),
            Path(args.current),
            model=args.model,
            reference_events=reference_events,
            cfg=drift,
            data_cfg=data,
            reg_cfg=registry,
            report_dir=report_dir,
            work=work,
        )
    )


def drift_step(
    reference: Path,
    current: Path,
    *,
    model: str | None = None,
    reference_events: Path | None = None,
    cfg: DriftConfig,
    data_cfg: DataConfig,
    reg_cfg: RegistryConfig,
    report_dir: Path,
    work: Path,
) -> tuple[DriftReport, str]:
    """Training snapshot (reference) vs a window of logs (current): Evidently report, JSON, markdown verdict.

    Prediction and feedback signals need a reference for them: ``reference_events`` (an earlier
    window of logs) if given, else ``model``'s predictions on the training texts (no feedback then).
    """
    train = load_examples(reference, data_cfg)
    logs = read_snapshot(current)
    if logs.empty:
        raise FlywheelError(f"{current}: snapshot holds no events (empty window); nothing to compare")
    # The domain classifier scores a seeded random half of the rows: in arrival order (which depends
    # on thread timing) the same window could score differently; in text order it always scores the same.
    logs = logs.sort_values("text", kind="stable").reset_index(drop=True)
    ref_sample, cur_sample = sample_rows(train, cfg.sample_size), sample_rows(logs, cfg.sample_size)
    embed = Embedder(cfg.encoder, work / "embeddings", cfg.batch_size)
    ref_emb, cur_emb = embed(ref_sample["text"].tolist()), embed(cur_sample["text"].tolist())
    baseline = reference_frame(ref_sample["text"].tolist(), model, reference_events, reg_cfg)
    snapshot, scores = measure(sample_rows(baseline, cfg.sample_size), cur_sample, ref_emb, cur_emb, cfg)
    decision = decide(scores, cfg)
    report_dir.mkdir(parents=True, exist_ok=True)
    html = report_dir / "drift_evidently.html"
    snapshot.save_html(str(html))
    window = (
        f"Reference: `{reference}` ({len(train)} examples). Current: `{current}` ({len(logs)} events, "
        f"{logs['timestamp'].min()} to {logs['timestamp'].max()}, model versions "
        f"{', '.join(sorted(map(str, logs['model_version'].unique())))})."
    )
    if len(cur_sample) < len(logs) or len(ref_sample) < len(train):
        window += f" Compared: a random sample of {len(ref_sample)} reference and {len(cur_sample)} current rows."
    info = snapshot_info(current, logs)
    result = DriftReport(
        decision=decision,
        reference=str(reference),
        current=str(current),
        window=info["window"],
        current_digest=info["content_digest"],
        events=len(logs),
        reference_rows=len(train),
        compared={"reference": len(ref_sample), "current": len(cur_sample)},
        evidently_html=str(html),
    )
    return result, render_markdown(decision, window) + f"\nEvidently report: `{html}`\n"


def sample_rows(frame: pd.DataFrame, size: int) -> pd.DataFrame:
    """At most ``size`` rows of ``frame`` drawn at random without replacement, in their order: seeded, so the
    same frame always gives the same sample (a window is compared in text order, so its sample is its own)."""
    if size < 2:
        raise FlywheelError(f"drift sample_size must be at least 2 (one row per side of the classifier), got {size}")
    if len(frame) <= size:
        return frame
    rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(frame), size, replace=False))
    return frame.iloc[rows].reset_index(drop=True)


def reference_frame(
    texts: list[str], model: str | None, reference_events: Path | None, reg_cfg: RegistryConfig
) -> pd.DataFrame:
    """The baseline for the prediction and feedback signals: an earlier window of logs, else
    ``model``'s predictions on the training ``texts``, else one empty row per text (text drift only)."""
    if reference_events is not None:
        frame = read_snapshot(reference_events)
        if frame.empty:
            raise FlywheelError(f"{reference_events}: reference window holds no events")
        return frame
    if not model:
        return pd.DataFrame(index=range(len(texts)))
    # MLflow and the predictor (torch) take seconds to import; a baseline of logged events needs neither.
    from model.registry.versions import open_model

    predictions = open_model(model, reg_cfg).predict(texts)
    return pd.DataFrame(
        {
            "predicted_intent": [p.intent for p in predictions],
            "confidence": [p.confidence for p in predictions],
            "fallback": [p.fallback for p in predictions],
        }
    )


def render_markdown(decision: DriftDecision, window: str) -> str:
    verdict = "**Drift detected**" if decision.drift else "No drift"
    lines = [f"## Drift check: {verdict}", "", window, ""]
    if decision.reasons:
        lines += ["Reasons:", "", *[f"- {r}" for r in decision.reasons], ""]
    lines += ["| signal | method | score | threshold | drift |", "|---|---|---:|---:|---|"]
    for s in decision.signals:
        extra = f" ({s.reference:.1%} -> {s.current:.1%})" if s.reference is not None else ""
        lines.append(
            f"| {s.name}{extra} | {s.method} | {s.score:.4g} | {s.threshold:.4g} | {'yes' if s.drifted else 'no'} |"
        )
    for name, why in decision.skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | |")
    return "\n".join(lines) + "\n"
