"""Stand-ins and real servers: `flywheel serve` (kserve's ModelServer) and `flywheel collect` as
processes on loopback ports, a throwaway PostgreSQL, a real ``mlflow server``, promtool, the pod as
its manifests start it (bubblewrap), and the stand-ins for what cannot run here (GitHub's REST API, an
OCI registry, Prometheus, KServe + Knative routing, Argo CD's sync), each modelled on upstream's
source. The delivery steps run here too, on a real MLflow registry holding gated tiny models.

The fixtures below are the delivery tests' shared MLflow store (tests/servers/test_delivery.py,
test_forges.py, test_knative_stand_in.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from model.artifact.predictor import IntentPredictor
from model.registry import register, versions
from model.registry.store import tracking_uri
from tests.helpers.delivery import REG


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory, tiny_artifact):
    """An MLflow store with v1 and v2 gated, and v3 registered without passing the gate."""
    work = tmp_path_factory.mktemp("delivery-work")
    REG.tracking_uri = f"sqlite:///{work / 'mlflow.db'}"  # what the CLI resolves for --work-dir work
    predictor = IntentPredictor.load(tiny_artifact["artifact"])
    for i in (1, 2, 3):  # one artifact, three "datasets": registration is idempotent per dataset digest
        meta = {**predictor.meta, "dataset_digest": f"dataset-{i}", "mlflow_run_id": None}
        assert register.register(REG, Path(tiny_artifact["artifact"]), meta, predictor.digest).version == i
    MlflowClient(tracking_uri(REG)).delete_model_version_tag(REG.model_name, "3", versions.GATE_TAG)
    return work, predictor.digest


@pytest.fixture
def store(registry_dir, monkeypatch):
    work, digest = registry_dir
    monkeypatch.setenv("FLYWHEEL_WORK_DIR", str(work))
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    return digest
