"""``flywheel``: one subcommand per pipeline step.

Each step prints its result as JSON on stdout and a short human summary on stderr, writes
``<report-dir>/<step>.json`` and ``<step>.md`` (the markdown becomes a pull-request body), and
exits 0 on success, 1 when a check decides "no" (gate rejected), 2 on bad input or errors.
Flags are the config dataclasses' fields; ``--config`` YAML sets their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from model.core.config import (
    DEFAULT_CONFIG,
    SAMPLE_DATA,
    CanaryConfig,
    CheckConfig,
    CollectorConfig,
    DataConfig,
    DeliveryConfig,
    DriftConfig,
    GateConfig,
    LoopConfig,
    PiiConfig,
    PrepareConfig,
    RegistryConfig,
    ServeConfig,
    TrafficConfig,
    TrainConfig,
    read_yaml_config,
    work_dir,
)
from model.core.errors import FlywheelError
from model.core.reports import write_reports

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2


def _arg(default, why: str):
    return field(default=default, metadata={"help": why})


@dataclass
class CommonArgs:
    config: str = _arg(str(DEFAULT_CONFIG), "YAML file whose sections set the defaults of the flags below")
    report_dir: str = _arg("", "where <step>.json and <step>.md go (default: <work dir>/reports)")


@dataclass
class TrainArgs:
    data: str = _arg(str(SAMPLE_DATA), "dataset file or folder (CSV/Parquet/JSONL text,intent; Banking77; CLINC150)")
    out: str = _arg("", "artifact folder to create (default: <work dir>/models/<time>-<data digest>)")


@dataclass
class EvaluateArgs:
    model: str = _arg("", "artifact folder or models:/<name>@<alias> URI")
    data: str = _arg(str(SAMPLE_DATA), "dataset file or folder")
    split: str = _arg("test", "which split to evaluate on: train, val, test or all")


@dataclass
class GateArgs:
    challenger: str = _arg("", "artifact folder or models:/ URI of the candidate")
    champion: str = _arg("auto", "artifact folder or models:/ URI; 'auto' = the registry's champion if any")
    data: str = _arg(str(SAMPLE_DATA), "dataset whose frozen test split both models are compared on")
    split: str = _arg("test", "split to compare on")


@dataclass
class RegisterArgs:
    model: str = _arg("", "artifact folder to register")
    gate: str = _arg("", "gate decision JSON (from flywheel gate) that passed this artifact")


@dataclass
class PromoteArgs:
    version: int = _arg(
        -1,
        "without --env: model version to make champion (-1: the current challenger); "
        "with --env: must equal the canary's version if given",
    )
    env: str = _arg(
        "",
        "staging or production: promote that environment's canary by pull request "
        "(empty: only move the registry's champion alias)",
    )
    repo: str = _arg(".", "Git repository holding the manifests (the pull request is made there or on GitHub)")
    analysis: str = _arg("", "canary-analysis JSON to quote in the pull request (its .md sibling is the text)")


@dataclass
class ReleaseArgs:
    env: str = _arg("", "staging or production")
    model_version: int = _arg(-1, "registered, gate-passed model version to release")
    canary: int = _arg(10, "share of traffic (0-100) the new version gets while the stable model keeps the rest")
    repo: str = _arg(".", "Git repository holding the manifests")


@dataclass
class RollbackArgs:
    env: str = _arg("", "staging or production")
    repo: str = _arg(".", "Git repository holding the manifests")
    analysis: str = _arg("", "canary-analysis JSON to quote in the pull request")


@dataclass
class CanaryAnalysisArgs:
    env: str = _arg("", "staging or production")
    metrics: str = _arg(
        "",
        'per-arm metrics JSON: {"stable": {...}, "canary": {...}} (requests, errors, fallbacks, '
        "escalations, thumbs_up, thumbs_down, slow, latency_p99_ms, model_version)",
    )
    prometheus_url: str = _arg("", "instead of --metrics: Prometheus to query for counts since the canary's merge")
    store_url: str = _arg(
        "", "instead of --metrics: the collector's store (SQLAlchemy URL), counted since the canary's merge"
    )
    repo: str = _arg(".", "Git repository holding the manifests")


@dataclass
class RequestRetrainArgs:
    drift_report: str = _arg(
        "", "flywheel drift's JSON report (drift verdict, reasons, data window); its .md is the body"
    )
    repo: str = _arg(".", "Git repository the retrain request is proposed in")


@dataclass
class CheckManifestsArgs:
    repo: str = _arg(".", "repository whose manifests to check")


@dataclass
class DemoArgs:
    dataset: str = _arg(
        str(SAMPLE_DATA), "labelled dataset the loop replays as users (any format `train` reads, e.g. Banking77)"
    )
    out: str = _arg("", "new folder for everything the loop makes (default: <work dir>/loop/<time>)")


@dataclass
class PrepareArgs:
    snapshot: str = _arg(
        "", "conversation snapshot (Parquet, the collector's export; schema in model/data/conversations.py)"
    )
    data: str = _arg(str(SAMPLE_DATA), "current training set (any format `train` reads)")
    labels: str = _arg("", "human labels to merge: Label Studio JSON export or the review CSV with 'intent' filled in")
    out: str = _arg("", "folder to create for the prepared snapshot (default: <work dir>/datasets/<time>-<digest>)")


@dataclass
class CheckDataArgs:
    events: str = _arg("", "conversation snapshot (Parquet) to check with the 'logged_events' suite")
    training: str = _arg(
        "", "training snapshot (Parquet/CSV/JSONL, e.g. prepare's examples.parquet) for the 'training_snapshot' suite"
    )
    reference: str = _arg(
        str(SAMPLE_DATA), "dataset whose intents are the known labels (new ones must be declared with --new-intents)"
    )


@dataclass
class DriftArgs:
    reference: str = _arg(str(SAMPLE_DATA), "training snapshot the model learned from (any format `train` reads)")
    current: str = _arg("", "conversation snapshot (Parquet) of the recent window")
    model: str = _arg(
        "",
        "artifact folder or models:/ URI: its predictions on the reference texts are the baseline "
        "for intent/confidence/fallback",
    )
    reference_events: str = _arg(
        "", "an earlier window of logs as the baseline for predictions and feedback rates (instead of --model)"
    )


@dataclass
class ServeArgs:
    stable: str = _arg(
        "", "stable model: artifact folder (as KServe mounts it, /mnt/models) or models:/<name>@<alias> URI"
    )
    canary: str = _arg("", "optional canary model, served as <endpoint>-canary (the caller picks the arm)")
    shadow: str = _arg("", "optional shadow model: predicts on every request, logged and measured, never answers")
    stable_sha256: str = _arg(
        "", "refuse to become ready unless the --stable artifact's manifest digest is this (the manifest records it)"
    )
    stable_version: str = _arg(
        "",
        "registry version of the --stable model for logs and metrics (default: from a models:/ URI, else sha-<digest>)",
    )


@dataclass
class TrafficArgs:
    data: str = _arg(str(SAMPLE_DATA), "labelled messages to replay as users (any format `train` reads)")
    limit: int = _arg(0, "send at most this many messages (0: all), after shuffling with the traffic seed")
    predictor_url: str = _arg(f"http://{ServeConfig.host}:{ServeConfig.http_port}", "the running `flywheel serve`")
    collector_url: str = _arg(
        f"http://{CollectorConfig.host}:{CollectorConfig.http_port}", "the running `flywheel collect`"
    )
    endpoint: str = _arg(ServeConfig.endpoint, "the predictor's model name; the canary is <endpoint>-canary")
    canary_percent: int = _arg(0, "share of messages (0-100) sent to the canary, each drawn independently")
    phase: str = _arg("traffic", "label stored on every row (e.g. before-shift, canary)")
    out: str = _arg("", "Parquet file of the rows (default: <work dir>/traffic/<time>-<phase>.parquet)")


@dataclass
class ExportEventsArgs:
    start: str = _arg("", "window start, ISO 8601 (e.g. 2026-11-01T00:00:00Z); events before it are left out")
    end: str = _arg("", "window end, ISO 8601, exclusive (default: now)")
    days: float = _arg(0, "instead of --start: the window is the last N days before --end")
    request: str = _arg(
        "", "instead of --start: a retrain request (flywheel request-retrain's JSON), or their folder (the newest)"
    )
    out: str = _arg("", "snapshot file to write (default: <work dir>/snapshots/events-<start>-<end>.parquet)")


STEPS = {
    "train": (
        "fine-tune an intent model and write a verified artifact",
        [TrainArgs, DataConfig, TrainConfig, RegistryConfig],
    ),
    "evaluate": ("measure a model on a labelled test set", [EvaluateArgs, DataConfig, RegistryConfig]),
    "gate": (
        "decide whether a challenger may replace the champion",
        [GateArgs, DataConfig, GateConfig, RegistryConfig],
    ),
    "register": ("register a gated artifact in MLflow as 'challenger'", [RegisterArgs, RegistryConfig]),
    "promote": (
        "promote an environment's canary by pull request (--env), or only move the 'champion' alias",
        [PromoteArgs, RegistryConfig, DeliveryConfig],
    ),
    "release": (
        "put a registered model version on a canary by pull request",
        [ReleaseArgs, RegistryConfig, DeliveryConfig],
    ),
    "rollback": (
        "end the canary, or return to the previous stable model, by pull request",
        [RollbackArgs, RegistryConfig, DeliveryConfig],
    ),
    "canary-analysis": (
        "decide promote, hold or rollback from per-arm metrics",
        [CanaryAnalysisArgs, CanaryConfig, DeliveryConfig],
    ),
    "request-retrain": (
        "on drift, propose a retrain request (data window + drift summary) by pull request",
        [RequestRetrainArgs, DeliveryConfig],
    ),
    "check-manifests": (
        "validate the manifests Argo CD syncs (KServe, Kubernetes, promtool, Argo CD)",
        [CheckManifestsArgs, DeliveryConfig],
    ),
    "prepare": (
        "turn logged conversations into the next training set (redact, clean, label, balance, split)",
        [PrepareArgs, DataConfig, PrepareConfig, PiiConfig, RegistryConfig],
    ),
    "check-data": (
        "validate logged events and/or a training snapshot with Great Expectations; exit 1 on any failure",
        [CheckDataArgs, DataConfig, PrepareConfig, CheckConfig],
    ),
    "drift": (
        "compare recent logs with the training data (Evidently); one verdict with reasons",
        [DriftArgs, DataConfig, DriftConfig, RegistryConfig],
    ),
    "serve": (
        "serve stable/canary/shadow models with the KServe ModelServer (V1 and V2 REST)",
        [ServeArgs, ServeConfig, RegistryConfig],
    ),
    "collect": (
        "store KServe logger CloudEvents and user feedback, personal data redacted (idempotent, durable on 200)",
        [CollectorConfig, PiiConfig],
    ),
    "traffic": (
        "simulated users: send labelled messages through the predictor, react from the truth to the collector",
        [TrafficArgs, DataConfig, TrafficConfig],
    ),
    "export-events": (
        "export a window of logged conversations as a snapshot (model/data/conversations.py) with a content digest",
        [ExportEventsArgs, CollectorConfig],
    ),
    "demo": (
        "turn the whole loop once on one machine: serve, log, drift, retrain, canary, promote; ends in an HTML report",
        [DemoArgs, LoopConfig],
    ),
}
SECTION_OF = {
    DataConfig: "data",
    TrainConfig: "train",
    GateConfig: "gate",
    RegistryConfig: "registry",
    CanaryConfig: "canary",
    DeliveryConfig: "delivery",
    PiiConfig: "pii",
    PrepareConfig: "prepare",
    CheckConfig: "checks",
    DriftConfig: "drift",
    ServeConfig: "serve",
    CollectorConfig: "collect",
    LoopConfig: "loop",
    TrafficConfig: "traffic",
}


def build_parser() -> tuple[HfArgumentParser, dict[str, HfArgumentParser]]:
    parser = HfArgumentParser([], prog="flywheel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True, parser_class=HfArgumentParser)
    subparsers = {
        name: sub.add_parser(name, help=help_, description=help_, dataclass_types=[CommonArgs, *types])
        for name, (help_, types) in STEPS.items()
    }
    return parser, subparsers


def parse(argv: list[str]) -> tuple[str, dict]:
    """Parse argv into the step name and its dataclass instances (YAML defaults, then flags)."""
    parser, subparsers = build_parser()
    first = parser.parse_args(argv)
    yaml_values = read_yaml_config(Path(first.config))
    sp = subparsers[first.step]
    for dtype in sp.dataclass_types:
        if dtype in SECTION_OF:
            sp.set_defaults(**yaml_values.get(SECTION_OF[dtype], {}))
    ns = vars(parser.parse_args(argv))
    objs = {}
    for dtype in sp.dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype)}
        objs[dtype] = dtype(**{k: v for k, v in ns.items() if k in names})
    return first.step, objs


def run(step: str, c: dict) -> tuple[dict, str, int]:
    if step in DELIVERY_STEPS or (step == "promote" and c[PromoteArgs].env):
        return run_delivery(step, c)
    reg_cfg = c.get(RegistryConfig)
    if step == "serve":
        from model.serve.serving import serve_step

        a = c[ServeArgs]
        _require(a.stable, "--stable")
        result, md = serve_step(
            a.stable, a.canary, a.shadow, c[ServeConfig], reg_cfg, a.stable_sha256, a.stable_version
        )
        return result, md, EXIT_OK
    if step == "collect":
        from model.collect.collector import collect_step

        result, md = collect_step(c[CollectorConfig], c[PiiConfig])
        return result, md, EXIT_OK
    if step == "traffic":
        from model.loop.traffic import traffic_step

        a = c[TrafficArgs]
        result, md = traffic_step(
            Path(a.data), a.limit, a.predictor_url, a.collector_url, a.endpoint, a.canary_percent, a.phase,
            Path(a.out) if a.out else None, c[DataConfig], c[TrafficConfig],
        )  # fmt: skip
        return result, md, EXIT_OK
    if step == "export-events":
        from model.collect.export import export_step

        a = c[ExportEventsArgs]
        result, md = export_step(a.start, a.end, a.days, a.request, a.out, c[CollectorConfig])
        return result, md, EXIT_OK
    from model.evaluate.steps import evaluate_step, gate_step  # heavy imports (torch, mlflow) only once a step runs
    from model.registry.steps import promote_step, register_step
    from model.train.steps import train_step

    data_cfg, train_cfg, gate_cfg, reg_cfg = (c.get(t) for t in (DataConfig, TrainConfig, GateConfig, RegistryConfig))
    if step == "train":
        a = c[TrainArgs]
        result, md = train_step(Path(a.data), data_cfg, train_cfg, reg_cfg, Path(a.out) if a.out else None)
        return result, md, EXIT_OK
    if step == "evaluate":
        a = c[EvaluateArgs]
        _require(a.model, "--model")
        result, md = evaluate_step(a.model, Path(a.data), a.split, data_cfg, reg_cfg)
        return result, md, EXIT_OK
    if step == "gate":
        a = c[GateArgs]
        _require(a.challenger, "--challenger")
        result, md, passed = gate_step(a.challenger, a.champion, Path(a.data), a.split, data_cfg, gate_cfg, reg_cfg)
        return result, md, EXIT_OK if passed else EXIT_REJECTED
    if step == "register":
        a = c[RegisterArgs]
        _require(a.model, "--model")
        _require(a.gate, "--gate")
        result, md = register_step(Path(a.model), Path(a.gate), reg_cfg)
        return result, md, EXIT_OK
    if step == "promote":  # registry only; with --env, run_delivery handles it
        a = c[PromoteArgs]
        result, md = promote_step(None if a.version < 0 else a.version, reg_cfg)
        return result, md, EXIT_OK
    if step == "prepare":
        from model.prepare.steps import prepare_step

        a = c[PrepareArgs]
        _require(a.snapshot, "--snapshot")
        result, md = prepare_step(
            Path(a.snapshot),
            Path(a.data),
            Path(a.labels) if a.labels else None,
            Path(a.out) if a.out else None,
            data_cfg,
            c[PrepareConfig],
            c[PiiConfig],
            reg_cfg,
        )
        return result, md, EXIT_OK
    if step == "check-data":
        from data_checks.validate import check_data

        a = c[CheckDataArgs]
        result, md, passed = check_data(
            Path(a.events) if a.events else None,
            Path(a.training) if a.training else None,
            Path(a.reference) if a.reference else None,
            data_cfg,
            c[PrepareConfig],
            c[CheckConfig],
            _report_dir(c) / "data_docs",
        )
        if not passed:
            print("flywheel: check-data failed:\n  " + "\n  ".join(result["failures"]), file=sys.stderr)
        return result, md, EXIT_OK if passed else EXIT_REJECTED
    if step == "drift":
        from data_checks.drift import drift_step

        a = c[DriftArgs]
        _require(a.current, "--current")
        result, md = drift_step(
            Path(a.reference),
            Path(a.current),
            a.model or None,
            Path(a.reference_events) if a.reference_events else None,
            c[DriftConfig],
            data_cfg,
            reg_cfg,
            _report_dir(c),
        )
        return result, md, EXIT_OK
    if step == "demo":
        return run_demo(c)
    raise FlywheelError(f"unknown step {step}")


def run_demo(c: dict) -> tuple[dict, str, int]:
    import time

    from model.loop.orchestrator import load_configs, run_loop, summarise

    a = c[DemoArgs]
    out = Path(a.out) if a.out else work_dir() / "loop" / time.strftime("%Y%m%d-%H%M%S")
    cfgs = load_configs(Path(c[CommonArgs].config), c[LoopConfig])
    record, report = run_loop(
        Path(a.dataset), out, cfgs, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    result, md = summarise(record, report)
    return result, md, EXIT_OK


DELIVERY_STEPS = ("release", "rollback", "canary-analysis", "check-manifests", "request-retrain")  # promote --env too


def run_delivery(step: str, c: dict) -> tuple[dict, str, int]:
    """Steps that edit or check manifests (no torch import: they run in seconds on a CI runner)."""
    from model.deploy import delivery
    from model.deploy.checks import check_manifests_step

    reg_cfg, dcfg = c.get(RegistryConfig), c[DeliveryConfig]
    if step == "check-manifests":
        result, md, passed = check_manifests_step(Path(c[CheckManifestsArgs].repo), dcfg.manifests_dir)
        return result, md, EXIT_OK if passed else EXIT_REJECTED
    if step == "release":
        a = c[ReleaseArgs]
        _require(a.env, "--env")
        if a.model_version < 0:
            raise FlywheelError("--model-version is required")
        result, md = delivery.release_step(a.env, a.model_version, a.canary, Path(a.repo), reg_cfg, dcfg)
        return result, md, EXIT_OK
    if step == "promote":
        a = c[PromoteArgs]
        result, md = delivery.promote_env_step(
            a.env, None if a.version < 0 else a.version, Path(a.repo), reg_cfg, dcfg, a.analysis
        )
        return result, md, EXIT_OK
    if step == "rollback":
        a = c[RollbackArgs]
        _require(a.env, "--env")
        result, md = delivery.rollback_step(a.env, Path(a.repo), reg_cfg, dcfg, a.analysis)
        return result, md, EXIT_OK
    if step == "request-retrain":
        a = c[RequestRetrainArgs]
        _require(a.drift_report, "--drift-report")
        result, md = delivery.request_retrain_step(Path(a.drift_report), Path(a.repo), dcfg)
        return result, md, EXIT_OK
    if step == "canary-analysis":
        a = c[CanaryAnalysisArgs]
        _require(a.env, "--env")
        result, md = delivery.canary_analysis_step(
            a.env,
            Path(a.metrics) if a.metrics else None,
            a.prometheus_url,
            Path(a.repo),
            c[CanaryConfig],
            dcfg,
            store_url=a.store_url,
        )
        return result, md, EXIT_OK
    raise FlywheelError(f"unknown step {step}")


def _require(value: str, flag: str) -> None:
    if not value:
        raise FlywheelError(f"{flag} is required")


def _report_dir(c: dict) -> Path:
    return Path(c[CommonArgs].report_dir) if c[CommonArgs].report_dir else work_dir() / "reports"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        step, c = parse(argv)
        result, markdown, code = run(step, c)
        write_reports(_report_dir(c), step, result, markdown)
    except FlywheelError as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(result, indent=2, default=str))
    print(markdown, file=sys.stderr)
    _github_outputs(result)
    return code


def _github_outputs(result: dict) -> None:
    """In GitHub Actions, expose the result's top-level scalars (decision, version, passed, ...) as step
    outputs, so a workflow branches on them without parsing JSON in shell."""
    target = os.environ.get("GITHUB_OUTPUT")
    if not target:
        return
    lines = [
        f"{k}={str(v).lower() if isinstance(v, bool) else v}"
        for k, v in result.items()
        if isinstance(v, (str, int, float, bool)) and "\n" not in str(v) and k.replace("_", "").isalnum()
    ]
    with open(target, "a") as out:
        out.write("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    sys.exit(main())
