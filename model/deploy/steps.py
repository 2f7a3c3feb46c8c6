"""The delivery steps as `flywheel` runs them: release, promote, rollback, canary-analysis,
request-retrain and check-manifests. Each is a thin call into ``delivery`` or ``checks``; none
imports torch, so they start in seconds on a CI runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.core.config import CanaryConfig, DeliveryConfig, Environment, RegistryConfig, required, setting
from model.core.steps import EXIT_OK, EXIT_REJECTED, StepResult
from model.deploy import cluster_status, manifests
from model.deploy.canary import NO_DATA
from model.deploy.checks import check_manifests_step
from model.deploy.delivery import (
    canary_analysis_step,
    promote_env_step,
    release_step,
    request_retrain_step,
    rollback_step,
)

REPO_HELP = "Git repository holding the manifests (the pull request is made there, or on GitHub)"


@dataclass
class ReleaseArgs:
    env: Environment = required("environment whose manifest gets the canary")
    model_version: int = required("registered, gate-passed model version to release")
    canary: int = setting(10, "share of traffic (0-100) the new version gets while the stable model keeps the rest")
    repo: str = setting(".", REPO_HELP)
    image: str | None = setting(
        None,
        "also pin the predictor and collector images to this REGISTRY/REPO@sha256:<digest> (flywheel resolve-image "
        "prints it; a tag alone is refused), so Git names exactly what runs (unset: production carries forward the "
        "digest staging's manifest pins on the base branch; staging's images stay as they are)",
    )
    cluster_status: str | None = setting(
        None,
        "the InferenceService as `kubectl get isvc NAME -n NS -o json` prints it: refuse when the cluster is not "
        "where Git says (not Ready, a revision not ready, the canary without its share) (unset: not checked)",
    )


@dataclass
class PromoteArgs:
    env: Environment = required("environment whose canary takes 100 percent, by pull request")
    version: int | None = setting(None, "the canary's version, as a check (unset: whatever the canary runs)")
    repo: str = setting(".", REPO_HELP)
    analysis: str | None = setting(None, "canary-analysis JSON to quote in the pull request (its .md is the text)")
    cluster_status: str | None = setting(
        None,
        "the InferenceService as `kubectl get isvc NAME -n NS -o json` prints it: refuse when the cluster is not "
        "where Git says (not Ready, a revision not ready, the canary without its share) (unset: not checked)",
    )


@dataclass
class RollbackArgs:
    env: Environment = required("environment to roll back")
    repo: str = setting(".", REPO_HELP)
    analysis: str | None = setting(None, "canary-analysis JSON to quote in the pull request")
    merge: bool = setting(
        False,
        "the emergency stop: merge the pull request at once (the token must be allowed to merge past branch "
        "protection); Argo CD then syncs the pin, which self-heal keeps instead of undoing",
    )


@dataclass
class CanaryAnalysisArgs:
    env: Environment = required("environment whose canary to analyse")
    metrics: str | None = setting(
        None,
        'per-arm metrics JSON: {"stable": {...}, "canary": {...}} (requests, errors, fallbacks, '
        "escalations, thumbs_up, thumbs_down, slow, latency_p99_ms, model_version)",
    )
    prometheus_url: str | None = setting(
        None,
        "instead of --metrics: Prometheus, counts since the canary's merge; requests and errors from Knative's "
        "queue-proxy (a bearer token, if it needs one, from $FLYWHEEL_PROMETHEUS_TOKEN)",
    )
    store_url: str | None = setting(
        None, "instead of --metrics: the collector's store (SQLAlchemy URL), counted since the canary's merge"
    )
    repo: str = setting(".", REPO_HELP)


@dataclass
class RequestRetrainArgs:
    drift_report: str = required("flywheel drift's JSON report (verdict, reasons, data window); its .md is the body")
    repo: str = setting(".", "Git repository the retrain request is proposed in")


@dataclass
class CheckManifestsArgs:
    repo: str = setting(".", "repository whose manifests to check")


def release_command(args: ReleaseArgs, *, registry: RegistryConfig, delivery: DeliveryConfig) -> StepResult:
    """Pull request: put a gated model version on a canary."""
    if args.cluster_status:
        status = cluster_status.load_status(args.cluster_status)
        cluster_status.require(cluster_status.release_problems(status), "release", args.cluster_status)
    return StepResult(
        *release_step(
            args.env, args.model_version, args.canary, Path(args.repo), registry, delivery, image=args.image or ""
        )
    )


def promote_command(args: PromoteArgs, *, registry: RegistryConfig, delivery: DeliveryConfig) -> StepResult:
    """Pull request: the canary takes 100% and becomes stable (champion moves once it merges in production)."""
    if args.cluster_status:
        rollout = manifests.read_rollout(manifests.isvc_path(Path(args.repo), args.env, delivery.manifests_dir))
        status = cluster_status.load_status(args.cluster_status)
        problems = cluster_status.promote_problems(status, rollout.canary_percent or 0) if rollout.canary else []
        cluster_status.require(problems, "promote", args.cluster_status)
    return StepResult(
        *promote_env_step(args.env, args.version, Path(args.repo), registry, delivery, args.analysis or "")
    )


def rollback_command(args: RollbackArgs, *, registry: RegistryConfig, delivery: DeliveryConfig) -> StepResult:
    """Pull request: KServe's pin back to the stable model (a canary, the last promotion); once pinned, the restore."""
    return StepResult(
        *rollback_step(args.env, Path(args.repo), registry, delivery, args.analysis or "", merge=args.merge)
    )


def canary_analysis_command(args: CanaryAnalysisArgs, *, canary: CanaryConfig, delivery: DeliveryConfig) -> StepResult:
    """Promote, hold or rollback, from per-arm metrics (the collector's store, Prometheus, or a file).

    Exits 0 on every decision but ``no_data`` (an arm without any series: nothing scraped), which exits 1,
    so the hourly workflow fails visibly instead of holding for ever."""
    result, md = canary_analysis_step(
        args.env,
        Path(args.metrics) if args.metrics else None,
        args.prometheus_url or "",
        Path(args.repo),
        canary,
        delivery,
        store_url=args.store_url or "",
    )
    return StepResult(result, md, EXIT_REJECTED if result.get("decision") == NO_DATA else EXIT_OK)


def request_retrain_command(args: RequestRetrainArgs, *, delivery: DeliveryConfig) -> StepResult:
    """On drift, a pull request adding a retrain request (data window and drift summary)."""
    return StepResult(*request_retrain_step(Path(args.drift_report), Path(args.repo), delivery))


def check_manifests_command(args: CheckManifestsArgs, *, delivery: DeliveryConfig) -> StepResult:
    """Validate everything under manifests/: exit 1 on any finding."""
    result, md, passed = check_manifests_step(Path(args.repo), delivery.manifests_dir)
    return StepResult(result, md, EXIT_OK if passed else EXIT_REJECTED)
