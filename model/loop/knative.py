"""A stand-in for how KServe (Knative mode) and Knative Serving route an InferenceService's predictor.

Pure and clocked by the caller, so a test can step through a rollout second by second; the local
loop (``model.loop.stand_in.LocalCluster``) routes every simulated user through it too.

- **Revisions.** Knative creates a revision whenever the Configuration's template changes, any field
  of it, annotations and labels included (knative/serving ``pkg/reconciler/configuration``: a new
  revision per template generation, never a reused older one). KServe builds that template from the
  predictor's spec and the InferenceService's annotations and labels, minus
  ``serviceAnnotationDisallowedList`` and ``serviceLabelDisallowedList`` (kserve
  ``pkg/controller/v1beta1/inferenceservice/components/predictor.go``); ``canaryTrafficPercent`` and
  the InferenceService's status are not part of it.
- **Cold starts.** A new revision becomes ready ``cold_start_s`` after it is created.
- **Traffic** (kserve ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``):
  with ``canaryTrafficPercent`` set and a ``latestRolledoutRevision`` in the status, ``latestRevision:
  true`` gets the canary share and the rolled-out revision the rest (0% is KServe's pin: everything
  on the rolled-out revision); otherwise ``latestRevision: true`` gets 100%. Knative resolves
  ``latestRevision: true`` to the latest **ready** revision (knative/serving ``pkg/reconciler/route/
  traffic/traffic.go``, ``addConfigurationTarget``), so until a new revision is ready its share goes to
  the one before it.
- **Status** (kserve ``pkg/apis/serving/v1beta1/inference_service_status.go``, ``PropagateStatus``):
  when the latest ready revision takes 100% through ``latestRevision: true``, it becomes
  ``latestRolledoutRevision`` (the one before becomes ``previousRolledoutRevision``). When the
  rolled-out revision, still the newest, is given less than 100% (the pin after a promotion: its
  ``latestRevision`` entry and its rolled-out entry add up to 100%), ``latestRolledoutRevision`` moves
  back to ``previousRolledoutRevision`` (the else-branch), and the next pass routes the rest there.
  KServe's passes follow each other on watch events without a pod starting; the model takes them as
  one instant. A recreated InferenceService starts with no status, hence no rolled-out revision: a
  canary's spec then takes 100%.
- **Active revisions and their pods.** Knative labels every revision the route names, a 0% target
  included, and the latest created revision of a ``latestRevision`` target, routing state ``active``
  (knative/serving ``pkg/reconciler/labeler/metasync.go``, ``syncRoutingMeta``); an active revision is
  reachable, and only a reachable one keeps its ``min-scale`` (``pkg/reconciler/revision/resources/
  pa.go``; ``pkg/apis/autoscaling/v1alpha1/pa_lifecycle.go``, ``ScaleBounds``: "min will be ignored
  if the PA is not reachable"). So a revision holds ``minReplicas`` pods while the route names it and
  scales to zero once it does not (the model drops its pods at once; Knative waits out its
  scale-to-zero grace period). A revision the route names again starts its pods again; meanwhile
  Knative's activator holds its requests until a pod can take them (``pkg/activator/net/throttler.go``,
  ``Throttler.Try``): they wait, they do not go elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

# kserve pkg/constants/constants.go, ServiceAnnotationDisallowedList: the InferenceService annotations
# KServe never copies into the revision template (an inferenceservice-config list is appended to these,
# pkg/apis/serving/v1beta1/configmap.go); RevisionTemplateLabelDisallowedList, the same for labels
DISALLOWED_ANNOTATIONS: tuple[str, ...] = (
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/max-scale",
    "internal.serving.kserve.io/storage-initializer-sourceuri",
    "kubectl.kubernetes.io/last-applied-configuration",
    "modelFormat",
)
DISALLOWED_LABELS: tuple[str, ...] = ("networking.knative.dev/visibility",)
NOT_IN_TEMPLATE = ("canaryTrafficPercent",)  # predictor fields KServe reads for routing, not for pods


@dataclass(frozen=True)
class Revision:
    name: str
    template: str  # digest of the revision template: the same template is the same revision
    model_version: str
    created_at: float
    ready_at: float
    model_sha256: str = ""

    def ready(self, now: float) -> bool:
        return now >= self.ready_at


@dataclass(frozen=True)
class Target:
    """One entry of the route's status.traffic: a revision, its percent, and whether it is ``latestRevision``."""

    revision: Revision
    percent: int
    latest: bool


