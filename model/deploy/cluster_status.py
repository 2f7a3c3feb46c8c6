"""Is the cluster where Git says it is? Checks on an InferenceService's status before a promote or release.

The status is what ``kubectl get inferenceservice NAME -n NS -o json`` prints (``--cluster-status
FILE``), shaped as KServe writes it (kserve ``pkg/apis/serving/v1beta1/inference_service_status.go``):
``status.conditions`` (``Ready``, ...) and ``status.components.predictor`` with ``latestCreatedRevision``,
``latestReadyRevision``, ``latestRolledoutRevision`` and ``traffic`` (``revisionName``, ``percent``,
``latestRevision``). A promote on a canary that never became ready, or that gets no share, would
promote a model no user has tried; a release while a revision is still rolling out would judge a
split that does not exist yet. Each refusal also says how Argo CD shows the InferenceService, from
Argo CD's own health check (``model.deploy.argocd_health``): a rollout in progress is Progressing there,
not Degraded.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.core.errors import FlywheelError
from model.deploy.argocd_health import inferenceservice_health


def load_status(path: str | Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{path}: not an InferenceService as `kubectl get -o json` prints it: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "InferenceService" or not isinstance(doc.get("status"), dict):
        raise FlywheelError(f"{path}: expected an InferenceService with a status (kubectl get isvc NAME -o json)")
    return doc["status"]


def _ready_problems(status: dict) -> list[str]:
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        why = f": {ready.get('reason', '')} {ready.get('message', '')}".rstrip() if ready else ""
        argocd = inferenceservice_health({"kind": "InferenceService", "status": status}).status
        return [f"condition Ready is {ready.get('status') if ready else 'missing'}{why} (Argo CD shows {argocd})"]
    return []


def _predictor(status: dict) -> dict:
    return (status.get("components") or {}).get("predictor") or {}


def _revision_problems(predictor: dict) -> list[str]:
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if not created or created != ready:
        return [f"the newest revision {created or '?'} is not ready (latestReadyRevision is {ready or 'none'})"]
    return []


def promote_problems(status: dict, canary_percent: int) -> list[str]:
    """Why promoting the canary now would be promoting blind (empty: go ahead)."""
    predictor = _predictor(status)
    problems = _ready_problems(status) + _revision_problems(predictor)
    latest = predictor.get("latestReadyRevision")
    share = sum(int(t.get("percent") or 0) for t in predictor.get("traffic") or [] if t.get("revisionName") == latest)
    if not problems and share != canary_percent:
        problems.append(
            f"the canary revision {latest} gets {share}% of the traffic, not the {canary_percent}% Git says"
        )
    if not problems and not predictor.get("latestRolledoutRevision"):
        problems.append("no latestRolledoutRevision: the InferenceService was recreated, the canary serves everyone")
    return problems


def release_problems(status: dict) -> list[str]:
    """Why releasing now would start from a state the cluster has not reached (empty: go ahead)."""
    return _ready_problems(status) + _revision_problems(_predictor(status))


def require(problems: list[str], what: str, path: str | Path) -> None:
    if problems:
        raise FlywheelError(f"{path}: refusing to {what}: " + "; ".join(problems))
