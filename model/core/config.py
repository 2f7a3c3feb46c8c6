"""Typed configuration: one dataclass per section, every default stated once, here (prepare's, the
largest, in ``model/core/prepare_config.py``), with its reason; ``model/core/fields.py`` declares a field.

Values come from, in increasing priority: the defaults below, the section's overrides in a YAML
file (``--config``; ``model/core/settings.py`` reads and checks it) and command-line flags. Every
field's ``help`` says why the default is what it is; ``flywheel <step> --help`` shows it with the
value that will apply. Choices are ``Literal`` types, checked when a YAML file is read; "not set"
is ``None``, never a sentinel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, get_args

from model.core.errors import FlywheelError
from model.core.fields import PACKAGED_ENCODER, required, setting  # noqa: F401 (required: re-exported for the steps)
from model.core.prepare_config import PrepareConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "model" / "configs" / "default.yaml"
SAMPLE_DATA = PROJECT_ROOT / "model" / "sample_data" / "support.csv"
RESPONSE_CATALOG = PROJECT_ROOT / "model" / "configs" / "responses.yaml"


Environment = Literal["staging", "production"]  # one folder per environment under manifests/
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)


def work_dir() -> Path:
    """The default work folder: ``FLYWHEEL_WORK_DIR``, else ./work. Read once, by the CLI; everything
    below it gets the folder passed in.

    "./work" is the checkout's ``work/`` (beside ``pyproject.toml``, git-ignored) wherever in the
    checkout the command runs; an installed package (a wheel, the image) has no checkout, and its
    site-packages is no place to write (read-only in the pod), so there it is ``work/`` in the
    current folder, as for any command-line tool. The image sets ``FLYWHEEL_WORK_DIR`` to its
    emptyDir (``/tmp/flywheel``), and so do the manifests."""
    checkout = (PROJECT_ROOT / "pyproject.toml").is_file()
    default = (PROJECT_ROOT if checkout else Path.cwd()) / "work"
    return Path(os.environ.get("FLYWHEEL_WORK_DIR", default)).resolve()


@dataclass
class DataConfig:
    oos_label: str = setting("oos", "label of out-of-scope examples: never a class, used to calibrate the fallback")
    val_fraction: float = setting(0.1, "share held out to pick the fallback threshold and watch overfitting")
    test_fraction: float = setting(0.15, "share frozen for the gate when the data has no split of its own")
    min_examples_per_intent: int = setting(8, "fewer cannot be split into train/validation/test meaningfully")
    max_text_chars: int = setting(
        1000, "longer texts are pasted logs, not chat messages; refuse rather than truncate silently"
    )


@dataclass
class TrainConfig:
    base_model: str = setting(
        PACKAGED_ENCODER, "pretrained encoder: the packaged MiniLM works offline; any local or hub path also works"
    )
    max_length: int = setting(64, "chat messages are short (Banking77: p95 27 tokens); longer costs time for nothing")
    epochs: int = setting(4, "MiniLM needs a few passes; on Banking77 validation accuracy stops rising after 4")
    batch_size: int = setting(
        32,
        "examples per optimiser step, split over the workers under torchrun (so N workers train the same steps): "
        "fits a laptop CPU and gives stable gradients on short texts",
    )
    learning_rate: float = setting(1e-4, "small encoders like MiniLM want a higher rate than BERT-base's 2e-5")
    head_learning_rate: float = setting(2e-3, "the new head starts from class centroids and needs bigger steps")
    weight_decay: float = setting(0.01, "standard AdamW regularisation for fine-tuning")
    warmup_ratio: float = setting(0.06, "a short warm-up keeps early large gradients from wrecking pretrained weights")
    label_smoothing: float = setting(0.1, "softer targets give better-calibrated confidences for the fallback")
    entity_loss_weight: float = setting(
        1.0, "token-tag loss added to the intent loss at this weight: both are cross-entropies of similar size"
    )
    freeze_embeddings: bool = setting(
        True, "word embeddings are half the weights; freezing them saves time and overfits less"
    )
    fallback_precision: float = setting(
        0.9, "answered in-scope messages must be right this often; below it the bot hands off"
    )
    handoff_in_scope_cost: float = setting(
        0.01,
        "share of in-scope messages the out-of-scope hand-off may cost (answered right without it): one point",
    )
    seed: int = setting(42, "fixed seed: CPU training is bit-for-bit repeatable")
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", "auto picks CUDA (with mixed precision) when present, else CPU"
    )
    max_steps: int | None = setting(
        None, "stop after this many optimiser steps (unset: run all epochs); for smoke tests"
    )
    checkpoint_every: int | None = setting(
        200,
        "optimiser steps between checkpoints (unset: none): a kill loses at most a minute or two of MiniLM on a "
        "CPU, and each ~180 MB write costs about one step",
    )
    export_onnx: bool = setting(
        True,
        "also package model.onnx (checked against PyTorch): served by ONNX Runtime, MiniLM needs ~40 percent less CPU",
    )
    onnx_tolerance: float = setting(
        1e-4, "largest probability difference ONNX Runtime may show against PyTorch; fp32 export gives ~1e-6"
    )


@dataclass
class GateConfig:
    alpha: float = setting(0.05, "significance level for 'challenger is worse' (one-sided McNemar exact test)")
    min_oos_recall: float = setting(
        0.5, "a first model must hand off at least half of the out-of-scope test messages (with enough of them)"
    )
    min_support: int = setting(10, "per-intent F1 on fewer test examples is noise; such intents are not gated")
    max_f1_drop: float = setting(
        0.05,
        "an intent may lose at most this much F1 against the champion; a larger loss rejects only when the paired "
        "test on its examples shows it (alpha / gated intents), else it is a warning",
    )
    latency_budget_ms: float = setting(
        50.0,
        "p95 CPU time of one query on one thread (MiniLM: ~14 ms); CPU time, unlike wall time, is the same on a "
        "busy machine. Served wall-clock latency is make bench-serving's figure and canary analysis' guardrail",
    )
    min_accuracy: float = setting(
        0.80, "floor when there is no champion yet: below it the bot does more harm than good"
    )
    min_macro_f1: float = setting(0.75, "floor when there is no champion yet, so small intents are not ignored")
    max_entity_f1_drop: float = setting(0.05, "an entity type may lose at most this much span F1 against the champion")
    min_entity_support: int = setting(
        20, "span F1 on fewer true test spans is noise (one miss moves recall by over 0.05); such types are not gated"
    )
    min_entity_f1: float | None = setting(
        None,
        "entity micro-F1 floor when there is no champion yet (unset: reported, not gated): a first model learns "
        "entities from few spans (the demo's, 40 steps: ~0.2); set one (e.g. 0.7) once the seed data is large",
    )


@dataclass
class RegistryConfig:
    model_name: str = setting(
        "flywheel-intent", "registered model name in MLflow; aliases challenger/champion live on it"
    )
    experiment: str = setting("flywheel", "MLflow experiment holding training runs")
    tracking_uri: str | None = setting(
        None, "MLflow tracking URI (unset: $MLFLOW_TRACKING_URI, else sqlite:///<work dir>/mlflow.db)"
    )


@dataclass
class CanaryConfig:
    alpha: float = setting(
        0.05, "error rate of each decision (rollback, promote) over the whole canary, however often it is analysed"
    )
    min_requests_per_arm: int = setting(300, "below this an arm's rates are noise: hold")
    min_ratings_per_arm: int = setting(
        50, "thumbs-down rate is compared only once each arm has this many rated answers; promotion waits for it"
    )
    mixture_sd: float = setting(
        0.05, "spread of rate differences the sequential test is most sensitive to (a few percentage points)"
    )
    error_rate_margin: float = setting(0.005, "the canary may fail at most 0.5 points more often than stable")
    fallback_rate_margin: float = setting(0.03, "at most 3 points more hand-offs to humans")
    escalation_rate_margin: float = setting(0.02, "at most 2 points more escalations")
    thumbs_down_margin: float = setting(0.03, "at most 3 points more thumbs-down among rated answers")
    latency_budget_ms: float = setting(
        100.0,
        "an answer slower than this is slow (users notice ~100 ms); a canary with significantly more slow answers "
        "than stable rolls back. One of the predictor's histogram buckets, for Prometheus",
    )


@dataclass
class ServeConfig:
    host: str = setting(
        "127.0.0.1", "loopback only: expose the predictor on purpose (a pod sets 0.0.0.0), never by accident"
    )
    http_port: int = setting(
        8080, "KServe's default predictor port, so the same container runs locally and in a cluster"
    )
    endpoint: str = setting(
        "flywheel-intent", "model name in the URL: /v1/models/NAME:predict; the canary is NAME-canary"
    )
    catalog: str = setting(str(RESPONSE_CATALOG), "YAML mapping intent -> reply text, plus 'fallback' for the hand-off")
    runtime: Literal["onnx", "torch"] = setting(
        "onnx",
        "onnx: ONNX Runtime where the artifact has model.onnx (same probabilities, faster on CPU); torch: PyTorch",
    )
    max_batch_size: int = setting(32, "MiniLM on CPU doubles its throughput from 1 to 32 texts per forward pass")
    max_batch_wait_ms: float = setting(
        5.0,
        "how long requests that arrive together wait for more company (a lone one never waits): at 32 clients "
        "5 ms gave p99 94-100 ms here, 2 or 8 ms 100-105",
    )
    max_instances: int = setting(64, "texts per request; a chat front end sends one, replays send a few dozen")
    max_text_chars: int = setting(
        1000, "longer texts are pasted logs, not chat messages; refuse rather than truncate silently"
    )
    max_body_bytes: int = setting(
        262144, "64 texts of 1000 characters fit with room for JSON; anything larger is refused unread"
    )
    access_log: bool = setting(
        False, "uvicorn's line per request; the prediction log and /metrics cover requests, and it costs CPU under load"
    )
    prediction_log: str | None = setting(
        None, "JSON-lines log of every prediction, shadow ones included (unset: <work dir>/serving/predictions.jsonl)"
    )
    prediction_log_max_bytes: int = setting(
        64 * 2**20,
        "the prediction log and its rotated files stay under this (~200,000 predictions); 0 writes none, as the "
        "manifests do: on a pod it would fill the 256Mi /tmp emptyDir, and the collector keeps every call anyway",
    )
    logger_url: str | None = setting(
        None,
        "post each call to this collector URL as KServe's logger would; for local mode (in a cluster KServe does it)",
    )


@dataclass
class DeliveryConfig:
    manifests_dir: str = setting("manifests", "folder Argo CD syncs, one subfolder per environment")
    base_branch: str = setting("main", "branch pull requests target and Argo CD follows")
    champion_env: Environment = setting("production", "the environment whose stable model is the registry's 'champion'")


@dataclass
class PiiConfig:
    phone_regions: list[str] = setting(
        ["US", "GB", "DE", "FR", "NL", "ES", "IT", "IE", "CA", "AU", "IN"],
        "where numbers without a +country code are read as phone numbers; each region costs a pass",
    )
    min_score: float = setting(
        0.3, "drops Presidio's 'very weak' patterns (any 9-digit number as an SSN) that flag order numbers"
    )


@dataclass
class CheckConfig:
    min_events: int = setting(
        1, "an empty window means the collector is down or the export is wrong, not that all is well"
    )
    max_event_age_days: int = setting(90, "older events are from a stale export or a wrong clock")
    clock_skew_minutes: int = setting(10, "events from the future beyond this are a wrong clock, not skew")
    shown_rows: int = setting(5, "offending rows quoted per failed expectation in the message")


@dataclass
class DriftConfig:
    alpha: float = setting(
        0.01, "false-alarm rate of the whole verdict, split over the signals; a needless retrain PR costs review time"
    )
    min_rate_change: float = setting(
        0.02, "fallback/thumbs-down/escalation rates must move this much (absolute) to count, however significant"
    )
    encoder: str = setting(PACKAGED_ENCODER, "sentence encoder for text drift: the packaged MiniLM works offline")
    batch_size: int = setting(128, "encoder batch size: fits CPU memory, keeps a GPU busy")
    sample_size: int = setting(
        5000,
        "rows compared from each side at most, drawn at random (seeded): each test's power depends on the sample, not "
        "the window, and embedding a month of texts takes hours on a CPU; scripts/bench_drift.py measures it",
    )


@dataclass
class CollectorConfig:
    host: str = setting("127.0.0.1", "loopback only unless deployed behind a Service on purpose")
    http_port: int = setting(8090, "next to the predictor's 8080, so both run on one machine")
    store_url: str | None = setting(
        None, "SQLAlchemy URL of the conversation store (unset: sqlite:///<work dir>/conversations.db)"
    )
    max_body_bytes: int = setting(
        262144, "the logger forwards whole requests; the predictor itself refuses bodies above this"
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = setting(
        "FULL", "FULL: a 200 survives a power cut (fsync per commit); NORMAL: survives a crash only, ~5x faster"
    )
    arms_dir: str | None = setting(
        None,
        "folder holding the ConfigMap flywheel-arms as files (stable, canary: model versions), as the kubelet "
        "mounts it; every logged answer is attributed to the arm serving its version (unset: arm unknown)",
    )
    spool_dir: str | None = setting(
        None,
        "folder of the spool that keeps acknowledged events while the store is down, replayed on start "
        "(unset: <work dir>/collector-spool; the manifests put it on an emptyDir, which outlives a container restart)",
    )
    spool_max_bytes: int = setting(
        256 * 2**20,
        "about 20 minutes of a 100 calls/s service (two ~1 KiB events a call) while the database restarts or "
        "fails over; past it events are refused (503), never acknowledged and dropped",
    )
    store_timeout_s: float = setting(
        2.0,
        "a commit takes milliseconds; past this the event is spooled instead, since KServe's logger waits for "
        "the answer without a timeout of its own and inference waits once its queue of 100 is full",
    )
    export_batch_rows: int = setting(
        20_000,
        "export-events reads, parses and writes the store's events this many at a time (server-side cursor on "
        "PostgreSQL): its memory stays flat however long the window",
    )
    export_memory_mib: int = setting(
        1024, "DuckDB's memory for folding feedback into the window's rows and sorting them; past it, it spills to disk"
    )


@dataclass
class LoopConfig:
    held_back_intents: list[str] = setting(
        [], "intents the first model never sees and traffic brings later; empty: pick held_back_fraction of them"
    )
    held_back_fraction: float = setting(
        0.25, "a quarter of the intents arrive only after the shift: enough for drift to show, most stay known"
    )
    seed_fraction: float = setting(
        0.5, "share of the known intents' training texts the first model sees; the rest arrives as user traffic"
    )
    requests_before_shift: int = setting(400, "traffic on known intents first: the reference window drift compares to")
    requests_after_shift: int = setting(600, "traffic once new intents appear: the window that should show drift")
    new_intent_share: float = setting(
        0.4, "share of shifted traffic asking for held-back intents: a product launch, not a trickle"
    )
    label_budget: int = setting(150, "human labels one turn of the loop may spend: a reviewer's afternoon")
    label_strategy: Literal["queue", "random"] = setting(
        "queue", "queue: label the review queue's most informative items first; random: a random draw (baseline)"
    )
    annotator_error_rate: float = setting(
        0.05, "share of labels the simulated reviewer gets wrong: people disagree on a few percent of messages"
    )
    cluster_decisions: int = setting(
        0,
        "candidate new intents the simulated reviewer judges before labelling one by one, each one label of the "
        "budget, named or not (model/loop/annotator.py); 0: one by one only, as a reviewer without the CSV",
    )
    canary_percent: int = setting(
        50, "canary share during the demo: equal arms compare rates with the fewest requests (two like models too)"
    )
    look_requests: int = setting(600, "requests between two canary analyses, as the hourly canary.yml would see them")
    max_looks: int = setting(12, "bounded: after this many looks without a verdict the canary keeps running (hold)")
    requests_after_release: int = setting(300, "traffic on the final stable model, to show where accuracy ends up")
    env: Environment = setting("production", "environment whose manifest the stand-in repository and cluster follow")
    seed: int = setting(7, "picks held-back intents, traffic and reviewer mistakes reproducibly")


@dataclass
class TrafficConfig:
    """Simulated users (``model/loop/traffic.py``): how they react to an answer, from the ground truth."""

    p_thumbs_up_if_right: float = setting(
        0.5, "about half of satisfied users bother to rate; a right answer is rated up"
    )
    p_resolved_if_right: float = setting(0.3, "some say the issue is solved instead of rating; the rest say nothing")
    p_thumbs_down_if_wrong: float = setting(0.45, "an annoyed user rates more often than a satisfied one")
    p_escalated_if_wrong: float = setting(0.25, "others ask for a human after a wrong answer")
    p_abandoned_if_wrong: float = setting(0.2, "others leave; the rest say nothing")
    p_escalated_if_fallback: float = setting(0.7, "the bot handed off; most users take the human")
    p_abandoned_if_fallback: float = setting(0.2, "some leave rather than wait for a human")
    concurrency: int = setting(8, "simulated users in parallel: enough to form batches, few enough for a 2-core laptop")
    timeout_s: float = setting(30.0, "per HTTP call; a CPU predictor under load answers in well under a second")
    seed: int = setting(7, "routing and reactions are drawn from it per request: reruns send the same traffic")

    # what a user may do after each kind of answer, and the field holding its probability; the rest say nothing
    REACTIONS: ClassVar[dict[str, tuple[tuple[str, str], ...]]] = {
        "right": (("thumbs_up", "p_thumbs_up_if_right"), ("resolved", "p_resolved_if_right")),
        "wrong": (
            ("thumbs_down", "p_thumbs_down_if_wrong"),
            ("escalated", "p_escalated_if_wrong"),
            ("abandoned", "p_abandoned_if_wrong"),
        ),
        "fallback": (("escalated", "p_escalated_if_fallback"), ("abandoned", "p_abandoned_if_fallback")),
    }

    def __post_init__(self):
        for case, reactions in self.REACTIONS.items():
            names = [name for _, name in reactions]
            for name in names:
                value = getattr(self, name)
                if not 0.0 <= value <= 1.0:
                    raise FlywheelError(f"traffic.{name} is {value}: a probability must lie in [0, 1]")
            total = sum(getattr(self, name) for name in names)
            if total > 1.0 + 1e-9:
                terms = " + ".join(f"{n} ({getattr(self, n)})" for n in names)
                raise FlywheelError(
                    f"traffic: reactions to a {case} answer are exclusive, so {terms} = {total:g} must be at most 1"
                )
        if self.concurrency < 1:
            raise FlywheelError(f"traffic.concurrency is {self.concurrency}: at least one simulated user is needed")
        if self.timeout_s <= 0:
            raise FlywheelError(f"traffic.timeout_s is {self.timeout_s}: it must be positive")
        if self.seed < 0:
            raise FlywheelError(f"traffic.seed is {self.seed}: seeds are non-negative integers")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "gate": GateConfig,
    "registry": RegistryConfig,
    "canary": CanaryConfig,
    "delivery": DeliveryConfig,
    "pii": PiiConfig,
    "prepare": PrepareConfig,
    "checks": CheckConfig,
    "drift": DriftConfig,
    "serve": ServeConfig,
    "collect": CollectorConfig,
    "loop": LoopConfig,
    "traffic": TrafficConfig,
}
