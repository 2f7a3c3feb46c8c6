"""The delivery steps as `flywheel` runs them: release, promote, rollback, canary-analysis,
request-retrain and check-manifests. Each is a thin call into ``delivery`` or ``checks``; none
imports torch, so they start in seconds on a CI runner. Each returns its typed outcome, made here
from what ``delivery`` answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model.core.config import CanaryConfig, DeliveryConfig, RegistryConfig
from model.core.steps import EXIT_OK, EXIT_REJECTED, StepResult
from model.deploy import cluster_status, manifests
from model.deploy.args import (
    CanaryAnalysisArgs,
    CheckManifestsArgs,
    PromoteArgs,
    ReleaseArgs,
    RequestRetrainArgs,
    RollbackArgs,
)
from model.deploy.canary import NO_DATA
from model.deploy.checks import ManifestCheck, check_manifests_step
from model.deploy.delivery import (
    canary_analysis_step,
    promote_env_step,
    release_step,
    request_retrain_step,
    rollback_step,
)


@dataclass(frozen=True)
class Released:
    env: str
    action: str  # "release"
    model_version: int
    canary_percent: int | None  # None: the first model takes all traffic
    storage_uri: str
    sha256: str
    image: str | None  # the pinned image, when --image named one
    pull_request: dict  # the forge's answer: branch, number, url, ...


@dataclass(frozen=True)
class Promoted:
    env: str
    action: str  # "promote"
    model_version: int
    previous_stable: int
    image: str
    pull_request: dict
    champion_on_merge: int | None = None  # in the champion environment: the version `champion` moves to


@dataclass(frozen=True)
class RolledBack:
    env: str
    action: str  # "rollback"
    ended_version: int
    stable: int
    pull_request: dict  # with "merge" when --merge merged it at once
    champion_on_merge: int | None = None


@dataclass(frozen=True)
class CanaryAnalysis:
    """The decision on a running canary (``decision`` "none" and no figures when none runs)."""

    env: str
    decision: str  # promote, hold, rollback, no_data or none
    reasons: list[str]
    stable_version: int | None = None
    canary_version: int | None = None
    canary_percent: int | None = None
    metrics_source: str | None = None
    arms: dict[str, dict] | None = None  # per arm, its counts
    comparisons: list[dict] = field(default_factory=list)
    latency_p99_ms: dict = field(default_factory=dict)
    alpha_per_test: float = 0.0
    unattributed_errors: int = 0


@dataclass(frozen=True)
class RetrainRequested:
    requested: bool
    drift: bool
    request_file: str | None = None  # relative to the repository
    window: dict | None = None  # the drifted window: start, end
    pull_request: dict | None = None


def release_command(args: ReleaseArgs, *, registry: RegistryConfig, delivery: DeliveryConfig) -> StepResult[Released]:
    """Pull request: put a gated model version on a canary."""
    if args.cluster_status:
        status = cluster_status.load_status(args.cluster_status)
        cluster_status.require(cluster_status.release_problems(status), "release", args.cluster_status)
    result, body = release_step(
        args.env,
        args.model_version,
        args.canary,
        Path(args.repo),
        reg_cfg=registry,
        dcfg=delivery,
        image=args.image or "",
    )
    return StepResult(Released(**result), body)


def promote_command(args: PromoteArgs, *, registry: RegistryConfig, delivery: DeliveryConfig) -> StepResult[Promoted]:
    """Pull request: the canary takes 100% and becomes stable (champion moves once it merges in production)."""
    if args.cluster_status:
        rollout = manifests.read_rollout(manifests.isvc_path(Path(args.repo), args.env, delivery.manifests_dir))
        status = cluster_status.load_status(args.cluster_status)
        problems = cluster_status.promote_problems(status, rollout.canary_percent or 0) if rollout.canary else []
        cluster_status.require(problems, "promote", args.cluster_status)
    result, body = promote_env_step(args.env, args.version, Path(args.repo), registry, delivery, args.analysis or "")
    return StepResult(Promoted(**result), body)


def rollback_command(
    args: RollbackArgs, *, registry: RegistryConfig, delivery: DeliveryConfig
) -> StepResult[RolledBack]:
    """Pull request: KServe's pin back to the stable model (a canary, the last promotion); once pinned, the restore."""
    result, body = rollback_step(args.env, Path(args.repo), registry, delivery, args.analysis or "", merge=args.merge)
    return StepResult(RolledBack(**result), body)


def canary_analysis_command(
    args: CanaryAnalysisArgs, *, canary: CanaryConfig, delivery: DeliveryConfig
) -> StepResult[CanaryAnalysis]:
    """Promote, hold or rollback, from per-arm metrics (the collector's store, Prometheus, or a file).

    Exits 0 on every decision but ``no_data`` (an arm without any series: nothing scraped), which exits 1,
    so the hourly workflow fails visibly instead of holding for ever."""
    result, md = canary_analysis_step(
        args.env,
        Path(args.repo),
        cfg=canary,
        dcfg=delivery,
        metrics=Path(args.metrics) if args.metrics else None,
        prometheus_url=args.prometheus_url or "",
        store_url=args.store_url or "",
    )
    analysis = CanaryAnalysis(**result)
    return StepResult(analysis, md, EXIT_REJECTED if analysis.decision == NO_DATA else EXIT_OK)


def request_retrain_command(args: RequestRetrainArgs, *, delivery: DeliveryConfig) -> StepResult[RetrainRequested]:
    """On drift, a pull request adding a retrain request (data window and drift summary)."""
    result, body = request_retrain_step(Path(args.drift_report), Path(args.repo), delivery)
    return StepResult(RetrainRequested(**result), body)


def check_manifests_command(args: CheckManifestsArgs, *, delivery: DeliveryConfig) -> StepResult[ManifestCheck]:
    """Validate everything under manifests/: exit 1 on any finding."""
    result, md, passed = check_manifests_step(Path(args.repo), delivery.manifests_dir)
    return StepResult(result, md, EXIT_OK if passed else EXIT_REJECTED)
