"""A stand-in for how KServe (Knative mode) and Knative Serving route an InferenceService's predictor.

Pure and clocked by the caller, so a test can step through a rollout second by second:

- **Revisions.** Knative creates a revision whenever the Configuration's template changes, any field
  of it, annotations and labels included (knative/serving ``pkg/reconciler/configuration``: a new
  revision per template generation). KServe builds that template from the predictor's spec and the
  InferenceService's annotations and labels, minus ``serviceAnnotationDisallowedList`` (kserve
  ``pkg/controller/v1beta1/inferenceservice/components/predictor.go``); ``canaryTrafficPercent`` and
  the InferenceService's status are not part of it.
- **Cold starts.** A new revision becomes ready ``cold_start_s`` after it is created.
- **Traffic** (kserve ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``):
  with ``canaryTrafficPercent`` set and a ``latestRolledoutRevision`` in the status, ``latestRevision:
  true`` gets the canary share and the rolled-out revision the rest (0% is KServe's pin: everything
  on the rolled-out revision); otherwise ``latestRevision: true`` gets 100%. Knative resolves
  ``latestRevision: true`` to the latest **ready** revision (knative/serving ``pkg/reconciler/route/
  traffic/traffic.go``), so until a new revision is ready its share goes to the one before it.
- **Status** (kserve ``pkg/apis/serving/v1beta1/inference_service_status.go``, ``PropagateStatus``):
  when the latest ready revision takes 100% through ``latestRevision: true``, it becomes
  ``latestRolledoutRevision`` (the one before becomes ``previousRolledoutRevision``). A recreated
  InferenceService starts with no status, hence no rolled-out revision: a canary's spec then takes 100%.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

# what KServe keeps out of the revision template (its inferenceservice-config default lists none)
DISALLOWED_ANNOTATIONS: tuple[str, ...] = ()
NOT_IN_TEMPLATE = ("canaryTrafficPercent",)  # predictor fields KServe reads for routing, not for pods


@dataclass(frozen=True)
class Revision:
    name: str
    template: str  # digest of the revision template: the same template is the same revision
    model_version: str
    created_at: float
    ready_at: float

    def ready(self, now: float) -> bool:
        return now >= self.ready_at


def revision_template(isvc: dict, disallowed: tuple[str, ...] = DISALLOWED_ANNOTATIONS) -> str:
    """A digest of what KServe puts into the Knative revision template for this InferenceService."""
    meta = isvc.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in disallowed}
    predictor = {k: v for k, v in ((isvc.get("spec") or {}).get("predictor") or {}).items() if k not in NOT_IN_TEMPLATE}
    template = {"annotations": annotations, "labels": meta.get("labels") or {}, "predictor": predictor}
    return hashlib.sha256(json.dumps(template, sort_keys=True, default=str).encode()).hexdigest()


def _model_version(isvc: dict) -> str:
    for container in ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "FLYWHEEL_MODEL_VERSION":
                return str(env.get("value") or "")
    return ""


@dataclass
class KnativeService:
    """One InferenceService's predictor: its revisions, the status KServe keeps, and the traffic split."""

    name: str
    cold_start_s: float = 30.0
    revisions: list[Revision] = field(default_factory=list)
    canary_percent: int | None = None
    latest_rolled_out: str | None = None  # status.components.predictor.latestRolledoutRevision
    previous_rolled_out: str | None = None

    def apply(self, isvc: dict, now: float) -> Revision | None:
        """What a sync of ``isvc`` does: a new revision if its template changed (returned), the split set."""
        self.canary_percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        template = revision_template(isvc)
        if self.revisions and self.revisions[-1].template == template:
            self._propagate(now)
            return None
        revision = Revision(
            f"{self.name}-predictor-{len(self.revisions) + 1:05d}",
            template,
            _model_version(isvc),
            now,
            now + self.cold_start_s,
        )
        self.revisions.append(revision)
        self._propagate(now)
        return revision

    def _latest_ready(self, now: float) -> Revision | None:
        return next((r for r in reversed(self.revisions) if r.ready(now)), None)

    def _by_name(self, name: str) -> Revision:
        return next(r for r in self.revisions if r.name == name)

    def traffic(self, now: float) -> list[tuple[Revision, int]]:
        """(revision, percent) of every revision with a share, as the route resolves them now."""
        self._propagate(now)
        latest = self._latest_ready(now)
        if self.canary_percent is not None and self.latest_rolled_out:
            split = [(latest, self.canary_percent), (self._by_name(self.latest_rolled_out), 100 - self.canary_percent)]
        else:
            split = [(latest, 100)]
        shares: dict[str, int] = {}
        for revision, percent in split:
            if revision is not None and percent > 0:
                shares[revision.name] = shares.get(revision.name, 0) + percent
        return [(self._by_name(name), percent) for name, percent in shares.items()]

    def _propagate(self, now: float) -> None:
        """KServe's status update: the latest ready revision on 100% through latestRevision is rolled out."""
        latest = self._latest_ready(now)
        fully = self.canary_percent is None or self.canary_percent == 100 or not self.latest_rolled_out
        if latest is not None and fully and latest.name != self.latest_rolled_out:
            self.previous_rolled_out, self.latest_rolled_out = self.latest_rolled_out, latest.name

    def route(self, draw: float, now: float) -> Revision:
        """The revision that answers a request whose uniform draw in [0, 1) is ``draw``."""
        edge = 0.0
        split = self.traffic(now)
        if not split:
            raise RuntimeError(f"{self.name}: no revision is ready yet")
        for revision, percent in split:
            edge += percent / 100
            if draw < edge:
                return revision
        return split[-1][0]

    def status(self, now: float) -> dict:
        """The InferenceService as ``kubectl get -o json`` shows it: KServe's status of the predictor."""
        split = self.traffic(now)
        latest = self._latest_ready(now)
        created = self.revisions[-1] if self.revisions else None
        ready = latest is not None and created is not None and latest.name == created.name
        traffic = [
            {"revisionName": r.name, "percent": percent, "latestRevision": r.name == (latest and latest.name)}
            for r, percent in split
        ]
        predictor = {
            "latestCreatedRevision": created and created.name,
            "latestReadyRevision": latest and latest.name,
            "latestRolledoutRevision": self.latest_rolled_out,
            "previousRolledoutRevision": self.previous_rolled_out,
            "traffic": traffic,
        }
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        if not ready:
            condition |= {"reason": "RevisionMissing", "message": "Revision is not ready yet"}
        status = {"conditions": [condition], "components": {"predictor": predictor}}
        return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "status": status}
