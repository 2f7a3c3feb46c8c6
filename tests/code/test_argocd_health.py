"""Argo CD's own InferenceService health check (the shipped health.lua), run as Argo CD runs it.

Argo CD's test cases for the script run unchanged; then statuses shaped as KServe writes them, and
the stand-in's (model/loop/knative.py) at each step of a rollout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy.argocd_health import Health, inferenceservice_health, script
from model.loop.knative import KnativeService

UPSTREAM = Path(__file__).parent / "argocd-inferenceservice"
CASES = yaml.safe_load((UPSTREAM / "health_test.yaml").read_text())["tests"]


def test_the_shipped_script_is_argo_cds_file_with_its_licence():
    folder = PROJECT_ROOT / "model" / "deploy" / "argocd"
    assert script() == (folder / "health.lua").read_text()
    assert script().startswith("local health_status = {}") and "transitionStatus" in script()
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "37ee0097cf851bc2dd7665fc081bbce61a7e836e" in (folder / "UPSTREAM.md").read_text()


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_argo_cds_own_test_cases_pass(case):
    """resource_customizations/serving.kserve.io/InferenceService/health_test.yaml, every case."""
    obj = yaml.safe_load((UPSTREAM / case["inputPath"]).read_text())
    want = case["healthStatus"]
    assert inferenceservice_health(obj) == Health(want["status"], want["message"])


def kserve_status(*conditions: tuple[str, str], transition: str | None = None) -> dict:
    """An InferenceService as KServe writes it: ``(type, status)`` conditions, optional modelStatus."""
    status: dict = {
        "conditions": [{"type": t, "status": s, "lastTransitionTime": "2026-01-01T00:00:00Z"} for t, s in conditions]
    }
    if transition:
        status["modelStatus"] = {"transitionStatus": transition, "states": {"targetModelState": "FailedToLoad"}}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "status": status}


def test_a_false_ready_condition_is_progressing_never_degraded():
    health = inferenceservice_health(kserve_status(("PredictorReady", "False"), ("Ready", "False")))
    assert health.status == "Progressing"
    assert health.message == " | 1: PredictorReady | False | 2: Ready | False"


def test_stopped_is_suspended_and_a_failed_load_is_degraded():
    stopped = kserve_status(("PredictorReady", "False"), ("Ready", "False"), ("Stopped", "True"))
    assert inferenceservice_health(stopped) == Health("Suspended", "InferenceService is Stopped")
    failed = kserve_status(("PredictorReady", "False"), ("Ready", "False"), transition="BlockedByFailedLoad")
    assert inferenceservice_health(failed).status == "Degraded"
    healthy = kserve_status(("PredictorReady", "True"), ("Ready", "True"), ("Stopped", "False"))
    assert inferenceservice_health(healthy) == Health("Healthy", "InferenceService is healthy.")


def test_no_status_yet_is_progressing_and_a_non_object_is_refused():
    assert inferenceservice_health({"kind": "InferenceService", "metadata": {"name": "intent"}}) == Health(
        "Progressing", "Waiting for InferenceService to report status..."
    )
    with pytest.raises(FlywheelError, match="expected an InferenceService object"):
        inferenceservice_health(["not", "an", "object"])


def test_the_stand_ins_status_through_a_rollout():
    """What Argo CD shows at each step: Progressing while a revision starts (KServe's Ready is Unknown),
    Healthy once it serves and after the pin, which starts nothing."""
    isvc = {
        "metadata": {"name": "intent", "annotations": {}},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "env": [
            {"name": "FLYWHEEL_MODEL_VERSION", "value": "1"}]}]}},
    }  # fmt: skip
    svc = KnativeService("intent", cold_start_s=60)
    svc.apply(isvc, now=0)
    first = svc.status(1)
    assert [c["status"] for c in first["status"]["conditions"] if c["type"] == "Ready"] == ["Unknown"]
    assert inferenceservice_health(first).status == "Progressing"
    assert inferenceservice_health(svc.status(60)) == Health("Healthy", "InferenceService is healthy.")
    canary = {**isvc, "spec": {"predictor": {**isvc["spec"]["predictor"], "canaryTrafficPercent": 10, "x": 2}}}
    svc.apply(canary, now=100)
    rolling = svc.status(101)
    assert rolling["status"]["modelStatus"]["transitionStatus"] == "InProgress"
    assert inferenceservice_health(rolling).status == "Progressing"
    assert inferenceservice_health(svc.status(160)).status == "Healthy"
    pinned = {**canary, "spec": {"predictor": {**canary["spec"]["predictor"], "canaryTrafficPercent": 0}}}
    assert svc.apply(pinned, now=200) is None
    assert inferenceservice_health(svc.status(200)).status == "Healthy"
