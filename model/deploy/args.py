"""The flags of the deploy package's steps (init, release, promote, rollback, reconcile-registry,
canary-analysis, request-retrain, check-manifests, resolve-image, train-job), apart from the steps
themselves so that the step table (``scripts/cli.py``) names them without importing the steps' dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import Environment, required, setting

REPO_HELP = "Git repository holding the manifests (the pull request is made there, or on GitHub)"


@dataclass
class InitArgs:
    repository: str | None = setting(
        None, "the fork on GitHub: OWNER/NAME, or its https or ssh URL (unset: `git remote get-url origin`)"
    )
    staging_namespace: str | None = setting(
        None, "namespace of the staging environment (unset: as the manifests say; shipped: flywheel-staging)"
    )
    production_namespace: str | None = setting(
        None, "namespace of the production environment (unset: as the manifests say; shipped: flywheel-production)"
    )
    prometheus_release: str | None = setting(
        None,
        "Helm release name of kube-prometheus-stack: its Prometheus selects PodMonitors and PrometheusRules by the "
        "label release: <name> (unset: as the manifests say; shipped: kube-prometheus-stack)",
    )
    repo: str = setting(".", "the checkout to personalise; its working tree must be clean (one commit is made)")


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
class ReconcileArgs:
    repo: str = setting(".", "checked-out repository whose manifests say what serves users (the commit on main)")


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


@dataclass
class ResolveImageArgs:
    image: str = required(
        "image by tag, e.g. ghcr.io/OWNER/flywheel:<commit sha> (the name is lower-cased, as the image workflow "
        "pushes it); on ghcr.io, $GITHUB_TOKEN is used for a private image"
    )
    wait_s: float = setting(
        0.0, "how long to keep asking while the tag is not there yet (the image workflow may still be pushing it)"
    )


@dataclass
class TrainJobArgs:
    data: str = required("the training set to upload for the job (file or folder), e.g. work/dataset/examples.parquet")
    image: str = required(
        "the image the job runs, pinned by digest (REGISTRY/PATH@sha256:...; flywheel resolve-image gives it)"
    )
    template: str = setting("manifests/training/trainjob.yaml", "the TrainJob to render and submit")
    out: str | None = setting(None, "where the trained artifact is downloaded (unset: <work dir>/models/<job name>)")