def revision_template(isvc: dict, disallowed: tuple[str, ...] = DISALLOWED_ANNOTATIONS) -> str:
    """A digest of what KServe puts into the Knative revision template for this InferenceService."""
    meta = isvc.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in disallowed}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in DISALLOWED_LABELS}
    predictor = {k: v for k, v in ((isvc.get("spec") or {}).get("predictor") or {}).items() if k not in NOT_IN_TEMPLATE}
    template = {"annotations": annotations, "labels": labels, "predictor": predictor}
    return hashlib.sha256(json.dumps(template, sort_keys=True, default=str).encode()).hexdigest()


def _env(isvc: dict, name: str) -> str:
    for container in ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == name:
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
    active_since: dict[str, float] = field(default_factory=dict)  # when the route last began to name it

    def apply(self, isvc: dict, now: float) -> Revision | None:
        """What a sync of ``isvc`` does: a new revision if its template changed (returned), the split set."""
        before = {r.name for r in self.active(now)}
        self.canary_percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        template = revision_template(isvc)
        created = None
        if not self.revisions or self.revisions[-1].template != template:
            created = Revision(
                f"{self.name}-predictor-{len(self.revisions) + 1:05d}",
                template,
                _env(isvc, "FLYWHEEL_MODEL_VERSION"),
                now,
                now + self.cold_start_s,
                _env(isvc, "FLYWHEEL_MODEL_SHA256"),
            )
            self.revisions.append(created)
        for revision in self.active(now):
            if revision.name not in before:
                self.active_since[revision.name] = now
        return created

    def _latest_ready(self, now: float) -> Revision | None:
        return next((r for r in reversed(self.revisions) if r.ready(now)), None)

    def _by_name(self, name: str) -> Revision:
        return next(r for r in self.revisions if r.name == name)

    def _targets(self, now: float) -> list[Target]:
        """The route's status.traffic as Knative resolves what KServe's ksvc reconciler asks for (0% kept)."""
        latest = self._latest_ready(now)
        if latest is None:
            return []
        if self.canary_percent is not None and self.latest_rolled_out:
            targets = [Target(latest, self.canary_percent, True)]
            if self.canary_percent < 100:
                targets.append(Target(self._by_name(self.latest_rolled_out), 100 - self.canary_percent, False))
            return targets
        return [Target(latest, 100, True)]

    def _propagate(self, now: float) -> None:
        """KServe's status update (``PropagateStatus``), pass after pass until the status stops changing."""
        for _ in range(3):  # at most: roll out, or move back; then nothing changes
            latest = self._latest_ready(now)
            targets = self._targets(now)
            on_latest = sum(t.percent for t in targets if latest and t.revision.name == latest.name)
            before = (self.latest_rolled_out, self.previous_rolled_out)
            for t in targets:
                if not t.latest:
                    continue
                if t.revision.name != self.latest_rolled_out:
                    if t.percent == 100:  # track the last revision that's fully rolled out
                        self.previous_rolled_out, self.latest_rolled_out = self.latest_rolled_out, t.revision.name
                elif t.revision is self.revisions[-1] and t.percent < 100 and on_latest == 100:
                    # the rolled-out revision, still the newest, given less than 100%: rolled back
                    if self.previous_rolled_out:
                        self.latest_rolled_out = self.previous_rolled_out
            if (self.latest_rolled_out, self.previous_rolled_out) == before:
                return

    def traffic(self, now: float) -> list[tuple[Revision, int]]:
        """(revision, percent) of every revision with a share, as the route resolves them now."""
        self._propagate(now)
        shares: dict[str, int] = {}
        for t in self._targets(now):
            if t.percent > 0:
                shares[t.revision.name] = shares.get(t.revision.name, 0) + t.percent
        return [(self._by_name(name), percent) for name, percent in shares.items()]

    def active(self, now: float) -> list[Revision]:
        """The revisions Knative keeps routing state ``active``: each keeps its minReplicas pods."""
        self._propagate(now)
        names = {t.revision.name for t in self._targets(now)}
        if self.revisions:
            names.add(self.revisions[-1].name)  # the latest created, for the latestRevision target
        return [r for r in self.revisions if r.name in names]

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
        """The InferenceService as ``kubectl get -o json`` shows it: KServe's conditions and predictor status.

        Conditions as KServe sets them in Knative mode, sorted by type as Knative's condition sets keep
        them: ``PredictorConfigurationReady``, ``PredictorRouteReady`` and ``PredictorReady`` from the
        Knative Service (``PropagateStatus``), ``IngressReady`` following ``PredictorReady``
        (``reconcilers/ingress/ingress_reconciler.go``, "Predictor ingress not created"),
        ``LatestDeploymentReady`` / ``RoutesReady`` across components, ``Ready`` from ``PredictorReady``
        and ``IngressReady``, ``Stopped`` False; ``modelStatus.transitionStatus`` is ``InProgress`` while
        the newest revision's pods load and ``UpToDate`` once they serve (``UpdateModelRevisionStates``).
        A new revision leaves a Knative Configuration Unknown, not False, until it is ready (knative/serving
        ``pkg/apis/serving/v1/configuration_lifecycle.go``, ``SetLatestCreatedRevisionName``).
        """
        self._propagate(now)
        latest = self._latest_ready(now)
        created = self.revisions[-1] if self.revisions else None
        waiting = {
            "status": "Unknown",
            "reason": "RevisionMissing",
            "message": f'Configuration "{self.name}-predictor" is waiting for a Revision to become ready.',
        }
        config_ready = created is not None and latest is not None and latest.name == created.name
        config = {"status": "True"} if config_ready else {"status": "Unknown"}
        route = {"status": "True"} if latest is not None else waiting
        predictor = route if route["status"] != "True" else config
        ingress = (
            {"status": "True"}
            if predictor["status"] == "True"
            else {"status": "Unknown", "reason": "Predictor ingress not created"}
        )

        def across(component: str, condition: dict) -> dict:
            if condition["status"] == "True":
                return {"status": "True"}
            return {"status": "Unknown", "reason": f"{component} not ready"}

        conditions = {
            "IngressReady": ingress,
            "LatestDeploymentReady": across("PredictorConfigurationReady", config),
            "PredictorConfigurationReady": {**config, "severity": "Info"},
            "PredictorReady": predictor,
            "PredictorRouteReady": {**route, "severity": "Info"},
            "Ready": predictor if predictor["status"] != "True" else ingress,
            "RoutesReady": across("PredictorRouteReady", route),
            "Stopped": {"status": "False", "severity": "Info"},
        }
        loaded = config_ready
        model_status = {
            "transitionStatus": "UpToDate" if loaded else "InProgress",
            "states": {
                "activeModelState": "Loaded" if latest is not None else "",
                "targetModelState": "Loaded" if loaded else "Loading",
            },
        }
        traffic = [
            {"revisionName": t.revision.name, "percent": t.percent, "latestRevision": t.latest}
            | ({"tag": "prev"} if not t.latest else {})
            for t in self._targets(now)
        ]
        component = {
            "latestCreatedRevision": created and created.name,
            "latestReadyRevision": latest and latest.name,
            "latestRolledoutRevision": self.latest_rolled_out,
            "previousRolledoutRevision": self.previous_rolled_out,
            "traffic": traffic,
        }
        status = {
            "conditions": [{"type": kind, **condition} for kind, condition in sorted(conditions.items())],
            "modelStatus": model_status,
            "components": {"predictor": component},
        }
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": self.name},
            "status": status,
        }
